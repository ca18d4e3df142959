/**
 * Model tier (docs/testing.md "Model tier"): the gate and check managers driven directly with events, no simulator.
 * The scenarios follow Zuul's tests/unit/test_scheduler.py (each `it` names the Zuul test it
 * ports). `World` plays the rest of the system the way Zuul's test executor does: prepares are
 * answered at once (or held), builds are held until released (`executor.hold_jobs_in_build` /
 * `release`), a build fails iff its state contains a change named by a fail rule
 * (`executor.failJob(job, change)`), and submits merge unless refused.
 */
import { describe, expect, it } from 'vitest';
import { ZodError } from 'zod';
import { InternalError } from '#shared/errors.js';
import { DependentPipelineManager } from '../../../untrusted-ci/pipelines/managers/dependent.js';
import { IndependentPipelineManager } from '../../../untrusted-ci/pipelines/managers/independent.js';
import type { PipelineManager } from '../../../untrusted-ci/pipelines/managers/pipeline-manager.js';
import type { JobNode } from '../../../untrusted-ci/pipelines/model/build-set.js';
import type { Effect, PipelineEvent, ReportResult } from '../../../untrusted-ci/pipelines/model/events.js';
import { WindowConfig } from '../../../untrusted-ci/pipelines/model/window.js';

type PrepareEffect = Extract<Effect, { type: 'prepare' }>;
type SubmitEffect = Extract<Effect, { type: 'submit' }>;

/** One build as the fake executor saw it; `changes` is its state, head first ('A B C'). */
interface Build {
  buildSet: number;
  item: number;
  job: string;
  change: string;
  changes: string;
  result: string | null;
}

const job = (name: string, o: Partial<JobNode> = {}): JobNode => ({ name, voting: true, needs: [], ...o });

class World {
  now = 0;
  /** Every effect the manager produced, in order. */
  readonly log: Effect[] = [];
  readonly history: Build[] = [];
  readonly failRules: { job: string; change: string }[] = [];
  jobs: JobNode[] = [job('test1'), job('test2')];
  autoPrepare = true;
  autoSubmit = true;
  readonly pendingPrepares: PrepareEffect[] = [];
  readonly pendingSubmits: SubmitEffect[] = [];
  /** The next submit of these changes is refused (the branch moved). */
  readonly refuseSubmit = new Set<string>();
  /** [a, b]: b does not merge on top of a. */
  readonly conflicts: [string, string][] = [];
  private readonly patchsets = new Map<string, number>();
  private readonly projects = new Map<string, string>();

  private constructor(
    public m: PipelineManager,
    private readonly restore: (json: unknown) => PipelineManager,
  ) {}

  static gate(o: { window?: Partial<WindowConfig>; queues?: Record<string, string[]> } = {}): World {
    let w: World | undefined;
    const opts = { now: () => w!.now, window: WindowConfig.parse(o.window ?? {}), queues: o.queues ?? {} };
    w = new World(new DependentPipelineManager(opts), (json) => DependentPipelineManager.fromJSON(opts, json));
    return w;
  }

  static check(): World {
    let w: World | undefined;
    const now = () => w!.now;
    w = new World(new IndependentPipelineManager(now), (json) => IndependentPipelineManager.fromJSON(now, json));
    return w;
  }

  get gateManager(): DependentPipelineManager {
    return this.m as DependentPipelineManager;
  }

  // ---- triggers -------------------------------------------------------------------------------

  /** Tell the manager about a change; `needs` are ids, at their current patchsets. */
  change(id: string, o: { project?: string; needs?: string[]; approved?: boolean; patchset?: number } = {}): Effect[] {
    const patchset = o.patchset ?? this.patchsets.get(id) ?? 1;
    const project = o.project ?? this.projects.get(id) ?? 'org/project';
    this.patchsets.set(id, patchset);
    this.projects.set(id, project);
    const needs = (o.needs ?? []).map((n) => ({ change: n, patchset: this.patchsets.get(n) ?? 1 }));
    return this.send([{ type: 'change', change: { id, project, branch: 'master', patchset, needs, approved: o.approved ?? false, ref: `refs/changes/${id}/${patchset}` } }]);
  }

  approve(...ids: string[]): Effect[] {
    return this.send(ids.map((change) => ({ type: 'approval', change, approved: true })));
  }

  // ---- the fake world -------------------------------------------------------------------------

  /** Hand events in, then keep answering what can be answered at once, as separate batches. */
  send(events: PipelineEvent[]): Effect[] {
    const all: Effect[] = [];
    for (let batch = events; batch.length > 0; ) {
      const effects = this.m.handle(batch);
      all.push(...effects);
      this.log.push(...effects);
      batch = this.apply(effects);
    }
    return all;
  }

  private apply(effects: Effect[]): PipelineEvent[] {
    const answers: PipelineEvent[] = [];
    for (const e of effects) {
      switch (e.type) {
        case 'prepare':
          if (this.autoPrepare) answers.push(this.prepared(e));
          else this.pendingPrepares.push(e);
          break;
        case 'start-build':
          this.history.push({ buildSet: e.buildSet, item: e.item, job: e.job.name, change: e.change, changes: e.state.map((s) => s.change).join(' '), result: null });
          break;
        case 'cancel-builds':
          for (const b of this.history) if (b.buildSet === e.buildSet && b.result === null && e.jobs.includes(b.job)) b.result = 'ABORTED';
          break;
        case 'submit':
          if (this.autoSubmit) answers.push(this.submitted(e));
          else this.pendingSubmits.push(e);
          break;
        default:
          break;
      }
    }
    return answers;
  }

  private prepared(e: PrepareEffect): PipelineEvent {
    const ids = e.state.map((s) => s.change);
    const bad = this.conflicts.find(([a, b]) => b === e.change && ids.includes(a));
    if (bad) return { type: 'prepared', buildSet: e.buildSet, outcome: { kind: 'conflict', message: `${bad[1]} conflicts with ${bad[0]}` } };
    return { type: 'prepared', buildSet: e.buildSet, outcome: { kind: 'ok', jobs: this.jobs.map((j) => ({ ...j, needs: [...j.needs] })) } };
  }

  private submitted(e: SubmitEffect): PipelineEvent {
    const merged = !this.refuseSubmit.delete(e.change);
    return { type: 'submitted', item: e.item, merged, ...(merged ? {} : { message: 'the branch moved' }) };
  }

  /** Answer held prepares (all, or those of `change`). */
  answerPrepares(change?: string): Effect[] {
    const mine = this.pendingPrepares.filter((p) => change === undefined || p.change === change);
    for (const p of mine) this.pendingPrepares.splice(this.pendingPrepares.indexOf(p), 1);
    return this.send(mine.map((p) => this.prepared(p)));
  }

  answerSubmits(): Effect[] {
    const mine = this.pendingSubmits.splice(0);
    return this.send(mine.map((s) => this.submitted(s)));
  }

  fail(jobName: string, change: string): void {
    this.failRules.push({ job: jobName, change });
  }

  running(): Build[] {
    return this.history.filter((b) => b.result === null);
  }

  /** Finish the running builds that match, in one batch (Zuul `executor.release(regex)`). */
  release(match: (b: Build) => boolean = () => true): Effect[] {
    const builds = this.running().filter(match);
    const events: PipelineEvent[] = builds.map((b) => {
      const fails = this.failRules.some((r) => r.job === b.job && b.changes.split(' ').includes(r.change));
      b.result = fails ? 'FAILURE' : 'SUCCESS';
      return { type: 'build-completed', buildSet: b.buildSet, job: b.job, result: fails ? 'FAILURE' : 'SUCCESS' };
    });
    return this.send(events);
  }

  releaseJob(change: string, jobName: string): Effect[] {
    const n = this.running().filter((b) => b.change === change && b.job === jobName).length;
    expect(n, `running ${jobName} of ${change}`).toBe(1);
    return this.release((b) => b.change === change && b.job === jobName);
  }

  /** Release until nothing runs (the end of a Zuul test: hold_jobs_in_build = False; release()). */
  settle(): void {
    for (let i = 0; this.running().length > 0; i++) {
      if (i > 100) throw new Error('did not settle');
      this.release();
    }
  }

  /** Save and restore the manager through JSON text, as the store does. */
  reload(): void {
    const text = JSON.stringify(this.m.toJSON());
    this.m = this.restore(JSON.parse(text));
    expect(this.m.toJSON()).toEqual(JSON.parse(text));
  }

  // ---- what happened --------------------------------------------------------------------------

  reports(change: string): ReportResult[] {
    return this.log.flatMap((e) => (e.type === 'report' && e.change === change ? [e.result] : []));
  }
  /** Every change's final reports, for "exactly one final report per change". */
  allReports(): Record<string, ReportResult[]> {
    const out: Record<string, ReportResult[]> = {};
    for (const e of this.log) if (e.type === 'report') (out[e.change] ??= []).push(e.result);
    return out;
  }
  starts(change: string): number {
    return this.log.filter((e) => e.type === 'report-start' && e.change === change).length;
  }
  /** The states asked for, in order: 'B: A B' is B tested on A+B. */
  prepares(): string[] {
    return this.log.flatMap((e) => (e.type === 'prepare' ? [`${e.change}: ${e.state.map((s) => s.change).join(' ')}`] : []));
  }
  merged(): string[] {
    return this.log.flatMap((e) => (e.type === 'merged' ? [e.change] : []));
  }
  windows(): number[] {
    return this.log.flatMap((e) => (e.type === 'window' ? [e.window] : []));
  }
  aborted(): number {
    return this.history.filter((b) => b.result === 'ABORTED').length;
  }
  /** The ended build sets' fates, per change, in order. */
  fates(change: string): string[] {
    return this.log.flatMap((e) => (e.type === 'build-set-ended' && e.buildSet.change === change ? [e.buildSet.fate ?? 'none'] : []));
  }
  queueLength(): number {
    return this.m.changeQueues.reduce((n, q) => n + q.length, 0);
  }
  itemId(change: string): number {
    const item = this.m.changeQueues.flatMap((q) => q.items).find((i) => i.live && i.change === change);
    if (!item) throw new Error(`no live item for ${change}`);
    return item.id;
  }
  buildSetId(change: string): number {
    const item = this.m.changeQueues.flatMap((q) => q.items).find((i) => i.live && i.change === change);
    if (!item) throw new Error(`no live item for ${change}`);
    return item.buildSet.id;
  }
}

/** Three approved changes in org/project, approved in order (most of Zuul's gate tests). */
function gateABC(w: World, ...ids: string[]): void {
  for (const id of ids.length > 0 ? ids : ['A', 'B', 'C']) w.change(id);
  for (const id of ids.length > 0 ? ids : ['A', 'B', 'C']) w.approve(id);
}

describe('DependentPipelineManager (gate), after Zuul test_scheduler.py', () => {
  it('tests each item on the items ahead of it and merges them in order (test_parallel_changes)', () => {
    const w = World.gate();
    gateABC(w);
    expect(w.prepares()).toEqual(['A: A', 'B: A B', 'C: A B C']);
    expect(w.running().map((b) => `${b.job} ${b.changes}`)).toEqual(['test1 A', 'test2 A', 'test1 A B', 'test2 A B', 'test1 A B C', 'test2 A B C']);
    // The prepare effect carries what the merger needs, the item last.
    const prep = w.log.find((e): e is PrepareEffect => e.type === 'prepare' && e.change === 'C')!;
    expect(prep.state).toEqual([
      { change: 'A', patchset: 1, project: 'org/project', branch: 'master', ref: 'refs/changes/A/1' },
      { change: 'B', patchset: 1, project: 'org/project', branch: 'master', ref: 'refs/changes/B/1' },
      { change: 'C', patchset: 1, project: 'org/project', branch: 'master', ref: 'refs/changes/C/1' },
    ]);
    w.settle();
    expect(w.merged()).toEqual(['A', 'B', 'C']);
    expect(w.history).toHaveLength(6); // Rule 4: success at the head resets nothing
    expect(w.aborted()).toBe(0);
    expect(w.allReports()).toEqual({ A: ['SUCCESS'], B: ['SUCCESS'], C: ['SUCCESS'] });
    expect(w.windows()).toEqual([21, 22, 23]);
    expect(w.queueLength()).toBe(0);
  });

  it('re-tests the items behind a failing head without it, at once (test_failed_change_at_head)', () => {
    const w = World.gate();
    w.fail('test1', 'A');
    gateABC(w);
    expect(w.starts('A') + w.starts('B') + w.starts('C')).toBe(3);

    w.releaseJob('A', 'test1'); // fails: A is failing, B and C are reset
    expect(w.aborted()).toBe(4);
    expect(w.prepares()).toEqual(['A: A', 'B: A B', 'C: A B C', 'B: B', 'C: B C']);
    expect(w.running().map((b) => `${b.job} ${b.changes}`)).toEqual(['test2 A', 'test1 B', 'test2 B', 'test1 B C', 'test2 B C']);
    expect(w.fates('B')).toEqual(['reset']);
    expect(w.fates('C')).toEqual(['reset']);
    expect(w.reports('A')).toEqual([]); // Rule 2: not reported before its last job ends

    w.releaseJob('A', 'test2');
    expect(w.reports('A')).toEqual(['FAILURE']);
    expect(w.windows()).toEqual([10]);
    w.settle();
    expect(w.merged()).toEqual(['B', 'C']);
    expect(w.history).toHaveLength(10);
    // A gate reset is never reported: start once per item, one final report per change.
    for (const c of ['A', 'B', 'C']) expect(w.starts(c), c).toBe(1);
    expect(w.allReports()).toEqual({ A: ['FAILURE'], B: ['SUCCESS'], C: ['SUCCESS'] });
    expect(w.windows()).toEqual([10, 11, 12]);
  });

  it('dequeues a failing head once: its later failures reset nothing again (test_head_is_dequeued_once)', () => {
    const w = World.gate();
    w.fail('test1', 'A');
    w.fail('test2', 'A');
    gateABC(w);
    w.releaseJob('A', 'test1');
    expect(w.aborted()).toBe(4);
    const prepares = w.prepares().length;
    w.releaseJob('A', 'test2');
    expect(w.aborted()).toBe(4);
    expect(w.prepares()).toHaveLength(prepares);
    w.settle();
    expect(w.aborted()).toBe(4);
    expect(w.history).toHaveLength(10);
    expect(w.merged()).toEqual(['B', 'C']);
    expect(w.allReports()).toEqual({ A: ['FAILURE'], B: ['SUCCESS'], C: ['SUCCESS'] });
  });

  it('re-tests a failed item without the head that failed after it (test_two_failed_changes_at_head)', () => {
    const w = World.gate();
    w.fail('test1', 'A');
    w.fail('test1', 'B');
    gateABC(w);
    w.releaseJob('B', 'test1'); // B fails on A+B: C moves behind A
    expect(w.prepares().slice(3)).toEqual(['C: A C']);
    w.releaseJob('A', 'test1'); // A fails: B's failure on A+B is not final; C goes back behind B
    expect(w.prepares().slice(4)).toEqual(['B: B', 'C: B C']);
    expect(w.fates('B')).toEqual(['reset']);
    w.settle();
    expect(w.merged()).toEqual(['C']);
    expect(w.allReports()).toEqual({ A: ['FAILURE'], B: ['FAILURE'], C: ['SUCCESS'] });
    expect(w.prepares().at(-1)).toBe('C: C');
    for (const c of ['A', 'B', 'C']) expect(w.starts(c), c).toBe(1);
  });

  it('ignores a non-voting job failure: no reset, and the change merges (test_nonvoting_job)', () => {
    const w = World.gate();
    w.jobs = [job('unit'), job('experimental', { voting: false })];
    w.fail('experimental', 'A');
    gateABC(w, 'A', 'B');
    w.releaseJob('A', 'experimental');
    expect(w.aborted()).toBe(0);
    w.settle();
    expect(w.prepares()).toEqual(['A: A', 'B: A B']);
    expect(w.merged()).toEqual(['A', 'B']);
    const final = w.log.find((e) => e.type === 'report' && e.change === 'A');
    expect(final).toMatchObject({ result: 'SUCCESS' });
  });

  it('keeps a change that needs a failing change behind it and drops it after (test_failing_dependent_changes)', () => {
    // E, D -> C -> B, A; B fails.
    const w = World.gate();
    w.fail('test1', 'B');
    for (const id of ['A', 'B', 'E']) w.change(id);
    w.change('C', { needs: ['B'] });
    w.change('D', { needs: ['C'] });
    w.approve('A');
    expect(w.approve('D')).toEqual([]); // C is not approved: D waits, silently
    expect(w.approve('C')).toEqual([]); // B is not approved
    w.approve('B'); // pulls C, then D, in behind it
    w.approve('E');
    expect(w.prepares()).toEqual(['A: A', 'B: A B', 'C: A B C', 'D: A B C D', 'E: A B C D E']);

    w.releaseJob('B', 'test1');
    // Rule 5: C and D stop but keep their build sets and places; E is re-parented onto A.
    expect(w.prepares().slice(5)).toEqual(['E: A E']);
    expect(w.running().filter((b) => b.change === 'C' || b.change === 'D')).toEqual([]);
    expect(w.fates('C')).toEqual([]);
    expect(w.fates('D')).toEqual([]);

    w.settle();
    expect(w.merged()).toEqual(['A', 'E']);
    expect(w.allReports()).toEqual({ A: ['SUCCESS'], B: ['FAILURE'], C: ['DEPENDENCY_FAILED'], D: ['DEPENDENCY_FAILED'], E: ['SUCCESS'] });
    for (const c of ['A', 'B', 'C', 'D', 'E']) expect(w.starts(c), c).toBe(1);
    expect(w.queueLength()).toBe(0);
  });

  it('reports a merge conflict once, without a start report, and tests the rest without it (test_project_merge_conflict)', () => {
    const w = World.gate();
    w.conflicts.push(['A', 'B']);
    gateABC(w);
    // B's conflict is known before C is approved, so C is never tested on it.
    expect(w.prepares()).toEqual(['A: A', 'B: A B', 'C: A C']);
    expect(w.starts('B')).toBe(0);
    w.settle();
    expect(w.merged()).toEqual(['A', 'C']);
    expect(w.allReports()).toEqual({ A: ['SUCCESS'], B: ['MERGE_CONFLICT'], C: ['SUCCESS'] });
    expect(w.history.some((b) => b.change === 'B')).toBe(false);
  });

  it('submit refused: MERGE_FAILURE, the items behind are reset, the window stays (test_submit_failure)', () => {
    const w = World.gate();
    w.autoSubmit = false;
    w.refuseSubmit.add('A');
    gateABC(w, 'A', 'B');
    w.release();
    expect(w.pendingSubmits.map((s) => s.change)).toEqual(['A']); // B passed too but waits behind A
    expect(w.reports('B')).toEqual([]);
    w.answerSubmits();
    expect(w.reports('A')).toEqual(['MERGE_FAILURE']);
    expect(w.fates('A')).toEqual(['failed']);
    expect(w.fates('B')).toEqual(['reset']);
    expect(w.prepares()).toEqual(['A: A', 'B: A B', 'B: B']);
    expect(w.windows()).toEqual([]);
    expect(w.gateManager.changeQueues[0]!.window).toBe(20);
    w.autoSubmit = true;
    w.settle();
    expect(w.merged()).toEqual(['B']);
    expect(w.windows()).toEqual([21]);
    expect(w.allReports()).toEqual({ A: ['MERGE_FAILURE'], B: ['SUCCESS'] });
  });

  it('holds the items behind a submit in flight and resets them when it is refused', () => {
    const w = World.gate();
    w.autoSubmit = false;
    w.refuseSubmit.add('A');
    w.jobs = [job('test1')];
    w.change('A');
    w.change('B');
    w.approve('A');
    w.release();
    expect(w.pendingSubmits).toHaveLength(1);
    // B is approved while A's submit is in flight: it is not prepared on a state that is not yet decided.
    w.approve('B');
    expect(w.prepares()).toEqual(['A: A']);
    w.answerSubmits();
    expect(w.reports('A')).toEqual(['MERGE_FAILURE']);
    expect(w.prepares()).toEqual(['A: A', 'B: B']);
  });

  it('ignores answers for a build set that was reset meanwhile (prepared, build-completed)', () => {
    const w = World.gate();
    w.autoPrepare = false;
    w.fail('test1', 'A');
    w.change('A');
    w.change('B');
    w.approve('A');
    w.answerPrepares('A');
    w.approve('B');
    const stale = w.pendingPrepares[0]!;
    expect(stale.change).toBe('B');
    w.releaseJob('A', 'test1'); // B is reset while its prepare is in flight
    expect(w.pendingPrepares.map((p) => p.state.map((s) => s.change).join(' '))).toEqual(['A B', 'B']);
    const before = JSON.stringify(w.m.toJSON());
    // The merger answers the old request late: nothing happens.
    expect(w.send([{ type: 'prepared', buildSet: stale.buildSet, outcome: { kind: 'ok', jobs: [job('test1')] } }])).toEqual([]);
    expect(w.send([{ type: 'build-completed', buildSet: stale.buildSet, job: 'test1', result: 'SUCCESS' }])).toEqual([]);
    expect(JSON.stringify(w.m.toJSON())).toBe(before);
    w.pendingPrepares.splice(0, 1);
    w.answerPrepares('B');
    expect(w.running().filter((b) => b.change === 'B').map((b) => b.changes)).toEqual(['B', 'B']);

    // A build of a reset build set that still reports: ignored too.
    const w2 = World.gate();
    w2.fail('test1', 'A');
    gateABC(w2, 'A', 'B');
    const oldB = w2.buildSetId('B');
    w2.releaseJob('A', 'test1');
    expect(w2.buildSetId('B')).not.toBe(oldB);
    const json = JSON.stringify(w2.m.toJSON());
    expect(w2.send([{ type: 'build-completed', buildSet: oldB, job: 'test2', result: 'FAILURE' }])).toEqual([]);
    expect(w2.send([{ type: 'prepared', buildSet: oldB, outcome: { kind: 'conflict', message: 'late' } }])).toEqual([]);
    // A second answer for the current build set's prepare is ignored as well.
    expect(w2.send([{ type: 'prepared', buildSet: w2.buildSetId('B'), outcome: { kind: 'conflict', message: 'twice' } }])).toEqual([]);
    expect(JSON.stringify(w2.m.toJSON())).toBe(json);
    w2.settle();
    expect(w2.merged()).toEqual(['B']);
  });

  it('ignores a submitted answer for an item that is not submitting', () => {
    const w = World.gate();
    gateABC(w, 'A', 'B');
    const json = JSON.stringify(w.m.toJSON());
    expect(w.send([{ type: 'submitted', item: w.itemId('A'), merged: true }])).toEqual([]);
    expect(w.send([{ type: 'submitted', item: w.itemId('B'), merged: false, message: 'no' }])).toEqual([]);
    expect(w.send([{ type: 'submitted', item: 99_999, merged: true }])).toEqual([]);
    expect(JSON.stringify(w.m.toJSON())).toBe(json);
    w.settle();
    expect(w.merged()).toEqual(['A', 'B']);
  });

  it('refuses a dependency cycle with a FAILURE report and enqueues nothing', () => {
    const w = World.gate();
    w.change('A', { needs: ['B'] });
    w.change('B', { needs: ['A'], approved: true });
    const effects = w.approve('A');
    expect(effects).toEqual([{ type: 'report', item: null, change: 'A', patchset: 1, result: 'FAILURE', message: expect.stringMatching(/cycle/) }]);
    expect(w.queueLength()).toBe(0);
  });

  // Zuul `addChange` checks `areChangesReadyToBeEnqueued(cycle)` before the cycle rule, so a cycle
  // whose other member is not approved yet is ignored silently (manager/__init__.py addChange).
  it('ignores a cycle silently while another member is unapproved (Zuul: readiness before the cycle check)', () => {
    const w = World.gate();
    w.change('A', { needs: ['B'] });
    w.change('B', { needs: ['A'] });
    expect(w.approve('A')).toEqual([]);
  });

  it('keeps a change that needs an unapproved change out silently, and pulls it in when the need is approved (test_patch_order)', () => {
    const w = World.gate();
    w.change('A');
    w.change('B', { needs: ['A'] });
    w.change('C', { needs: ['B'] });
    expect(w.approve('C')).toEqual([]);
    w.approve('A');
    expect(w.prepares()).toEqual(['A: A']);
    w.approve('B');
    expect(w.prepares()).toEqual(['A: A', 'B: A B', 'C: A B C']);
    w.settle();
    expect(w.merged()).toEqual(['A', 'B', 'C']);
    expect(w.allReports()).toEqual({ A: ['SUCCESS'], B: ['SUCCESS'], C: ['SUCCESS'] });
  });

  it('refuses a change whose need is in a queue it does not share, then takes it once the need merged (test_crd_unshared_gate)', () => {
    const w = World.gate();
    w.change('B', { project: 'org/project2' });
    w.change('A', { project: 'org/project1', needs: ['B'] });
    w.approve('B');
    const effects = w.approve('A');
    expect(effects).toEqual([{ type: 'report', item: null, change: 'A', patchset: 1, result: 'FAILURE', message: expect.stringMatching(/does not share a change queue/) }]);
    w.settle();
    expect(w.merged()).toEqual(['B']);
    w.approve('A'); // re-approved after B merged
    w.settle();
    expect(w.merged()).toEqual(['B', 'A']);
    expect(w.prepares()).toEqual(['B: B', 'A: A']);
  });

  it('tests a Depends-On across projects of a shared queue on both, need first (test_crd_gate)', () => {
    const w = World.gate({ queues: { integrated: ['org/project1', 'org/project2'] } });
    w.change('B', { project: 'org/project2' });
    w.change('A', { project: 'org/project1', needs: ['B'] });
    expect(w.approve('A')).toEqual([]);
    w.approve('B');
    expect(w.prepares()).toEqual(['B: B', 'A: B A']);
    w.settle();
    expect(w.merged()).toEqual(['B', 'A']);
    expect(w.gateManager.changeQueues.map((q) => q.name)).toEqual(['integrated']);
  });

  it('rate-limits with the window: shrinks on failure, grows on merge, up to the ceiling (test_queue_rate_limiting)', () => {
    const w = World.gate({ window: { initial: 2, floor: 1, ceiling: 2, increase: 1, decreaseFactor: 2 } });
    w.fail('test1', 'A');
    gateABC(w);
    expect(w.prepares()).toEqual(['A: A', 'B: A B']); // C is outside the window
    expect(w.gateManager.changeQueues[0]!.items.map((i) => i.active)).toEqual([true, true, false]);
    w.releaseJob('A', 'test1');
    expect(w.prepares().slice(2)).toEqual(['B: B']);
    w.releaseJob('A', 'test2');
    expect(w.windows()).toEqual([1]);
    expect(w.running().map((b) => b.change)).toEqual(['B', 'B']); // only B is active
    w.release();
    expect(w.merged()).toEqual(['B']);
    expect(w.prepares().slice(3)).toEqual(['C: C']);
    w.settle();
    expect(w.merged()).toEqual(['B', 'C']);
    expect(w.windows()).toEqual([1, 2, 2]);
    expect(w.gateManager.changeQueues[0]!.window).toBe(2);
  });

  it('never shrinks the window below its floor', () => {
    const w = World.gate({ window: { initial: 4, floor: 3, decreaseFactor: 2 } });
    w.fail('test1', 'A');
    w.fail('test1', 'B');
    gateABC(w, 'A', 'B');
    w.settle();
    expect(w.gateManager.changeQueues[0]!.window).toBe(3);
    expect(w.windows()).toEqual([3]); // the second failure leaves it at the floor: no effect
  });

  it('a new patchset dequeues the old item; changes that need the old patchset follow (test_new_patchset_dequeues_old)', () => {
    // D, C -> B -> A
    const w = World.gate();
    w.change('A');
    w.change('B', { needs: ['A'] });
    w.change('C', { needs: ['B'] });
    w.change('D');
    w.approve('A', 'B', 'C', 'D');
    expect(w.prepares()).toEqual(['A: A', 'B: A B', 'C: A B C', 'D: A B C D']);
    w.change('B', { needs: ['A'], patchset: 2 });
    expect(w.reports('B')).toEqual(['DEQUEUED']);
    expect(w.reports('C')).toEqual(['DEPENDENCY_FAILED']);
    expect(w.aborted()).toBe(6);
    expect(w.prepares().slice(4)).toEqual(['D: A D']);
    w.settle();
    expect(w.merged()).toEqual(['A', 'D']);
    expect(w.allReports()).toEqual({ A: ['SUCCESS'], B: ['DEQUEUED'], C: ['DEPENDENCY_FAILED'], D: ['SUCCESS'] });
    // The new patchset is not approved: it is not enqueued.
    expect(w.prepares().some((p) => p.startsWith('B') && p !== 'B: A B')).toBe(false);
  });

  it('approval removed: the builds are aborted and the change leaves (test_approval_removal)', () => {
    const w = World.gate();
    w.jobs = [job('merge')];
    gateABC(w, 'A');
    expect(w.running()).toHaveLength(1);
    w.send([{ type: 'approval', change: 'A', approved: false }]);
    expect(w.history.map((b) => b.result)).toEqual(['ABORTED']);
    // Zuul reports FAILURE "unable to merge due to a missing merge requirement"; the model says DEQUEUED.
    expect(w.allReports()).toEqual({ A: ['DEQUEUED'] });
    expect(w.starts('A')).toBe(1);
    expect(w.windows()).toEqual([10]); // as Zuul: an item that did not succeed shrinks the window
    expect(w.queueLength()).toBe(0);
  });

  it('abandon: the running build is aborted, the change is reported once (test_abandoned_gate)', () => {
    const w = World.gate();
    w.jobs = [job('merge')];
    gateABC(w, 'A', 'B');
    w.send([{ type: 'abandon', change: 'A' }]);
    expect(w.history.map((b) => `${b.change} ${b.result}`)).toEqual(['A ABORTED', 'B ABORTED', 'B null']);
    expect(w.prepares()).toEqual(['A: A', 'B: A B', 'B: B']);
    w.settle();
    expect(w.allReports()).toEqual({ A: ['DEQUEUED'], B: ['SUCCESS'] });
    expect(w.merged()).toEqual(['B']);
  });

  // Zuul `dequeueItem`: "If we haven't reported start, we don't know if Zuul was supposed to act
  // on the item at all, so keep it quiet."
  it('removing an item that never reported start is quiet (Zuul dequeueItem: quiet unless reported_start)', () => {
    const w = World.gate({ window: { initial: 1, floor: 1 } });
    gateABC(w, 'A', 'B');
    expect(w.starts('B')).toBe(0); // outside the window: never prepared
    w.send([{ type: 'abandon', change: 'B' }]);
    expect(w.reports('B')).toEqual([]);
  });

  it('re-tests a conflicting item without the failed change it conflicted with (docs/gate.md "Merge conflicts", rule 3)', () => {
    const w = World.gate();
    w.fail('test1', 'A');
    w.conflicts.push(['A', 'B']);
    gateABC(w, 'A', 'B');
    expect(w.prepares()).toEqual(['A: A', 'B: A B']);
    w.settle();
    expect(w.prepares()).toEqual(['A: A', 'B: A B', 'B: B']);
    expect(w.merged()).toEqual(['B']);
    expect(w.allReports()).toEqual({ A: ['FAILURE'], B: ['SUCCESS'] });
    expect(w.starts('B')).toBe(1); // the start report came with the second, clean state
  });

  it('merged-elsewhere: the item leaves, the items behind are re-tested without it, its dependents stay', () => {
    const w = World.gate();
    w.change('A');
    w.change('B');
    w.change('C', { needs: ['B'] });
    w.approve('A', 'B', 'C');
    w.send([{ type: 'merged-elsewhere', change: 'B' }]);
    expect(w.reports('B')).toEqual(['DEQUEUED']);
    expect(w.running().map((b) => `${b.change}: ${b.changes}`)).toEqual(['A: A', 'A: A', 'C: A C', 'C: A C']);
    expect(w.history.filter((b) => b.change === 'B').map((b) => b.result)).toEqual(['ABORTED', 'ABORTED']);
    w.settle();
    expect(w.merged()).toEqual(['A', 'C']); // B is not announced as merged by this pipeline
    expect(w.allReports()).toEqual({ A: ['SUCCESS'], B: ['DEQUEUED'], C: ['SUCCESS'] });
    // Approving a change that is already merged does nothing.
    expect(w.approve('B')).toEqual([]);
  });

  it('ignores an approval for a change it never heard of, and a late event about an older patchset', () => {
    const w = World.gate();
    expect(w.approve('nope')).toEqual([]);
    w.change('A', { patchset: 2 });
    w.approve('A');
    expect(w.change('A', { patchset: 1 })).toEqual([]);
    w.settle();
    expect(w.log.find((e) => e.type === 'merged')).toMatchObject({ change: 'A', patchset: 2 });
  });
});

describe('DependentPipelineManager: toJSON / fromJSON', () => {
  /** A gate run with a failure, a refused submit and a dependency; `save` is called between steps. */
  function run(save: (w: World) => void): World {
    const w = World.gate({ window: { initial: 3, floor: 1 } });
    w.autoPrepare = false;
    w.autoSubmit = false;
    w.fail('test1', 'B');
    w.refuseSubmit.add('A');
    const steps: (() => unknown)[] = [
      () => ['A', 'B', 'C', 'E'].forEach((id) => w.change(id)),
      () => w.change('D', { needs: ['C'] }),
      () => w.approve('A', 'B'),
      () => w.answerPrepares(),
      () => w.approve('C', 'D', 'E'),
      () => w.answerPrepares('C'),
      () => w.releaseJob('B', 'test1'),
      () => w.answerPrepares(),
      () => w.release((b) => b.change === 'A'),
      () => w.answerSubmits(), // refused: everything behind A resets
      () => w.answerPrepares(),
      () => w.release(),
      () => w.answerPrepares(),
      () => {
        w.autoPrepare = true;
        w.autoSubmit = true;
        w.answerPrepares();
        w.answerSubmits();
        w.settle();
      },
    ];
    for (const step of steps) {
      w.now += 1;
      step();
      save(w);
    }
    return w;
  }

  it('a manager restored mid-flight continues exactly as the original', () => {
    const straight = run(() => {});
    const restored = run((w) => w.reload());
    expect(restored.log).toEqual(straight.log);
    expect(restored.history).toEqual(straight.history);
    expect(restored.m.toJSON()).toEqual(straight.m.toJSON());
    // The run did exercise what it claims to.
    expect(straight.allReports()).toMatchObject({ A: ['MERGE_FAILURE'], B: ['FAILURE'] });
    expect(straight.merged()).toEqual(['C', 'D', 'E']);
    expect(straight.queueLength()).toBe(0);
  });

  it('fromJSON rejects garbage with a zod error', () => {
    const opts = { now: () => 0 };
    const good = (() => {
      const w = World.gate();
      gateABC(w, 'A', 'B');
      return w.m.toJSON();
    })();
    expect(() => DependentPipelineManager.fromJSON(opts, good)).not.toThrow();
    for (const bad of [
      null,
      'gate',
      {},
      { ...good, version: 2 },
      { ...good, kind: 'deploy' },
      { ...good, nextId: -1 },
      { ...good, extra: true },
      { ...good, queues: [{ ...good.queues[0], window: -1 }] },
      { ...good, queues: [{ ...good.queues[0], items: [{ ...good.queues[0]!.items[0], patchset: 0 }] }] },
      { ...good, changes: [{ ...good.changes[0], status: 'closed' }] },
    ]) {
      expect(() => DependentPipelineManager.fromJSON(opts, bad), JSON.stringify(bad)?.slice(0, 80)).toThrow(ZodError);
    }
    // A check pipeline's state is well-formed but not a gate's.
    const check = World.check().m.toJSON();
    expect(() => DependentPipelineManager.fromJSON(opts, check)).toThrow(InternalError);
  });
});

describe('DependentPipelineManager: recover() after a restart', () => {
  it('re-runs build sets whose builds were lost, keeps finished ones, and asks again for an unanswered submit', () => {
    const w = World.gate();
    w.autoSubmit = false;
    w.jobs = [job('test')];
    gateABC(w, 'A', 'B', 'C');
    // A and B finish; A's submit is in flight; C's build is still running when the service dies.
    w.release((b) => b.change === 'A' || b.change === 'B');
    expect(w.pendingSubmits.map((s) => s.change)).toEqual(['A']);
    w.reload();
    const effects = w.m.recover();
    // The submit is asked again; B keeps its finished build set; C's is reset, and C waits for
    // A's submit before it is prepared again (nothing is prepared behind a submit in flight).
    expect(effects.filter((e) => e.type === 'submit').map((e) => e.change)).toEqual(['A']);
    expect(effects.filter((e) => e.type === 'prepare')).toEqual([]);
    expect(effects.filter((e) => e.type === 'build-set-ended').map((e) => [e.buildSet.change, e.buildSet.fate])).toEqual([['C', 'reset']]);
    // The world then answers as usual: everything merges, in order, once.
    w.autoSubmit = true;
    const after = w.send(effects.filter((e) => e.type === 'submit').map((e) => ({ type: 'submitted', item: e.item, merged: true })));
    expect(after.filter((e) => e.type === 'prepare').map((e) => [e.change, e.state.map((s) => s.change).join(' ')])).toEqual([['C', 'C']]); // A and B merged (B's submit answered at once) before C is prepared again
    w.settle();
    expect(w.queueLength()).toBe(0);
    expect(w.reports('A')).toEqual(['SUCCESS']);
    expect(w.reports('B')).toEqual(['SUCCESS']);
    expect(w.reports('C')).toEqual(['SUCCESS']);
  });
});

describe('IndependentPipelineManager (check)', () => {
  it('puts open dependencies ahead as non-live items: tested on [dep, change], only the change reported (test_crd_check)', () => {
    const w = World.check();
    w.change('A');
    w.change('B', { needs: ['A'] });
    w.send([{ type: 'enqueue', change: 'B' }]);
    const q = w.m.changeQueues;
    expect(q).toHaveLength(1);
    expect(q[0]!.items.map((i) => `${i.change} ${i.live ? 'live' : 'non-live'}`)).toEqual(['A non-live', 'B live']);
    expect(w.prepares()).toEqual(['B: A B']);
    const prep = w.log.find((e): e is PrepareEffect => e.type === 'prepare')!;
    expect(prep.state.map((s) => `${s.change},${s.patchset}`)).toEqual(['A,1', 'B,1']);
    expect(w.running().every((b) => b.change === 'B')).toBe(true);
    w.settle();
    expect(w.allReports()).toEqual({ B: ['SUCCESS'] });
    expect(w.starts('A')).toBe(0);
    expect(w.merged()).toEqual([]);
    expect(w.m.changeQueues).toHaveLength(0); // dynamic queues go when empty
  });

  it('a new patchset dequeues the old item; the new one is tested on its own', () => {
    const w = World.check();
    w.change('A');
    w.send([{ type: 'enqueue', change: 'A' }]);
    expect(w.running()).toHaveLength(2);
    w.change('A', { patchset: 2 });
    expect(w.history.map((b) => b.result)).toEqual(['ABORTED', 'ABORTED']);
    expect(w.reports('A')).toEqual(['DEQUEUED']);
    expect(w.m.changeQueues).toHaveLength(0);
    w.send([{ type: 'enqueue', change: 'A' }]);
    const last = w.log.filter((e): e is PrepareEffect => e.type === 'prepare').at(-1)!;
    expect(last.state.map((s) => `${s.change},${s.patchset}`)).toEqual(['A,2']);
    w.settle();
    expect(w.reports('A')).toEqual(['DEQUEUED', 'SUCCESS']);
  });

  it('a new patchset of a dependency leaves the dependent item and its non-live copy alone (test_new_patchset_check)', () => {
    const w = World.check();
    w.change('A');
    w.change('B', { needs: ['A'] });
    w.send([{ type: 'enqueue', change: 'B' }]);
    w.send([{ type: 'enqueue', change: 'A' }]);
    const items = () => w.m.changeQueues.flatMap((q) => q.items.map((i) => `${i.change},${i.patchset}${i.live ? '' : ' (non-live)'}`));
    expect(items()).toEqual(['A,1 (non-live)', 'B,1', 'A,1']);
    w.change('A', { patchset: 2 });
    w.send([{ type: 'enqueue', change: 'A' }]);
    expect(items()).toEqual(['A,1 (non-live)', 'B,1', 'A,2']);
    expect(w.history.filter((b) => b.result === 'ABORTED').map((b) => b.changes)).toEqual(['A', 'A']);
    w.settle();
    expect(w.history.filter((b) => b.result === 'SUCCESS').map((b) => `${b.change}: ${b.changes}`)).toEqual(['B: A B', 'B: A B', 'A: A', 'A: A']);
    expect(w.reports('B')).toEqual(['SUCCESS']);
  });

  // Zuul test_abandoned_check: abandoning A removes A's own live item, but B (which needs A) keeps
  // testing on its non-live copy of A and is reported ("The live copy of A should be gone, but the
  // non-live and B should continue"; B.reported == 1). Zuul's removeAbandonedChange only removes
  // dependents of items removed *in the same queue*, and a check queue holds one live change.
  it('abandoning a dependency leaves the dependent check item running (test_abandoned_check)', () => {
    const w = World.check();
    w.change('A');
    w.change('B', { needs: ['A'] });
    w.send([{ type: 'enqueue', change: 'B' }]);
    w.send([{ type: 'enqueue', change: 'A' }]);
    w.send([{ type: 'abandon', change: 'A' }]);
    const items = w.m.changeQueues.flatMap((q) => q.items.map((i) => `${i.change}${i.live ? '' : ' (non-live)'}`));
    expect(items).toEqual(['A (non-live)', 'B']);
    w.settle();
    expect(w.reports('B')).toEqual(['SUCCESS']);
  });

  it('reports a failing check and merges nothing', () => {
    const w = World.check();
    w.fail('test2', 'A');
    w.change('A');
    w.send([{ type: 'enqueue', change: 'A' }]);
    w.settle();
    expect(w.allReports()).toEqual({ A: ['FAILURE'] });
    expect(w.log.some((e) => e.type === 'submit' || e.type === 'merged' || e.type === 'window')).toBe(false);
  });

  it('fromJSON restores a check pipeline mid-flight and rejects garbage', () => {
    const w = World.check();
    w.change('A');
    w.change('B', { needs: ['A'] });
    w.send([{ type: 'enqueue', change: 'B' }]);
    w.reload();
    w.settle();
    expect(w.allReports()).toEqual({ B: ['SUCCESS'] });
    expect(() => IndependentPipelineManager.fromJSON(() => 0, { version: 1 })).toThrow(ZodError);
    expect(() => IndependentPipelineManager.fromJSON(() => 0, World.gate().m.toJSON())).toThrow(InternalError);
  });
});
