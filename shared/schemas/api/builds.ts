/**
 * The untrusted CI's HTTP API as wire formats: what `POST /api/changes` accepts and what the read
 * endpoints answer. The CLI parses answers with the same schemas, so both ends agree by construction.
 * Version 1; a breaking change gets a new path, not a silent shape change.
 */
import { z } from 'zod';

export const PIPELINE_NAMES = ['check', 'gate'] as const;
export const Pipeline = z.enum(PIPELINE_NAMES);
export type Pipeline = z.infer<typeof Pipeline>;

/** queued → running → finished; a build never goes back except on restart recovery (running → queued). */
export const BUILD_STATES = ['queued', 'running', 'finished'] as const;
export const BuildState = z.enum(BUILD_STATES);
export type BuildState = z.infer<typeof BuildState>;

/**
 * How a finished build ended. `failed`: a voting job failed (the patch's fault, vote −1).
 * `merge-conflict` and `config-error` are results too (reported, not retried). `error`: airlock or
 * the engine failed after retries. `superseded`: a newer patchset replaced this one.
 */
export const BUILD_RESULTS = ['passed', 'failed', 'merge-conflict', 'config-error', 'error', 'cancelled', 'superseded'] as const;
export const BuildResult = z.enum(BUILD_RESULTS);
export type BuildResult = z.infer<typeof BuildResult>;

export const JOB_STATES = ['waiting', 'running', 'passed', 'failed', 'skipped', 'cancelled', 'error'] as const;
export const JobState = z.enum(JOB_STATES);
export type JobState = z.infer<typeof JobState>;

const Sha = z.string().regex(/^[0-9a-f]{40}(?:[0-9a-f]{24})?$/, 'a full commit id (40 or 64 hex)');

/** A change's id in the review system (or an API check's own name). */
export const ChangeName = z.string().min(1).max(200).regex(/^[\w.,:/@+-]+$/, 'letters, digits and . , : / @ + - _');

/** A change as submitted by `POST /api/changes` or `airlock submit`. */
export const SubmitChange = z
  .object({
    project: z.string().min(1).max(200),
    branch: z.string().min(1).max(255).default('master'),
    /** What to fetch from the project's repository: a ref name (refs/changes/…, refs/heads/…) or a commit id. */
    ref: z.string().min(1).max(255),
    /** The change's own id in the review system; defaults to the ref. */
    change: ChangeName.optional(),
    patchset: z.number().int().min(1).max(1_000_000).default(1),
    author: z.string().min(1).max(200).default('anonymous'),
    subject: z.string().max(1000).optional(),
    pipeline: Pipeline.default('check'),
  })
  .strict();
export type SubmitChange = z.infer<typeof SubmitChange>;
export type SubmitChangeInput = z.input<typeof SubmitChange>;

export const IssueView = z.object({
  file: z.string(),
  path: z.string(),
  message: z.string(),
  severity: z.enum(['error', 'warning']),
  line: z.number().int().positive().optional(),
  column: z.number().int().positive().optional(),
});

export const JobView = z.object({
  name: z.string(),
  state: JobState,
  voting: z.boolean(),
  reason: z.string().optional(),
  exitCode: z.number().int().optional(),
  startedAt: z.number().optional(),
  finishedAt: z.number().optional(),
  logBytes: z.number().int().optional(),
  artifacts: z.array(z.object({ path: z.string(), bytes: z.number().int() })).default([]),
  /** The wall-clock limit the job runs under (its own timeout, else the policy's), once planned. */
  timeoutMs: z.number().int().optional(),
});
export type JobView = z.infer<typeof JobView>;

export const ChangeView = z.object({
  id: z.number().int(),
  project: z.string(),
  branch: z.string(),
  change: z.string(),
  patchset: z.number().int(),
  ref: z.string(),
  author: z.string(),
  subject: z.string().optional(),
  source: z.string(),
  createdAt: z.number(),
});
export type ChangeView = z.infer<typeof ChangeView>;

export const BuildView = z.object({
  id: z.number().int(),
  pipeline: Pipeline,
  project: z.string(),
  branch: z.string(),
  change: ChangeView,
  state: BuildState,
  result: BuildResult.optional(),
  reason: z.string().optional(),
  issues: z.array(IssueView).default([]),
  attempt: z.number().int(),
  enqueuedAt: z.number(),
  startedAt: z.number().optional(),
  finishedAt: z.number().optional(),
  /** The merged commit the jobs ran on. */
  commit: z.string().optional(),
  environment: z.object({ image: z.string(), cached: z.boolean() }).optional(),
  jobs: z.array(JobView),
});
export type BuildView = z.infer<typeof BuildView>;

export const SubmitAnswer = z.object({ change: ChangeView, builds: z.array(z.number().int()) });
export type SubmitAnswer = z.infer<typeof SubmitAnswer>;

/** How many projects, and patch sets of each, one `GET /api/changes?change=` answer lists at most. */
export const LOOKUP_PROJECTS = 20;
export const LOOKUP_PATCHSETS = 100;

/**
 * `GET /api/changes?change=N[&project=P][&patchset=PS]`: every project this CI knows change N in,
 * with the change's current patch set (the newest it has recorded) and its patch sets, newest
 * first, each with its latest build (the highest build id, of any pipeline) if it has one. With
 * `patchset`, only that patch set is listed (none when it is unknown). What the CLI resolves
 * `--change N[,PS]` with (cli/build-ref.ts).
 */
export const ChangeLookup = z.object({
  changes: z.array(
    z.object({
      project: z.string(),
      change: z.string(),
      current: z.number().int(),
      patchsets: z.array(z.object({ patchset: z.number().int(), build: z.number().int().optional() })),
    }),
  ),
  /** More projects have the change than are listed. */
  more: z.boolean(),
});
export type ChangeLookup = z.infer<typeof ChangeLookup>;

export const QueueView = z.object({
  slots: z.number().int(),
  busy: z.number().int(),
  queued: z.array(z.object({ id: z.number().int(), project: z.string(), pipeline: Pipeline, change: z.string(), patchset: z.number().int(), enqueuedAt: z.number() })),
  running: z.array(z.object({ id: z.number().int(), project: z.string(), pipeline: Pipeline, change: z.string(), patchset: z.number().int(), startedAt: z.number() })),
});
export type QueueView = z.infer<typeof QueueView>;

/** One server-sent event of a build's stream (`GET /api/builds/:id/events`). */
export const BuildEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('log'), job: z.string(), text: z.string() }),
  z.object({ type: z.literal('job'), job: z.string(), state: JobState, reason: z.string().optional() }),
  z.object({ type: z.literal('build'), state: BuildState, result: BuildResult.optional(), reason: z.string().optional() }),
]);
export type BuildEvent = z.infer<typeof BuildEvent>;

export { Sha };
