/**
 * The follower's forwarder (untrusted-ci/api/forward.ts) against hostile requests, on real sockets: whatever the
 * request line says, a forwarded request goes to the leader's address and nowhere else.
 */
import Fastify, { type FastifyInstance } from 'fastify';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { registerForwarding } from '../../../untrusted-ci/api/forward.js';
import { createLogger } from '#shared/logging.js';
import { readFileSync } from 'node:fs';

/** A server that records what reaches it. */
async function recorder(name: string, hits: string[]): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    hits.push(`${name} ${req.method} ${req.url}`);
    res.end(name);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

/** One raw HTTP/1.1 request (its request line as given), the answer's status line. */
function raw(port: number, requestLine: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => s.write(`${requestLine}\r\nHost: follower\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`));
    let buf = '';
    s.on('data', (d: Buffer) => (buf += d.toString('latin1')));
    s.on('end', () => resolve(buf.split('\r\n')[0] ?? ''));
    s.on('error', reject);
  });
}

describe('the forwarder', () => {
  const hits: string[] = [];
  let leader: { server: Server; port: number };
  let other: { server: Server; port: number };
  let app: FastifyInstance;
  let port: number;
  beforeEach(async () => {
    hits.length = 0;
    leader = await recorder('leader', hits);
    other = await recorder('other', hits);
    app = Fastify();
    registerForwarding(app, { isLeader: () => false, leader: async () => `http://127.0.0.1:${leader.port}`, logger: createLogger({ level: 'silent' }) });
    port = Number(new URL(await app.listen({ host: '127.0.0.1', port: 0 })).port);
  });
  afterEach(async () => {
    await app.close();
    leader.server.close();
    other.server.close();
  });

  it('forwards a request to the leader, path and query as sent', async () => {
    expect(await raw(port, 'POST /api/changes?x=1 HTTP/1.1')).toBe('HTTP/1.1 200 OK');
    expect(hits).toEqual(['leader POST /api/changes?x=1']);
  });

  it('never sends a request elsewhere: not for a scheme-relative path, not for an absolute-form request line', async () => {
    for (const line of [`POST //127.0.0.1:${other.port}/api/x HTTP/1.1`, `POST http://127.0.0.1:${other.port}/api/x HTTP/1.1`, `DELETE //127.0.0.1:${other.port}/ HTTP/1.1`]) {
      await raw(port, line);
    }
    expect(hits.filter((h) => h.startsWith('other'))).toEqual([]);
  });

  it('answers 503 with Retry-After and a catalogued, retryable code when no replica leads', async () => {
    const lone = Fastify();
    registerForwarding(lone, { isLeader: () => false, leader: async () => undefined, logger: createLogger({ level: 'silent' }) });
    const res = await lone.inject({ method: 'POST', url: '/api/changes', payload: {} });
    await lone.close();
    expect(res.statusCode).toBe(503);
    expect(res.headers['retry-after']).toBeDefined();
    const { code } = res.json<{ code: string }>();
    // The catalogue's table (test/shared/errors.test.ts holds it to shared/errors.ts).
    const row = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8')
      .split('\n')
      .find((l) => l.startsWith(`| \`${code}\` |`));
    expect(row).toMatch(/^\| `[A-Z_]+` \| 503 \| yes \|/);
  });

  it("checks its own submit and cancel tokens before forwarding (the leader's config may have none: loopback)", async () => {
    const guarded = Fastify();
    const seen: string[] = [];
    registerForwarding(guarded, {
      isLeader: () => false,
      leader: async () => `http://127.0.0.1:${leader.port}`,
      logger: createLogger({ level: 'silent' }),
      requireToken: (authorization, action) => {
        seen.push(action ?? 'submit');
        if (authorization !== `Bearer ${action}-token`) throw Object.assign(new Error('no'), { statusCode: 401 });
      },
    });
    const post = (url: string, authorization?: string) => guarded.inject({ method: 'POST', url, payload: {}, headers: authorization ? { authorization } : {} });
    expect((await post('/api/changes')).statusCode).toBe(401);
    expect((await post('/api/builds/7/cancel')).statusCode).toBe(401);
    expect((await post('/api/builds/7/cancel', 'Bearer submit-token')).statusCode).toBe(401);
    // Spellings the leader's router reads as the same routes.
    expect((await post('//api/changes')).statusCode).toBe(401);
    expect((await post('/api/%63hanges')).statusCode).toBe(401);
    expect((await post('/api/builds/7/%63ancel?x=1')).statusCode).toBe(401);
    expect(hits).toEqual([]);
    expect((await post('/api/changes', 'Bearer submit-token')).statusCode).toBe(200);
    expect((await post('/api/builds/7/cancel/', 'Bearer cancel-token')).statusCode).toBe(200);
    expect(hits).toEqual(['leader POST /api/changes', 'leader POST /api/builds/7/cancel/']);
    expect(seen).toEqual(['submit', 'cancel', 'cancel', 'submit', 'submit', 'cancel', 'submit', 'cancel']);
    await guarded.close();
  });

  it("checks an executor host's token before forwarding an /api/executor/ request, however spelled", async () => {
    const guarded = Fastify();
    registerForwarding(guarded, {
      isLeader: () => false,
      leader: async () => `http://127.0.0.1:${leader.port}`,
      logger: createLogger({ level: 'silent' }),
      requireExecutorToken: (authorization) => {
        if (authorization !== 'Bearer host-token') throw Object.assign(new Error('no'), { statusCode: 401 });
      },
    });
    const send = (method: 'GET' | 'POST' | 'PUT', url: string, authorization?: string) =>
      guarded.inject({ method, url, ...(method === 'GET' ? {} : { payload: 'x'.repeat(1024), headers: { 'content-type': 'application/x-tar', ...(authorization ? { authorization } : {}) } }), ...(method === 'GET' && authorization ? { headers: { authorization } } : {}) });
    expect((await send('POST', '/api/executor/claim')).statusCode).toBe(401);
    expect((await send('PUT', `/api/executor/runs/${'a'.repeat(32)}/artifacts`, 'Bearer wrong')).statusCode).toBe(401);
    expect((await send('GET', `/api/executor/runs/${'a'.repeat(32)}/image`)).statusCode).toBe(401);
    expect((await send('POST', '/api/%65xecutor/register')).statusCode).toBe(401);
    expect((await send('POST', '/api/x/../executor/register')).statusCode).toBe(401);
    expect(hits).toEqual([]);
    expect((await send('POST', '/api/executor/register', 'Bearer host-token')).statusCode).toBe(200);
    expect((await send('POST', '/api/changes')).statusCode).toBe(200); // not an executor path: the leader decides
    expect(hits).toEqual(['leader POST /api/executor/register', 'leader POST /api/changes']);
    await guarded.close();
  });

  it('checks the tokens of a path spelled with dot segments or backslashes too (the forwarded URL resolves them)', async () => {
    const guarded = Fastify();
    registerForwarding(guarded, {
      isLeader: () => false,
      leader: async () => `http://127.0.0.1:${leader.port}`,
      logger: createLogger({ level: 'silent' }),
      requireToken: () => {
        throw Object.assign(new Error('no'), { statusCode: 401 });
      },
    });
    const gport = Number(new URL(await guarded.listen({ host: '127.0.0.1', port: 0 })).port);
    for (const line of ['POST /api/./changes HTTP/1.1', 'POST /api/x/../changes HTTP/1.1', 'POST /api/builds/7/./cancel HTTP/1.1', 'POST /api/%2e/changes HTTP/1.1', 'POST /api\\changes HTTP/1.1']) {
      await raw(gport, line);
    }
    await guarded.close();
    expect(hits).toEqual([]);
  });
});
