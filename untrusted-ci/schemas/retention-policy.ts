/**
 * `policies/retention.yaml`: how long the untrusted tier keeps job logs and artifacts in its
 * ArtifactStore, counted from the moment the build finished. Periods are per result class:
 * - `passed`: builds that passed, and builds that were cancelled or superseded (nobody needs to
 *   debug those, so they get the shorter period);
 * - `failed`: builds that failed (a job's fault) or ended in error (airlock's fault): the ones
 *   people come back to investigate.
 * `artifacts.jobs.<job>` overrides the artifact periods of one job name (either period or both).
 * Logs have no per-job override: a build's logs go together.
 */
import { z } from 'zod';
import { JobName } from '#shared/schemas/airlock-yaml.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const MAX_PERIOD = 3650 * DAY; // ten years: anything longer is a typo

/**
 * A retention period: `7d`, `36h`, in days or hours only (minutes would be a typo here). Parsed
 * here rather than with limits.ts `Duration`, which knows no days and caps at 7 days (job timeouts).
 */
export const RetentionPeriod = z
  .string()
  .max(16)
  .transform((v, ctx) => {
    const m = /^(\d{1,5})\s*(d|h)$/.exec(v.trim());
    const ms = m ? Number(m[1]) * (m[2] === 'd' ? DAY : HOUR) : NaN;
    if (!(ms >= HOUR && ms <= MAX_PERIOD)) {
      ctx.addIssue({ code: 'custom', message: `not a retention period: ${JSON.stringify(v)} (write e.g. 7d or 36h; between 1h and 3650d)` });
      return z.NEVER;
    }
    return ms;
  });

/** Periods (milliseconds once parsed) for the two result classes. */
export const RetentionPeriods = z.object({ passed: RetentionPeriod, failed: RetentionPeriod }).strict();
export type RetentionPeriods = z.infer<typeof RetentionPeriods>;

export const RetentionPolicy = z
  .object({
    version: z.literal(1),
    logs: RetentionPeriods,
    artifacts: RetentionPeriods.extend({
      /** Per job name; a period left out comes from `artifacts`. */
      jobs: z.record(JobName, RetentionPeriods.partial().strict()).default({}),
    }).strict(),
  })
  .strict();
export type RetentionPolicy = z.infer<typeof RetentionPolicy>;
export type RetentionPolicyInput = z.input<typeof RetentionPolicy>;
