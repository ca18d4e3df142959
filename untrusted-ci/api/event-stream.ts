/**
 * A server-sent events response (WHATWG `text/event-stream`) on a hijacked fastify reply: the
 * headers, a heartbeat comment so proxies and clients see a live connection, and one idempotent end
 * that also runs when the client goes away. Used by `GET /api/builds/:id/events` and
 * `GET /api/status/stream`.
 *
 * `data` must be one line (JSON is: a newline inside a string is escaped), so no payload can start
 * a field or an event of its own.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';

/** A comment line every so often: idle connections stay open through proxies, dead ones are noticed. */
export const HEARTBEAT_MS = 15_000;
/**
 * What may wait in a stream's buffer for a client that does not read: past it the stream is ended
 * (the client may reconnect), so a reader that never reads cannot make the service hold the
 * events of a build, or snapshots, without bound.
 */
export const MAX_BUFFERED_BYTES = 4 * 1024 * 1024; // 4 MiB
/** Event streams open at once, all routes together; more are answered 429. */
export const MAX_OPEN_STREAMS = 500;
/** Event streams open at once from one client address (live logs and status together): one reader cannot take them all. */
export const MAX_STREAMS_PER_ADDRESS = 20;
let open = 0;
const byAddress = new Map<string, number>();

/** Whether another stream may be opened now, by this client address (see MAX_OPEN_STREAMS, MAX_STREAMS_PER_ADDRESS). */
export function streamCapacityLeft(address: string): boolean {
  return open < MAX_OPEN_STREAMS && (byAddress.get(address) ?? 0) < MAX_STREAMS_PER_ADDRESS;
}

export interface EventStream {
  /** Writes an event; false when the client is behind (then `drained()` before sending a lot more). */
  send(event: string, data: string): boolean;
  /** Resolves once the client has read what waits for it (or the stream ended). */
  drained(): Promise<void>;
  /** Ends the response, writing `last` first (e.g. a final event); safe to call again, and after the client left. */
  end(last?: string): void;
  readonly ended: boolean;
}

export function openEventStream(req: FastifyRequest, reply: FastifyReply, o: { headers?: Record<string, string>; onEnd?: () => void; heartbeatMs?: number; maxBufferedBytes?: number } = {}): EventStream {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no', 'x-content-type-options': 'nosniff', ...o.headers });
  let ended = false;
  open++;
  const address = req.ip;
  byAddress.set(address, (byAddress.get(address) ?? 0) + 1);
  const write = (text: string): boolean => {
    if (ended) return true; // never write after end: on a real socket that is an uncaught ERR_STREAM_WRITE_AFTER_END
    if (res.writableLength > (o.maxBufferedBytes ?? MAX_BUFFERED_BYTES)) {
      close(true);
      return true;
    }
    return res.write(text);
  };
  const heartbeat = setInterval(() => void write(': keep-alive\n\n'), o.heartbeatMs ?? HEARTBEAT_MS);
  /** Ends the response; `drop`: a client that does not read gets its connection closed, unflushed. */
  const close = (drop: boolean, last?: string): void => {
    if (ended) return;
    ended = true;
    open--;
    const left = (byAddress.get(address) ?? 1) - 1;
    if (left > 0) byAddress.set(address, left);
    else byAddress.delete(address);
    clearInterval(heartbeat);
    o.onEnd?.();
    if (drop) res.destroy();
    else res.end(last);
  };
  const stream: EventStream = {
    send(event, data) {
      return write(`event: ${event}\ndata: ${data}\n\n`);
    },
    drained() {
      if (ended || res.writableLength === 0) return Promise.resolve();
      return new Promise<void>((resolve) => {
        const done = (): void => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    },
    end(last) {
      close(false, last);
    },
    get ended() {
      return ended;
    },
  };
  req.raw.on('close', () => stream.end());
  return stream;
}
