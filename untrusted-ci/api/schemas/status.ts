/**
 * The status page's wire format: `GET /api/status` answers one `StatusView`, and every
 * `event: status` of `GET /api/status/stream` carries one as its data.
 *
 * Per pipeline, the change queues as Zuul shows them: each item in queue order with the items ahead
 * that it is tested on, its build and its jobs' progress; then the recent finished builds. All of it
 * is public (the untrusted tier holds no secret) and much of it is written by whoever submits a
 * change — subjects, authors, job names, reasons, config messages: a client must treat every string
 * as text, never as markup. Version 1; a breaking change gets a new path.
 */
import { z } from 'zod';
import { BuildView, JobState, Pipeline } from '#shared/schemas/api/builds.js';

/** One job of a queue item: its state in the item's build, and what is known of how long it takes. */
export const StatusJob = z.object({
  name: z.string(),
  voting: z.boolean(),
  /** The job's state in the item's build; `waiting` until that build runs it. */
  state: JobState,
  /** The gate model's verdict for the job (`SUCCESS`, `FAILURE`, …) once it has one. */
  result: z.string().optional(),
  reason: z.string().optional(),
  startedAt: z.number().optional(),
  finishedAt: z.number().optional(),
  /** The average of the job's recent passing runs in this project, when it passed before. */
  expectedMs: z.number().int().optional(),
  /** The wall-clock limit it runs under, when the build has planned it. */
  timeoutMs: z.number().int().optional(),
});
export type StatusJob = z.infer<typeof StatusJob>;

/** The part of an item's build record the page shows. */
export const StatusBuild = BuildView.pick({ id: true, state: true, result: true, reason: true, issues: true, attempt: true, startedAt: true });
export type StatusBuild = z.infer<typeof StatusBuild>;

export const StatusItem = z.object({
  project: z.string(),
  branch: z.string(),
  change: z.string(),
  patchset: z.number().int(),
  subject: z.string().optional(),
  author: z.string().optional(),
  /** The items ahead that this one is tested on top of (`change,patchset`), nearest the branch tip first; empty: the tip alone. */
  testedOn: z.array(z.string()),
  /** Inside the queue's window: its jobs may run. */
  active: z.boolean(),
  /** false: a change only shown because a live item needs it (Zuul's non-live item). */
  live: z.boolean(),
  /** Why the item is failing, if it is. */
  failing: z.array(z.string()),
  build: StatusBuild.optional(),
  jobs: z.array(StatusJob),
  enqueuedAt: z.number(),
});
export type StatusItem = z.infer<typeof StatusItem>;

export const StatusQueue = z.object({
  name: z.string(),
  /** The active window of a dependent (gate) queue; absent for independent (check) queues. */
  window: z.number().int().optional(),
  items: z.array(StatusItem),
});
export type StatusQueue = z.infer<typeof StatusQueue>;

export const StatusPipeline = z.object({ name: Pipeline, queues: z.array(StatusQueue) });
export type StatusPipeline = z.infer<typeof StatusPipeline>;

/** The promotion hints to the trusted builder (present when `hints` is configured). */
export const StatusHints = z.object({
  /** Merges not yet delivered (or given up on). */
  pending: z.number().int(),
  /** The newest delivery attempt, when it failed: the builder's status if it answered, the reason (naming the URL), when (ms since epoch). */
  failing: z.object({ status: z.number().int().optional(), reason: z.string(), at: z.number() }).optional(),
});
export type StatusHints = z.infer<typeof StatusHints>;

export const StatusView = z.object({
  version: z.literal(1),
  /** The server's clock when the snapshot was taken (ms since epoch): a client measures elapsed times against it. */
  generatedAt: z.number(),
  /** Executor slots and how many are running a job container now. */
  slots: z.number().int(),
  busy: z.number().int(),
  pipelines: z.array(StatusPipeline),
  /** Recently finished builds, newest first. */
  history: z.array(BuildView),
  hints: StatusHints.optional(),
});
export type StatusView = z.infer<typeof StatusView>;
