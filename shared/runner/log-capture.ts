/**
 * The job log as the runner reads it: Docker's multiplexed attach stream (8-byte frame headers:
 * stream type, 3 zero bytes, big-endian length) turned into chunks, with a hard byte cap.
 * Everything past the cap is read and dropped, so a job flooding gigabytes cannot grow the
 * runner's memory, and the container is never blocked on a full pipe.
 */
export type LogStream = 'stdout' | 'stderr';
export interface LogChunk {
  stream: LogStream;
  data: Buffer;
}

/** Splits a Docker multiplexed stream into frames; keeps at most one partial frame's header. */
export class DockerDemuxer {
  private pending: Buffer = Buffer.alloc(0);
  private remaining = 0;
  private current: LogStream = 'stdout';

  /** Feed raw bytes; `emit` is called for every piece of payload, in order. */
  push(buf: Buffer, emit: (chunk: LogChunk) => void): void {
    let off = 0;
    while (off < buf.length) {
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, buf.length - off);
        emit({ stream: this.current, data: buf.subarray(off, off + n) });
        this.remaining -= n;
        off += n;
        continue;
      }
      const need = 8 - this.pending.length;
      const take = buf.subarray(off, off + need);
      this.pending = this.pending.length ? Buffer.concat([this.pending, take]) : Buffer.from(take);
      off += take.length;
      if (this.pending.length < 8) return;
      this.current = this.pending[0] === 2 ? 'stderr' : 'stdout';
      this.remaining = this.pending.readUInt32BE(4);
      this.pending = Buffer.alloc(0);
    }
  }
}

/** Keeps the first `capBytes` of the log; counts the rest. */
export class LogCapture {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  /** Every byte the job wrote, kept or not. */
  totalBytes = 0;

  constructor(private readonly capBytes: number) {}

  get truncated(): boolean {
    return this.totalBytes > this.kept;
  }

  /** Returns the part of `chunk` that is kept (for live streaming), or undefined when over the cap. */
  add(chunk: LogChunk): LogChunk | undefined {
    this.totalBytes += chunk.data.length;
    const room = this.capBytes - this.kept;
    if (room <= 0) return undefined;
    const data = chunk.data.length <= room ? Buffer.from(chunk.data) : Buffer.from(chunk.data.subarray(0, room));
    this.chunks.push(data);
    this.kept += data.length;
    return { stream: chunk.stream, data };
  }

  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/**
 * Make job output safe to show on an operator's terminal: C0/C1 control characters other than
 * newline, tab and CRLF become U+FFFD (a lone CR becomes a newline, so it cannot overwrite a line), so escape sequences in hostile output cannot drive the terminal.
 * Invalid UTF-8 is already U+FFFD after decoding.
 */
export function sanitizeForTerminal(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\r(?!\n)/g, '\n').replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/g, '\ufffd');
}
