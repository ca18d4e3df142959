/**
 * Server-sent event streams against a real socket: a client that never reads has its connection
 * dropped once MAX_BUFFERED_BYTES wait for it, instead of the service holding every event; a
 * reading client, paced with drained() as a replay is, gets everything; the open-stream count goes
 * back down either way.
 */
import { connect } from 'node:net';
import Fastify from 'fastify';
import { afterAll, describe, expect, it } from 'vitest';
import { MAX_STREAMS_PER_ADDRESS, openEventStream, streamCapacityLeft, type EventStream } from '../../../untrusted-ci/api/event-stream.js';

describe('openEventStream', () => {
  const app = Fastify();
  const streams: EventStream[] = [];
  app.get('/events', async (req, reply) => {
    streams.push(openEventStream(req, reply, { maxBufferedBytes: 256 * 1024 }));
  });
  afterAll(() => app.close());

  it('drops a client that does not read once its buffer passes the cap; a reading client gets all', async () => {
    const url = new URL(await app.listen({ host: '127.0.0.1', port: 0 }));
    const payload = 'x'.repeat(16 * 1024);

    // A client that sends its request and then never reads.
    const lazy = connect(Number(url.port), '127.0.0.1');
    lazy.write(`GET /events HTTP/1.1\r\nHost: x\r\n\r\n`);
    lazy.pause();
    await expect.poll(() => streams.length, { timeout: 10_000 }).toBe(1);
    const s = streams[0]!;
    for (let i = 0; i < 2000 && !s.ended; i++) {
      s.send('log', payload);
      await new Promise((r) => setImmediate(r));
    }
    expect(s.ended).toBe(true); // dropped well before 2000 × 16 KiB (32 MiB) were buffered
    lazy.destroy();

    // A client that reads gets every event, and the end.
    const got: string[] = [];
    const reading = fetch(`${url.origin}/events`).then(async (r) => {
      for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) got.push(Buffer.from(chunk).toString());
    });
    await expect.poll(() => streams.length, { timeout: 10_000 }).toBe(2);
    // Paced as a replay is: past the socket's buffer, wait for the client to read.
    for (let i = 0; i < 100; i++) if (!streams[1]!.send('log', payload)) await streams[1]!.drained();
    streams[1]!.end('event: end\ndata: {}\n\n');
    await reading;
    expect(got.join('').split('event: log').length - 1).toBe(100);
    expect(streamCapacityLeft('127.0.0.1')).toBe(true);
  });

  it('lets one address hold at most MAX_STREAMS_PER_ADDRESS streams; another address still gets one', async () => {
    const url = new URL(await app.listen({ host: '127.0.0.1', port: 0 }).catch(() => `http://127.0.0.1:${(app.server.address() as { port: number }).port}`));
    const before = streams.length;
    const readers: AbortController[] = [];
    for (let i = 0; i < MAX_STREAMS_PER_ADDRESS; i++) {
      const c = new AbortController();
      readers.push(c);
      void fetch(`${url.origin}/events`, { signal: c.signal }).then((r) => r.body?.cancel()).catch(() => undefined);
    }
    await expect.poll(() => streams.length - before, { timeout: 10_000 }).toBe(MAX_STREAMS_PER_ADDRESS);
    expect(streamCapacityLeft('127.0.0.1')).toBe(false);
    expect(streamCapacityLeft('192.0.2.7')).toBe(true);
    for (const s of streams.slice(before)) s.end();
    for (const c of readers) c.abort();
    expect(streamCapacityLeft('127.0.0.1')).toBe(true);
  });
});
