/**
 * An in-memory JobRunnerPort for the pure tier: no container, each job "runs" at once, writes one
 * log line (`log of <job>`) and ends as `outcome` says (passed unless told otherwise); what it was
 * asked to run is kept, in order. Like the real runner, it awaits `beforeStart` (the executor's slot)
 * before the job "starts". The docker tier runs the real JobRunner.
 */
import type { JobRunnerPort } from '#shared/runner/job-plan.js';
import type { RunOptions } from '#shared/runner/job-runner.js';
import type { JobResult } from '#shared/runner/result.js';
import type { JobSpec } from '#shared/schemas/job-spec.js';

/** How a job ends: passed, failed (exit 1), or thrown (as the runner throws a refusal). */
export type FakeOutcome = 'passed' | 'failed' | Error;

export class FakeRunner implements JobRunnerPort {
  readonly ran: { id: string; job: string; secretFiles: string[]; artifactsDir?: string }[] = [];
  drains = 0;
  constructor(private readonly outcome: (spec: JobSpec, opts: RunOptions) => FakeOutcome = () => 'passed') {}

  async run(spec: JobSpec, opts: RunOptions): Promise<JobResult> {
    const job = spec.env.AIRLOCK_JOB ?? '?';
    this.ran.push({ id: spec.id, job, secretFiles: (opts.secretFiles ?? []).map((f) => f.path), ...(opts.artifactsDir ? { artifactsDir: opts.artifactsDir } : {}) });
    const outcome = this.outcome(spec, opts);
    if (outcome instanceof Error) throw outcome;
    await opts.beforeStart?.(); // where the real runner waits, once the job's container is ready
    opts.onLog?.({ stream: 'stdout', data: Buffer.from(`log of ${job}\n`) });
    const passed = outcome === 'passed';
    return {
      version: 1,
      jobId: spec.id,
      image: spec.image,
      imageId: spec.image,
      runtime: 'runc',
      passed,
      exitCode: passed ? 0 : 1,
      oomKilled: false,
      timedOut: false,
      cancelled: false,
      logTruncated: false,
      logBytes: `log of ${job}\n`.length,
      limits: { memory: 1, cpus: 1, pids: 1, timeout: 1, logCap: 1, workspace: 1, tmp: 1, artifacts: 1, artifactFiles: 0 },
      durations: { setupMs: 0, runMs: 0, teardownMs: 0, totalMs: 0 },
      reason: passed ? 'exit 0' : 'exit 1',
      artifacts: [],
    };
  }

  async drain(): Promise<void> {
    this.drains++;
  }
}
