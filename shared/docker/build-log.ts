/**
 * Following the engine's build stream (JSON lines: `{stream}`, `{status}`, `{aux: {ID}}`,
 * `{error, errorDetail}`) with bounded memory. dockerode's `modem.followProgress` keeps every
 * message in an array until the end, so a build that prints gigabytes would hold them all: this
 * follower keeps only the bytes passed on (up to the cap) and the last lines for error messages.
 */

/** Lines kept for the message of a failed build. */
export const TAIL_LINES = 40;
/** A line longer than this is cut (build output can be one endless line). */
export const MAX_LINE_BYTES = 4096;

/** Build output as lines: passed on up to `capBytes`, the last TAIL_LINES always kept. */
export class BuildLog {
  private pending = '';
  private passed = 0;
  private readonly last: string[] = [];
  /** True once a line was dropped because of the cap. */
  truncated = false;

  constructor(
    private readonly capBytes: number,
    private readonly onLine: (line: string) => void = () => {},
  ) {}

  /** Text as the engine sends it: any number of lines, the last possibly partial. */
  write(text: string): void {
    this.pending += text;
    let nl: number;
    while ((nl = this.pending.indexOf('\n')) >= 0) {
      this.line(this.pending.slice(0, nl));
      this.pending = this.pending.slice(nl + 1);
    }
    if (this.pending.length > MAX_LINE_BYTES) {
      this.line(this.pending);
      this.pending = '';
    }
  }

  /** Flush a trailing partial line. */
  end(): void {
    if (this.pending !== '') this.line(this.pending);
    this.pending = '';
  }

  /** The last lines, oldest first. */
  tail(): string[] {
    return [...this.last];
  }

  private line(raw: string): void {
    const line = raw.replace(/\r$/, '').slice(0, MAX_LINE_BYTES);
    this.last.push(line);
    if (this.last.length > TAIL_LINES) this.last.shift();
    const size = Buffer.byteLength(line) + 1;
    if (this.truncated) return;
    if (this.passed + size > this.capBytes) {
      this.truncated = true;
      this.onLine(`[airlock] the build log passed its cap of ${this.capBytes} bytes: the rest is dropped`);
      return;
    }
    this.passed += size;
    this.onLine(line);
  }
}

/** How a build stream ended. */
export type BuildOutcome = { ok: true; imageId: string | undefined } | { ok: false; error: string };

/**
 * Read a build stream to its end, writing output to `log`. Resolves with the image id the engine
 * reported (`aux.ID`) or the engine's error message; rejects if the stream breaks (aborted,
 * engine gone) before its end.
 */
export function followBuildStream(stream: NodeJS.ReadableStream, log: BuildLog): Promise<BuildOutcome> {
  return new Promise((resolve, reject) => {
    let buf = '';
    let imageId: string | undefined;
    let error: string | undefined;
    let settled = false;
    const handle = (text: string): void => {
      let msg: { stream?: unknown; status?: unknown; error?: unknown; errorDetail?: { message?: unknown }; aux?: { ID?: unknown } };
      try {
        msg = JSON.parse(text) as typeof msg;
      } catch {
        log.write(`${text}\n`);
        return;
      }
      if (typeof msg.stream === 'string') log.write(msg.stream);
      else if (typeof msg.status === 'string') log.write(`${msg.status}\n`);
      if (typeof msg.aux?.ID === 'string') imageId = msg.aux.ID;
      if (msg.error !== undefined || msg.errorDetail !== undefined) {
        error ??= String(msg.errorDetail?.message ?? msg.error);
      }
    };
    stream.on('data', (chunk: Buffer | string) => {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const text = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (text) handle(text);
      }
      // One JSON message is small; an endless one is not a build stream.
      if (buf.length > 1024 * 1024) {
        log.write(`${buf.slice(0, MAX_LINE_BYTES)}\n`);
        buf = '';
      }
    });
    stream.on('end', () => {
      if (settled) return;
      settled = true;
      if (buf.trim()) handle(buf.trim());
      log.end();
      resolve(error !== undefined ? { ok: false, error } : { ok: true, imageId });
    });
    const broken = (e?: unknown): void => {
      if (settled) return;
      settled = true;
      log.end();
      reject(e instanceof Error ? e : new Error('the build stream closed before its end'));
    };
    stream.on('error', broken);
    stream.on('close', () => broken());
  });
}
