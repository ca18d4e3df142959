/**
 * The `ReviewSystem` port: how the public CI talks to the code-review system its projects live in
 * (Gerrit now, GitLab later through the same port). The review system, not airlock, holds the
 * right to change a branch: airlock's account there may vote (Verified), comment and *ask* for a
 * submit; the review system's own rules (Code-Review +2 from a person, Verified from the CI)
 * decide whether the change merges, and it merges it. The CI holds no credential that writes a git
 * ref.
 *
 * - Events in: `parseEvent` turns one webhook delivery into a `TriggerEvent` (or an `Ignored`);
 *   `changedSince` is the catch-up read of changes updated while airlock was not listening.
 * - Out: `post` (a message and label votes on one patch set), `submit`.
 * - Re-read: `change` is what the review system says of a change now (status, current patch set,
 *   votes per reviewer): the gate reads it again before it asks for a submit.
 */
import type { Ignored, PatchsetEvent, TriggerEvent } from '#shared/schemas/events/trigger.js';

export type PatchsetKind = NonNullable<PatchsetEvent['patchsetKind']>;

/** A change as the review system knows it at the moment it was read. */
export interface ReviewedChange {
  project: string;
  /** Short branch name (`master`). */
  branch: string;
  /** The change's number, as a string (airlock's change id). */
  change: string;
  changeId?: string;
  status: 'open' | 'merged' | 'abandoned';
  /** The current patch set, its commit and fetch ref. */
  patchset: number;
  revision: string;
  ref: string;
  patchsetKind?: PatchsetKind;
  wip: boolean;
  private: boolean;
  owner: string;
  uploader?: string;
  subject?: string;
  /** Votes on the current patch set: label → account → value (no-votes left out). */
  votes: Record<string, Record<string, number>>;
  /** When it last changed, in ms on the review system's clock. */
  updated: number;
}

/** A message (and optionally label votes) for one patch set of a change. */
export interface ReviewMessage {
  project: string;
  change: string;
  patchset: number;
  /** The commit of that patch set, when known: the message goes to it (and fails if it is not the change's). */
  revision?: string;
  message: string;
  labels?: Record<string, number>;
}

/** What asking the review system to submit came to. `commit` is the branch tip right after it, when read. */
export type SubmitOutcome = { kind: 'merged'; commit?: string } | { kind: 'refused'; reason: string };

export interface ReviewSystem {
  readonly kind: 'gerrit';
  /** The account airlock acts as: its own votes never count as approvals. */
  readonly account: string;
  parseEvent(raw: Buffer): TriggerEvent | Ignored;
  /** The change now, or undefined when the review system does not know it (or hides it). */
  change(project: string, change: string, signal?: AbortSignal): Promise<ReviewedChange | undefined>;
  /** Changes of any status updated at or after `sinceMs` (review system's clock), newest first, at most `max`. */
  changedSince(sinceMs: number, o?: { max?: number; signal?: AbortSignal }): Promise<ReviewedChange[]>;
  post(m: ReviewMessage, signal?: AbortSignal): Promise<void>;
  /** The commit a branch points at now, or undefined when there is no such branch. */
  branchTip(project: string, branch: string, signal?: AbortSignal): Promise<string | undefined>;
  /**
   * Ask for the change to be merged at exactly `revision` (the review system refuses when it is no
   * longer the current patch set); the review system's answer (merged, or why not).
   */
  submit(project: string, change: string, branch: string, revision: string, signal?: AbortSignal): Promise<SubmitOutcome>;
}

/**
 * What makes a change approved for the gate: `label` at `value` or more from someone other than
 * airlock (and, unless `selfApproval`, other than the change's owner and the uploader of its
 * current patch set), and no veto (`-value` or less). The trusted builder checks its own policy
 * again, by account id and over every patch set; this rule only keeps out of the gate what the
 * builder's default policy would refuse anyway.
 */
export interface ApprovalRule {
  label: string;
  value: number;
  selfApproval?: boolean;
}

/** Whether `votes` (label → account → value) approve a change under `rule`; votes of `self` (airlock) and of `authors` (unless the rule allows self-approval) do not count. */
export function approvedBy(votes: Readonly<Record<string, Readonly<Record<string, number>>>>, rule: ApprovalRule, self: string, authors: readonly string[] = []): boolean {
  const label = Object.entries(votes[rule.label] ?? {});
  const vetoed = label.some(([, v]) => v <= -rule.value);
  const counts = (who: string) => who !== self && (rule.selfApproval === true || !authors.includes(who));
  return !vetoed && label.some(([who, v]) => counts(who) && v >= rule.value);
}

/** Whether a change may be in the gate: open, not work in progress, not private, approved. */
export function gateReady(c: Pick<ReviewedChange, 'status' | 'wip' | 'private' | 'votes'> & { owner?: string; uploader?: string }, rule: ApprovalRule, self: string): boolean {
  const authors = [c.owner, c.uploader].filter((x): x is string => x !== undefined);
  return c.status === 'open' && !c.wip && !c.private && approvedBy(c.votes, rule, self, authors);
}
