/**
 * BuildStore on real SQLite: the queue's state machine, the views the API serves (checked against
 * the wire schemas), restart recovery, image pins, webhook dedup, and durability across a reopen
 * of a file-backed database. The clock is injected, so times are exact.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConflictError, NotFoundError, StorageFailedError } from '#shared/errors.js';
import { BuildView, ChangeView } from '#shared/schemas/api/builds.js';
import { BuildStore, type NewChange } from '../../../untrusted-ci/store/build-store.js';
import { openDatabase, type Db } from '../../../untrusted-ci/store/database.js';

let db: Db;
let store: BuildStore;
let clock: number;

beforeEach(() => {
  clock = 1_000;
  db = openDatabase(':memory:');
  store = new BuildStore(db, () => clock++);
});
afterEach(() => {
  if (db.open) db.close();
});

function change(id: string, patchset = 1, project = 'p'): NewChange {
  return { project, branch: 'main', change: id, patchset, ref: `refs/changes/${id}/${patchset}`, author: 'alice', source: 'api' };
}

describe('BuildStore', () => {
  it('enqueues a change and a queued build in one step, and shows them in the wire shape', () => {
    const r = store.enqueue({ ...change('A'), subject: 'fix the frobnicator' }, 'check');
    expect(r.superseded).toEqual([]);
    expect(ChangeView.parse(r.change)).toEqual(r.change);
    expect(r.change).toEqual({
      id: 1, project: 'p', branch: 'main', change: 'A', patchset: 1, ref: 'refs/changes/A/1', author: 'alice', subject: 'fix the frobnicator', source: 'api', createdAt: 1000,
    });
    const b = store.build(r.buildId);
    expect(BuildView.parse(b)).toEqual(b);
    expect(b).toEqual({
      id: r.buildId, pipeline: 'check', project: 'p', branch: 'main', change: r.change, state: 'queued', issues: [], attempt: 0, enqueuedAt: 1001, jobs: [],
    });
    expect(store.queued()).toEqual([{ id: r.buildId, project: 'p', pipeline: 'check', enqueuedAt: 1001, author: 'alice' }]);
    expect(store.counts()).toEqual({ queued: 1, running: 0 });
  });

  it('reuses the change row when the same patchset is submitted again', () => {
    const a = store.enqueue(change('A'), 'check');
    const b = store.enqueue(change('A'), 'check');
    expect(b.change.id).toBe(a.change.id);
    expect(b.buildId).not.toBe(a.buildId);
    expect(b.superseded).toEqual([]);
    expect(store.builds({ change: a.change.id }).map((x) => x.id)).toEqual([b.buildId, a.buildId]);
  });

  it('returns the older patchsets’ unfinished builds of the same pipeline as superseded', () => {
    const p1 = store.enqueue(change('A', 1), 'check').buildId;
    const gate = store.enqueue(change('A', 1), 'gate').buildId;
    const done = store.enqueue(change('A', 1), 'check').buildId;
    store.start(done);
    store.finish(done, 'passed', 'ok');
    const other = store.enqueue(change('B', 1), 'check').buildId;
    const r = store.enqueue(change('A', 2), 'check');
    expect(r.superseded).toEqual([p1]);
    // The store only reports them; finishing them is the scheduler's job.
    expect(store.build(p1).state).toBe('queued');
    expect(store.build(gate).state).toBe('queued');
    expect(store.build(other).state).toBe('queued');
  });

  it('refuses an outdated patchset and writes nothing', () => {
    store.enqueue(change('A', 3), 'check');
    expect(() => store.enqueue(change('A', 2), 'check')).toThrow(ConflictError);
    expect(store.builds({})).toHaveLength(1);
    // The same change id in another project is another change.
    expect(() => store.enqueue(change('A', 1, 'q'), 'check')).not.toThrow();
  });

  it('start: queued → running once, with attempt + 1; false for anything not queued', () => {
    const id = store.enqueue(change('A'), 'check').buildId;
    expect(store.start(id)).toBe(true);
    expect(store.start(id)).toBe(false);
    expect(store.build(id)).toMatchObject({ state: 'running', attempt: 1, startedAt: 1002 });
    expect(store.queued()).toEqual([]);
    expect(store.counts()).toEqual({ queued: 0, running: 1 });
    expect(store.start(999)).toBe(false);
  });

  it('finish is idempotent and ends the jobs that never ran', () => {
    const id = store.enqueue(change('A'), 'check').buildId;
    store.start(id);
    store.planJobs(id, [
      { name: 'lint', voting: true },
      { name: 'unit', voting: true },
      { name: 'docs', voting: false },
    ]);
    store.updateJob(id, 'lint', { state: 'running' });
    store.updateJob(id, 'lint', { state: 'passed', exitCode: 0, logBytes: 12 });
    store.updateJob(id, 'unit', { state: 'running' });
    const issues = [{ file: '.airlock.yaml', path: 'jobs.unit', message: 'x', severity: 'error' as const }];
    expect(store.finish(id, 'failed', 'failed: unit', issues)).toBe(true);
    expect(store.finish(id, 'passed', 'again')).toBe(false);
    const b = store.build(id);
    expect(BuildView.parse(b)).toEqual(b);
    expect(b).toMatchObject({ state: 'finished', result: 'failed', reason: 'failed: unit', issues });
    expect(b.jobs.map((j) => [j.name, j.state])).toEqual([
      ['lint', 'passed'],
      ['unit', 'skipped'],
      ['docs', 'skipped'],
    ]);
    // A cancelled build's unfinished jobs are cancelled, not skipped.
    const c = store.enqueue(change('C'), 'check').buildId;
    store.start(c);
    store.planJobs(c, [{ name: 'unit', voting: true }]);
    store.finish(c, 'cancelled', 'cancelled');
    expect(store.build(c).jobs[0]).toMatchObject({ state: 'cancelled' });
  });

  it('planJobs replaces an earlier plan; updateJob keeps what it is not given and stamps times', () => {
    const id = store.enqueue(change('A'), 'check').buildId;
    store.planJobs(id, [{ name: 'old', voting: true }]);
    store.planJobs(id, [
      { name: 'b', voting: false },
      { name: 'a', voting: true },
    ]);
    expect(store.build(id).jobs.map((j) => [j.name, j.voting, j.state])).toEqual([
      ['b', false, 'waiting'],
      ['a', true, 'waiting'],
    ]);
    clock = 5_000;
    store.updateJob(id, 'a', { state: 'running' });
    store.updateJob(id, 'a', { state: 'failed', reason: 'exit 2', exitCode: 2, logBytes: 40, artifacts: [{ path: 'out/x.txt', bytes: 3 }] });
    store.updateJob(id, 'a', { state: 'failed' });
    const a = store.build(id).jobs[1]!;
    expect(a).toEqual({ name: 'a', state: 'failed', voting: true, reason: 'exit 2', exitCode: 2, startedAt: 5000, finishedAt: 5002, logBytes: 40, artifacts: [{ path: 'out/x.txt', bytes: 3 }] });
    // An exit code of 0 is kept (not mistaken for "none").
    store.updateJob(id, 'b', { state: 'passed', exitCode: 0 });
    expect(store.build(id).jobs[0]).toMatchObject({ exitCode: 0 });
  });

  it('keeps each planned job’s timeout, filters builds by pipeline, and averages a job’s recent passing runs', () => {
    const run = (project: string, pipeline: 'check' | 'gate', name: string, ms: number, state: 'passed' | 'failed' = 'passed'): number => {
      const id = store.enqueue(change(`c${clock}`, 1, project), pipeline).buildId;
      store.start(id);
      store.planJobs(id, [{ name, voting: true, timeoutMs: 60_000 }]);
      clock = 10_000 * id;
      store.updateJob(id, name, { state: 'running' });
      clock += ms - 1; // updateJob's own tick adds the last millisecond
      store.updateJob(id, name, { state });
      return id;
    };
    expect(store.recentJobDuration('p', 'unit')).toBeUndefined();
    const first = run('p', 'check', 'unit', 1_000);
    expect(store.build(first).jobs[0]).toMatchObject({ name: 'unit', timeoutMs: 60_000, startedAt: 10_000 * first, finishedAt: 10_000 * first + 1_000 });
    run('p', 'gate', 'unit', 3_000);
    run('p', 'check', 'unit', 50_000, 'failed'); // failures do not count
    run('other', 'check', 'unit', 90_000); // nor other projects
    expect(store.recentJobDuration('p', 'unit')).toBe(2_000);
    for (let i = 0; i < 5; i++) run('p', 'check', 'unit', 10_000);
    expect(store.recentJobDuration('p', 'unit')).toBe(10_000); // the last five only
    expect(store.builds({ pipeline: 'gate' }).map((b) => b.pipeline)).toEqual(['gate']);
    // Without a timeout the view has none.
    const plain = store.enqueue(change('plain'), 'check').buildId;
    store.planJobs(plain, [{ name: 'unit', voting: true }]);
    expect(store.build(plain).jobs[0]).not.toHaveProperty('timeoutMs');
  });

  it('requeue and recover put running builds back in the queue from scratch', () => {
    const a = store.enqueue(change('A'), 'check').buildId;
    const b = store.enqueue(change('B'), 'check').buildId;
    const c = store.enqueue(change('C'), 'check').buildId;
    for (const id of [a, b]) {
      store.start(id);
      store.setCommit(id, 'c'.repeat(40));
      store.setEnvironment(id, `img-${id}`, true);
      store.planJobs(id, [{ name: 'unit', voting: true }]);
    }
    expect(store.recover()).toEqual([a, b]);
    for (const id of [a, b]) {
      const v = store.build(id);
      expect(v).toMatchObject({ state: 'queued', attempt: 1, jobs: [] });
      expect(v.startedAt).toBeUndefined();
      expect(v.commit).toBeUndefined();
      expect(v.environment).toBeUndefined();
    }
    expect(store.queued().map((q) => q.id)).toEqual([a, b, c]);
    expect(store.recover()).toEqual([]);
    store.start(a);
    expect(store.build(a).attempt).toBe(2);
    // requeue of a build that is not running changes nothing.
    store.requeue(c);
    expect(store.build(c).state).toBe('queued');
  });

  it('pins the environment images of queued and running builds only', () => {
    const a = store.enqueue(change('A'), 'check').buildId;
    const b = store.enqueue(change('B'), 'check').buildId;
    const c = store.enqueue(change('C'), 'check').buildId;
    for (const id of [a, b, c]) store.start(id);
    store.setEnvironment(a, 'airlock-env/p:1', false);
    store.setEnvironment(b, 'airlock-env/p:1', true);
    store.setEnvironment(c, 'airlock-env/p:2', true);
    store.finish(c, 'passed', 'ok');
    expect(store.pinnedImages()).toEqual(['airlock-env/p:1']);
    expect(store.build(a).environment).toEqual({ image: 'airlock-env/p:1', cached: false });
    store.finish(a, 'passed', 'ok');
    store.finish(b, 'passed', 'ok');
    expect(store.pinnedImages()).toEqual([]);
  });

  it('seenEvent is false the first time and true for a redelivery', () => {
    expect(store.seenEvent('gerrit:abc')).toBe(false);
    expect(store.seenEvent('gerrit:abc')).toBe(true);
    expect(store.seenEvent('gerrit:def')).toBe(false);
  });

  it('tracks which finished builds were reported', () => {
    const a = store.enqueue(change('A'), 'check').buildId;
    const b = store.enqueue(change('B'), 'check').buildId;
    expect(store.unreported()).toEqual([]);
    store.finish(a, 'cancelled', 'cancelled');
    store.finish(b, 'cancelled', 'cancelled');
    expect(store.unreported()).toEqual([a, b]);
    store.markReported(a);
    expect(store.unreported()).toEqual([b]);
  });

  it('lists builds newest first, filtered and paged', () => {
    const ids = ['A', 'B', 'C', 'D'].map((c, i) => store.enqueue(change(c, 1, i % 2 ? 'q' : 'p'), 'check').buildId);
    store.start(ids[0]!);
    expect(store.builds({}).map((b) => b.id)).toEqual([...ids].reverse());
    expect(store.builds({ project: 'q' }).map((b) => b.id)).toEqual([ids[3], ids[1]]);
    expect(store.builds({ state: 'running' }).map((b) => b.id)).toEqual([ids[0]]);
    expect(store.builds({ limit: 2 }).map((b) => b.id)).toEqual([ids[3], ids[2]]);
    expect(store.builds({ before: ids[2]!, limit: 1 }).map((b) => b.id)).toEqual([ids[1]]);
    expect(store.builds({ limit: 10_000 })).toHaveLength(4);
  });

  it('lists finished builds with their jobs for retention', () => {
    const a = store.enqueue(change('A'), 'check').buildId;
    store.enqueue(change('B'), 'check');
    store.start(a);
    store.planJobs(a, [{ name: 'unit', voting: true }, { name: 'lint', voting: true }]);
    store.finish(a, 'failed', 'failed: unit');
    expect(store.finishedBuilds()).toEqual([{ buildId: a, result: 'failed', finishedAt: expect.any(Number), jobs: expect.arrayContaining(['unit', 'lint']) }]);
  });

  it('throws NotFoundError for an unknown build or change', () => {
    expect(() => store.build(42)).toThrow(NotFoundError);
    expect(() => store.changeView(42)).toThrow(NotFoundError);
  });
});

describe('openDatabase', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'airlock-store-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps everything across a close and reopen of a file-backed database', () => {
    const file = join(dir, 'nested', 'ci.sqlite');
    const first = openDatabase(file);
    const s1 = new BuildStore(first);
    const a = s1.enqueue(change('A'), 'check').buildId;
    const b = s1.enqueue({ ...change('B'), subject: 'ünïcode ✓' }, 'gate').buildId;
    s1.start(a);
    s1.setCommit(a, 'a'.repeat(40));
    s1.setEnvironment(a, 'airlock-env/p:1', true);
    s1.planJobs(a, [{ name: 'unit', voting: true }]);
    s1.updateJob(a, 'unit', { state: 'running' });
    s1.seenEvent('gerrit:1');
    const before = [s1.build(a), s1.build(b)];
    first.close(); // as after kill -9: every committed transaction is on disk

    const second = openDatabase(file);
    try {
      const s2 = new BuildStore(second);
      expect([s2.build(a), s2.build(b)]).toEqual(before);
      expect(s2.seenEvent('gerrit:1')).toBe(true);
      expect(s2.pinnedImages()).toEqual(['airlock-env/p:1']);
      expect(s2.recover()).toEqual([a]);
      expect(s2.queued().map((q) => q.id)).toEqual([a, b]);
      // New ids continue after the old ones.
      expect(s2.enqueue(change('C'), 'check').buildId).toBe(b + 1);
      expect(second.pragma('user_version', { simple: true })).toBe(5);
    } finally {
      second.close();
    }
  });

  it('refuses a database from a newer airlock with StorageFailedError', () => {
    const file = join(dir, 'ci.sqlite');
    const d = openDatabase(file);
    d.pragma('user_version = 99');
    d.close();
    expect(() => openDatabase(file)).toThrow(StorageFailedError);
  });
});
