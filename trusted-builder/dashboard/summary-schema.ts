/**
 * `BuilderSummary`: what the builder's page shows, as `GET /v1/ui/summary` answers it (the page
 * in trusted-builder/dashboard/page/ renders it; nothing else reads it).
 *
 * It is built only from what SRE may see (trusted-builder/dashboard/audit-view.ts decides): the
 * public promotions, the refusals, and a tail of the audit log with whitelisted fields, every value
 * already turned into text. Nothing of the embargo lane is in it, and no secret value: the route
 * serialises through this schema, so a field that is not declared here never leaves the builder.
 */
import { z } from 'zod';

/** The wire version of the summary; bump it on any change. */
export const BUILDER_SUMMARY_VERSION = 1;

/** The steps of a promotion, in the order the promoter runs them (promote/pipeline.ts). */
export const PROMOTION_STEPS = ['verify', 'tests', 'build', 'leak-check', 'push', 'sign'] as const;
export const PromotionStep = z.enum(PROMOTION_STEPS);
export type PromotionStep = z.infer<typeof PromotionStep>;

/**
 * A step's outcome: from its audit record (`passed`, `refused`, `failed`); or, without one, where
 * the promotion stands (`running`, `waiting`, `skipped` after a stop) or `unknown` (its record is
 * older than what the page keeps).
 */
export const StepOutcome = z.enum(['passed', 'refused', 'failed', 'running', 'waiting', 'skipped', 'unknown']);
export type StepOutcome = z.infer<typeof StepOutcome>;

export const StepView = z.object({
  name: PromotionStep,
  outcome: StepOutcome,
  /** What the record says, as text (the branch, the jobs, the reference, a reason). */
  detail: z.string().optional(),
  /** ISO-8601 time of the record. */
  at: z.string().optional(),
});
export type StepView = z.infer<typeof StepView>;

/** A same-site link: the public lookaside (`/lookaside/…`), which the builder serves to anyone. */
const LookasideUrl = z.string().regex(/^\/lookaside\/[^/]/);

export const PromotionView = z.object({
  project: z.string(),
  branch: z.string().optional(),
  commit: z.string(),
  state: z.enum(['queued', 'running', 'published', 'refused', 'failed']),
  /** When the promotion last changed state (ms since the epoch). */
  updatedAt: z.number(),
  steps: z.array(StepView),
  reference: z.string().optional(),
  digest: z.string().optional(),
  signatureUrl: LookasideUrl.optional(),
  provenanceUrl: LookasideUrl.optional(),
  provenanceSignatureUrl: LookasideUrl.optional(),
  /** Refused or failed: the step that stopped it (the promoter's name: policy, config, push…) and why. */
  stoppedAt: z.string().optional(),
  reason: z.string().optional(),
});
export type PromotionView = z.infer<typeof PromotionView>;

export const RefusalView = z.object({
  at: z.string(),
  kind: z.enum(['hint-refused', 'verify-refused', 'promotion-failed']),
  project: z.string().optional(),
  commit: z.string().optional(),
  step: z.string().optional(),
  reason: z.string(),
  /** hint-refused: the client address, and how many refusals before it were only counted. */
  from: z.string().optional(),
  suppressedBefore: z.number().optional(),
});
export type RefusalView = z.infer<typeof RefusalView>;

export const AuditEntryView = z.object({
  at: z.string(),
  kind: z.string(),
  /** The record's whitelisted fields, in the whitelist's order, each value as text. */
  fields: z.array(z.object({ name: z.string(), value: z.string() })),
});
export type AuditEntryView = z.infer<typeof AuditEntryView>;

export const BuilderSummary = z.object({
  version: z.literal(BUILDER_SUMMARY_VERSION),
  /** The builder's clock when this was made (ms since the epoch). */
  generatedAt: z.number(),
  /** The hash chain as far as it was read: intact (with its head), or where it breaks. */
  chain: z.union([z.object({ ok: z.literal(true), head: z.string() }), z.object({ ok: z.literal(false), line: z.number(), problem: z.string() })]),
  /** Newest first. */
  promotions: z.array(PromotionView),
  /** Newest first. */
  refusals: z.array(RefusalView),
  /** The last records shown, oldest first (as the file reads). */
  tail: z.array(AuditEntryView),
});
export type BuilderSummary = z.infer<typeof BuilderSummary>;
