/**
 * A follower replica's forwarding (untrusted-ci/api/forward.ts), over real sockets on 127.0.0.1: a
 * follower app forwards to a leader app that records what it was sent (the body's bytes, the
 * headers, the host), and to a real API (`buildApi`) that checks a webhook's signature. Also
 * `isLocal` over every route the API has, so that a new route is classified before it ships.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { buildApi } from '../../../untrusted-ci/api/app.js';
import { isLocal, registerForwarding, type Forwarding } from '../../../untrusted-ci/api/forward.js';
import { createCiMetrics } from '../../../untrusted-ci/api/metrics.js';
import { buildCiConfig } from '../../../untrusted-ci/config.js';
import { BuildEvents } from '../../../untrusted-ci/logs/build-events.js';
import { Scheduler } from '../../../untrusted-ci/scheduler/scheduler.js';
import { signWebhookBody, WEBHOOK_SIGNATURE_HEADER } from '../../../untrusted-ci/sources/gerrit/verify.js';
import { FsArtifactStore } from '../../../untrusted-ci/storage/fs-artifact-store.js';
import { BuildStore } from '../../../untrusted-ci/store/build-store.js';
import { openDatabase } from '../../../untrusted-ci/store/database.js';
import { FakeExecutor } from '../../support/fake-executor.js';

const logger = createLogger({ level: 'silent' });
const SECRET = 'a-webhook-secret-of-32-characters!';
const FIXTURES = new URL('../../fixtures/gerrit/', import.meta.url);

const cleanups: (() => unknown)[] = [];
/** Streams a leader holds open: ended first, as closing the apps would wait for them. */
const openStreams: (() => void)[] = [];
afterEach(async () => {
  for (const end of openStreams.splice(0)) end();
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function listen(app: FastifyInstance): Promise<string> {
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  cleanups.push(() => app.close());
  return url;
}

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** A leader that records every request it gets and answers with a status and headers of its own; its SSE route sends one event, then waits for `endStream`. */
async function recordingLeader(): Promise<{ url: string; seen: Seen[]; endStream: () => void; close: () => Promise<void> }> {
  const seen: Seen[] = [];
  let endStream = (): void => {};
  const app = Fastify();
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  app.addHook('onRequest', async (req) => {
    seen.push({ method: req.method, url: req.url, headers: req.headers, body: Buffer.alloc(0) });
  });
  app.post('/*', async (req, reply) => {
    seen.at(-1)!.body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    return reply.status(207).header('x-from-leader', 'yes').send({ leader: true, got: seen.at(-1)!.body.length });
  });
  app.get('/api/builds/:id/events', (_req, reply) => {
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    reply.raw.write('event: build\ndata: {"n":1}\n\n');
    endStream = () => {
      if (!reply.raw.writableEnded) reply.raw.end('event: end\ndata: {}\n\n');
    };
  });
  const url = await listen(app);
  openStreams.push(() => endStream());
  return { url, seen, endStream: () => endStream(), close: () => app.close() };
}

async function follower(leader: () => Promise<string | undefined>, o: { leading?: () => boolean; recheckMs?: number } = {}): Promise<string> {
  const app = Fastify();
  const f: Forwarding = { isLeader: o.leading ?? (() => false), leader, logger, ...(o.recheckMs !== undefined ? { recheckMs: o.recheckMs } : {}) };
  registerForwarding(app, f);
  app.get('/api/builds', async () => ({ local: true }));
  app.post('/api/changes', async () => ({ local: true }));
  return listen(app);
}

/** A raw HTTP/1.1 request with exactly this request line's target and these headers. */
function raw(base: string, o: { method: string; path: string; headers?: Record<string, string>; body?: Buffer }): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, method: o.method, path: o.path, headers: { ...o.headers, ...(o.body ? { 'content-length': String(o.body.length) } : {}) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

/**
 * A leader that takes requests and never answers them, as a stopped process or a machine cut off
 * does (the kernel still accepts the connection). `got` resolves at its first request.
 */
async function stalledLeader(): Promise<{ url: string; got: Promise<void> }> {
  let reached: () => void = () => undefined;
  const got = new Promise<void>((r) => (reached = r));
  const server: Server = createServer(() => reached());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, got };
}

/** A server on another port of 127.0.0.1 that must never be reached (a hostile request line would send the request there). */
async function decoy(): Promise<{ port: number; hits: string[] }> {
  const hits: string[] = [];
  const server: Server = createServer((req, res) => {
    hits.push(`${req.method} ${req.url}`);
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"decoy":true}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  return { port: (server.address() as AddressInfo).port, hits };
}

describe('forwarding to the leader', () => {
  it('passes a POST on with its exact body bytes and the headers that matter, and returns the leader status, headers and body', async () => {
    const leader = await recordingLeader();
    const f = await follower(async () => leader.url);
    // Bytes that a re-serialisation would change: key order, spacing, a non-UTF-8 byte, CRLF.
    const body = Buffer.concat([Buffer.from('{ "b":1,\r\n  "a" : "\u00e9" }'), Buffer.from([0xff, 0x00, 0x7f])]);
    const signature = signWebhookBody(body, Buffer.from(SECRET));
    const r = await raw(f, {
      method: 'POST',
      path: '/hooks/gerrit?x=1&y=%2F',
      body,
      headers: {
        'content-type': 'application/octet-stream',
        [WEBHOOK_SIGNATURE_HEADER]: signature,
        authorization: 'Basic dXNlcjpwYXNz',
        'x-request-id': 'req-1',
        'keep-alive': 'timeout=99',
        'x-something-else': 'not for the leader',
        'proxy-authorization': 'Basic c2VjcmV0',
        host: 'evil.example',
      },
    });
    expect(r.status, r.body.toString()).toBe(207);
    expect(r.headers['x-from-leader']).toBe('yes');
    expect(JSON.parse(r.body.toString())).toEqual({ leader: true, got: body.length });
    expect(leader.seen).toHaveLength(1);
    const got = leader.seen[0]!;
    expect(got.method).toBe('POST');
    expect(got.url).toBe('/hooks/gerrit?x=1&y=%2F');
    expect(got.body.equals(body)).toBe(true);
    expect(got.headers[WEBHOOK_SIGNATURE_HEADER]).toBe(signature);
    expect(got.headers.authorization).toBe('Basic dXNlcjpwYXNz');
    expect(got.headers['content-type']).toBe('application/octet-stream');
    expect(got.headers['x-request-id']).toBe('req-1');
    expect(got.headers['x-airlock-forwarded']).toBe('1');
    // The host is the leader's own, not the client's; hop-by-hop and unknown headers stay behind.
    expect(got.headers.host).toBe(new URL(leader.url).host);
    expect(got.headers['keep-alive']).toBeUndefined();
    expect(got.headers['x-something-else']).toBeUndefined();
    expect(got.headers['proxy-authorization']).toBeUndefined();
  });

  it('streams a server-sent-events answer: the first event arrives before the leader ends the stream', async () => {
    const leader = await recordingLeader();
    const f = await follower(async () => leader.url);
    const res = await fetch(`${f}/api/builds/7/events`, { headers: { accept: 'text/event-stream', 'last-event-id': '3' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    let ended = false;
    try {
      const reader = res.body!.getReader();
      const decoder = new TextDecoder();
      let text = '';
      while (!text.includes('\n\n')) {
        const { value, done } = await reader.read();
        expect(done, 'the stream ended before its first event').toBe(false);
        text += decoder.decode(value, { stream: true });
      }
      expect(text).toBe('event: build\ndata: {"n":1}\n\n');
      expect(leader.seen[0]!.headers['last-event-id']).toBe('3');
      leader.endStream();
      ended = true;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
      }
      expect(text).toBe('event: build\ndata: {"n":1}\n\nevent: end\ndata: {}\n\n');
    } finally {
      if (!ended) leader.endStream();
    }
  });

  it('answers 503 with Retry-After when no replica leads, and when the leader does not answer', async () => {
    const none = await follower(async () => undefined);
    const a = await raw(none, { method: 'POST', path: '/api/changes', body: Buffer.from('{}'), headers: { 'content-type': 'application/json' } });
    expect(a.status).toBe(503);
    expect(a.headers['retry-after']).toBe('2');
    expect(JSON.parse(a.body.toString())).toMatchObject({ code: 'AIRLOCK_E_UNAVAILABLE', statusCode: 503 });
    // A leader() that throws (the database unreachable) is no leader either.
    const failing = await follower(async () => Promise.reject(new Error('the database is down')));
    expect((await raw(failing, { method: 'GET', path: '/api/queue' })).status).toBe(503);
    // A leader address where nothing listens (it died): 503, not a 500 or a hang.
    const gone = await recordingLeader();
    const deadUrl = gone.url;
    await gone.close();
    const dead = await follower(async () => deadUrl);
    const c = await raw(dead, { method: 'POST', path: '/api/changes', body: Buffer.from('{}'), headers: { 'content-type': 'application/json' } });
    expect(c.status).toBe(503);
    expect(c.headers['retry-after']).toBe('2');
  });

  it('ends a forwarded request whose leader no longer leads (another took over, none holds the lease, this replica leads): 503, not a wait for an answer that never comes', { timeout: 30_000 }, async () => {
    for (const next of ['another', 'none', 'self'] as const) {
      const stalled = await stalledLeader();
      const other = await recordingLeader();
      let current: string | undefined = stalled.url;
      let leading = false;
      const f = await follower(async () => current, { leading: () => leading, recheckMs: 50 });
      // A long poll, as an executor host's claim is.
      const answer = raw(f, { method: 'POST', path: '/api/executor/claim', body: Buffer.from('{"waitMs":20000}'), headers: { 'content-type': 'application/json' } });
      await stalled.got;
      if (next === 'another') current = other.url;
      else if (next === 'none') current = undefined;
      else leading = true;
      const r = await answer;
      expect(r.status, next).toBe(503);
      expect(r.headers['retry-after']).toBe('2');
      expect(JSON.parse(r.body.toString()).message).toContain('no longer leads');
      expect(other.seen).toHaveLength(0); // not sent on to the new leader: the client asks again
    }
  });

  // Without the cut, the wait below would last until the test's timeout.
  it('cuts a streamed answer once its leader no longer leads, and leaves one alone while it does', { timeout: 30_000 }, async () => {
    const leader = await recordingLeader();
    let current: string | undefined = leader.url;
    let asked = 0;
    const f = await follower(
      async () => {
        asked += 1;
        return current;
      },
      { recheckMs: 50 },
    );
    const res = await fetch(`${f}/api/builds/7/events`, { headers: { accept: 'text/event-stream' } });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toContain('event: build');
    // Rechecked several times with the same leader: the stream stays open (the read waits on).
    let settled = false;
    const next = reader.read().then(
      (r) => ((settled = true), r),
      () => ((settled = true), 'cut' as const),
    );
    const seenAt = asked;
    while (asked < seenAt + 3 && !settled) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    expect(settled).toBe(false);
    // The lease passes to another replica: the stream ends instead of waiting on for its end event
    // (the leader never sends it: without the cut this read never ends).
    current = 'http://127.0.0.1:9';
    const first2 = await next;
    let ended = 'cut';
    if (first2 !== 'cut') {
      ended = '';
      try {
        for (let x = first2; !x.done; x = await reader.read()) ended += new TextDecoder().decode(x.value);
      } catch {
        ended += 'cut';
      }
    }
    expect(ended).not.toContain('event: end');
    expect(leader.seen).toHaveLength(1);
  });

  it('never forwards a request that was already forwarded once (503), so two replicas do not bounce it', async () => {
    const leader = await recordingLeader();
    const f = await follower(async () => leader.url);
    const r = await raw(f, { method: 'POST', path: '/api/changes', body: Buffer.from('{}'), headers: { 'content-type': 'application/json', 'x-airlock-forwarded': '1' } });
    expect(r.status).toBe(503);
    expect(r.headers['retry-after']).toBe('2');
    expect(leader.seen).toHaveLength(0);
  });

  it('answers what the database holds itself, and forwards nothing while it leads', async () => {
    const leader = await recordingLeader();
    let leading = false;
    const f = await follower(async () => leader.url, { leading: () => leading });
    expect(JSON.parse((await raw(f, { method: 'GET', path: '/api/builds' })).body.toString())).toEqual({ local: true });
    expect(leader.seen).toHaveLength(0);
    expect((await raw(f, { method: 'POST', path: '/api/changes', body: Buffer.from('{}'), headers: { 'content-type': 'application/json' } })).status).toBe(207);
    expect(leader.seen).toHaveLength(1);
    leading = true;
    const mine = await raw(f, { method: 'POST', path: '/api/changes', body: Buffer.from('{}'), headers: { 'content-type': 'application/json' } });
    expect(JSON.parse(mine.body.toString())).toEqual({ local: true });
    expect(leader.seen).toHaveLength(1);
  });

  it.each([
    ['a scheme-relative path', (port: number) => `//127.0.0.1:${port}/api/changes`],
    ['an absolute URL', (port: number) => `http://127.0.0.1:${port}/api/changes`],
    ['a scheme-relative path with backslashes', (port: number) => `/\\127.0.0.1:${port}/api/changes`],
  ])('forwards to the leader alone whatever the request line says (%s)', async (_what, target) => {
    const leader = await recordingLeader();
    const evil = await decoy();
    const f = await follower(async () => leader.url);
    const r = await raw(f, { method: 'POST', path: target(evil.port), body: Buffer.from('{"x":1}'), headers: { 'content-type': 'application/json' } });
    expect(evil.hits).toEqual([]);
    expect(r.body.toString()).not.toContain('decoy');
    // Either refused outright or sent to the leader, on the leader's host.
    if (r.status !== 400) {
      expect(leader.seen).toHaveLength(1);
      expect(leader.seen[0]!.headers.host).toBe(new URL(leader.url).host);
    }
  });
});

describe('forwarding to a real API', () => {
  async function realApi(forwarding?: Forwarding): Promise<{ app: FastifyInstance; url: string }> {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-fwd-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, 'hook.secret'), SECRET);
    const loaded = buildCiConfig(
      { version: 1, dataDir: join(dir, 'data'), slots: 1, projects: [{ name: 'TestRepo1', url: '/srv/git/TestRepo1.git' }], webhooks: { gerritSecretFile: 'hook.secret' } },
      'test-config',
      dir,
    );
    const db = openDatabase(':memory:');
    const store = new BuildStore(db);
    const events = new BuildEvents(join(dir, 'builds'));
    const executor = new FakeExecutor({ events, store });
    executor.hold('*');
    const scheduler = new Scheduler({ store, executor, reporters: [], slots: 1, logger });
    const metrics = createCiMetrics({ queued: async () => ({ check: 0, gate: 0 }), busy: () => 0, slots: 1 });
    const app = await buildApi({ config: loaded.config, store, scheduler, events, artifacts: new FsArtifactStore(join(dir, 'artifacts')), metrics, logger, gerritSecret: loaded.gerritSecret!, ...(forwarding ? { forwarding } : {}) });
    await scheduler.start();
    cleanups.push(() => db.close());
    cleanups.push(() => scheduler.close());
    cleanups.push(() => executor.release('*'));
    const url = await listen(app);
    return { app, url };
  }

  it('a webhook signed over its body, sent to a follower, is verified and accepted by the leader', async () => {
    const leader = await realApi();
    const f = await realApi({ isLeader: () => false, leader: async () => leader.url, logger });
    const body = readFileSync(new URL('patchset-created.json', FIXTURES));
    const r = await raw(f.url, { method: 'POST', path: '/hooks/gerrit', body, headers: { 'content-type': 'application/json', [WEBHOOK_SIGNATURE_HEADER]: signWebhookBody(body, Buffer.from(SECRET)) } });
    expect(r.status, r.body.toString()).toBe(202);
    expect(JSON.parse(r.body.toString())).toMatchObject({ accepted: true });
    // A body changed on the way would fail the leader's check.
    const bad = await raw(f.url, { method: 'POST', path: '/hooks/gerrit', body: Buffer.concat([body, Buffer.from(' ')]), headers: { 'content-type': 'application/json', [WEBHOOK_SIGNATURE_HEADER]: signWebhookBody(body, Buffer.from(SECRET)) } });
    expect(bad.status).toBe(401);
  });

  /**
   * Every route of the API, as `METHOD /path` (fastify's names for parameters), and whether a
   * follower answers it itself. A route added to untrusted-ci/api/ and missing here fails the test:
   * decide whether it reads only what the database holds (local) or needs the leader.
   */
  const ROUTES: Record<string, 'local' | 'leader'> = {
    'GET /': 'local',
    'GET /status': 'local',
    'GET /status/favicon.svg': 'local',
    'GET /status/log-view.js': 'local',
    'GET /status/render.js': 'local',
    'GET /status/status.css': 'local',
    'GET /status/status.js': 'local',
    'GET /healthz': 'local',
    'GET /metrics': 'local',
    'GET /openapi.json': 'local',
    'GET /api/builds': 'local',
    'GET /api/builds/:id': 'local',
    'GET /api/changes': 'local',
    'GET /api/changes/:id': 'local',
    'GET /api/gate/events': 'local',
    'POST /api/changes': 'leader',
    'POST /api/builds/:id/cancel': 'leader',
    'GET /api/queue': 'leader',
    'GET /api/builds/:id/events': 'leader',
    'GET /api/builds/:id/logs/:job': 'leader',
    'GET /api/gate': 'leader',
    'GET /api/status': 'leader',
    'GET /api/status/stream': 'leader',
    'POST /hooks/gerrit': 'leader',
    'POST /hooks/gerrit/:secret': 'leader',
    // Executor hosts (api/routes/executors.ts): the queue is the leader's memory.
    'GET /api/executors': 'leader',
    'POST /api/executor/register': 'leader',
    'POST /api/executor/claim': 'leader',
    'GET /api/executor/runs/:run/image': 'leader',
    'GET /api/executor/runs/:run/source': 'leader',
    'POST /api/executor/runs/:run/heartbeat': 'leader',
    'POST /api/executor/runs/:run/start': 'leader',
    'POST /api/executor/runs/:run/log': 'leader',
    'PUT /api/executor/runs/:run/artifacts': 'leader',
    'POST /api/executor/runs/:run/result': 'leader',
  };

  /** `METHOD /path` for each route of `app`, read from fastify's route tree (HEAD, which fastify adds to each GET, left out). */
  function routesOf(app: FastifyInstance): string[] {
    const out: string[] = [];
    const stack: string[] = [];
    for (const line of app.printRoutes({ commonPrefix: false }).split('\n')) {
      const m = /^((?:[│ ] {3})*)(?:[├└]── )(.*?)(?: \(([A-Z, ]+)\))?$/.exec(line);
      if (!m) continue;
      const depth = m[1]!.length / 4;
      stack.length = depth;
      stack.push(m[2]!);
      if (m[3]) for (const method of m[3].split(', ')) if (method !== 'HEAD') out.push(`${method} ${stack.join('')}`);
    }
    return out.sort();
  }

  it('classifies every route of the API: a follower answers only what the database holds', async () => {
    const api = await realApi();
    const routes = routesOf(api.app);
    expect(routes).toContain('POST /hooks/gerrit/:secret');
    expect(routes).toEqual(Object.keys(ROUTES).sort());
    for (const [route, where] of Object.entries(ROUTES)) {
      const [method, path] = route.split(' ') as [string, string];
      const concrete = path.replace(/:[a-z]+/g, '17');
      expect(isLocal(method, concrete), route).toBe(where === 'local');
      if (method === 'GET') expect(isLocal('HEAD', concrete), `HEAD ${path}`).toBe(where === 'local');
    }
    // Whatever a follower forwards, it forwards whatever the query string.
    expect(isLocal('GET', '/api/queue')).toBe(false);
    expect(isLocal('DELETE', '/api/builds')).toBe(false);
  });
});
