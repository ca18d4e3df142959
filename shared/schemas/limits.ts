/**
 * Resource limits of one job, in two forms:
 * - `LimitsRequest`: what a policy file or a job writes (human units, every key optional);
 * - `Limits`: the resolved numbers the runner applies (bytes, milliseconds, counts).
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

/** Resolved limits the runner applies. */
export const Limits = z
  .object({
    memoryBytes: z.number().int().positive(),
    cpus: z.number().positive(),
    pids: z.number().int().positive(),
    timeoutMs: z.number().int().positive(),
    logCapBytes: z.number().int().positive(),
    workspaceBytes: z.number().int().positive(),
    tmpBytes: z.number().int().positive(),
    artifactBytes: z.number().int().positive(),
    artifactFiles: z.number().int().min(0),
  })
  .strict();
export type Limits = z.infer<typeof Limits>;

/** Which request key each resolved field comes from, for messages that name the field as written. */
export const LIMIT_KEYS: Record<keyof Limits, keyof LimitsRequest> = {
  memoryBytes: 'memory',
  cpus: 'cpus',
  pids: 'pids',
  timeoutMs: 'timeout',
  logCapBytes: 'logCap',
  workspaceBytes: 'workspace',
  tmpBytes: 'tmp',
  artifactBytes: 'artifacts',
  artifactFiles: 'artifactFiles',
};
