/**
 * `JobSpec`: the compiled description of one job step that the runner executes. It is the
 * runner's input besides policy, and it is untrusted: every string in it may come from a patch.
 * The runner never reads `.airlock.yaml`; later issues compile that into this IR. What goes into
 * /workspace is not part of it: the caller (the merger, the CLI) names a host path separately, so
 * nothing a patch writes can point the runner at a host file.
 */
import { z } from 'zod';
import { LimitsRequest, Runtime } from './limits.js';

/** Job ids become container and volume names: keep them short and boring. */
export const JobId = z
  .string()
  .regex(/^[a-z0-9][a-z0-9_.-]{0,62}$/, 'must be 1-63 characters of a-z 0-9 _ . - starting with a letter or digit');
export type JobId = z.infer<typeof JobId>;

/** A Docker image reference (name[:tag][@digest]) or an image id. */
export const ImageRef = z
  .string()
  .max(255)
  .regex(
    /^(?:sha256:[a-f0-9]{64}|[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?)$/,
    'not a Docker image reference',
  );

/** Linux's own limit for a command line plus environment is 2 MiB; each gets half. */
const MAX_ARGV_BYTES = 1024 * 1024;

const EnvName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'not an environment variable name');
const NoNul = (max: number) => z.string().max(max).refine((s) => !s.includes('\0'), 'must not contain NUL');

/** Artifact globs are relative to /workspace, picomatch syntax, never absolute or `..`. */
export const ArtifactGlob = NoNul(512)
  .refine((s) => s.length > 0, 'empty glob')
  .refine((s) => !s.startsWith('/') && !s.split('/').includes('..'), 'must be relative to the workspace, without ..');

export const JobSpec = z
  .object({
    version: z.literal(1).default(1),
    id: JobId,
    image: ImageRef,
    command: z
      .array(NoNul(128 * 1024))
      .min(1)
      .max(4096)
      .refine((c) => c.reduce((n, a) => n + Buffer.byteLength(a) + 1, 0) <= MAX_ARGV_BYTES, `command is longer than ${MAX_ARGV_BYTES} bytes in all`),
    env: z
      .record(EnvName, NoNul(128 * 1024))
      .default({})
      .refine((e) => Object.keys(e).length <= 256, 'at most 256 variables')
      .refine((e) => Object.entries(e).reduce((n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(v) + 2, 0) <= MAX_ARGV_BYTES, `env is larger than ${MAX_ARGV_BYTES} bytes in all`),
    artifacts: z.array(ArtifactGlob).max(64).default([]),
    limits: LimitsRequest.default({}),
    runtime: Runtime.optional(),
    /** `packages`: the job reaches the package sources its caller serves (shared/egress/package-network.ts); default none. */
    network: z.enum(['none', 'packages']).default('none'),
  })
  .strict();
export type JobSpec = z.infer<typeof JobSpec>;
export type JobSpecInput = z.input<typeof JobSpec>;
