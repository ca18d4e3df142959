/**
 * The scheduler's model tier: a real BuildStore on in-memory SQLite, the FakeExecutor, a recording
 * reporter. No Docker, no timers: tests wait on the fake's state (`until`) and on `idle()`.
 */
import { testDatabase } from '../../support/store-engines.js';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { ConflictError, GitFailedError } from '#shared/errors.js';
import type { Pipeline } from '#shared/schemas/api/builds.js';
import { Scheduler } from '../../../untrusted-ci/scheduler/scheduler.js';
import { BuildStore, type NewChange } from '../../../untrusted-ci/store/build-store.js';
import { openDatabase, type Db } from '../../../untrusted-ci/store/database.js';
import type { Sql, SqlValue } from '../../../untrusted-ci/store/sql.js';
import { FakeExecutor, RecordingReporter } from '../../support/fake-executor.js';

const logger = createLogger({ level: 'silent' });

interface Rig {
  db: Db;
  store: BuildStore;
  executor: FakeExecutor;
  reporter: RecordingReporter;
  scheduler: Scheduler;
}

const open: Rig[] = [];
afterEach(async () => {
  for (const r of open.splice(0)) {
    r.executor.release('*');
    await r.scheduler.close();
    await r.db.close();
  }
});

async function rig(o: { slots?: number; maxAttempts?: number; db?: Db; start?: boolean } = {}): Promise<Rig> {
  const db = o.db ?? (await testDatabase());
  const store = new BuildStore(db);
  const executor = new FakeExecutor();
  const reporter = new RecordingReporter();
  const scheduler = new Scheduler({ store, executor, reporters: [reporter], slots: o.slots ?? 2, logger, ...(o.maxAttempts ? { maxAttempts: o.maxAttempts } : {}) });
  const r = { db, store, executor, reporter, scheduler };
  if (!o.db) open.push(r);
  if (o.start !== false) await scheduler.start();
  return r;
}

/** A change: `change('p', 'A')` is patchset 1 of change A of project p. */
function change(project: string, id: string, patchset = 1): NewChange {
  return { project, branch: 'main', change: id, patchset, ref: `refs/changes/${id}/${patchset}`, author: 'alice', source: 'test' };
}

async function submit(r: Rig, project: string, id: string, patchset = 1, pipeline: Pipeline = 'check'): Promise<number> {
  return (await r.scheduler.submit(change(project, id, patchset), pipeline)).build.id;
}

/** A few turns of the event loop: lets a scheduler that would (wrongly) start more builds do so. */
async function turns(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((res) => setImmediate(res));
}

/**
 * A database whose transactions may be held back while single statements go on: the order
 * PostgreSQL's pool gives statements of different callers (each on its own connection) is not the
 * order they were asked in. `afterStart` is told when a build was marked running.
 */
class ReorderingDb implements Db {
  readonly engine;
  readonly where = 'reordering';
  txGate: Promise<void> | undefined;
  afterStart: (() => void) | undefined;
  constructor(private readonly inner: Db) {
    this.engine = inner.engine;
  }
  all<T>(sql: string, params?: readonly SqlValue[]): Promise<T[]> {
    return this.inner.all<T>(sql, params);
  }
  get<T>(sql: string, params?: readonly SqlValue[]): Promise<T | undefined> {
    return this.inner.get<T>(sql, params);
  }
  async run(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }> {
    const r = await this.inner.run(sql, params);
    if (sql.includes("SET state = 'running'")) this.afterStart?.();
    return r;
  }
  async tx<T>(fn: (t: Sql) => Promise<T>): Promise<T> {
    await this.txGate;
    return this.inner.tx(fn);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

describe('Scheduler', () => {
  it('never runs more builds than it has slots, and runs and reports every build exactly once', async () => {
    const r = await rig({ slots: 2 });
    r.executor.hold('*');
    const ids: number[] = [];
    for (const c of ['A', 'B', 'C', 'D', 'E']) ids.push(await submit(r, 'p', c));
    await r.executor.until((x) => x.held.length === 2);
    await turns();
    expect(r.executor.running).toHaveLength(2);
    expect(r.scheduler.busy).toBe(2);
    expect(await r.store.counts()).toEqual({ queued: 3, running: 2 });
    r.executor.release('*');
    await r.scheduler.idle();
    expect(r.executor.maxConcurrent).toBe(2);
    expect(r.executor.history.map((h) => h.buildId).sort()).toEqual(ids);
    expect(r.reporter.ids().sort()).toEqual(ids);
    for (const id of ids) expect(await r.store.build(id)).toMatchObject({ state: 'finished', result: 'passed', attempt: 1 });
    expect(await r.store.unreported()).toEqual([]);
  });

  it('uses every slot it has', async () => {
    const r = await rig({ slots: 3 });
    r.executor.hold('*');
    for (const c of ['A', 'B', 'C', 'D']) await submit(r, `p${c}`, c);
    await r.executor.until((x) => x.held.length === 3);
    r.executor.release('*');
    await r.scheduler.idle();
    expect(r.executor.maxConcurrent).toBe(3);
  });

  it('reports a failing change as failed, not as an error', async () => {
    const r = await rig();
    r.executor.fail('B');
    const a = await submit(r, 'p', 'A');
    const b = await submit(r, 'p', 'B');
    await r.scheduler.idle();
    expect((await r.store.build(a)).result).toBe('passed');
    expect(await r.store.build(b)).toMatchObject({ result: 'failed', reason: 'failed: unit' });
  });

  it('stores the outcome the executor returns, issues included', async () => {
    const r = await rig();
    const issues = [{ file: 'src/a.ts', path: '', message: 'conflict', severity: 'error' as const }];
    r.executor.outcome('A', { result: 'merge-conflict', reason: 'src/a.ts conflicts', issues });
    const id = await submit(r, 'p', 'A');
    await r.scheduler.idle();
    expect(await r.store.build(id)).toMatchObject({ result: 'merge-conflict', reason: 'src/a.ts conflicts', issues });
    expect(r.reporter.reported[0]).toMatchObject({ id, result: 'merge-conflict', issues });
  });

  it('supersedes a running build when a newer patchset arrives, and runs the newer one', async () => {
    const r = await rig();
    r.executor.hold('A,1');
    const old = await submit(r, 'p', 'A', 1);
    await r.executor.until((x) => x.held.length === 1);
    const { build, superseded } = await r.scheduler.submit(change('p', 'A', 2), 'check');
    expect(superseded).toEqual([old]);
    await r.scheduler.idle();
    expect(await r.store.build(old)).toMatchObject({ state: 'finished', result: 'superseded', reason: 'superseded by patchset 2' });
    expect(await r.store.build(build.id)).toMatchObject({ state: 'finished', result: 'passed' });
    expect(r.executor.history.map((h) => [h.change, h.patchset, h.result])).toEqual([
      ['A', 1, 'aborted'],
      ['A', 2, 'passed'],
    ]);
    expect(r.reporter.ids().sort()).toEqual([old, build.id]);
  });

  it('supersedes a queued build without running it', async () => {
    const r = await rig({ slots: 1 });
    r.executor.hold('X');
    const blocker = await submit(r, 'p', 'X');
    await r.executor.until((x) => x.held.length === 1);
    const old = await submit(r, 'p', 'A', 1);
    const newer = await submit(r, 'p', 'A', 3);
    expect(await r.store.build(old)).toMatchObject({ state: 'finished', result: 'superseded' });
    r.executor.release('*');
    await r.scheduler.idle();
    expect(r.executor.history.map((h) => h.buildId)).toEqual([blocker, newer]);
    expect(r.reporter.ids().filter((id) => id === old)).toHaveLength(1);
  });

  it('supersedes only the same pipeline', async () => {
    const r = await rig({ slots: 1 });
    r.executor.hold('X');
    await submit(r, 'p', 'X');
    await r.executor.until((x) => x.held.length === 1);
    const gate = await submit(r, 'p', 'A', 1, 'gate');
    const { superseded } = await r.scheduler.submit(change('p', 'A', 2), 'check');
    expect(superseded).toEqual([]);
    expect((await r.store.build(gate)).state).toBe('queued');
    r.executor.release('*');
    await r.scheduler.idle();
    expect((await r.store.build(gate)).result).toBe('passed');
  });

  it('refuses a patchset older than the newest known, with ConflictError and nothing queued', async () => {
    const r = await rig();
    await submit(r, 'p', 'A', 2);
    await r.scheduler.idle();
    await expect(submit(r, 'p', 'A', 1)).rejects.toThrow(ConflictError);
    expect(await r.store.builds({})).toHaveLength(1);
  });

  it('cancels a running build and a queued one; cancelling a finished build changes nothing', async () => {
    const r = await rig({ slots: 1 });
    r.executor.hold('*');
    const running = await submit(r, 'p', 'A');
    const queued = await submit(r, 'p', 'B');
    await r.executor.until((x) => x.held.length === 1);
    await r.scheduler.cancel(queued);
    await r.scheduler.cancel(running);
    await r.scheduler.idle();
    expect(await r.store.build(running)).toMatchObject({ result: 'cancelled', reason: 'cancelled' });
    expect(await r.store.build(queued)).toMatchObject({ result: 'cancelled', attempt: 0 });
    expect(r.executor.history.map((h) => h.buildId)).toEqual([running]);
    r.executor.release('*');
    const done = await submit(r, 'p', 'C');
    await r.scheduler.idle();
    await r.scheduler.cancel(done);
    expect((await r.store.build(done)).result).toBe('passed');
    expect(r.reporter.ids().sort()).toEqual([running, queued, done].sort());
  });

  it('a cancel that crosses the build being started stops its run, when the database runs the start first', async () => {
    const db = new ReorderingDb(openDatabase(':memory:'));
    const r = await rig({ db, slots: 2 });
    open.push(r);
    r.executor.hold('*');
    const id = await submit(r, 'p', 'A'); // the scheduler's pass for it comes on a later turn
    let go!: () => void;
    db.txGate = new Promise<void>((res) => (go = res));
    db.afterStart = () => go();
    await r.scheduler.cancel(id); // its write is held back until the pass has marked the build running
    db.txGate = undefined;
    for (let i = 0; i < 100 && r.scheduler.busy > 0; i++) await turns(1);
    expect(r.executor.running).toEqual([]);
    expect(r.scheduler.busy).toBe(0);
    expect(await r.store.build(id)).toMatchObject({ state: 'finished', result: 'cancelled' });
    expect(r.reporter.ids()).toEqual([id]);
  });

  it('re-queues a build after a retryable error and passes on a later attempt', async () => {
    const r = await rig({ maxAttempts: 3 });
    r.executor.throwRetryable(2);
    const id = await submit(r, 'p', 'A');
    await r.scheduler.idle();
    expect(r.executor.history.map((h) => [h.attempt, h.result])).toEqual([
      [1, 'threw'],
      [2, 'threw'],
      [3, 'passed'],
    ]);
    expect(await r.store.build(id)).toMatchObject({ result: 'passed', attempt: 3 });
    expect(r.reporter.ids()).toEqual([id]);
  });

  it('gives up after maxAttempts retryable errors with result error and the code in the reason', async () => {
    const r = await rig({ maxAttempts: 2 });
    r.executor.throwRetryable(5);
    const id = await submit(r, 'p', 'A');
    await r.scheduler.idle();
    expect(r.executor.history).toHaveLength(2);
    const b = await r.store.build(id);
    expect(b).toMatchObject({ state: 'finished', result: 'error', attempt: 2 });
    expect(b.reason).toMatch(/^AIRLOCK_E_EXECUTOR_FAILED: /);
    expect(r.reporter.ids()).toEqual([id]);
  });

  it('finishes a build with error and the message when the executor throws something that is not an AirlockError', async () => {
    const r = await rig();
    r.executor.throwError('A', new TypeError('boom'));
    const id = await submit(r, 'p', 'A');
    await r.scheduler.idle();
    expect(r.executor.history).toHaveLength(1); // not retried
    expect(await r.store.build(id)).toMatchObject({ result: 'error', reason: 'internal error: boom' });
  });

  it('does not retry a retryable error the signal caused', async () => {
    const r = await rig();
    r.executor.hold('*');
    r.executor.throwError('A', new GitFailedError('fetch interrupted'));
    const id = await submit(r, 'p', 'A');
    await r.executor.until((x) => x.held.length === 1);
    await r.scheduler.cancel(id);
    await r.scheduler.idle();
    expect(await r.store.build(id)).toMatchObject({ result: 'cancelled', attempt: 1 });
  });

  it("a deposed leader's late result does not land on its successor's run of the build (nor its re-queue)", async () => {
    const db = openDatabase(':memory:');
    const old = await rig({ db, slots: 2 });
    open.push(old);
    old.executor.hold('*');
    old.executor.fail('A');
    old.executor.throwError('B', new GitFailedError('fetch interrupted')); // retryable: the old one re-queues it
    const a = await submit(old, 'p', 'A');
    const b = await submit(old, 'p', 'B');
    await old.executor.until((x) => x.held.length === 2);
    // The old leader is cut off (its scheduler not closed: it does not know yet); the successor
    // re-runs what was running, as its start does.
    const next = await rig({ db, slots: 2, start: false });
    open.push(next);
    next.executor.hold('*');
    await next.scheduler.start();
    await next.executor.until((x) => x.held.length === 2);
    expect(await next.store.build(a)).toMatchObject({ state: 'running', attempt: 2 });
    // The old leader's runs end now: A failed, B threw a retryable error.
    old.executor.release('*');
    await old.executor.until((x) => x.running.length === 0);
    for (let i = 0; i < 50; i++) await turns(1);
    expect(await next.store.build(a)).toMatchObject({ state: 'running', attempt: 2 });
    expect(await next.store.build(b)).toMatchObject({ state: 'running', attempt: 2 });
    expect(old.reporter.reported).toEqual([]);
    next.executor.release('*');
    await next.scheduler.idle();
    expect(await next.store.build(a)).toMatchObject({ state: 'finished', result: 'passed', attempt: 2 });
    expect(await next.store.build(b)).toMatchObject({ state: 'finished', result: 'passed', attempt: 2 });
  });

  it('a build submitted before start (the gate starts first, on taking over) waits for the recovery, and runs once', async () => {
    const r = await rig({ slots: 2, start: false });
    const id = await submit(r, 'p', 'A');
    for (let i = 0; i < 50; i++) await turns(1);
    // Nothing started before the recovery: a build started then would be taken for the last process's and queued again while it runs.
    expect(r.executor.history).toEqual([]);
    expect(await r.store.build(id)).toMatchObject({ state: 'queued', attempt: 0 });
    await r.scheduler.start();
    await r.scheduler.idle();
    expect(r.executor.history.map((x) => x.buildId)).toEqual([id]);
    expect(await r.store.build(id)).toMatchObject({ state: 'finished', result: 'passed', attempt: 1 });
    expect(r.reporter.ids()).toEqual([id]);
  });

  it('close() leaves running builds running; a new scheduler on the same database re-runs them', async () => {
    const db = (await testDatabase());
    const first = await rig({ db, slots: 1 });
    first.executor.hold('*');
    const running = await submit(first, 'p', 'A');
    const queued = await submit(first, 'p', 'B');
    await first.executor.until((x) => x.held.length === 1);
    await first.scheduler.close();
    expect(await first.store.build(running)).toMatchObject({ state: 'running', attempt: 1 });
    expect((await first.store.build(queued)).state).toBe('queued');
    expect(first.reporter.reported).toEqual([]);
    // A closed scheduler takes no more work.
    const late = await submit(first, 'p', 'C');
    await turns();
    expect(first.executor.history).toHaveLength(1);

    const second = await rig({ db, slots: 1 });
    open.push(second);
    await second.scheduler.idle();
    expect(await second.store.build(running)).toMatchObject({ state: 'finished', result: 'passed', attempt: 2 });
    expect(second.executor.history.map((h) => [h.buildId, h.attempt])).toEqual([
      [running, 2],
      [queued, 1],
      [late, 1],
    ]);
    expect(second.reporter.ids()).toEqual([running, queued, late]);
  });

  it('reports at start the finished builds the last process never reported', async () => {
    const db = (await testDatabase());
    const store = new BuildStore(db);
    const { buildId } = await store.enqueue(change('p', 'A'), 'check');
    await store.start(buildId);
    await store.finish(buildId, 'failed', 'failed: unit');
    const r = await rig({ db });
    open.push(r);
    expect(r.reporter.ids()).toEqual([buildId]);
    expect(await r.store.unreported()).toEqual([]);
    expect(r.executor.history).toEqual([]);
  });

  it('leaves a build unreported when the reporter fails, and reports it at the next start', async () => {
    const db = (await testDatabase());
    const first = await rig({ db });
    first.reporter.failNext();
    const id = await submit(first, 'p', 'A');
    await first.scheduler.idle();
    expect((await first.store.build(id)).result).toBe('passed');
    expect(await first.store.unreported()).toEqual([id]);
    await first.scheduler.close();
    const second = await rig({ db });
    open.push(second);
    expect(second.reporter.ids()).toEqual([id]);
    expect(second.executor.history).toEqual([]);
  });

  it('is fair across projects end to end: with one slot, the project with one change is served second', async () => {
    const r = await rig({ slots: 1 });
    r.executor.hold('*');
    for (const c of ['A1', 'A2', 'A3', 'A4']) await submit(r, 'a', c);
    await submit(r, 'b', 'B1');
    await submit(r, 'c', 'C1');
    await submit(r, 'a', 'A5');
    await r.executor.until((x) => x.held.length === 1);
    r.executor.release('*');
    await r.scheduler.idle();
    expect(r.executor.history.map((h) => h.change)).toEqual(['A1', 'B1', 'C1', 'A2', 'A3', 'A4', 'A5']);
  });

  it('runs gate builds before check builds', async () => {
    const r = await rig({ slots: 1 });
    r.executor.hold('X');
    await submit(r, 'x', 'X');
    await r.executor.until((x) => x.held.length === 1);
    await submit(r, 'p', 'C1');
    await submit(r, 'p', 'C2');
    await submit(r, 'q', 'G1', 1, 'gate');
    r.executor.release('*');
    await r.scheduler.idle();
    expect(r.executor.history.map((h) => h.change)).toEqual(['X', 'G1', 'C1', 'C2']);
  });

  it('idle() resolves at once when there is nothing to do, and after the last build otherwise', async () => {
    const r = await rig();
    await r.scheduler.idle();
    r.executor.hold('*');
    await submit(r, 'p', 'A');
    let resolved = false;
    const idle = r.scheduler.idle().then(() => (resolved = true));
    await r.executor.until((x) => x.held.length === 1);
    await turns();
    expect(resolved).toBe(false);
    r.executor.release('*');
    await idle;
    expect(await r.store.counts()).toEqual({ queued: 0, running: 0 });
  });

  it('calls onChange for every state a build goes through', async () => {
    const db = (await testDatabase());
    const store = new BuildStore(db);
    const seen: string[] = [];
    const scheduler = new Scheduler({
      store,
      executor: new FakeExecutor(),
      reporters: [],
      slots: 1,
      logger,
      onChange: (b) => seen.push(`${b.id}:${b.state}${b.result ? `:${b.result}` : ''}`),
    });
    await scheduler.start();
    const { build } = await scheduler.submit(change('p', 'A'), 'check');
    await scheduler.idle();
    await scheduler.close();
    await db.close();
    expect(seen).toEqual([`${build.id}:queued`, `${build.id}:running`, `${build.id}:finished:passed`]);
  });
});
