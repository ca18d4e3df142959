/**
 * HintSender against a real HTTP server on 127.0.0.1 that authenticates every request with
 * verifyHint and parses it as a PromotionHint, as the builder will. Merges are written with
 * GateStore.save into a real (in-memory or file) SQLite database migrated by openDatabase.
 * Backoff waits are recorded and shortened to a few ms by the injected `sleep`, so the schedule is
 * asserted without waiting for it.
 */
import { testDatabase } from '../support/store-engines.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { verifyHint } from '#shared/hints/hint-auth.js';
import { PromotionHint } from '#shared/schemas/promotion-hint.js';
import { HintSender, type HintSenderOptions } from '../../untrusted-ci/hints/hint-sender.js';
import { openDatabase, type Db } from '../../untrusted-ci/store/database.js';
import { GateStore, type NewGateEvent } from '../../untrusted-ci/store/gate-store.js';
import { StatusView } from '../../untrusted-ci/api/schemas/status.js';
import { statusView } from '../../untrusted-ci/status/snapshot.js';
import { BuildStore } from '../../untrusted-ci/store/build-store.js';

const secret = Buffer.from('hint-secret-used-only-by-this-test-0123456789');
const sha = (c: string) => c.repeat(40);

type Answer = number | { status: number; body?: string; headers?: Record<string, string> } | 'hang';

/** The builder's side of /v1/hints: authenticate, parse, then answer from a script (default 200). */
class FakeBuilder {
  readonly hints: PromotionHint[] = [];
  readonly unauthenticated: string[] = [];
  readonly script: Answer[] = [];
  private server?: Server;
  private readonly open = new Set<ServerResponse>();

  async listen(port = 0): Promise<number> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, '127.0.0.1', () => resolve());
    });
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const res of this.open) res.destroy();
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);
    const v = verifyHint(secret, raw, req.headers, Math.floor(Date.now() / 1000));
    if (req.method !== 'POST' || req.url !== '/v1/hints' || !v.ok) {
      this.unauthenticated.push(v.ok ? `${req.method} ${req.url}` : v.reason);
      res.writeHead(401).end();
      return;
    }
    this.hints.push(PromotionHint.parse(JSON.parse(raw.toString())));
    const answer = this.script.shift() ?? 200;
    if (answer === 'hang') {
      this.open.add(res);
      return;
    }
    const a = typeof answer === 'number' ? { status: answer } : answer;
    res.writeHead(a.status, { 'content-type': 'application/json', ...a.headers }).end(a.body ?? '{}');
  }
}

let db: Db;
let gate: GateStore;
let builder: FakeBuilder;
let delays: number[];
let logLines: string[];
const senders: HintSender[] = [];

beforeEach(async () => {
  db = await testDatabase();
  gate = new GateStore(db);
  builder = new FakeBuilder();
  delays = [];
  logLines = [];
});
afterEach(async () => {
  await Promise.all(senders.splice(0).map((s) => s.close()));
  await builder.close();
  await db.close(); // a second close of a closed database does nothing
  expect(builder.unauthenticated).toEqual([]);
  expect(logLines.join('\n')).not.toContain(secret.toString());
});

function sender(port: number, over: Partial<HintSenderOptions> = {}): HintSender {
  const logger = pino({ level: 'debug' }, { write: (line: string) => void logLines.push(line) });
  const s = new HintSender({
    gateStore: gate,
    db,
    url: `http://127.0.0.1:${port}/`,
    secret,
    logger,
    random: () => 0.5,
    pollIntervalMs: 60_000,
    sleep: (ms, signal) => {
      delays.push(ms);
      return delay(2, undefined, { signal });
    },
    ...over,
  });
  senders.push(s);
  return s;
}

function merged(change: string, commit: string | undefined, build?: number, project = 'tools/airlock'): NewGateEvent {
  return { kind: 'merged', project, branch: 'main', change, patchset: 1, ...(commit ? { commit } : {}), ...(build !== undefined ? { build } : {}) };
}

async function write(...events: NewGateEvent[]): Promise<number[]> {
  await gate.save('gate', {}, events);
  return (await gate.events({ after: 0, limit: 1000 })).slice(-events.length).map((e) => e.id);
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const until = (f: () => unknown) => vi.waitFor(f, { timeout: 10_000, interval: 5 });

describe('HintSender', () => {
  it('delivers every merge in order as a signed PromotionHint, and only merges; kick() wakes it', async () => {
    const port = await builder.listen();
    const [a, , b] = await write(merged('1', sha('a'), 11), { kind: 'report', project: 'tools/airlock', branch: 'main', change: '1', patchset: 1, result: 'SUCCESS' }, merged('2', sha('b'), 12));
    const s = sender(port);
    await s.start();
    await until(async () => expect(await s.cursor()).toBe(b));
    const [c] = await write(merged('3', sha('c'))); // no build id: no ciRun
    s.kick();
    await until(async () => expect(await s.cursor()).toBe(c));

    expect(builder.hints).toEqual([
      { version: 1, project: 'tools/airlock', branch: 'main', commit: sha('a'), ciRun: '11' },
      { version: 1, project: 'tools/airlock', branch: 'main', commit: sha('b'), ciRun: '12' },
      { version: 1, project: 'tools/airlock', branch: 'main', commit: sha('c') },
    ]);
    expect((await s.deliveries()).map((d) => [d.eventId, d.state, d.status, d.attempts])).toEqual([
      [a, 'delivered', 200, 1],
      [b, 'delivered', 200, 1],
      [c, 'delivered', 200, 1],
    ]);
    expect(delays).toEqual([]);
  });

  it('retries the same event after 503 twice with growing, jittered backoff, then goes on in order', async () => {
    builder.script.push({ status: 503, body: '{"code":"AIRLOCK_E_ENGINE_UNAVAILABLE","message":"busy"}' }, 503);
    const port = await builder.listen();
    const [a, b] = await write(merged('1', sha('a'), 1), merged('2', sha('b'), 2));
    let r = 0;
    const s = sender(port, { random: () => [0, 0.999][r++ % 2]! });
    await s.start();
    await until(async () => expect(await s.cursor()).toBe(b));

    expect(builder.hints.map((h) => h.commit)).toEqual([sha('a'), sha('a'), sha('a'), sha('b')]);
    // equal jitter: the n-th wait is in [d/2, d] for d = 1 s · 2^(n-1)
    expect(delays).toEqual([500, 1999]);
    expect(await s.deliveries()).toMatchObject([
      { eventId: a, state: 'delivered', status: 200, attempts: 3 },
      { eventId: b, state: 'delivered', status: 200, attempts: 1 },
    ]);
  });

  it('retries 401 and 404 (a wrong secret or URL on our side) instead of dropping the merge', async () => {
    builder.script.push({ status: 401 }, { status: 404 });
    const port = await builder.listen();
    const [a] = await write(merged('1', sha('a')));
    const s = sender(port);
    await s.start();
    await until(async () => expect(await s.cursor()).toBe(a));
    expect(builder.hints.map((h) => h.commit)).toEqual([sha('a'), sha('a'), sha('a')]);
    expect(await s.deliveries()).toMatchObject([{ eventId: a, state: 'delivered', status: 200, attempts: 3 }]);
  });

  it('says what to fix on 401 and 404 (naming the URL and the key files), and shows the backlog until it is fixed', async () => {
    builder.script.push({ status: 401 }, { status: 404 });
    const port = await builder.listen();
    const [a] = await write(merged('1', sha('a')));
    await write(merged('2', sha('b')));
    // Between attempts, the backlog and the failure are visible (to /metrics).
    const seen: { pending: number; reason: string }[] = [];
    const s: HintSender = sender(port, {
      sleep: async (_ms, signal) => {
        const b = await s.backlog();
        seen.push({ pending: b.pending, reason: b.failing?.reason ?? '' });
        return delay(2, undefined, { signal });
      },
    });
    await s.start();
    await until(async () => expect(await s.cursor()).toBeGreaterThan(a!));
    expect(seen.map((x) => x.pending)).toEqual([2, 2]);
    expect(seen[0]!.reason).toContain(`http://127.0.0.1:${port}/v1/hints: HTTP 401`);
    expect(seen[0]!.reason).toContain("hints.secretFile and the builder's hint secret");
    expect(seen[1]!.reason).toContain("hints.url must be the builder's base URL");
    expect(await s.backlog()).toEqual({ pending: 0 });
    expect(logLines.some((l) => l.includes('"level":50') && l.includes('a configuration error'))).toBe(true);
  });

  it('honours Retry-After on 429 and caps every wait at the maximum', async () => {
    builder.script.push({ status: 429, headers: { 'retry-after': '7' } }, { status: 429, headers: { 'retry-after': '99999' } });
    const port = await builder.listen();
    const [a] = await write(merged('1', sha('a')));
    const s = sender(port, { backoff: { initialMs: 1_000, maxMs: 60_000 } });
    await s.start();
    await until(async () => expect(await s.cursor()).toBe(a));
    expect(delays).toEqual([7_000, 60_000]);
  });

  it('survives the builder being down at first: records the failures, then delivers once it is up', async () => {
    const port = await freePort();
    const [a] = await write(merged('1', sha('a'), 5));
    const s = sender(port);
    await s.start();
    await until(() => expect(delays.length).toBeGreaterThanOrEqual(3));
    expect(await s.cursor()).toBe(0);
    expect(await s.deliveries()).toMatchObject([{ eventId: a, state: 'retrying', reason: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+\/v1\/hints: network error: .*ECONNREFUSED/) }]);
    expect(delays.slice(0, 3)).toEqual([750, 1500, 3000]);

    await builder.listen(port);
    await until(async () => expect(await s.cursor()).toBe(a));
    expect(builder.hints).toEqual([{ version: 1, project: 'tools/airlock', branch: 'main', commit: sha('a'), ciRun: '5' }]);
    expect(await s.deliveries()).toMatchObject([{ eventId: a, state: 'delivered', status: 200 }]);
    expect((await s.deliveries())[0]!.attempts).toBeGreaterThanOrEqual(4);
  });

  it('skips an event the builder refuses with 400, records why, and never sends it again; an event with no commit is recorded invalid', async () => {
    builder.script.push({ status: 400, body: JSON.stringify({ code: 'AIRLOCK_E_INVALID_INPUT', message: 'project not in policy', statusCode: 400 }) });
    const port = await builder.listen();
    const [a, b, c] = await write(merged('1', sha('a')), merged('2', undefined), merged('3', sha('c')));
    const s = sender(port);
    await s.start();
    await until(async () => expect(await s.cursor()).toBe(c));
    await delay(50);

    expect(builder.hints.map((h) => h.commit)).toEqual([sha('a'), sha('c')]);
    expect(await s.deliveries()).toEqual([
      { eventId: a, state: 'refused', status: 400, reason: `http://127.0.0.1:${port}/v1/hints: HTTP 400: AIRLOCK_E_INVALID_INPUT: project not in policy`, attempts: 1, updatedAt: expect.any(Number) },
      { eventId: b, state: 'invalid', reason: expect.stringContaining('commit'), attempts: 0, updatedAt: expect.any(Number) },
      { eventId: c, state: 'delivered', status: 200, attempts: 1, updatedAt: expect.any(Number) },
    ]);
    expect(delays).toEqual([]);
    expect(logLines.some((l) => l.includes('refused a promotion hint') && l.includes('"status":400') && l.includes(`"url":"http://127.0.0.1:${port}/v1/hints"`))).toBe(true);
  });

  it('resumes after the cursor on restart (new sender, same database file) without re-sending', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-hints-'));
    try {
      await db.close();
      const file = join(dir, 'ci.sqlite');
      db = openDatabase(file);
      gate = new GateStore(db);
      const port = await builder.listen();
      const [, b] = await write(merged('1', sha('a')), merged('2', sha('b')));
      const first = sender(port);
      await first.start();
      await until(async () => expect(await first.cursor()).toBe(b));
      await first.close();
      await db.close();

      db = openDatabase(file);
      gate = new GateStore(db);
      const [c] = await write(merged('3', sha('c')));
      const second = sender(port);
      expect(await second.cursor()).toBe(b);
      await second.start();
      await until(async () => expect(await second.cursor()).toBe(c));
      expect(builder.hints.map((h) => h.commit)).toEqual([sha('a'), sha('b'), sha('c')]);
      await second.close();
      await db.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('close() is prompt during a backoff wait', async () => {
    const port = await freePort();
    await write(merged('1', sha('a')));
    const s = sender(port, { sleep: undefined, backoff: { initialMs: 600_000, maxMs: 600_000 } });
    await s.start();
    await until(async () => expect(await s.deliveries()).toMatchObject([{ state: 'retrying' }]));
    const t0 = performance.now();
    await s.close();
    expect(performance.now() - t0).toBeLessThan(200);
  });

  it('close() is prompt during a request the builder never answers; the event stays pending and is sent again (at least once)', async () => {
    builder.script.push('hang');
    const port = await builder.listen();
    const [a] = await write(merged('1', sha('a')));
    const s = sender(port);
    await s.start();
    await until(() => expect(builder.hints).toHaveLength(1));
    const t0 = performance.now();
    await s.close();
    expect(performance.now() - t0).toBeLessThan(200);
    expect(await s.cursor()).toBe(0);
    expect(await s.deliveries()).toEqual([]);

    const again = sender(port);
    await again.start();
    await until(async () => expect(await again.cursor()).toBe(a));
    expect(builder.hints.map((h) => h.commit)).toEqual([sha('a'), sha('a')]);
  });

  it('close() is prompt when idle, and an idle sender also notices merges at the poll interval', async () => {
    const port = await builder.listen();
    const s = sender(port, { pollIntervalMs: 20 });
    await s.start();
    const [a] = await write(merged('1', sha('a'))); // no kick
    await until(async () => expect(await s.cursor()).toBe(a));
    const t0 = performance.now();
    await s.close();
    expect(performance.now() - t0).toBeLessThan(100);
    await expect(s.start()).rejects.toThrow(/closed/);
  });

  it('refuses a non-http URL and an empty secret at construction', () => {
    expect(() => sender(1, { url: 'file:///etc/passwd' })).toThrow(TypeError);
    expect(() => sender(1, { secret: Buffer.alloc(0) })).toThrow(RangeError);
  });
});

describe('the hint backlog on the status page', () => {
  it('the snapshot shows the backlog and the failing delivery (naming the URL), and the page is told of every attempt', async () => {
    builder.script.push({ status: 401 });
    const port = await builder.listen();
    const [a] = await write(merged('1', sha('a')));
    const store = new BuildStore(db);
    let told = 0;
    const views: StatusView[] = [];
    const s: HintSender = sender(port, {
      onChange: () => void told++,
      sleep: async (_ms, signal) => {
        views.push(StatusView.parse(await statusView({ store, scheduler: { slots: 1, busy: 0 }, hints: () => s.backlog() })));
        return delay(2, undefined, { signal });
      },
    });
    await s.start();
    await until(async () => expect(await s.cursor()).toBe(a));
    expect(views[0]!.hints).toEqual({ pending: 1, failing: { status: 401, reason: expect.stringContaining(`http://127.0.0.1:${port}/v1/hints: HTTP 401`), at: expect.any(Number) } });
    expect(views[0]!.hints!.failing!.reason).toContain("hints.secretFile and the builder's hint secret");
    expect((await statusView({ store, scheduler: { slots: 1, busy: 0 }, hints: () => s.backlog() })).hints).toEqual({ pending: 0 });
    expect(await statusView({ store, scheduler: { slots: 1, busy: 0 } })).not.toHaveProperty('hints');
    expect(told).toBe(2); // the failed attempt, then the delivery
  });
});
