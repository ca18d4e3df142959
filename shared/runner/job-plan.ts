/**
 * One build's jobs, run in `needs` order: the loop both tiers share (the CI's check and gate
 * builds, the trusted builder's re-run of the gate jobs).
 *
 * The jobs come already ordered (compileJobs puts every job after the jobs it needs). Each runs
 * once, one at a time. A job whose `needs` did not all pass is not run: it is skipped, with the
 * jobs that blocked it, and counts as not passed for the jobs after it. A failing job does not
 * stop the others: the jobs that do not depend on it still run, so a build reports every job it
 * could. With a signal, the plan stops before the next job once it is aborted, and after the last
 * one, by throwing CancelledError (what a cancellation is — cancelled, superseded, shutdown — is
 * the caller's to say).
 *
 * The result: each job's state, and the voting jobs that did not pass (in plan order).
 */
import { CancelledError } from '../errors.js';
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
  /** Checked before each job and after the last: aborted, the plan throws CancelledError. */
  signal?: AbortSignal;
}

export interface JobPlanResult {
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
  const states = new Map<string, PlanState>();
  const cancelled = (): void => {
    if (hooks.signal?.aborted) throw new CancelledError('build cancelled');
  };
  for (const [index, job] of jobs.entries()) {
    cancelled();
    const blocked = job.needs.filter((n) => states.get(n) !== 'passed');
    if (blocked.length > 0) {
      states.set(job.name, 'skipped');
      await hooks.skipped?.(job, blocked, index);
      continue;
    }
    states.set(job.name, await hooks.run(job, index));
  }
  // Cancelled during the last job: still a cancellation, not a failure.
  cancelled();
  const voting = jobs.filter((j) => j.voting);
  return { states, failedVoting: voting.filter((j) => states.get(j.name) !== 'passed').map((j) => j.name), voting: voting.length };
}
