/**
 * The builder checks review itself: it does not take the CI's word, or the branch's, that a commit
 * was reviewed. With its own read-only account in the review system it asks which merged changes
 * produced the commits it is about to promote, and holds each to the project's policy.
 *
 * `verifyReview` walks the history the promotion adds: every commit reachable from `commit` and not
 * from `base` (the last commit of this branch the builder promoted, else the policy's `since`,
 * else the root). Each must be accounted for:
 * - the merged patch set of a change of the project merged on one of its protected branches
 *   (Gerrit: the change's `current_revision` once it is MERGED; a fast-forward, or a rebase or
 *   cherry-pick the review system made on submit). A change merged on another branch (a sandbox, a
 *   feature branch) was held to that branch's rules, not this policy's: it does not count;
 * - or a merge commit the review system made on submit: two parents, the second the merged patch
 *   set of a change, and a tree exactly the merge of its parents (recomputed here with
 *   `git merge-tree`: a merge that carries anything else, an "evil merge", is not accounted for).
 * Anything else (a commit pushed past review, an outdated patch set, an octopus) refuses the
 * promotion, naming the commit. Then each change found must carry every approval `require` names:
 * `label` at `value` or more, from an allowed account (`by`: accounts, or members of groups, matched
 * by account id; absent: anyone), not from one of its own authors unless `selfApproval` (its owner,
 * anyone who uploaded one of its patch sets, or the author or committer of its merged commit), and
 * no vote of `-value` or less on that label (a veto). Votes given after the merge do not count.
 *
 * The evidence (changes, patch sets, owners, uploaders, approvers and their votes, submitters)
 * goes into the signed provenance. A review-made merge is checked with git's merge (ort); a review
 * system whose merge differs (JGit without rename detection, say) makes the builder refuse, failing
 * closed: the reason names the commit.
 */
import { runGit } from '#shared/git/git.js';
import type { ProjectReview, ReviewRequirement } from '../policy/promotion.js';

/** An account as the review system named it; `names` are what a policy may list (username, e-mail). */
export interface AccountRef {
  id?: number;
  names: string[];
  /** How messages and the provenance name it. */
  display: string;
}

/** A merged change, as the review system reports it. */
export interface MergedChange {
  number: number;
  changeId?: string;
  project: string;
  branch: string;
  subject?: string;
  /** The merged patch set and its commit. */
  patchset: number;
  revision: string;
  owner: AccountRef;
  uploader?: AccountRef;
  submitter?: AccountRef;
  submitted?: string;
  /** Everyone who uploaded a patch set of it (their own change, for self-approval). */
  uploaders: AccountRef[];
  /** The e-mail addresses the merged commit names as author and committer. */
  authorEmails: string[];
  votes: { label: string; value: number; by: AccountRef; date?: string }[];
}

/** What the verifier needs of the review system (read-only). */
export interface ReviewReader {
  readonly url: string;
  /** For each commit that is the merged patch set of a change of `project`, that change. */
  mergedChanges(project: string, commits: readonly string[], signal?: AbortSignal): Promise<Map<string, MergedChange>>;
  /** The id of the account a username or e-mail names, or undefined. */
  accountId(name: string, signal?: AbortSignal): Promise<number | undefined>;
  /** The account ids of a group's members. */
  groupMembers(group: string, signal?: AbortSignal): Promise<Set<number>>;
}

/** What the signed provenance says of review. */
export interface ReviewEvidence {
  system: string;
  project: string;
  branch: string;
  /** The commit the walk stopped at (its history was accepted before), or null: the root. */
  from: string | null;
  changes: {
    number: number;
    changeId?: string;
    branch: string;
    patchset: number;
    revision: string;
    subject?: string;
    owner: string;
    uploader?: string;
    submitter?: string;
    submitted?: string;
    approvals: { label: string; value: number; by: string; account?: number; date?: string }[];
  }[];
  /** Merge commits the review system made, each with the change it merged. */
  merges: { commit: string; change: number }[];
}

export type ReviewVerdict = { ok: true; evidence: ReviewEvidence } | { ok: false; reason: string };

/** Commits one promotion may add at most (a longer unpromoted history needs `since`). */
export const MAX_NEW_COMMITS = 2000;
const SUBJECT_MAX = 200;

export async function verifyReview(o: {
  gitDir: string;
  review: ProjectReview;
  /** The project's name in the review system. */
  reviewProject: string;
  branch: string;
  /** Branches whose merged changes count (the project's protected branches). */
  branches: readonly string[];
  commit: string;
  base: string | undefined;
  reader: ReviewReader;
  signal?: AbortSignal;
}): Promise<ReviewVerdict> {
  const git = (args: string[], allowFail?: number[]) => runGit(args, { gitDir: o.gitDir, ...(o.signal ? { signal: o.signal } : {}), ...(allowFail ? { allowFail } : {}) });
  const refuse = (reason: string): ReviewVerdict => ({ ok: false, reason });
  const short = (c: string) => c.slice(0, 12);

  // Every commit this promotion adds, each with its parents (one rev-list).
  const range = o.base ? [o.commit, `^${o.base}`] : [o.commit];
  const listed = (await git(['rev-list', '--parents', `--max-count=${MAX_NEW_COMMITS + 1}`, '--end-of-options', ...range])).stdout.toString('utf8').trim();
  const rows = listed === '' ? [] : listed.split('\n').map((l) => l.split(' '));
  if (rows.length > MAX_NEW_COMMITS) return refuse(`more than ${MAX_NEW_COMMITS} commits of ${o.branch} are not promoted yet; SRE can set review.since to the commit from which review is checked`);
  const parents = new Map(rows.map(([c, ...ps]) => [c!, ps]));

  // The commits, and the second parents of merges (a merged change's commit may be older than the range).
  const asked = new Set([...parents.keys(), ...[...parents.values()].flatMap((ps) => (ps.length === 2 ? [ps[1]!] : []))]);
  const merged = asked.size > 0 ? await o.reader.mergedChanges(o.reviewProject, [...asked], o.signal) : new Map<string, MergedChange>();
  const accounting = new Map<number, MergedChange>();
  const merges: { commit: string; change: number }[] = [];
  const offBranch = [...merged.values()].find((m) => parents.has(m.revision) && !o.branches.includes(m.branch));
  if (offBranch) {
    return refuse(`commit ${short(offBranch.revision)} on ${o.branch} is change ${offBranch.number}, merged on branch ${offBranch.branch}, which is not a protected branch of the project: its review was held to another branch's rules`);
  }
  for (const [c, ps] of parents) {
    const change = merged.get(c);
    if (change) {
      accounting.set(change.number, change);
      continue;
    }
    const candidate = ps.length === 2 ? merged.get(ps[1]!) : undefined;
    const second = candidate && o.branches.includes(candidate.branch) ? candidate : undefined;
    if (!second) {
      const what = ps.length > 2 ? 'an octopus merge' : ps.length === 2 ? 'a merge of no reviewed change' : 'no merged change of the review system';
      return refuse(`commit ${short(c)} on ${o.branch} is not the result of a reviewed change (${what}; pushed past review?)`);
    }
    // A merge the review system made on submit: its tree must be exactly the merge of its parents.
    const made = await git(['merge-tree', '--write-tree', '--no-messages', '--end-of-options', ps[0]!, ps[1]!], [1]);
    const tree = (await git(['rev-parse', '--verify', '--end-of-options', `${c}^{tree}`])).stdout.toString('utf8').trim();
    if (made.code !== 0) return refuse(`merge commit ${short(c)} on ${o.branch} merges change ${second.number} with conflicts: not a merge the review system makes`);
    if (made.stdout.toString('utf8').trim().split('\n')[0] !== tree) return refuse(`merge commit ${short(c)} on ${o.branch} carries changes of its own beyond merging change ${second.number} (its tree is not the merge of its parents)`);
    accounting.set(second.number, second);
    merges.push({ commit: c, change: second.number });
  }

  // Each change must carry every approval the policy requires. Allowed approvers by account id.
  const groups = new Map<string, Set<number>>();
  const ids = new Map<string, number | undefined>();
  const allowedIds = async (by: NonNullable<ReviewRequirement['by']>): Promise<Set<number>> => {
    const out = new Set<number>();
    for (const name of by.accounts) {
      if (!ids.has(name)) ids.set(name, await o.reader.accountId(name, o.signal));
      const id = ids.get(name);
      if (id !== undefined) out.add(id);
    }
    for (const g of by.groups) {
      let m = groups.get(g);
      if (!m) groups.set(g, (m = await o.reader.groupMembers(g, o.signal)));
      for (const id of m) out.add(id);
    }
    return out;
  };
  const changes: ReviewEvidence['changes'] = [];
  for (const ch of [...accounting.values()].sort((a, b) => a.number - b.number)) {
    const approvals: ReviewEvidence['changes'][number]['approvals'] = [];
    for (const req of o.review.require) {
      const r = await approvalsFor(ch, req, o.review.selfApproval, allowedIds);
      if (!r.ok) return refuse(`change ${ch.number}${ch.subject ? ` ("${clip(ch.subject)}")` : ''} merged without ${r.reason}`);
      approvals.push(...r.approvals);
    }
    changes.push({
      number: ch.number,
      ...(ch.changeId ? { changeId: ch.changeId } : {}),
      branch: ch.branch,
      patchset: ch.patchset,
      revision: ch.revision,
      ...(ch.subject ? { subject: clip(ch.subject) } : {}),
      owner: ch.owner.display,
      ...(ch.uploader ? { uploader: ch.uploader.display } : {}),
      ...(ch.submitter ? { submitter: ch.submitter.display } : {}),
      ...(ch.submitted ? { submitted: ch.submitted } : {}),
      approvals,
    });
  }
  return { ok: true, evidence: { system: o.reader.url, project: o.reviewProject, branch: o.branch, from: o.base ?? null, changes, merges } };
}

/** The votes of `ch` that meet `req`, or why none does. */
async function approvalsFor(
  ch: MergedChange,
  req: ReviewRequirement,
  selfApproval: boolean,
  allowedIds: (by: NonNullable<ReviewRequirement['by']>) => Promise<Set<number>>,
): Promise<{ ok: true; approvals: { label: string; value: number; by: string; account?: number; date?: string }[] } | { ok: false; reason: string }> {
  const votes = ch.votes.filter((v) => v.label === req.label);
  const veto = votes.find((v) => v.value <= -req.value);
  const want = `${req.label} +${req.value}`;
  if (veto) return { ok: false, reason: `${want}: it carries a veto (${req.label} ${veto.value} from ${veto.by.display})` };
  const high = votes.filter((v) => v.value >= req.value);
  const rejected: string[] = [];
  const counted: typeof high = [];
  const allowed = req.by ? await allowedIds(req.by) : undefined;
  for (const v of high) {
    const self = selfApproval ? undefined : selfRole(v.by, ch);
    if (self) {
      rejected.push(`${v.by.display} +${v.value} (${self}: self-approval is not accepted)`);
      continue;
    }
    if (allowed && (v.by.id === undefined || !allowed.has(v.by.id))) {
      rejected.push(`${v.by.display} +${v.value} (not among the allowed approvers)`);
      continue;
    }
    counted.push(v);
  }
  if (counted.length === 0) {
    const from = req.by ? ` from ${[...req.by.accounts, ...req.by.groups.map((g) => `group ${g}`)].join(', ')}` : ' from a reviewer';
    return { ok: false, reason: `${want}${from}${rejected.length > 0 ? `: ${rejected.join('; ')}` : ': no such vote'}` };
  }
  return { ok: true, approvals: counted.map((v) => ({ label: v.label, value: v.value, by: v.by.display, ...(v.by.id !== undefined ? { account: v.by.id } : {}), ...(v.date ? { date: v.date } : {}) })) };
}

/** How `who` is one of the change's own authors, or undefined. */
function selfRole(who: AccountRef, ch: MergedChange): string | undefined {
  if (same(who, ch.owner)) return "the change's owner";
  if (ch.uploaders.some((u) => same(who, u)) || (ch.uploader && same(who, ch.uploader))) return 'an uploader of one of its patch sets';
  if (who.names.some((n) => ch.authorEmails.includes(n))) return 'the author or committer of its merged commit';
  return undefined;
}

/** The same account: by id when both have one (names can be chosen to look alike), else by a shared name. */
function same(a: AccountRef, b: AccountRef): boolean {
  if (a.id !== undefined && b.id !== undefined) return a.id === b.id;
  return a.names.some((n) => b.names.includes(n));
}

function clip(s: string): string {
  // eslint-disable-next-line no-control-regex
  const line = s.replace(/[\u0000-\u001f\u007f]+/g, ' ');
  return line.length > SUBJECT_MAX ? `${line.slice(0, SUBJECT_MAX - 1)}…` : line;
}
