/**
 * The status page's server side, without Docker: the feed (debounce, no repeats, bounded
 * subscribers, close), the snapshot (check builds as independent items, the gate's queues joined
 * with their builds), the page's files and headers through `app.inject()`, and the live stream over
 * a real socket on 127.0.0.1 with the FakeExecutor behind the scheduler (and the SSE helper's
 * heartbeats). The real service's wiring
 * and the page itself are tested in a real browser (e2e/status-page.browser.docker.test.ts).
 */
import { testDatabase } from '../../support/store-engines.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { get, type IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { RateLimitedError } from '#shared/errors.js';
import { createLogger } from '#shared/logging.js';
import type { GateView } from '../../../untrusted-ci/api/schemas/gate.js';
import { StatusView } from '../../../untrusted-ci/api/schemas/status.js';
import { FsArtifactStore } from '../../../untrusted-ci/storage/fs-artifact-store.js';
import { buildApi } from '../../../untrusted-ci/api/app.js';
import { openEventStream } from '../../../untrusted-ci/api/event-stream.js';
import { createCiMetrics } from '../../../untrusted-ci/api/metrics.js';
import { PAGE_CSP } from '../../../untrusted-ci/api/routes/status.js';
import { buildCiConfig } from '../../../untrusted-ci/config.js';
import { BuildEvents } from '../../../untrusted-ci/logs/build-events.js';
import { Scheduler } from '../../../untrusted-ci/scheduler/scheduler.js';
import { statusView } from '../../../untrusted-ci/status/snapshot.js';
import { StatusFeed, type StatusSubscriber } from '../../../untrusted-ci/status/status-feed.js';
import { BuildStore } from '../../../untrusted-ci/store/build-store.js';
import { FakeExecutor } from '../../support/fake-executor.js';

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

const EMPTY: StatusView = { version: 1, generatedAt: 0, slots: 1, busy: 0, pipelines: [], history: [] };

function recorder(): StatusSubscriber & { got: StatusView[]; ended: number } {
  const r = { got: [] as StatusView[], ended: 0, send: (json: string) => void r.got.push(StatusView.parse(JSON.parse(json))), end: () => void r.ended++ };
  return r;
}

describe('StatusFeed', () => {
  it('debounces a burst into one snapshot, sends nothing when only the clock moved, and never waits past maxWaitMs', async () => {
    vi.useFakeTimers();
    let view: StatusView = { ...EMPTY };
    const snapshot = vi.fn(() => ({ ...view, generatedAt: Date.now() }));
    const feed = new StatusFeed({ snapshot, debounceMs: 100, maxWaitMs: 250 });
    feed.notify(); // nobody is watching: no work at all
    await vi.advanceTimersByTimeAsync(1_000);
    expect(snapshot).not.toHaveBeenCalled();

    const a = recorder();
    const { first } = await feed.subscribe(a);
    expect(StatusView.parse(JSON.parse(first)).busy).toBe(0);
    view = { ...view, busy: 1 };
    for (let i = 0; i < 5; i++) feed.notify();
    await vi.advanceTimersByTimeAsync(99);
    expect(a.got).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(a.got.map((v) => v.busy)).toEqual([1]);
    feed.notify(); // same content, a later clock: not sent
    await vi.advanceTimersByTimeAsync(100);
    expect(a.got).toHaveLength(1);

    // A change every 50 ms keeps postponing the debounce, but a snapshot still goes out by maxWaitMs.
    for (let i = 0; i < 10; i++) {
      view = { ...view, slots: 2 + i };
      feed.notify();
      await vi.advanceTimersByTimeAsync(50);
    }
    expect(a.got.length).toBeGreaterThanOrEqual(2);
    await vi.advanceTimersByTimeAsync(100);
    expect(a.got.at(-1)!.slots).toBe(11);
  });

  it('refuses a subscriber past the bound, forgets one that unsubscribed, and ends all on close', async () => {
    const feed = new StatusFeed({ snapshot: () => EMPTY, maxSubscribers: 2 });
    const a = recorder();
    const b = recorder();
    await feed.subscribe(a);
    const sb = await feed.subscribe(b);
    await expect(feed.subscribe(recorder())).rejects.toThrow(RateLimitedError);
    sb.unsubscribe();
    expect(feed.size).toBe(1);
    await feed.subscribe(recorder());
    feed.close();
    expect(a.ended).toBe(1);
    expect(b.ended).toBe(0);
    expect(feed.size).toBe(0);
    await expect(feed.subscribe(recorder())).rejects.toThrow(RateLimitedError);
  });
});

describe('statusView', () => {
  it('shows unfinished check builds as independent items and the gate’s queues with their builds’ jobs', async () => {
    let clock = 1_000;
    const store = new BuildStore((await testDatabase()), () => clock);
    const change = (change: string, subject?: string) => ({ project: 'p', branch: 'main', change, patchset: 1, ref: `refs/changes/${change}/1`, author: 'eve', source: 'api', ...(subject ? { subject } : {}) });
    // A check build running its first job; one job of this project passed before in 4 s.
    const before = (await store.enqueue(change('0'), 'check')).buildId;
    await store.start(before);
    await store.planJobs(before, [{ name: 'unit', voting: true }]);
    await store.updateJob(before, 'unit', { state: 'running' });
    clock = 5_000;
    await store.updateJob(before, 'unit', { state: 'passed' });
    await store.finish(before, 'passed', '1 voting job passed');
    const check = (await store.enqueue(change('1', '<b>hi</b>'), 'check')).buildId;
    await store.start(check);
    await store.planJobs(check, [{ name: 'unit', voting: true, timeoutMs: 60_000 }, { name: 'lint', voting: false }]);
    clock = 6_000;
    await store.updateJob(check, 'unit', { state: 'running' });
    // Gate: A's build set has run (its build is known), B has no build yet.
    const a = await store.recordChange(change('A', 'add A'));
    await store.recordChange(change('B'));
    const gateBuild = await store.enqueueGateBuild(a.id, [{ ref: a.ref, label: 'A,1' }], 7);
    await store.start(gateBuild);
    await store.planJobs(gateBuild, [{ name: 'unit', voting: true }]);
    await store.updateJob(gateBuild, 'unit', { state: 'failed' });
    const gate: GateView = {
      queues: [
        {
          name: 'p',
          window: 20,
          items: [
            { project: 'p', change: 'A', patchset: 1, ahead: null, active: true, live: true, state: ['A,1'], failing: ['unit failed'], jobs: [{ name: 'unit', voting: true, result: 'FAILURE' }], build: gateBuild, enqueuedAt: 10 },
            { project: 'p', change: 'B', patchset: 1, ahead: 'A', active: false, live: true, state: [], failing: [], jobs: [{ name: 'unit', voting: true, result: null }], enqueuedAt: 11 },
          ],
        },
      ],
    };
    const view = StatusView.parse(await statusView({ store, scheduler: { slots: 2, busy: 1 }, gate: { view: () => gate }, now: () => 9_000 }));
    expect(view).toMatchObject({ generatedAt: 9_000, slots: 2, busy: 1 });
    const [checkP, gateP] = view.pipelines;
    expect(checkP!.queues).toEqual([
      {
        name: 'p',
        items: [
          {
            project: 'p', branch: 'main', change: '1', patchset: 1, author: 'eve', subject: '<b>hi</b>', testedOn: [], active: true, live: true, failing: [], enqueuedAt: 5_000,
            build: { id: check, state: 'running', attempt: 1, issues: [], startedAt: 5_000 },
            jobs: [
              { name: 'unit', voting: true, state: 'running', startedAt: 6_000, expectedMs: 4_000, timeoutMs: 60_000 },
              { name: 'lint', voting: false, state: 'waiting' },
            ],
          },
        ],
      },
    ]);
    expect(gateP!.queues[0]!.window).toBe(20);
    const [itemA, itemB] = gateP!.queues[0]!.items;
    expect(itemA).toMatchObject({ change: 'A', subject: 'add A', testedOn: [], failing: ['unit failed'], build: { id: gateBuild, state: 'running' } });
    expect(itemA!.jobs).toEqual([{ name: 'unit', voting: true, state: 'failed', result: 'FAILURE', finishedAt: 6_000, expectedMs: 4_000 }]);
    // Not prepared yet: tested on the items ahead, as the queue orders them; its jobs are waiting.
    expect(itemB).toMatchObject({ change: 'B', testedOn: ['A,1'], active: false, jobs: [{ name: 'unit', state: 'waiting' }] });
    expect(itemB).not.toHaveProperty('build');
    expect(view.history.map((b) => b.id)).toEqual([before]);
  });
});

describe('status routes', () => {
  async function makeApi(o: { maxSubscribers?: number } = {}): Promise<{ app: FastifyInstance; executor: FakeExecutor; scheduler: Scheduler; feed: StatusFeed }> {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-status-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const config = buildCiConfig({ version: 1, dataDir: dir, slots: 1, projects: [{ name: 'app', url: '/srv/git/app.git' }] }, 'test-config').config;
    const logger = createLogger({ level: 'silent' });
    const db = (await testDatabase());
    const store = new BuildStore(db);
    const events = new BuildEvents(join(dir, 'builds'));
    const executor = new FakeExecutor({ events, store });
    let feed: StatusFeed | undefined;
    const scheduler = new Scheduler({ store, executor, reporters: [], slots: 1, logger, onChange: () => feed?.notify() });
    feed = new StatusFeed({ snapshot: () => statusView({ store, scheduler }), maxSubscribers: o.maxSubscribers ?? 10, debounceMs: 10, maxWaitMs: 50 });
    const metrics = createCiMetrics({ queued: () => ({ check: 0, gate: 0 }), busy: () => 0, slots: 1 });
    const app = await buildApi({ config, store, scheduler, events, artifacts: new FsArtifactStore(join(dir, 'artifacts')), metrics, logger, status: feed });
    await scheduler.start();
    cleanups.push(() => db.close());
    cleanups.push(() => scheduler.close());
    cleanups.push(() => executor.release('*'));
    cleanups.push(() => app.close());
    return { app, executor, scheduler, feed };
  }

  it('serves the page and its files with their types, a strict policy and no sniffing; nothing else', async () => {
    const { app } = await makeApi();
    for (const url of ['/', '/status']) {
      const r = await app.inject({ method: 'GET', url });
      expect(r.statusCode).toBe(200);
      expect(r.headers).toMatchObject({ 'content-type': 'text/html; charset=utf-8', 'content-security-policy': PAGE_CSP, 'x-content-type-options': 'nosniff', 'cache-control': 'no-cache' });
      expect(r.body).toContain('<script type="module" src="/status/status.js"></script>');
      // No inline script or style anywhere: the policy would refuse it.
      expect(r.body).not.toMatch(/<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=/i);
    }
    expect(PAGE_CSP).toContain("default-src 'self'");
    expect(PAGE_CSP).not.toContain('unsafe');
    const types: Record<string, string> = {
      '/status/status.css': 'text/css; charset=utf-8',
      '/status/status.js': 'text/javascript; charset=utf-8',
      '/status/render.js': 'text/javascript; charset=utf-8',
      '/status/log-view.js': 'text/javascript; charset=utf-8',
      '/status/favicon.svg': 'image/svg+xml',
    };
    for (const [url, type] of Object.entries(types)) {
      const r = await app.inject({ method: 'GET', url });
      expect([url, r.statusCode, r.headers['content-type'], r.headers['x-content-type-options']]).toEqual([url, 200, type, 'nosniff']);
    }
    // The page's JS never parses data as markup.
    for (const file of ['status.js', 'render.js', 'log-view.js']) {
      expect((await app.inject({ method: 'GET', url: `/status/${file}` })).body).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function/);
    }
    for (const url of ['/status/snapshot.ts', '/status/../service.ts', '/status/page/index.html', '/status/']) {
      expect((await app.inject({ method: 'GET', url })).statusCode, url).toBe(404);
    }
    // Every other answer allows nothing to run, whatever it contains.
    const api = await app.inject({ method: 'GET', url: '/api/queue' });
    expect(api.headers).toMatchObject({ 'content-security-policy': "default-src 'none'; frame-ancestors 'none'", 'x-content-type-options': 'nosniff' });
  });

  it('answers a snapshot, and streams one at once and another after each change, until the client leaves', async () => {
    const { app, executor, scheduler, feed } = await makeApi({ maxSubscribers: 1 });
    const snap = StatusView.parse((await app.inject({ method: 'GET', url: '/api/status' })).json());
    expect(snap.pipelines.map((p) => [p.name, p.queues])).toEqual([['check', []], ['gate', []]]);

    const base = await app.listen({ host: '127.0.0.1', port: 0 });
    const stream = await open(`${base}/api/status/stream`);
    expect(stream.res.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    const first = await stream.next();
    expect(first.pipelines[0]!.queues).toEqual([]);
    // One subscriber is the bound here: the next is refused in the usual error shape.
    const refused = await open(`${base}/api/status/stream`);
    expect(refused.res.statusCode).toBe(429);
    expect(JSON.parse(await refused.body())).toMatchObject({ code: 'AIRLOCK_E_RATE_LIMITED', statusCode: 429 });

    executor.hold('*');
    await app.inject({ method: 'POST', url: '/api/changes', payload: { project: 'app', ref: 'refs/changes/01/1/1', change: '1', subject: 'x\n\nevent: status\ndata: {}' } });
    let seen = await stream.next();
    while (seen.pipelines[0]!.queues.length === 0) seen = await stream.next();
    expect(seen.pipelines[0]!.queues[0]!.items.map((i) => [i.change, i.subject])).toEqual([['1', 'x\n\nevent: status\ndata: {}']]);
    executor.release('*');
    await scheduler.idle();
    while (seen.history.length === 0) seen = await stream.next();
    expect(seen.history.map((b) => b.result)).toEqual(['passed']);

    stream.res.destroy();
    await vi.waitFor(() => expect(feed.size).toBe(0), { timeout: 10_000 });
    // A stream still open when the service stops is ended by it, not waited for.
    const last = await open(`${base}/api/status/stream`);
    await last.next();
    await app.close();
    await last.body();
    expect(feed.size).toBe(0);
  });

  it('keeps an idle stream alive with heartbeat comments and cleans up when the client leaves', async () => {
    const app = Fastify();
    let ended = 0;
    app.get('/s', async (req, reply) => void openEventStream(req, reply, { heartbeatMs: 20, onEnd: () => ended++ }).send('hello', '{}'));
    cleanups.push(() => app.close());
    const base = await app.listen({ host: '127.0.0.1', port: 0 });
    const text = await new Promise<string>((resolve, reject) => {
      get(`${base}/s`, (res) => {
        let got = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          got += c;
          if (got.split(': keep-alive\n\n').length > 2) {
            res.destroy();
            resolve(got);
          }
        });
      }).on('error', reject);
    });
    expect(text.startsWith('event: hello\ndata: {}\n\n: keep-alive\n\n: keep-alive\n\n')).toBe(true);
    await vi.waitFor(() => expect(ended).toBe(1), { timeout: 10_000 });
  });
});

/** A GET on a real socket, read as server-sent `status` events. */
function open(url: string): Promise<{ res: IncomingMessage; next: () => Promise<StatusView>; body: () => Promise<string> }> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      res.setEncoding('utf8');
      let text = '';
      const waiters: (() => void)[] = [];
      res.on('data', (chunk: string) => {
        text += chunk;
        for (const w of waiters.splice(0)) w();
      });
      const ended = new Promise<void>((r) => res.on('end', r));
      cleanups.push(() => res.destroy());
      const next = async (): Promise<StatusView> => {
        for (;;) {
          const i = text.indexOf('\n\n');
          if (i >= 0) {
            const frame = text.slice(0, i);
            text = text.slice(i + 2);
            if (frame.startsWith(':')) continue; // heartbeat
            expect(frame).toMatch(/^event: status\ndata: [^\n]*$/);
            return StatusView.parse(JSON.parse(frame.slice(frame.indexOf('data: ') + 6)));
          }
          await new Promise<void>((r) => waiters.push(r));
        }
      };
      resolve({ res, next, body: async () => (await ended, text) });
    }).on('error', reject);
  });
}
