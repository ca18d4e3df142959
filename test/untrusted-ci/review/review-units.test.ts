/**
 * The CI's review-system pieces on their own, with a recording ReviewSystem: the per-reviewer vote
 * state, the durable outbox (order, retries, refusals, the exclusive window of a submit), the
 * catch-up's cursor, and what the Gerrit adapter makes of a ChangeInfo. SQLite in memory.
 */
import { testDatabase } from '../../support/store-engines.js';
import { describe, expect, it } from 'vitest';
import { ReviewRefusedError, ReviewUnavailableError } from '#shared/errors.js';
import { createLogger } from '#shared/logging.js';
import type { BuildView } from '#shared/schemas/api/builds.js';
import type { ChangeInfo } from '#shared/review/gerrit-rest.js';
import { CatchUp, OVERLAP_MS } from '../../../untrusted-ci/review/catch-up.js';
import { GerritReviewSystem, toReviewed } from '../../../untrusted-ci/review/gerrit.js';
import { CI_ACCOUNT, startGerrit } from '../../support/gerrit-rig.js';
import { DEFAULT_VOTES } from '../../../untrusted-ci/review/review-messages.js';
import { ReviewOutbox } from '../../../untrusted-ci/review/review-outbox.js';
import { ReviewState } from '../../../untrusted-ci/review/review-state.js';
import type { ReviewedChange, ReviewMessage, ReviewSystem } from '../../../untrusted-ci/review/review-system.js';
import { GateStore } from '../../../untrusted-ci/store/gate-store.js';

const logger = createLogger({ level: 'silent' });
const RULE = { label: 'Code-Review', value: 2 };

/** A review system that records what it is told, and fails as scripted. */
class Recorder implements ReviewSystem {
  readonly kind = 'gerrit' as const;
  readonly account = 'airlock-ci';
  readonly posted: ReviewMessage[] = [];
  failures: Error[] = [];
  changes: ReviewedChange[] = [];
  parseEvent(): never {
    throw new Error('not used');
  }
  async change(): Promise<undefined> {
    return undefined;
  }
  async changedSince(since: number): Promise<ReviewedChange[]> {
    const f = this.failures.shift();
    if (f) throw f;
    return this.changes.filter((c) => c.updated >= since);
  }
  async post(m: ReviewMessage): Promise<void> {
    const f = this.failures.shift();
    if (f) throw f;
    this.posted.push(m);
  }
  async branchTip(): Promise<undefined> {
    return undefined;
  }
  async submit(): Promise<{ kind: 'merged' }> {
    return { kind: 'merged' };
  }
}

const build = (id: number, result: BuildView['result'], source = 'gerrit'): BuildView => ({
  id,
  pipeline: 'check',
  project: 'p',
  branch: 'master',
  change: { id: 1, project: 'p', branch: 'master', change: '7', patchset: 2, ref: 'refs/changes/07/7/2', author: 'ada', source, createdAt: 0 },
  state: 'finished',
  ...(result ? { result } : {}),
  reason: 'r',
  issues: [],
  attempt: 1,
  enqueuedAt: 0,
  jobs: [{ name: 'test', state: result === 'passed' ? 'passed' : 'failed', voting: true, logBytes: 10, startedAt: 1000, finishedAt: 4000, artifacts: [] }],
});

async function outbox(system: Recorder) {
  const db = (await testDatabase());
  const gateStore = new GateStore(db);
  const o = new ReviewOutbox({ db, system, store: { build: async () => build(1, 'passed') }, gateStore, votes: DEFAULT_VOTES, links: { publicUrl: 'https://ci.example.org' }, logger, loop: { backoff: { initialMs: 1, maxMs: 5 }, pollIntervalMs: 20 } });
  return { db, gateStore, o };
}

const settle = async (o: ReviewOutbox, n = 200): Promise<void> => {
  for (let i = 0; i < n && (await o.rows({ state: 'pending' })).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
};

describe('ReviewOutbox', () => {
  it('votes on check results of review-system changes only, once per build, with log links', async () => {
    const sys = new Recorder();
    const { o } = await outbox(sys);
    await o.report(build(1, 'passed'));
    await o.report(build(1, 'passed')); // reported again after a restart: one row
    await o.report(build(2, 'failed'));
    await o.report(build(3, 'cancelled'));
    await o.report(build(4, 'passed', 'api'));
    o.start();
    await settle(o);
    await o.close();
    expect(sys.posted.map((p) => [p.change, p.patchset, p.labels])).toEqual([
      ['7', 2, { Verified: 1 }],
      ['7', 2, { Verified: -1 }],
    ]);
    expect(sys.posted[0]!.message).toContain('- test https://ci.example.org/api/builds/1/logs/test : PASSED in 3s');
    expect(sys.posted[0]!.message).toContain('Build #1: https://ci.example.org/api/builds/1\n'); // the CI's build id, as the CLI names it
  });

  it('keeps a message through outages (retried in order), and skips one the review system refuses', async () => {
    const sys = new Recorder();
    const { o } = await outbox(sys);
    sys.failures = [new ReviewUnavailableError('down'), new ReviewUnavailableError('still down'), new ReviewRefusedError(404, 'no such change')];
    await o.enqueue('a', 'p', '1', 1, { message: 'first' });
    await o.enqueue('b', 'p', '2', 1, { message: 'second' });
    o.start();
    await settle(o);
    await o.close();
    expect(sys.posted.map((p) => p.message)).toEqual(['second']);
    expect((await o.rows()).map((r) => [r.dedupe, r.state, r.attempts])).toEqual([
      ['a', 'refused', 3],
      ['b', 'posted', 1],
    ]);
  });

  it('gives a message up after 50 failed tries, so one cannot hold the others for ever', async () => {
    const sys = new Recorder();
    const { o } = await outbox(sys);
    sys.failures = Array.from({ length: 50 }, () => new ReviewUnavailableError('503 every time'));
    await o.enqueue('stuck', 'p', '1', 1, { message: 'never delivered' });
    await o.enqueue('next', 'p', '2', 1, { message: 'delivered after' });
    o.start();
    await settle(o, 2000);
    await o.close();
    expect((await o.rows()).map((r) => [r.dedupe, r.state, r.attempts])).toEqual([
      ['stuck', 'refused', 50],
      ['next', 'posted', 1],
    ]);
    expect((await o.rows())[0]!.reason).toMatch(/^gave up after 50 attempts: 503 every time/);
  });

  it('a project with no job in the check pipeline is told so, without a -1', async () => {
    const sys = new Recorder();
    const { o } = await outbox(sys);
    await o.report({ ...build(9, 'config-error'), jobs: [], issues: [{ file: '.airlock.yaml', path: 'jobs', message: 'no job runs in the check pipeline', severity: 'error' }] });
    await o.report({ ...build(10, 'config-error'), jobs: [], issues: [{ file: '.airlock.yaml', path: 'jobs.x.command', message: 'required', severity: 'error' }] });
    // A warning beside it (no publish section) does not make it a broken config.
    const warning = { file: '.airlock.yaml', path: 'publish', message: 'no publish section: …', severity: 'warning' as const };
    await o.report({ ...build(11, 'config-error'), jobs: [], issues: [{ file: '.airlock.yaml', path: 'jobs', message: 'no job runs in the check pipeline', severity: 'error' }, warning] });
    o.start();
    await settle(o);
    await o.close();
    expect(sys.posted.map((p) => p.labels ?? null)).toEqual([null, { Verified: -1 }, null]);
    expect(sys.posted[0]!.message).toMatch(/^No job runs in the check pipeline/);
    expect(sys.posted[2]!.message).toMatch(/^No job runs in the check pipeline/);
  });

  it('a vote a closed change refuses (409) is posted again as the message alone', async () => {
    const sys = new Recorder();
    const { o } = await outbox(sys);
    sys.failures = [new ReviewRefusedError(409, 'change is closed')];
    await o.enqueue('a', 'p', '1', 1, { labels: { Verified: -2 }, message: 'failed' });
    o.start();
    await settle(o);
    await o.close();
    expect(sys.posted).toEqual([{ project: 'p', change: '1', patchset: 1, message: 'failed' }]);
    expect((await o.rows())[0]).toMatchObject({ state: 'posted', reason: expect.stringContaining('without its vote') });
  });

  it('turns the gate\'s start and report events into messages, after a cursor that survives', async () => {
    const sys = new Recorder();
    const { o, gateStore } = await outbox(sys);
    await gateStore.save('gate', {}, [
      { kind: 'start', project: 'p', branch: 'master', change: '9', patchset: 1 },
      { kind: 'merged', project: 'p', branch: 'master', change: '9', patchset: 1, commit: 'a'.repeat(40) },
      { kind: 'report', project: 'p', branch: 'master', change: '9', patchset: 1, result: 'SUCCESS', message: 'merged' },
      { kind: 'report', project: 'p', branch: 'master', change: '10', patchset: 3, result: 'FAILURE', message: 'build failed (gate): test: FAILURE', build: 1 },
      { kind: 'report', project: 'p', branch: 'master', change: '11', patchset: 1, result: 'DEQUEUED', message: 'removed from the gate pipeline' },
    ]);
    o.start();
    // The gate's events become rows in the sender's first pass, which start() no longer runs
    // within its own call: wait for the three rows before waiting for them to go out.
    for (let i = 0; i < 200 && (await o.rows()).length < 3; i++) await new Promise((r) => setTimeout(r, 10));
    await settle(o);
    await o.close();
    expect(sys.posted.map((p) => [p.change, p.labels ?? null])).toEqual([
      ['9', { Verified: 0 }],
      ['10', { Verified: -2 }],
      ['11', null],
    ]);
    expect(sys.posted[1]!.message).toMatch(/^Build failed \(gate pipeline\)\. build failed \(gate\): test: FAILURE/);
  });

  it('exclusive(): the change\'s queued messages go first, and nothing else of it in between', async () => {
    const sys = new Recorder();
    const { o } = await outbox(sys);
    await o.enqueue('start', 'p', '5', 1, { labels: { Verified: 0 }, message: 'Starting gate jobs.' });
    const order: string[] = [];
    await o.exclusive('p', '5', async () => {
      order.push(...sys.posted.map((p) => p.message));
      await o.enqueue('later', 'p', '5', 1, { message: 'queued during the submit' });
      order.push('+2 and submit');
    });
    expect(order).toEqual(['Starting gate jobs.', '+2 and submit']);
    o.start();
    await settle(o);
    await o.close();
    expect(sys.posted.map((p) => p.message)).toEqual(['Starting gate jobs.', 'queued during the submit']);
  });
});

describe('ReviewState', () => {
  const state = async () => new ReviewState(await testDatabase(), { rule: RULE, self: 'airlock-ci' });
  const ps = (s: ReviewState, patchset: number, kind?: 'TRIVIAL_REBASE' | 'REWORK') => s.patchset({ project: 'p', change: '1', branch: 'master', patchset, ref: `refs/changes/01/1/${patchset}`, ...(kind ? { kind } : {}) });
  const vote = (s: ReviewState, account: string, value: number, patchset = 1) => s.votes({ project: 'p', change: '1', branch: 'master', patchset, ref: `refs/changes/01/1/${patchset}`, account, votes: { 'Code-Review': value } });

  it('is ready with a +2 from a person and no veto; a veto anywhere, a rework, WIP or private take it away', async () => {
    const s = await state();
    await ps(s, 1);
    expect(await vote(s, 'grace', 2)).toEqual({ before: false, after: true, patchset: 1 });
    expect(await vote(s, 'bob', -2)).toEqual({ before: true, after: false, patchset: 1 });
    expect((await vote(s, 'bob', 0)).after).toBe(true);
    expect(await ps(s, 2, 'TRIVIAL_REBASE')).toEqual({ before: true, after: true, patchset: 2 });
    expect((await s.flags('p', '1', { wip: true })).after).toBe(false);
    expect((await s.flags('p', '1', { wip: false })).after).toBe(true);
    expect((await ps(s, 3, 'REWORK')).after).toBe(false);
    expect((await vote(s, 'grace', 2, 2)).after).toBe(false); // a vote on an outdated patch set counts nothing
    expect((await vote(s, 'grace', 2, 3)).after).toBe(true);
    expect((await s.flags('p', '1', { private: true })).after).toBe(false);
  });

  it('carries a veto over a rework, and takes a missed patch set from a vote on it', async () => {
    const s = await state();
    await ps(s, 1);
    await vote(s, 'linus', -2);
    await vote(s, 'grace', 2);
    expect((await ps(s, 2, 'REWORK')).after).toBe(false);
    expect((await s.get('p', '1'))?.votes).toEqual({ 'Code-Review': { linus: -2 } });
    // A comment on patch set 4 before its patchset-created arrived (webhooks are not ordered).
    // The veto carries over to it too.
    expect(await vote(s, 'grace', 2, 4)).toEqual({ before: false, after: false, patchset: 4 });
    expect(await s.get('p', '1')).toMatchObject({ patchset: 4, votes: { 'Code-Review': { linus: -2, grace: 2 } } });
    expect((await vote(s, 'linus', 0, 4)).after).toBe(true);
  });

  it('reconcile replaces what it knew by the review system\'s record', async () => {
    const s = await state();
    await ps(s, 1);
    await vote(s, 'grace', 2);
    const r = await s.reconcile({ project: 'p', branch: 'master', change: '1', status: 'abandoned', patchset: 1, revision: 'a'.repeat(40), ref: 'refs/changes/01/1/1', wip: false, private: false, owner: 'ada', votes: { 'Code-Review': { grace: 2 } }, updated: 0 });
    expect(r).toMatchObject({ before: true, after: false, newPatchset: false, oldStatus: 'open' });
  });
});

describe('CatchUp', () => {
  const reviewed = (change: string, updated: number): ReviewedChange => ({ project: 'p', branch: 'master', change, status: 'open', patchset: 1, revision: 'a'.repeat(40), ref: `refs/changes/0${change}/${change}/1`, wip: false, private: false, owner: 'ada', votes: {}, updated });

  it('starts from now on a first start, then reads from its cursor (with overlap), keeping it through a failure', async () => {
    const db = (await testDatabase());
    const sys = new Recorder();
    let now = 1_000_000;
    const applied: string[] = [];
    const c = new CatchUp({ db, system: sys, apply: (x) => void applied.push(x.change), logger, everyMs: 0, now: () => now });
    sys.changes = [reviewed('1', 900_000)];
    c.start();
    await c.run();
    expect(applied).toEqual([]); // history before the first start is not replayed
    expect(await c.cursor()).toBe(1_000_000);
    sys.changes.push(reviewed('2', 1_000_500), reviewed('3', 1_000_100));
    expect(await c.run()).toBe(2);
    expect(applied).toEqual(['3', '2']); // oldest first
    expect(await c.cursor()).toBe(1_000_500);
    sys.failures = [new ReviewUnavailableError('down')];
    now = 5_000_000;
    expect(await c.run()).toBe(0);
    expect(await c.cursor()).toBe(1_000_500); // nothing read, nothing skipped
    sys.changes.push(reviewed('4', 1_000_400 + OVERLAP_MS - 1));
    expect(await c.run()).toBeGreaterThan(0);
    expect(applied).toContain('4');
    await c.close();
  });
});

describe('GerritReviewSystem against the stand-in', () => {
  it('reads back every change updated since, window after window when one is full', async () => {
    const rig = await startGerrit();
    try {
      rig.gerrit.createProject('w/p', { a: 'a\n' });
      const since = Date.now() - 1000;
      const numbers = Array.from({ length: 7 }, (_, i) => rig.gerrit.upload({ project: 'w/p', owner: 'ada', subject: `c${i}`, files: { [`f${i}`]: `${i}\n` } }).number);
      const sys = new GerritReviewSystem({ url: rig.gerrit.url, credentials: { username: CI_ACCOUNT, password: rig.passwords[CI_ACCOUNT]! } });
      const all = await sys.changedSince(since, { max: 3 });
      expect(all.map((c) => Number(c.change)).sort((a, b) => a - b)).toEqual(numbers);
      const queries = rig.gerrit.requests.filter((r) => r.path.startsWith('/changes') && r.query.includes('after'));
      expect(queries.some((q) => decodeURIComponent(q.query).includes('before:'))).toBe(true);
    } finally {
      await rig.gerrit.close();
    }
  });
});

describe('toReviewed (Gerrit ChangeInfo)', () => {
  it('takes the current patch set, the votes per account (no zeros), and the flags', () => {
    const sha = 'b'.repeat(40);
    const info: ChangeInfo = {
      id: 'p~7',
      project: 'p',
      branch: 'refs/heads/main',
      status: 'NEW',
      updated: '2026-12-06 10:00:00.123000000',
      _number: 7,
      owner: { _account_id: 1, username: 'ada' },
      current_revision: sha,
      revisions: { [sha]: { _number: 3, kind: 'TRIVIAL_REBASE', ref: 'refs/changes/07/7/3', uploader: { username: 'ada' } } },
      labels: { 'Code-Review': { all: [{ username: 'grace', value: 2 }, { username: 'bob', value: 0 }, { email: 'x@example.org', value: -1 }] } },
      work_in_progress: true,
    };
    expect(toReviewed(info)).toEqual({
      project: 'p',
      branch: 'main',
      change: '7',
      status: 'open',
      patchset: 3,
      revision: sha,
      ref: 'refs/changes/07/7/3',
      patchsetKind: 'TRIVIAL_REBASE',
      wip: true,
      private: false,
      owner: 'ada',
      uploader: 'ada',
      votes: { 'Code-Review': { grace: 2, 'x@example.org': -1 } },
      updated: Date.parse('2026-12-06T10:00:00.123Z'),
    });
    expect(toReviewed({ ...info, current_revision: undefined })).toBeUndefined();
  });
});
