/**
 * Resource limits of one job: one shape from `.airlock.yaml` and the policy file to the container.
 * Parsing (`LimitsRequest`) turns what a person writes (`256m`, `30s`) into numbers once, at the
 * edge; from then on every layer — the policy check, the JobSpec, the runner, the container
 * options, the job's result — carries the same keys with the same numbers:
 *   memory, logCap, workspace, tmp, artifacts   bytes
 *   timeout                                     milliseconds
 *   cpus                                        CPUs (fractional; the container gets cpus·1e9 nano-CPUs)
 *   pids, artifactFiles                         counts
 * `LimitsRequest` is the partial form (a job asks for some; policy fills the rest), `Limits` the
 * complete one (what a job runs with).
 */
import { z } from 'zod';
import { parseBytes, parseDuration } from '../units.js';

const MAX_BYTES = 2 ** 50; // 1 PiB: anything larger is a typo or an attack
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** A size such as `256m`, `2GiB` or a number of bytes. */
export const Size = z
  .union([z.string().max(32), z.number()])
  .transform((v, ctx) => {
    const n = parseBytes(v);
    if (n === undefined || n <= 0 || n > MAX_BYTES) {
      ctx.addIssue({ code: 'custom', message: `not a size: ${JSON.stringify(v)} (write e.g. 256m, 2g, or a number of bytes)` });
      return z.NEVER;
    }
    return n;
  });

/** A duration such as `30s`, `10m`, `500ms` or a number of seconds. */
export const Duration = z
  .union([z.string().max(32), z.number()])
  .transform((v, ctx) => {
    const n = parseDuration(v);
    if (n === undefined || n <= 0 || n > 7 * 24 * 3_600_000) {
      ctx.addIssue({ code: 'custom', message: `not a duration: ${JSON.stringify(v)} (write e.g. 30s, 10m, 1h)` });
      return z.NEVER;
    }
    return n;
  });

export const RUNTIMES = ['runc', 'runsc'] as const;
export const Runtime = z.enum(RUNTIMES);
export type Runtime = z.infer<typeof Runtime>;

/** What may be asked for. Every key optional: what is left out comes from policy. */
export const LimitsRequest = z
  .object({
    memory: Size.pipe(z.number().min(16 * MiB, 'at least 16 MiB')).optional(),
    cpus: z.number().min(0.01, 'at least 0.01 (smaller quotas are not enforced)').max(1024).optional(),
    pids: z.number().int().min(8).max(1_000_000).optional(),
    timeout: Duration.pipe(z.number().min(100, 'at least 100 ms')).optional(),
    logCap: Size.optional(),
    workspace: Size.pipe(z.number().min(16 * MiB, 'at least 16 MiB').max(1024 * GiB)).optional(),
    tmp: Size.pipe(z.number().min(MiB, 'at least 1 MiB')).optional(),
    artifacts: Size.optional(),
    artifactFiles: z.number().int().min(0).max(1_000_000).optional(),
  })
  .strict();
export type LimitsRequest = z.infer<typeof LimitsRequest>;
export type LimitsRequestInput = z.input<typeof LimitsRequest>;

/** Complete limits: what a job runs with (policy's, tightened by the job's request). */
export const Limits = z
  .object({
    memory: z.number().int().positive(),
    cpus: z.number().positive(),
    pids: z.number().int().positive(),
    timeout: z.number().int().positive(),
    logCap: z.number().int().positive(),
    workspace: z.number().int().positive(),
    tmp: z.number().int().positive(),
    artifacts: z.number().int().positive(),
    artifactFiles: z.number().int().min(0),
  })
  .strict();
export type Limits = Required<LimitsRequest>;

/** The unit of each limit, for messages. */
export const LIMIT_UNITS: Record<keyof Limits, 'bytes' | 'ms' | 'count'> = {
  memory: 'bytes',
  cpus: 'count',
  pids: 'count',
  timeout: 'ms',
  logCap: 'bytes',
  workspace: 'bytes',
  tmp: 'bytes',
  artifacts: 'bytes',
  artifactFiles: 'count',
};
