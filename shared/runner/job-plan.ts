/**
 * One build's jobs, run as a graph of their `needs`: the loop both tiers share (the CI's check and
 * gate builds, the trusted builder's re-run of the gate jobs).
 *
 * The jobs come already ordered (compileJobs puts every job after the jobs it needs). Each runs
 * once, as soon as every job it needs has passed: jobs that do not depend on each other run at the
 * same time, at most `concurrency` at once (default: no bound here; the caller's `run` waits for
 * room, e.g. the CI's executor slots). A job is only ever started in plan order among the jobs
 * that are ready, so with `concurrency: 1` the plan runs exactly as a loop over the list would.
 *
 * A job whose `needs` did not all pass is not run: it is skipped, with the jobs that blocked it,
 * and counts as not passed for the jobs after it. A need that is not earlier in the plan (unknown,
 * or later) blocks like one that failed. A failing job does not stop the others: the jobs that do
 * not depend on it still run, so a build reports every job it could.
 *
 * With a signal, once it is aborted no job starts (or is skipped) any more; the plan waits for the
 * jobs already running to end (their `run` sees the same signal) and then throws CancelledError,
 * also when the abort came during the last job (what a cancellation is — cancelled, superseded,
 * shutdown — is the caller's to say). An error thrown by `run` or `skipped` likewise starts
 * nothing more; the plan throws the first such error once the running jobs have ended.
 *
 * The result: each job's state and the voting jobs that did not pass, both in plan order whatever
 * order the jobs ended in.
 */
import { CancelledError, InternalError } from '../errors.js';
import type { JobSpec } from '../schemas/job-spec.js';
import type { RunOptions } from './job-runner.js';
import type { JobResult } from './result.js';

/** The slice of JobRunner a build needs (both tiers run jobs through it). */
export interface JobRunnerPort {
  run(spec: JobSpec, opts: RunOptions): Promise<JobResult>;
  /** Resolves once the containers and workspaces of finished jobs are gone. */
  drain?(): Promise<void>;
}

/** What the plan needs of a job: compileJobs' PlannedJob is one. */
export interface PlanJob {
  name: string;
  voting: boolean;
  needs: readonly string[];
}

/** How a job that ran ended. */
export type RunState = 'passed' | 'failed' | 'cancelled';
/** How a job of the plan ended, or that it never ran. */
export type PlanState = RunState | 'skipped';

export interface JobPlanHooks<J extends PlanJob> {
  /** Run one job (its `needs` all passed); `index` is its position in the plan. */
  run(job: J, index: number): Promise<RunState>;
  /** A job not run: `blocked` are the jobs it needs that did not pass, in its `needs` order. */
  skipped?(job: J, blocked: readonly string[], index: number): void | Promise<void>;
  /** Checked before each job starts and after the last ends: aborted, the plan throws CancelledError. */
  signal?: AbortSignal;
  /** Jobs running at once at most (an integer ≥ 1); default: no bound. */
  concurrency?: number;
}

export interface JobPlanResult {
  /** Every job's state, in plan order. */
  states: ReadonlyMap<string, PlanState>;
  /** The voting jobs that did not pass (failed, cancelled or skipped), in plan order. */
  failedVoting: string[];
  /** How many voting jobs the plan has. */
  voting: number;
}

/** The reason a skipped job gets (the CI shows it on the job). */
export function skipReason(blocked: readonly string[]): string {
  return `needs ${blocked.join(', ')}, which did not pass`;
}

export async function runJobPlan<J extends PlanJob>(jobs: readonly J[], hooks: JobPlanHooks<J>): Promise<JobPlanResult> {
  const limit = hooks.concurrency ?? Number.POSITIVE_INFINITY;
  if (!(limit >= 1) || (Number.isFinite(limit) && !Number.isInteger(limit))) throw new InternalError(`job plan concurrency must be an integer of at least 1, not ${limit}`);
  const position = new Map(jobs.map((j, i) => [j.name, i]));
  const states = new Map<string, PlanState>();
  /** Jobs neither started nor skipped, by index (a Set keeps them in plan order). */
  const waiting = new Set(jobs.keys());
  const running = new Map<number, Promise<void>>();
  let failure: { error: unknown } | undefined;
  const stopped = (): boolean => hooks.signal?.aborted === true || failure !== undefined;

  /** A need's state; 'skipped' for one that can never pass here; undefined while it is undecided. */
  const needState = (need: string, index: number): PlanState | undefined => {
    const at = position.get(need);
    return at === undefined || at >= index ? 'skipped' : states.get(need);
  };
  const start = (job: J, index: number): void => {
    // Through a microtask: `run` is called (and may throw) only once the job is in `running`.
    const p = Promise.resolve()
      .then(() => hooks.run(job, index))
      .then(
        (state) => void states.set(job.name, state),
        (error: unknown) => void (failure ??= { error }),
      )
      .finally(() => running.delete(index));
    running.set(index, p);
  };

  for (;;) {
    // One pass in plan order decides every job it can: a job's needs are all earlier, so a skip
    // that decides a later job is seen in the same pass.
    let decided = false;
    for (const index of waiting) {
      if (stopped() || running.size >= limit) break;
      const job = jobs[index]!;
      const needs = job.needs.map((n) => needState(n, index));
      if (needs.some((s) => s === undefined)) continue;
      waiting.delete(index);
      decided = true;
      const blocked = job.needs.filter((_, i) => needs[i] !== 'passed');
      if (blocked.length === 0) {
        start(job, index);
        continue;
      }
      states.set(job.name, 'skipped');
      try {
        await hooks.skipped?.(job, blocked, index);
      } catch (error) {
        failure ??= { error };
      }
    }
    if (running.size > 0) await Promise.race(running.values());
    // Nothing running and nothing decided: every job is decided, or the plan stopped. (A job that
    // ended while a skip was being recorded, after the pass had looked at its dependants, has
    // `decided` true: the next pass sees them.)
    else if (!decided) break;
  }
  if (failure) throw failure.error;
  if (hooks.signal?.aborted) throw new CancelledError('build cancelled');
  const inOrder = new Map<string, PlanState>();
  for (const j of jobs) inOrder.set(j.name, states.get(j.name)!);
  const voting = jobs.filter((j) => j.voting);
  return { states: inOrder, failedVoting: voting.filter((j) => inOrder.get(j.name) !== 'passed').map((j) => j.name), voting: voting.length };
}
