/**
 * The store conformance suite: BuildStore on each engine of the CI database — real SQLite (a temp
 * file) and real PostgreSQL (a fresh database on the run's server) — with the same cases: the
 * queue's state machine, the views the API serves (checked against the wire schemas), restart
 * recovery, image pins, webhook dedup, and durability across a reopen. The clock is injected, so
 * times are exact.
 */
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConflictError, NotFoundError, StorageFailedError } from '#shared/errors.js';
import { BuildView, ChangeView } from '#shared/schemas/api/builds.js';
import { BuildStore, type NewChange } from '../../../untrusted-ci/store/build-store.js';
import { MIGRATIONS, openDatabase, openPostgres, type Db } from '../../../untrusted-ci/store/database.js';
import { storeEngines, type FreshDb } from '../../support/store-engines.js';
import { sharedPostgres } from '../../support/postgres-shared.js';

const engines = await storeEngines();

describe.each(engines)('BuildStore on $name', ({ skip, fresh }) => {
let made: FreshDb;
let db: Db;
let store: BuildStore;
let clock: number;

beforeEach(async (ctx) => {
  if (skip) return ctx.skip();
  clock = 1_000;
  made = await fresh();
  db = made.db;
  store = new BuildStore(db, () => clock++);
});
afterEach(async () => {
  await made?.dispose();
});

function change(id: string, patchset = 1, project = 'p'): NewChange {
  return { project, branch: 'main', change: id, patchset, ref: `refs/changes/${id}/${patchset}`, author: 'alice', source: 'api' };
}

describe('the queue', () => {
  it('enqueues a change and a queued build in one step, and shows them in the wire shape', async () => {
    const r = await store.enqueue({ ...change('A'), subject: 'fix the frobnicator' }, 'check');
    expect(r.superseded).toEqual([]);
    expect(ChangeView.parse(r.change)).toEqual(r.change);
    expect(r.change).toEqual({
      id: 1, project: 'p', branch: 'main', change: 'A', patchset: 1, ref: 'refs/changes/A/1', author: 'alice', subject: 'fix the frobnicator', source: 'api', createdAt: 1000,
    });
    const b = await store.build(r.buildId);
    expect(BuildView.parse(b)).toEqual(b);
    expect(b).toEqual({
      id: r.buildId, pipeline: 'check', project: 'p', branch: 'main', change: r.change, state: 'queued', issues: [], attempt: 0, enqueuedAt: 1001, jobs: [],
    });
    expect(await store.queued()).toEqual([{ id: r.buildId, project: 'p', pipeline: 'check', enqueuedAt: 1001, author: 'alice' }]);
    expect(await store.counts()).toEqual({ queued: 1, running: 0 });
  });

  it('reuses the change row when the same patchset is submitted again', async () => {
    const a = await store.enqueue(change('A'), 'check');
    const b = await store.enqueue(change('A'), 'check');
    expect(b.change.id).toBe(a.change.id);
    expect(b.buildId).not.toBe(a.buildId);
    expect(b.superseded).toEqual([]);
    expect((await store.builds({ change: a.change.id })).map((x) => x.id)).toEqual([b.buildId, a.buildId]);
  });

  it('returns the older patchsets’ unfinished builds of the same pipeline as superseded', async () => {
    const p1 = (await store.enqueue(change('A', 1), 'check')).buildId;
    const gate = (await store.enqueue(change('A', 1), 'gate')).buildId;
    const done = (await store.enqueue(change('A', 1), 'check')).buildId;
    await store.start(done);
    await store.finish(done, 'passed', 'ok');
    const other = (await store.enqueue(change('B', 1), 'check')).buildId;
    const r = await store.enqueue(change('A', 2), 'check');
    expect(r.superseded).toEqual([p1]);
    // The store only reports them; finishing them is the scheduler's job.
    expect((await store.build(p1)).state).toBe('queued');
    expect((await store.build(gate)).state).toBe('queued');
    expect((await store.build(other)).state).toBe('queued');
  });

  it('refuses an outdated patchset and writes nothing', async () => {
    await store.enqueue(change('A', 3), 'check');
    await expect(store.enqueue(change('A', 2), 'check')).rejects.toThrow(ConflictError);
    expect(await store.builds({})).toHaveLength(1);
    // The same change id in another project is another change.
    await expect(store.enqueue(change('A', 1, 'q'), 'check')).resolves.toBeDefined();
  });

  it('start: queued → running once, with attempt + 1; false for anything not queued', async () => {
    const id = (await store.enqueue(change('A'), 'check')).buildId;
    expect(await store.start(id)).toBe(true);
    expect(await store.start(id)).toBe(false);
    expect(await store.build(id)).toMatchObject({ state: 'running', attempt: 1, startedAt: 1002 });
    expect(await store.queued()).toEqual([]);
    expect(await store.counts()).toEqual({ queued: 0, running: 1 });
    expect(await store.start(999)).toBe(false);
  });

  it('finish is idempotent and ends the jobs that never ran', async () => {
    const id = (await store.enqueue(change('A'), 'check')).buildId;
    await store.start(id);
    await store.planJobs(id, [
      { name: 'lint', voting: true },
      { name: 'unit', voting: true },
      { name: 'docs', voting: false },
    ]);
    await store.updateJob(id, 'lint', { state: 'running' });
    await store.updateJob(id, 'lint', { state: 'passed', exitCode: 0, logBytes: 12 });
    await store.updateJob(id, 'unit', { state: 'running' });
    const issues = [{ file: '.airlock.yaml', path: 'jobs.unit', message: 'x', severity: 'error' as const }];
    expect(await store.finish(id, 'failed', 'failed: unit', issues)).toBe(true);
    expect(await store.finish(id, 'passed', 'again')).toBe(false);
    const b = await store.build(id);
    expect(BuildView.parse(b)).toEqual(b);
    expect(b).toMatchObject({ state: 'finished', result: 'failed', reason: 'failed: unit', issues });
    expect(b.jobs.map((j) => [j.name, j.state])).toEqual([
      ['lint', 'passed'],
      ['unit', 'skipped'],
      ['docs', 'skipped'],
    ]);
    // A cancelled build's unfinished jobs are cancelled, not skipped.
    const c = (await store.enqueue(change('C'), 'check')).buildId;
    await store.start(c);
    await store.planJobs(c, [{ name: 'unit', voting: true }]);
    await store.finish(c, 'cancelled', 'cancelled');
    expect((await store.build(c)).jobs[0]).toMatchObject({ state: 'cancelled' });
  });

  it('planJobs replaces an earlier plan; updateJob keeps what it is not given and stamps times', async () => {
    const id = (await store.enqueue(change('A'), 'check')).buildId;
    await store.planJobs(id, [{ name: 'old', voting: true }]);
    await store.planJobs(id, [
      { name: 'b', voting: false },
      { name: 'a', voting: true },
    ]);
    expect((await store.build(id)).jobs.map((j) => [j.name, j.voting, j.state])).toEqual([
      ['b', false, 'waiting'],
      ['a', true, 'waiting'],
    ]);
    clock = 5_000;
    await store.updateJob(id, 'a', { state: 'running' });
    await store.updateJob(id, 'a', { state: 'failed', reason: 'exit 2', exitCode: 2, logBytes: 40, artifacts: [{ path: 'out/x.txt', bytes: 3 }] });
    await store.updateJob(id, 'a', { state: 'failed' });
    const a = (await store.build(id)).jobs[1]!;
    expect(a).toEqual({ name: 'a', state: 'failed', voting: true, reason: 'exit 2', exitCode: 2, startedAt: 5000, finishedAt: 5002, logBytes: 40, artifacts: [{ path: 'out/x.txt', bytes: 3 }] });
    // An exit code of 0 is kept (not mistaken for "none").
    await store.updateJob(id, 'b', { state: 'passed', exitCode: 0 });
    expect((await store.build(id)).jobs[0]).toMatchObject({ exitCode: 0 });
  });

  it('keeps each planned job’s timeout, filters builds by pipeline, and averages a job’s recent passing runs', async () => {
    const run = async (project: string, pipeline: 'check' | 'gate', name: string, ms: number, state: 'passed' | 'failed' = 'passed'): Promise<number> => {
      const id = (await store.enqueue(change(`c${clock}`, 1, project), pipeline)).buildId;
      await store.start(id);
      await store.planJobs(id, [{ name, voting: true, timeoutMs: 60_000 }]);
      clock = 10_000 * id;
      await store.updateJob(id, name, { state: 'running' });
      clock += ms - 1; // updateJob's own tick adds the last millisecond
      await store.updateJob(id, name, { state });
      return id;
    };
    expect(await store.recentJobDuration('p', 'unit')).toBeUndefined();
    const first = await run('p', 'check', 'unit', 1_000);
    expect((await store.build(first)).jobs[0]).toMatchObject({ name: 'unit', timeoutMs: 60_000, startedAt: 10_000 * first, finishedAt: 10_000 * first + 1_000 });
    await run('p', 'gate', 'unit', 3_000);
    await run('p', 'check', 'unit', 50_000, 'failed'); // failures do not count
    await run('other', 'check', 'unit', 90_000); // nor other projects
    expect(await store.recentJobDuration('p', 'unit')).toBe(2_000);
    for (let i = 0; i < 5; i++) await run('p', 'check', 'unit', 10_000);
    expect(await store.recentJobDuration('p', 'unit')).toBe(10_000); // the last five only
    expect((await store.builds({ pipeline: 'gate' })).map((b) => b.pipeline)).toEqual(['gate']);
    // Without a timeout the view has none.
    const plain = (await store.enqueue(change('plain'), 'check')).buildId;
    await store.planJobs(plain, [{ name: 'unit', voting: true }]);
    expect((await store.build(plain)).jobs[0]).not.toHaveProperty('timeoutMs');
  });

  it('requeue and recover put running builds back in the queue from scratch', async () => {
    const a = (await store.enqueue(change('A'), 'check')).buildId;
    const b = (await store.enqueue(change('B'), 'check')).buildId;
    const c = (await store.enqueue(change('C'), 'check')).buildId;
    for (const id of [a, b]) {
      await store.start(id);
      await store.setCommit(id, 'c'.repeat(40));
      await store.setEnvironment(id, `img-${id}`, true);
      await store.planJobs(id, [{ name: 'unit', voting: true }]);
    }
    expect(await store.recover()).toEqual([a, b]);
    for (const id of [a, b]) {
      const v = await store.build(id);
      expect(v).toMatchObject({ state: 'queued', attempt: 1, jobs: [] });
      expect(v.startedAt).toBeUndefined();
      expect(v.commit).toBeUndefined();
      expect(v.environment).toBeUndefined();
    }
    expect((await store.queued()).map((q) => q.id)).toEqual([a, b, c]);
    expect(await store.recover()).toEqual([]);
    await store.start(a);
    expect((await store.build(a)).attempt).toBe(2);
    // requeue of a build that is not running changes nothing.
    await store.requeue(c);
    expect((await store.build(c)).state).toBe('queued');
  });

  it('pins the environment images of queued and running builds only', async () => {
    const a = (await store.enqueue(change('A'), 'check')).buildId;
    const b = (await store.enqueue(change('B'), 'check')).buildId;
    const c = (await store.enqueue(change('C'), 'check')).buildId;
    for (const id of [a, b, c]) await store.start(id);
    await store.setEnvironment(a, 'airlock-env/p:1', false);
    await store.setEnvironment(b, 'airlock-env/p:1', true);
    await store.setEnvironment(c, 'airlock-env/p:2', true);
    await store.finish(c, 'passed', 'ok');
    expect(await store.pinnedImages()).toEqual(['airlock-env/p:1']);
    expect((await store.build(a)).environment).toEqual({ image: 'airlock-env/p:1', cached: false });
    await store.finish(a, 'passed', 'ok');
    await store.finish(b, 'passed', 'ok');
    expect(await store.pinnedImages()).toEqual([]);
  });

  it('seenEvent is false the first time and true for a redelivery', async () => {
    expect(await store.seenEvent('gerrit:abc')).toBe(false);
    expect(await store.seenEvent('gerrit:abc')).toBe(true);
    expect(await store.seenEvent('gerrit:def')).toBe(false);
  });

  it('tracks which finished builds were reported', async () => {
    const a = (await store.enqueue(change('A'), 'check')).buildId;
    const b = (await store.enqueue(change('B'), 'check')).buildId;
    expect(await store.unreported()).toEqual([]);
    await store.finish(a, 'cancelled', 'cancelled');
    await store.finish(b, 'cancelled', 'cancelled');
    expect(await store.unreported()).toEqual([a, b]);
    await store.markReported(a);
    expect(await store.unreported()).toEqual([b]);
  });

  it('lists builds newest first, filtered and paged', async () => {
    const ids: number[] = [];
    for (const [i, c] of ['A', 'B', 'C', 'D'].entries()) ids.push((await store.enqueue(change(c, 1, i % 2 ? 'q' : 'p'), 'check')).buildId);
    await store.start(ids[0]!);
    expect((await store.builds({})).map((b) => b.id)).toEqual([...ids].reverse());
    expect((await store.builds({ project: 'q' })).map((b) => b.id)).toEqual([ids[3], ids[1]]);
    expect((await store.builds({ state: 'running' })).map((b) => b.id)).toEqual([ids[0]]);
    expect((await store.builds({ limit: 2 })).map((b) => b.id)).toEqual([ids[3], ids[2]]);
    expect((await store.builds({ before: ids[2]!, limit: 1 })).map((b) => b.id)).toEqual([ids[1]]);
    expect(await store.builds({ limit: 10_000 })).toHaveLength(4);
  });

  it('lists finished builds with their jobs for retention', async () => {
    const a = (await store.enqueue(change('A'), 'check')).buildId;
    await store.enqueue(change('B'), 'check');
    await store.start(a);
    await store.planJobs(a, [{ name: 'unit', voting: true }, { name: 'lint', voting: true }]);
    await store.finish(a, 'failed', 'failed: unit');
    expect(await store.finishedBuilds()).toEqual([{ buildId: a, result: 'failed', finishedAt: expect.any(Number), jobs: expect.arrayContaining(['unit', 'lint']) }]);
  });

  it('throws NotFoundError for an unknown build or change', async () => {
    await expect(store.build(42)).rejects.toThrow(NotFoundError);
    await expect(store.changeView(42)).rejects.toThrow(NotFoundError);
  });
});

  it('keeps everything across a close and reopen (as after kill -9: every committed transaction is kept)', async () => {
    const s1 = store;
    const a = (await s1.enqueue(change('A'), 'check')).buildId;
    const b = (await s1.enqueue({ ...change('B'), subject: 'ünïcode ✓' }, 'gate')).buildId;
    await s1.start(a);
    await s1.setCommit(a, 'a'.repeat(40));
    await s1.setEnvironment(a, 'airlock-env/p:1', true);
    await s1.planJobs(a, [{ name: 'unit', voting: true }]);
    await s1.updateJob(a, 'unit', { state: 'running' });
    await s1.seenEvent('gerrit:1');
    const before = [await s1.build(a), await s1.build(b)];
    await db.close();

    const second = await made.reopen();
    const s2 = new BuildStore(second);
    expect([await s2.build(a), await s2.build(b)]).toEqual(before);
    expect(await s2.seenEvent('gerrit:1')).toBe(true);
    expect(await s2.pinnedImages()).toEqual(['airlock-env/p:1']);
    expect(await s2.recover()).toEqual([a]);
    expect((await s2.queued()).map((q) => q.id)).toEqual([a, b]);
    // New ids continue after the old ones.
    expect((await s2.enqueue(change('C'), 'check')).buildId).toBe(b + 1);
  });

  it('one transaction at a time: concurrent enqueues of one change make one change row and every build', async () => {
    // Warm connections first (PostgreSQL's pool), so that the transactions truly overlap.
    await Promise.all(Array.from({ length: 8 }, () => store.counts()));
    const results = await Promise.all(Array.from({ length: 12 }, () => store.enqueue(change('A'), 'check')));
    expect(new Set(results.map((r) => r.change.id)).size).toBe(1);
    expect(new Set(results.map((r) => r.buildId)).size).toBe(12);
    expect(await store.counts()).toEqual({ queued: 12, running: 0 });
  });

  it('a transaction that throws leaves nothing behind', async () => {
    await store.enqueue(change('A', 2), 'check');
    await expect(db.tx(async (t) => {
      await t.run("INSERT INTO seen_events (event_id, seen_at) VALUES ('x', 1)");
      throw new Error('boom');
    })).rejects.toThrow('boom');
    expect(await store.seenEvent('x')).toBe(false); // not seen before: the insert was rolled back
  });
});

describe('openDatabase (SQLite)', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'airlock-store-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('migrates a new file to the current schema version', async () => {
    const file = join(dir, 'nested', 'ci.sqlite');
    await openDatabase(file).close();
    const raw = new Database(file);
    expect(raw.pragma('user_version', { simple: true })).toBe(MIGRATIONS.length);
    raw.close();
  });

  it('refuses a database from a newer airlock with StorageFailedError', async () => {
    const file = join(dir, 'ci.sqlite');
    await openDatabase(file).close();
    const raw = new Database(file);
    raw.pragma('user_version = 99');
    raw.close();
    expect(() => openDatabase(file)).toThrow(StorageFailedError);
  });
});

const pgServer = await sharedPostgres();
describe.skipIf(pgServer.skip)('openPostgres', () => {
  it('migrates once, whoever starts first: replicas opening at once agree on the schema', async () => {
    const url = await pgServer.createDatabase();
    const dbs = await Promise.all([openPostgres(url), openPostgres(url), openPostgres(url)]);
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      expect((await c.query('SELECT version FROM airlock_schema')).rows).toEqual([{ version: String(MIGRATIONS.length) }]);
      // Every table of the SQLite schema, with the same columns.
      const sqlite = openDatabase(':memory:');
      const cols = async (d: Db, sql: string): Promise<string[]> => (await d.all<{ t: string; c: string }>(sql)).map((r) => `${r.t}.${r.c}`).sort();
      const lite = await cols(sqlite, "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'");
      const post = await cols(dbs[0]!, "SELECT table_name AS t, column_name AS c FROM information_schema.columns WHERE table_schema = 'public' AND table_name != 'airlock_schema'");
      expect(post).toEqual(lite);
      await sqlite.close();
    } finally {
      await c.end();
      for (const d of dbs) await d.close();
    }
  });

  it('refuses a database from a newer airlock, and says where without the password', async () => {
    const url = await pgServer.createDatabase();
    await (await openPostgres(url)).close();
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query('UPDATE airlock_schema SET version = 99');
    await c.end();
    const password = new URL(url).password;
    const e = await openPostgres(url).then(() => undefined, (err: unknown) => err as Error);
    expect(e).toBeInstanceOf(StorageFailedError);
    expect(e!.message).toMatch(/schema 99, newer than this airlock/);
    expect(e!.message).not.toContain(password);
  });

  it('says which server cannot be reached, without the password', async () => {
    const e = await openPostgres('postgres://u:sekrit-password@127.0.0.1:1/db').then(() => undefined, (err: unknown) => err as Error);
    expect(e).toBeInstanceOf(StorageFailedError);
    expect(e!.message).toContain('127.0.0.1:1');
    expect(e!.message).not.toContain('sekrit-password');
  });
});
