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

export interface EventStream {
  send(event: string, data: string): void;
  /** Ends the response, writing `last` first (e.g. a final event); safe to call again, and after the client left. */
  end(last?: string): void;
  readonly ended: boolean;
}

export function openEventStream(req: FastifyRequest, reply: FastifyReply, o: { headers?: Record<string, string>; onEnd?: () => void; heartbeatMs?: number } = {}): EventStream {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no', 'x-content-type-options': 'nosniff', ...o.headers });
  let ended = false;
  const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), o.heartbeatMs ?? HEARTBEAT_MS);
  const stream: EventStream = {
    // Never write after end: on a real socket that is an uncaught ERR_STREAM_WRITE_AFTER_END.
    send(event, data) {
      if (!ended) res.write(`event: ${event}\ndata: ${data}\n\n`);
    },
    end(last) {
      if (ended) return;
      ended = true;
      clearInterval(heartbeat);
      o.onEnd?.();
      res.end(last);
    },
    get ended() {
      return ended;
    },
  };
  req.raw.on('close', () => stream.end());
  return stream;
}
