/**
 * `PromotionHint`: the only thing the untrusted CI sends the trusted builder (`POST /v1/hints`),
 * HMAC-signed by `shared/hints/hint-auth.ts` (docs/architecture.md "The builder trusts nothing it
 * is sent", docs/conventions.md "Parse at the edge").
 *
 * It carries identifiers only: which commit of which project's branch passed the gate, and the CI
 * run that says so. Never a compiled config, image, artifact or log: the builder re-derives every
 * fact (reachability from a protected branch, policy, tests) from its own clone, so a hint is a
 * trigger and nothing more. A forged or stale hint can at worst make the builder look at a commit.
 *
 * Names are validated exactly as trigger events validate them (`ProjectName`, `RefName`, `Sha` from
 * `events/trigger.ts`), because they reach git command lines and paths on the builder too.
 * The object is strict: an unknown key is an error, not something silently dropped.
 *
 * Delivery is at least once (see untrusted-ci/hints/hint-sender.ts): the receiver must treat a
 * repeated hint for the same commit as a no-op.
 */
import { z } from 'zod';
import { ProjectName, RefName, Sha } from './events/trigger.js';

/** The wire version this module speaks; bump it (and keep parsing the old one) on any change. */
export const PROMOTION_HINT_VERSION = 1;

/** A hint is a few hundred bytes; the receiver can refuse anything larger before parsing. */
export const MAX_PROMOTION_HINT_BYTES = 4 * 1024; // 4 KiB

/** The CI's run id (its build id, as a string): opaque to the builder, kept for the audit trail. */
export const CiRunId = z.string().regex(/^[A-Za-z0-9._:-]{1,128}$/, 'not a CI run id (1-128 of A-Z a-z 0-9 . _ : -)');

/**
 * "Commit `commit` of `project` passed the gate on `branch`" — a claim the builder verifies, never
 * a fact it trusts. `ciRun` is optional so that other senders (a poll, an operator) can use the
 * same shape.
 */
export const PromotionHint = z.strictObject({
  version: z.literal(PROMOTION_HINT_VERSION),
  project: ProjectName,
  branch: RefName,
  commit: Sha,
  ciRun: CiRunId.optional(),
});
export type PromotionHint = z.infer<typeof PromotionHint>;
