/**
 * `policies/untrusted-job.yaml`: SRE's bounds for every untrusted job. Its `limits` are at once
 * the defaults and the ceilings: a job may ask for less, never for more. Its runtime list says
 * which runtimes a job may pick; gVisor (`runsc`) counts as tighter than `runc`.
 */
import { z } from 'zod';
import { Duration, LimitsRequest, Runtime } from './limits.js';

export const JobPolicy = z
  .object({
    version: z.literal(1),
    /** The unprivileged user every job runs as, inside the container. Never 0. */
    user: z
      .object({ uid: z.number().int().min(1).max(65_533), gid: z.number().int().min(1).max(65_533) })
      .strict(),
    limits: LimitsRequest.required(),
    /** How long a job has between SIGTERM and SIGKILL when it times out or is cancelled. */
    killGrace: Duration,
    /**
     * One build's budget: its jobs in a pipeline at most, and the sum of their timeouts (each job's
     * own, else `limits.timeout`) at most, so a few changes cannot hold the executor slots for days.
     */
    build: z
      .object({ jobs: z.number().int().min(1).max(1000).default(32), time: Duration.pipe(z.number().min(1000, 'at least 1 s')).default(8 * 3_600_000) })
      .strict()
      .default({ jobs: 32, time: 8 * 3_600_000 }),
    runtime: z
      .object({ default: Runtime, allowed: z.array(Runtime).min(1) })
      .strict()
      .refine((r) => r.allowed.includes(r.default), { message: 'runtime.default must be one of runtime.allowed' }),
  })
  .strict();
export type JobPolicy = z.infer<typeof JobPolicy>;
