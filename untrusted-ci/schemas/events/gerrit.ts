/**
 * Gerrit's event JSON, as `gerrit stream-events` prints it and the webhooks plugin POSTs it
 * (the plugin's GerritEventProcessor sends `GSON.toJson(event)`: the same object, one per request).
 *
 * Sources: Documentation/cmd-stream-events.txt (event types and their attributes) and
 * Documentation/json.txt (the change, patchSet, account, approval and refUpdate attributes) in
 * https://gerrit.googlesource.com/gerrit; Java types in java/com/google/gerrit/server/data/.
 * Gerrit's docs warn "any field may be missing", and versions differ:
 * - `change.number` and `patchSet.number` are JSON numbers since Gerrit 2.14 and numeric strings
 *   before (`"number":"56"`); both are accepted;
 * - approval `value`/`oldValue` are strings (`"2"`, `"-1"`) in every version (ApprovalAttribute
 *   declares them `String`); numbers are accepted too;
 * - `refUpdate.refName` is a full name (`refs/heads/main`) today and was a short one (`main`)
 *   in old versions;
 * - `patchSet.isDraft` and status `DRAFT` exist only before Gerrit 2.15; `private` and `wip` after.
 *
 * Objects are loose (`z.looseObject`): Gerrit adds fields release by release (`kind`, `changeKey`,
 * `refName`, a top-level `project`, plugin data) and unknown ones are kept but never read. Fields
 * airlock reads are strictly typed; fields it reads only when present are optional.
 */
import { z } from 'zod';
import { ChangeId, LabelName, ProjectName, RefName, Sha } from '#shared/schemas/events/trigger.js';

/** A positive integer that old Gerrit versions send as a numeric string. */
const Count = z
  .union([z.number(), z.string().regex(/^[0-9]{1,9}$/, 'not a number').transform(Number)])
  .pipe(z.number().int().min(1).max(999_999_999));

/** A vote: `"2"`, `"-1"`, `"+1"` (strings in Gerrit's JSON) or a number. */
const VoteValue = z
  .union([z.number(), z.string().regex(/^[+-]?[0-9]{1,4}$/, 'not a vote value').transform(Number)])
  .pipe(z.number().int().min(-1000).max(1000));

/** Seconds since the epoch (Gerrit's `createdOn`, `eventCreatedOn`). */
const EpochSeconds = z.number().int().min(0).max(8.64e12);

/** A bounded free-text field. */
const Text = (max: number) => z.string().max(max);

/** json.txt "account": every field optional (a username is only there if the user set one). */
export const GerritAccount = z.looseObject({
  name: Text(256).optional(),
  email: Text(256).optional(),
  username: Text(256).optional(),
});
export type GerritAccount = z.infer<typeof GerritAccount>;

/** json.txt "change". */
export const GerritChange = z.looseObject({
  project: ProjectName,
  /** Short branch name (`main`); a change for a ref outside refs/heads/ keeps its full name. */
  branch: RefName,
  /** The Change-Id footer. */
  id: ChangeId.optional(),
  number: Count,
  subject: Text(64 * 1024).optional(),
  owner: GerritAccount.optional(),
  url: Text(2048).optional(),
  status: Text(32).optional(),
  private: z.boolean().optional(),
  wip: z.boolean().optional(),
});
export type GerritChange = z.infer<typeof GerritChange>;

/** json.txt "patchSet". */
export const GerritPatchSet = z.looseObject({
  number: Count,
  revision: Sha.optional(),
  /** `refs/changes/<last two digits of the change>/<change>/<patch set>`. */
  ref: z.string().regex(/^refs\/changes\/[0-9]{2}\/[0-9]{1,9}\/[0-9]{1,9}$/, 'not a change ref (refs/changes/NN/change/patchset)'),
  uploader: GerritAccount.optional(),
  author: GerritAccount.optional(),
  createdOn: EpochSeconds.optional(),
  kind: Text(64).optional(),
  /** Gerrit < 2.15 only. */
  isDraft: z.boolean().optional(),
});
export type GerritPatchSet = z.infer<typeof GerritPatchSet>;

/** json.txt "approval". */
export const GerritApproval = z.looseObject({
  type: LabelName,
  description: Text(256).optional(),
  value: VoteValue,
  oldValue: VoteValue.optional(),
});
export type GerritApproval = z.infer<typeof GerritApproval>;

/** json.txt "refUpdate". `newRev` of 40 zeros means the ref was deleted, `oldRev` of zeros created. */
export const GerritRefUpdate = z.looseObject({
  oldRev: Sha,
  newRev: Sha,
  refName: Text(255).pipe(RefName),
  project: ProjectName,
});
export type GerritRefUpdate = z.infer<typeof GerritRefUpdate>;

/** Fields on every event. `type` names it; unknown types are not errors (the parser ignores them). */
export const GerritEventEnvelope = z.looseObject({
  type: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/, 'not an event type'),
  eventCreatedOn: EpochSeconds.optional(),
});

/** cmd-stream-events "Patchset Created": a change or a new patch set was uploaded. */
export const GerritPatchsetCreated = GerritEventEnvelope.extend({
  type: z.literal('patchset-created'),
  change: GerritChange,
  patchSet: GerritPatchSet,
  uploader: GerritAccount.optional(),
});
export type GerritPatchsetCreated = z.infer<typeof GerritPatchsetCreated>;

/** cmd-stream-events "Comment Added": a review message, with the votes it carried. */
export const GerritCommentAdded = GerritEventEnvelope.extend({
  type: z.literal('comment-added'),
  change: GerritChange,
  patchSet: GerritPatchSet,
  author: GerritAccount,
  approvals: z.array(GerritApproval).max(100).optional(),
  /** The cover message; airlock keeps its first 4 KiB. */
  comment: Text(1024 * 1024).optional(),
});
export type GerritCommentAdded = z.infer<typeof GerritCommentAdded>;

/** cmd-stream-events "Change Merged". `newRev` (Gerrit ≥ 2.13) is the branch tip after the merge. */
export const GerritChangeMerged = GerritEventEnvelope.extend({
  type: z.literal('change-merged'),
  change: GerritChange,
  patchSet: GerritPatchSet,
  submitter: GerritAccount.optional(),
  newRev: Sha.optional(),
});
export type GerritChangeMerged = z.infer<typeof GerritChangeMerged>;

/** cmd-stream-events "Change Abandoned". */
export const GerritChangeAbandoned = GerritEventEnvelope.extend({
  type: z.literal('change-abandoned'),
  change: GerritChange,
  patchSet: GerritPatchSet,
  abandoner: GerritAccount.optional(),
  reason: Text(64 * 1024).optional(),
});

/** cmd-stream-events "Change Restored". */
export const GerritChangeRestored = GerritEventEnvelope.extend({
  type: z.literal('change-restored'),
  change: GerritChange,
  patchSet: GerritPatchSet,
  restorer: GerritAccount.optional(),
  reason: Text(64 * 1024).optional(),
});

/** cmd-stream-events "Work in Progress State Changed": `change.wip` is the new state. */
export const GerritWipStateChanged = GerritEventEnvelope.extend({
  type: z.literal('wip-state-changed'),
  change: GerritChange,
  patchSet: GerritPatchSet,
  changer: GerritAccount.optional(),
});

/** cmd-stream-events "Private State Changed": `change.private` is the new state. */
export const GerritPrivateStateChanged = GerritEventEnvelope.extend({
  type: z.literal('private-state-changed'),
  change: GerritChange,
  patchSet: GerritPatchSet,
  changer: GerritAccount.optional(),
});

/** cmd-stream-events "Ref Updated": any ref moved, including Gerrit's own (refs/changes/…/meta). */
export const GerritRefUpdated = GerritEventEnvelope.extend({
  type: z.literal('ref-updated'),
  refUpdate: GerritRefUpdate,
  submitter: GerritAccount.optional(),
});
export type GerritRefUpdated = z.infer<typeof GerritRefUpdated>;

/** The event types airlock reads; every other `type` becomes an `Ignored`. */
export const GERRIT_EVENT_SCHEMAS = {
  'patchset-created': GerritPatchsetCreated,
  'comment-added': GerritCommentAdded,
  'change-merged': GerritChangeMerged,
  'change-abandoned': GerritChangeAbandoned,
  'change-restored': GerritChangeRestored,
  'wip-state-changed': GerritWipStateChanged,
  'private-state-changed': GerritPrivateStateChanged,
  'ref-updated': GerritRefUpdated,
} as const;
export type GerritEventType = keyof typeof GERRIT_EVENT_SCHEMAS;
