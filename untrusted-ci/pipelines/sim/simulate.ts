/**
 * Replays a scenario through the same pipeline managers the service uses, with a simulated clock
 * (minutes), merger and executor:
 * - prepare: the state's changes are applied in order onto the branch; a change listing X in
 *   `conflictsWith` cannot be applied when X is already merged or earlier in the state. Prepares
 *   answer at once.
 * - builds: a build of job J takes J's `duration`, else its change's, else the scenario's; it fails
 *   at its end iff some fail rule for J names only changes in its state (merged ones included).
 * - submit: always merges unless a `rejectSubmit` event is pending for that change.
 * At each instant, builds ending then are handed in as results, the scenario's events of that
 * instant as triggers, in one batch (results first, as the service does); answers produced at that
 * instant follow in further batches until nothing is left.
 *
 * Output (`SimResult`): merges in order; each change's last report (a change that merged is listed
 * in `merged`, not in `reported`, for the gate); every build set that got a state, with its fate;
 * when the last thing happened; and the window of each gate queue.
 */
import type { BuildSetJson, JobNode, StateEntry } from '../model/build-set.js';
import type { Effect, PipelineEvent, ReportResult } from '../model/events.js';
import { DependentPipelineManager } from '../managers/dependent.js';
import { IndependentPipelineManager } from '../managers/independent.js';
import type { PipelineManager } from '../managers/pipeline-manager.js';
import { eventChange, type Scenario } from './scenario.js';

export interface SimBuildSet {
  change: string;
  state: string[];
  fate: string;
  builds: Record<string, string>;
  start: number;
  end: number;
}

export interface SimResult {
  merged: string[];
  reported: Record<string, ReportResult>;
  buildsets: SimBuildSet[];
  finishedAt: number;
  /** The window of the gate queue (the first one created when there are several); null for check. */
  window: number | null;
  /** Every gate queue's window, when there is more than one queue. */
  windows?: Record<string, number>;
}

interface RunningBuild {
  buildSet: number;
  job: string;
  end: number;
  fails: boolean;
  seq: number;
}

export interface SimOptions {
  /** Save the manager with toJSON and restore it with fromJSON after every batch (tests the snapshot). */
  roundTrip?: boolean;
}

export function simulate(s: Scenario, o: SimOptions = {}): SimResult {
  let now = 0;
  const clock = () => now;
  const gateOptions = { now: clock, window: s.window, queues: s.queues };
  let manager: PipelineManager = s.pipeline === 'gate' ? new DependentPipelineManager(gateOptions) : new IndependentPipelineManager(clock);
  const handle = (events: PipelineEvent[]): Effect[] => {
    const effects = manager.handle(events);
    if (o.roundTrip) {
      const json: unknown = JSON.parse(JSON.stringify(manager.toJSON()));
      manager = s.pipeline === 'gate' ? DependentPipelineManager.fromJSON(gateOptions, json) : IndependentPipelineManager.fromJSON(clock, json);
    }
    return effects;
  };

  const byId = new Map(s.changes.map((c) => [c.id, c]));
  const patchsets = new Map<string, number>(s.changes.map((c) => [c.id, 1]));
  /** The patchset of each need, fixed when the needing change's patchset was written. */
  const needsAt = new Map<string, { change: string; patchset: number }[]>();
  const merged: string[] = [];
  const mergedSet = new Set<string>();
  const reported = new Map<string, ReportResult>();
  const ended: BuildSetJson[] = [];
  const contents = new Map<number, Set<string>>();
  const running: RunningBuild[] = [];
  const rejectNext = new Set<string>();
  let seq = 0;
  let finishedAt = 0;

  const facts = (id: string, approved: boolean): PipelineEvent => {
    const c = byId.get(id)!;
    if (!needsAt.has(id)) needsAt.set(id, c.dependsOn.map((d) => ({ change: d, patchset: patchsets.get(d)! })));
    return {
      type: 'change',
      change: { id, project: c.project, branch: c.branch, patchset: patchsets.get(id)!, needs: needsAt.get(id)!, approved, ref: null },
    };
  };

  const jobsFor = (project: string): JobNode[] =>
    (s.jobs[project] ?? [{ name: 'test', voting: true, needs: [] }]).map((j) => ({ name: j.name, voting: j.voting, needs: [...j.needs] }));
  const durationOf = (change: string, job: string): number => {
    const c = byId.get(change)!;
    const j = s.jobs[c.project]?.find((x) => x.name === job);
    return j?.duration ?? c.duration ?? s.duration;
  };

  const prepare = (state: StateEntry[], buildSet: number): PipelineEvent => {
    const content = new Set(mergedSet);
    for (const e of state) {
      const c = byId.get(e.change)!;
      const culprit = c.conflictsWith.find((x) => content.has(x));
      if (culprit !== undefined) {
        const where = mergedSet.has(culprit) ? `branch ${c.branch} (which contains ${culprit})` : `change ${culprit}`;
        return { type: 'prepared', buildSet, outcome: { kind: 'conflict', message: `change ${c.id} does not merge: merge conflict with ${where}` } };
      }
      content.add(c.id);
    }
    contents.set(buildSet, content);
    const item = state[state.length - 1]!;
    return { type: 'prepared', buildSet, outcome: { kind: 'ok', jobs: jobsFor(byId.get(item.change)!.project) } };
  };

  const apply = (effects: Effect[]): PipelineEvent[] => {
    const answers: PipelineEvent[] = [];
    for (const e of effects) {
      switch (e.type) {
        case 'prepare':
          answers.push(prepare(e.state, e.buildSet));
          break;
        case 'start-build': {
          const content = contents.get(e.buildSet) ?? new Set<string>();
          const fails = s.failRules.some((r) => r.job === e.job.name && r.whenStateContains.every((x) => content.has(x)));
          running.push({ buildSet: e.buildSet, job: e.job.name, end: now + durationOf(e.change, e.job.name), fails, seq: seq++ });
          break;
        }
        case 'cancel-builds':
          for (let i = running.length - 1; i >= 0; i--) {
            const r = running[i]!;
            if (r.buildSet === e.buildSet && e.jobs.includes(r.job)) running.splice(i, 1);
          }
          break;
        case 'submit': {
          const ok = !rejectNext.delete(e.change);
          if (ok) {
            mergedSet.add(e.change);
            merged.push(e.change);
          }
          answers.push({ type: 'submitted', item: e.item, merged: ok, ...(ok ? {} : { message: 'the branch moved meanwhile' }) });
          break;
        }
        case 'report':
          if (s.pipeline === 'gate' && e.result === 'SUCCESS') reported.delete(e.change);
          else reported.set(e.change, e.result);
          break;
        case 'build-set-ended':
          ended.push(e.buildSet);
          break;
        default:
          break;
      }
    }
    return answers;
  };

  const trigger = (e: Scenario['events'][number]): PipelineEvent[] => {
    const { kind, change } = eventChange(e);
    switch (kind) {
      case 'approve':
        return [{ type: 'approval', change, approved: true }];
      case 'unapprove':
        return [{ type: 'approval', change, approved: false }];
      case 'abandon':
        return [{ type: 'abandon', change }];
      case 'submit':
        return [{ type: 'enqueue', change }];
      case 'rejectSubmit':
        rejectNext.add(change);
        return [];
      case 'newPatchset': {
        patchsets.set(change, patchsets.get(change)! + 1);
        needsAt.delete(change); // rebased: written against its needs' current patchsets
        const out: PipelineEvent[] = [facts(change, false)];
        if (s.pipeline === 'check') out.push({ type: 'enqueue', change });
        return out;
      }
      default:
        return [];
    }
  };

  const events = s.events.map((e, i) => ({ e, i })).sort((a, b) => a.e.at - b.e.at || a.i - b.i);
  let next = 0;
  handle(s.changes.map((c) => facts(c.id, false)));

  for (;;) {
    const tTrigger = next < events.length ? events[next]!.e.at : Number.POSITIVE_INFINITY;
    const tBuild = running.reduce((m, r) => Math.min(m, r.end), Number.POSITIVE_INFINITY);
    const t = Math.min(tTrigger, tBuild);
    if (t === Number.POSITIVE_INFINITY) break;
    now = t;
    const batch: PipelineEvent[] = [];
    const done = running.filter((r) => r.end === t).sort((a, b) => a.seq - b.seq);
    for (const r of done) {
      running.splice(running.indexOf(r), 1);
      batch.push({ type: 'build-completed', buildSet: r.buildSet, job: r.job, result: r.fails ? 'FAILURE' : 'SUCCESS' });
    }
    while (next < events.length && events[next]!.e.at === t) batch.push(...trigger(events[next++]!.e));
    let effects = handle(batch);
    if (effects.length > 0 || done.length > 0) finishedAt = t;
    for (let answers = apply(effects); answers.length > 0; answers = apply(effects)) effects = handle(answers);
  }

  const gateQueues = s.pipeline === 'gate' ? manager.changeQueues : [];
  const result: SimResult = {
    merged,
    reported: Object.fromEntries(reported),
    buildsets: ended
      .concat(unfinished(manager))
      .sort((a, b) => (a.preparedAt ?? 0) - (b.preparedAt ?? 0) || a.id - b.id)
      .map((b) => ({
        change: b.change,
        state: (b.state ?? []).map((x) => x.change),
        fate: b.fate ?? 'unfinished',
        builds: Object.fromEntries(Object.entries(b.builds).map(([j, r]) => [j, r.result ?? 'RUNNING'])),
        start: b.preparedAt ?? 0,
        end: b.endedAt ?? now,
      })),
    finishedAt,
    window: gateQueues[0]?.window ?? null,
  };
  if (gateQueues.length > 1) result.windows = Object.fromEntries(gateQueues.map((q) => [q.name, q.window]));
  return result;
}

/** Build sets still in a queue when the scenario ran out (an item waiting on an unapproved dependency…). */
function unfinished(m: PipelineManager): BuildSetJson[] {
  return m.changeQueues.flatMap((q) => q.items.map((i) => i.buildSet.toJSON()).filter((b) => b.state !== null));
}
