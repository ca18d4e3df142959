/**
 * `policies/environments.yaml`: SRE's rules for project build environments — which base images a
 * project may build on or run, the bounds of one environment build, and the size of the local
 * cache of built environment images. Parsed once at load; everything past the loader takes
 * `EnvironmentPolicy` (sizes in bytes, durations in milliseconds).
 */
import { z } from 'zod';
import { ImageRef } from '#shared/schemas/job-spec.js';
import { Duration, Runtime, Size } from '#shared/schemas/limits.js';

const MiB = 1024 ** 2;

/** `0` or a size (`Size` itself refuses 0): a cache budget of 0 keeps nothing unpinned. */
const SizeOrZero = z.union([z.literal(0), Size]);
/** `0` or a duration: a minimum idle time of 0 lets GC take an image the moment it is unpinned. */
const DurationOrZero = z.union([z.literal(0), Duration]);

export const EnvironmentPolicy = z
  .object({
    version: z.literal(1),
    /** The allowlist for every FROM of a project's Dockerfile and for `environment.image`. */
    baseImages: z.array(ImageRef).min(1).max(256),
    /** Bounds of one build. */
    build: z
      .object({
        /** Bytes of memory of the build's RUN steps, together (they run one at a time; no swap). */
        memory: Size.pipe(z.number().min(16 * MiB, 'at least 16 MiB')),
        /** CPU cores of the build's RUN steps, together, as a CFS quota. */
        cpus: z.number().min(0.01).max(1024),
        /** Wall clock for the whole build, in ms. */
        timeout: Duration,
        /** Bytes of the build context tar. */
        contextMax: Size,
        /** Log bytes passed on to the caller; the rest is dropped. */
        logCap: Size,
        /** Processes + threads of the build's RUN steps, all together (a fork bomb stops here). */
        pids: z.number().int().min(16).max(32768).default(256),
        /**
         * Bytes the build may write: its own filesystem holds this much beyond its base images (the
         * layers it makes, and a RUN step's files twice while its layer is committed).
         */
        disk: Size.pipe(z.number().min(64 * MiB, 'at least 64 MiB')).default(8 * 1024 * MiB),
        /** The OCI runtime of RUN steps: runsc (gVisor) only builds on base images that passed the self-test. */
        runtime: Runtime.default('runc'),
      })
      .strict(),
    /** The local cache of built environment images. */
    cache: z
      .object({
        /** Bytes GC trims the unpinned environment images down to. */
        budget: SizeOrZero,
        /** Per project, the N most recently used images that GC never evicts (the budget is soft by these). */
        keepRecent: z.number().int().min(0).max(100),
        /** An image used less than this long ago (ms) is never evicted. */
        minIdle: DurationOrZero.default(0),
      })
      .strict(),
  })
  .strict();
export type EnvironmentPolicy = z.infer<typeof EnvironmentPolicy>;
export type EnvironmentPolicyInput = z.input<typeof EnvironmentPolicy>;
