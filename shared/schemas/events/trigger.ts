/**
 * `TriggerEvent`: what a code-review source (Gerrit's webhooks, later GitLab, or airlock's own API)
 * tells the scheduler, once parsed at the edge (docs/conventions.md "Parse at the edge", "Webhooks"). Every source adapter turns its wire
 * format into one of these or into an `Ignored`; nothing past the edge sees the source's JSON.
 *
 * Every string in a TriggerEvent came from outside and will reach git command lines, file paths
 * and logs, so names are validated here, not where they are used:
 * - project names: `ProjectName` (no `..`, `.` or empty path segment, no leading `-` or `.`);
 * - branch and ref names: `isSafeRefName`, git check-ref-format's rules plus no leading `-`;
 * - commits: lowercase hex, 40 (SHA-1) or 64 (SHA-256) digits.
 *
 * Variants (discriminated on `kind`):
 * - `patchset`: a new patch set to check (Gerrit patchset-created, or an API request);
 * - `approval`: votes were cast on a patch set (Gerrit comment-added); the gate decides whether
 *   they make the change eligible. `author` is the voter, not the uploader;
 * - `change-merged`: a change landed; `commit` is the merge result when the source says it;
 * - `ref-updated`: a branch or tag moved, was created (`oldRev` all zeros) or was deleted
 *   (`newRev` all zeros; see `refUpdateKind`);
 * - `change-abandoned`: the change was abandoned (`abandoned: true`) or restored (`false`);
 * - `change-state`: the change became (or stopped being) work in progress or private (a private
 *   change's content must not reach the public CI).
 */
import { z } from 'zod';

/** git check-ref-format's 40 zeros: the "no commit" side of a ref creation or deletion. */
export const ZERO_SHA = '0'.repeat(40);

const SHA_RE = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
const CONTROL_RE = /[\u0000-\u001f\u007f]/;

/** A commit id: lowercase hex, 40 digits (SHA-1) or 64 (SHA-256). */
export const Sha = z.string().regex(SHA_RE, 'not a commit id (40 or 64 lowercase hex digits)');
export type Sha = z.infer<typeof Sha>;

/**
 * True if `name` is a ref or branch name git itself would accept (`git check-ref-format
 * --allow-onelevel`), and safe to put on a git command line. Pure; never throws.
 * Rejects: empty or longer than 255; `..`; ASCII control characters, space, `~ ^ : ? * [ \`;
 * a leading or trailing `/` or `//`; a component that starts with `.` or ends with `.lock`;
 * a trailing `.`; `@{`; the name `@`; and (airlock's own rule) a leading `-`, which git
 * command lines would read as an option.
 */
export function isSafeRefName(name: string): boolean {
  if (name.length === 0 || name.length > 255) return false;
  if (name === '@' || name.startsWith('-')) return false;
  if (name.includes('..') || name.includes('@{') || name.includes('//')) return false;
  if (CONTROL_RE.test(name) || /[ ~^:?*[\\]/.test(name)) return false;
  if (name.startsWith('/') || name.endsWith('/') || name.endsWith('.')) return false;
  for (const part of name.split('/')) {
    if (part.startsWith('.') || part.endsWith('.lock')) return false;
  }
  return true;
}

/** A branch or ref name that passes `isSafeRefName`. */
export const RefName = z.string().refine(isSafeRefName, 'not a valid git ref name (git check-ref-format)');

/**
 * A project (repository) path such as `tools/gerrit`: 1-200 characters of `A-Z a-z 0-9 . _ / -`,
 * starting with a letter or digit, and no empty, `.` or `..` segment (so it never walks out of a
 * directory it is joined to).
 */
export const ProjectName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$/, 'not a project name (1-200 of A-Z a-z 0-9 . _ / -, starting with a letter or digit)')
  .refine((p) => p.split('/').every((s) => s !== '' && s !== '.' && s !== '..'), 'a project name has no empty, "." or ".." segment');

/** A Gerrit Change-Id (`I` + 40 hex digits), as in the commit message footer. */
export const ChangeId = z.string().regex(/^I[0-9a-f]{40}$/, 'not a Change-Id (I followed by 40 hex digits)');

/** The change's identity in its source: a Gerrit change number as a string, or an API caller's id. */
const ChangeRef = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/, 'not a change id (1-100 of A-Z a-z 0-9 . _ -)');

/** A label name as Gerrit allows it (`Code-Review`, `Verified`). */
export const LabelName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$/, 'not a label name');

/** A vote's value: Gerrit labels are small integers (-2..+2 usually). */
const Vote = z.number().int().min(-1000).max(1000);

/** Where the event came from. `api` is airlock's own trigger endpoint. */
export const TriggerSource = z.enum(['gerrit', 'api']);
export type TriggerSource = z.infer<typeof TriggerSource>;

/** An opaque id for deduplicating deliveries (Gerrit's webhooks plugin retries on failure). */
const EventId = z.string().regex(/^[A-Za-z0-9._:-]{1,128}$/, 'not an event id');

/** What a comment may carry into the model: at most 4 KiB of UTF-8 (the parser truncates). */
export const MAX_COMMENT_BYTES = 4 * 1024;
/** The same for a change's subject line. */
export const MAX_SUBJECT_BYTES = 1024;

const utf8Max = (max: number) => z.string().refine((s) => Buffer.byteLength(s) <= max, `longer than ${max} bytes`);

/** Fields every change-scoped event shares. */
const changeFields = {
  source: TriggerSource,
  eventId: EventId.optional(),
  project: ProjectName,
  branch: RefName,
  change: ChangeRef,
  changeId: ChangeId.optional(),
  patchset: z.number().int().min(1).max(999_999_999),
  /** The change's owner in the review system (username, else e-mail, else name), when it says. */
  owner: z.string().min(1).max(256).optional(),
};

/** A patch set to check. `ref` is what to fetch: `refs/changes/45/12345/3`, a branch, or a commit. */
export const PatchsetEvent = z.strictObject({
  kind: z.literal('patchset'),
  ...changeFields,
  ref: RefName,
  commit: Sha.optional(),
  /** Who uploaded it (Gerrit username, else e-mail, else full name). */
  author: z.string().min(1).max(256),
  subject: utf8Max(MAX_SUBJECT_BYTES).optional(),
  /** When the patch set was created, in ms since the epoch. */
  createdAt: z.number().int().min(0).max(8.64e15).optional(),
  /** The change is work in progress. It is still checked; Gerrit itself refuses to submit it. */
  wip: z.boolean().optional(),
  /**
   * How this patch set differs from the one before (Gerrit's change kind: REWORK, TRIVIAL_REBASE,
   * MERGE_FIRST_PARENT_UPDATE, NO_CODE_CHANGE, NO_CHANGE): whether votes carry over to it.
   */
  patchsetKind: z.enum(['REWORK', 'TRIVIAL_REBASE', 'MERGE_FIRST_PARENT_UPDATE', 'NO_CODE_CHANGE', 'NO_CHANGE']).optional(),
});
export type PatchsetEvent = z.infer<typeof PatchsetEvent>;

/** One vote. `oldValue` is present only when this event changed an earlier vote. */
export const Approval = z.strictObject({
  type: LabelName,
  value: Vote,
  oldValue: Vote.optional(),
});
export type Approval = z.infer<typeof Approval>;

/** Votes were cast on a patch set. `author` is who voted. */
export const ApprovalEvent = z.strictObject({
  kind: z.literal('approval'),
  ...changeFields,
  ref: RefName,
  commit: Sha.optional(),
  author: z.string().min(1).max(256),
  approvals: z.array(Approval).max(100),
  comment: utf8Max(MAX_COMMENT_BYTES).optional(),
});
export type ApprovalEvent = z.infer<typeof ApprovalEvent>;

/** A change was merged into `branch`; `commit` is the resulting branch tip when known. */
export const ChangeMergedEvent = z.strictObject({
  kind: z.literal('change-merged'),
  ...changeFields,
  commit: Sha.optional(),
});
export type ChangeMergedEvent = z.infer<typeof ChangeMergedEvent>;

/** The change was abandoned (`abandoned: true`) or restored (`abandoned: false`); `author` is who did it. */
export const ChangeAbandonedEvent = z.strictObject({
  kind: z.literal('change-abandoned'),
  ...changeFields,
  abandoned: z.boolean(),
  author: z.string().min(1).max(256).optional(),
});
export type ChangeAbandonedEvent = z.infer<typeof ChangeAbandonedEvent>;

/** The change's work-in-progress or private flag changed; the flags are the new state. */
export const ChangeStateEvent = z.strictObject({
  kind: z.literal('change-state'),
  ...changeFields,
  wip: z.boolean().optional(),
  private: z.boolean().optional(),
  author: z.string().min(1).max(256).optional(),
});
export type ChangeStateEvent = z.infer<typeof ChangeStateEvent>;

/** A branch or tag moved. `ref` is the full name (`refs/heads/main`). */
export const RefUpdatedEvent = z.strictObject({
  kind: z.literal('ref-updated'),
  source: TriggerSource,
  eventId: EventId.optional(),
  project: ProjectName,
  ref: RefName.refine((r) => r.startsWith('refs/'), 'a full ref name (refs/...)'),
  oldRev: Sha,
  newRev: Sha,
});
export type RefUpdatedEvent = z.infer<typeof RefUpdatedEvent>;

export const TriggerEvent = z.discriminatedUnion('kind', [PatchsetEvent, ApprovalEvent, ChangeMergedEvent, ChangeAbandonedEvent, ChangeStateEvent, RefUpdatedEvent]);
export type TriggerEvent = z.infer<typeof TriggerEvent>;

/**
 * A well-formed event that airlock does not act on (an event type it does not handle, a private
 * change, a Gerrit-internal ref). Answered 202 and logged, never an error (docs/conventions.md "Webhooks").
 * `event` is the source's event type; `reason` is for the log.
 */
export const Ignored = z.strictObject({
  kind: z.literal('ignored'),
  event: z.string().min(1).max(100),
  reason: z.string().min(1).max(500),
});
export type Ignored = z.infer<typeof Ignored>;

/** Whether a ref update created, moved or deleted the ref. */
export function refUpdateKind(e: Pick<RefUpdatedEvent, 'oldRev' | 'newRev'>): 'created' | 'updated' | 'deleted' {
  if (/^0+$/.test(e.newRev)) return 'deleted';
  if (/^0+$/.test(e.oldRev)) return 'created';
  return 'updated';
}
