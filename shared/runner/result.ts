/**
 * `JobResult`: what running one job step produced, typed and with a one-line reason a person can
 * read ("killed: exceeded memory limit of 256 MiB", "timed out after 30 s"). A failing job is a
 * result, not an error: errors are for airlock's own failures (see shared/errors.ts).
 */
import { z } from 'zod';
import { Limits, Runtime } from '../schemas/limits.js';
import { formatBytes, formatDuration } from '../units.js';

export const ArtifactEntry = z.object({
  path: z.string(),
  bytes: z.number().int().min(0),
  kind: z.enum(['file', 'symlink', 'hardlink']),
});

export const JobResult = z
  .object({
    version: z.literal(1),
    jobId: z.string(),
    image: z.string(),
    imageId: z.string(),
    runtime: Runtime,
    /** exit 0, not killed, not timed out, not cancelled, artifacts taken. */
    passed: z.boolean(),
    exitCode: z.number().int(),
    oomKilled: z.boolean(),
    timedOut: z.boolean(),
    cancelled: z.boolean(),
    logTruncated: z.boolean(),
    /** Bytes the job wrote to stdout+stderr, kept or not. */
    logBytes: z.number().int().min(0),
    /** Highest memory use the engine reported while the job ran; absent when it reported none. */
    peakMemoryBytes: z.number().int().min(0).optional(),
    limits: Limits,
    durations: z.object({
      /** workspace, container create, source copy */
      setupMs: z.number().min(0),
      /** start to exit */
      runMs: z.number().min(0),
      /** artifact extraction; container and workspace removal happen after the result (JobRunner.drain) */
      teardownMs: z.number().min(0),
      totalMs: z.number().min(0),
    }),
    reason: z.string(),
    artifacts: z.array(ArtifactEntry),
    artifactError: z.object({ code: z.string(), message: z.string() }).optional(),
    /** The kept log, decoded as UTF-8 (invalid bytes become U+FFFD). */
    log: z.string().optional(),
  })
  .strict();
export type JobResult = z.infer<typeof JobResult>;

const SIGNALS: Record<number, string> = { 1: 'SIGHUP', 2: 'SIGINT', 6: 'SIGABRT', 9: 'SIGKILL', 11: 'SIGSEGV', 13: 'SIGPIPE', 15: 'SIGTERM' };

/** The one-line reason, from the facts. Pure. */
export function describeOutcome(r: Pick<JobResult, 'exitCode' | 'oomKilled' | 'timedOut' | 'cancelled' | 'logTruncated' | 'logBytes' | 'limits' | 'artifactError'> & { runMs: number }): string {
  let reason: string;
  if (r.cancelled) reason = `cancelled after ${formatDuration(Math.round(r.runMs))}`;
  else if (r.timedOut) reason = `timed out after ${formatDuration(r.limits.timeout)}`;
  else if (r.oomKilled) reason = `killed: exceeded memory limit of ${formatBytes(r.limits.memory)}`;
  else if (r.exitCode === 0) reason = 'succeeded';
  else if (r.exitCode > 128 && r.exitCode < 160) {
    const sig = r.exitCode - 128;
    reason = `killed by signal ${sig}${SIGNALS[sig] ? ` (${SIGNALS[sig]})` : ''}`;
  } else reason = `exited with code ${r.exitCode}`;
  if (r.artifactError) reason += `; artifacts refused: ${r.artifactError.message}`;
  if (r.logTruncated) reason += `; log truncated at ${formatBytes(r.limits.logCap)} of ${formatBytes(r.logBytes)} written`;
  return reason;
}
