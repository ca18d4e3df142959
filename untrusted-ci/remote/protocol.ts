/**
 * What the CI and its executor hosts say to each other over HTTP (`/api/executor/…`,
 * api/routes/executors.ts): the zod schemas of every body, used on both sides. An executor host
 * runs hostile code, so on the CI's side everything it sends is validated like any other input.
 *
 *   POST /api/executor/register            {capacity}               → {leaseMs}
 *   POST /api/executor/claim               {free, waitMs, ahead}    → 200 Assignment | 204 (nothing fits)
 *   GET  /api/executor/runs/:run/image     the job's image, as `docker save` writes it
 *   GET  /api/executor/runs/:run/source    the job's source tar
 *   POST /api/executor/runs/:run/heartbeat                          → {cancel}
 *   POST /api/executor/runs/:run/start     a job claimed ahead may start now → {cancel} | 409 (moved)
 *   POST /api/executor/runs/:run/log?seq=N the next piece of log (bytes)  → {cancel}
 *   PUT  /api/executor/runs/:run/artifacts a tar of the artifacts (names under one top directory)
 *   POST /api/executor/runs/:run/result    JobResult
 *
 * `:run` is the id of one claim of one job: a job claimed again (its first host stopped answering)
 * gets a new id, and what the first host still sends under the old one is refused (409).
 *
 * A claim **ahead** is a host's claim while its slots are all busy: it makes the job ready (image,
 * source, container) while they run, and asks `start` before the container starts. The CI serves
 * an ahead claim only with a job no host with a free slot waits for, and moves a job claimed
 * ahead that has not started to a host that claims with a free slot and finds the queue empty:
 * the first host's `start` (or any call of that run) is then refused (409), so the job runs once.
 */
import { z } from 'zod';
import { JobSpec } from '#shared/schemas/job-spec.js';
import { Runtime } from '#shared/schemas/limits.js';

/** A run id: 32 hex digits, random. */
export const RunId = z.string().regex(/^[a-f0-9]{32}$/, 'not a run id');

/** An executor host's name, as the CI's `executors.hosts` lists it. */
export const ExecutorName = z.string().regex(/^[a-z0-9][a-z0-9_.-]{0,62}$/, 'must be 1-63 characters of a-z 0-9 _ . - starting with a letter or digit');

/** What an executor host has for jobs. memory in bytes; cpus may be fractional. */
export const Capacity = z
  .object({
    slots: z.number().int().min(0).max(4096),
    memory: z.number().int().min(0),
    cpus: z.number().min(0).max(4096),
    runtimes: z.array(Runtime).max(4),
  })
  .strict();
export type Capacity = z.infer<typeof Capacity>;

export const RegisterRequest = z.object({ capacity: Capacity, version: z.string().max(64).optional() }).strict();
export type RegisterRequest = z.infer<typeof RegisterRequest>;
/** A lease as ci.yaml's `executors.leaseMs` bounds it: a larger one from the CI is refused (a host's timers would overflow). */
const LeaseMs = z.number().int().min(1).max(600_000);
export const RegisterAnswer = z.object({ leaseMs: LeaseMs }).strict();

/**
 * What the host has free now (its running jobs' limits subtracted), and how long the CI may hold
 * the request open for work. `ahead`: every slot is busy, and `free` is the room for jobs made
 * ready to start when slots free up (the host's capacity less the jobs it holds ahead already).
 */
export const ClaimRequest = z
  .object({
    free: z.object({ slots: z.number().int().min(0).max(4096), memory: z.number().int().min(0), cpus: z.number().min(0).max(4096) }).strict(),
    waitMs: z.number().int().min(0).max(25_000).default(0),
    ahead: z.boolean().default(false),
  })
  .strict();
export type ClaimRequest = z.infer<typeof ClaimRequest>;

/** One job to run: its spec (the image named by id), where its pieces are, and the lease it runs under. */
export const Assignment = z
  .object({
    run: RunId,
    build: z.number().int().min(1),
    job: z.string().max(200),
    spec: JobSpec,
    /** The image's id (`sha256:…`): the host loads it from the CI when it does not have it. */
    imageId: z.string().regex(/^sha256:[a-f0-9]{64}$/),
    /** The source tar's size in bytes; absent: the job has no source. */
    sourceBytes: z.number().int().min(0).optional(),
    /**
     * A runsc job: the image passed the runsc (gVisor) self-test on the CI host (its
     * `runsc-compat.json`). The spec names the runtime the CI decided; the host runs the job under
     * it, on this word for the image, or refuses the job.
     */
    runscPassed: z.literal(true).optional(),
    /** How long the CI waits for a heartbeat before it gives the job to another host. */
    leaseMs: LeaseMs,
  })
  .strict();
export type Assignment = z.infer<typeof Assignment>;

export const RunAnswer = z.object({ cancel: z.boolean(), reason: z.string().max(500).optional() }).strict();
export type RunAnswer = z.infer<typeof RunAnswer>;

/** Paths, in one place for both sides. */
export const EXECUTOR_API = {
  register: '/api/executor/register',
  claim: '/api/executor/claim',
  run: (run: string, what: 'image' | 'source' | 'heartbeat' | 'start' | 'log' | 'artifacts' | 'result') => `/api/executor/runs/${run}/${what}`,
} as const;

/** The most one log request may carry. */
export const LOG_CHUNK_MAX = 256 * 1024;
