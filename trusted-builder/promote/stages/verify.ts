/**
 * verify: the builder's own fetch of the canonical repository has the commit on a protected
 * branch; it descends from the last commit of that branch promoted (no old commits, no rewinds);
 * and every commit it adds came through review, as the review system itself reports it to the
 * builder's own read-only account, with the approvals the policy requires. Passing is an audit
 * record (`verify-passed`); a refusal is the caller's to record.
 */
import { isAirlockError } from '#shared/errors.js';
import type { PromotionHint } from '#shared/schemas/promotion-hint.js';
import type { AuditLog } from '../../audit/audit-log.js';
import type { LoadedPromotionPolicy, PromotedProject } from '../../policy/promotion.js';
import type { SourceVerifier } from '../../verify/source.js';
import { verifyReview, type ReviewEvidence, type ReviewReader } from '../../verify/review.js';
import type { PromotionStore } from '../promotion-store.js';
import { Stop } from './lane.js';

/** The review check of one promotion at most (a slow or hostile review system must not hold the queue). */
const REVIEW_TIMEOUT_MS = 10 * 60_000; // 10 min

export interface VerifyPort {
  verifier: Pick<SourceVerifier, 'verify' | 'isAncestor' | 'mirrorOf'>;
  store: Pick<PromotionStore, 'latestPublishedOn'>;
  /** Readers of the review systems the policy names, each with the builder's own account. */
  reviewers?: ReadonlyMap<string, ReviewReader>;
  policy: Pick<LoadedPromotionPolicy, 'digest'>;
  audit: Pick<AuditLog, 'append'>;
}

export interface Verified {
  branch: string;
  /** What review the builder found; written into the provenance. */
  review: ReviewEvidence | 'none';
}

export async function verify(p: VerifyPort, project: PromotedProject, hint: PromotionHint): Promise<Verified> {
  const v = await p.verifier.verify(project, hint.commit);
  if (!v.ok) throw new Stop('refused', 'verify', v.reason);
  const review = await checkReview(p, project, hint.commit, v.branch, v.tips);
  await p.audit.append('verify-passed', {
    project: project.name,
    commit: hint.commit,
    branch: v.branch,
    hintBranch: hint.branch,
    policy: p.policy.digest,
    review: review === 'none' ? 'none (branch protection only)' : review.changes.map((c) => `${c.number},${c.patchset} approved by ${[...new Set(c.approvals.map((a) => a.by))].join(' ')}`).join('; ') || `no new commits since ${review.from?.slice(0, 12) ?? 'the root'}`,
  });
  return { branch: v.branch, review };
}

/**
 * Only forward, and only reviewed: `commit` must descend from the last commit promoted of every
 * protected branch that holds it (an old commit signed anew, or a rewound branch, is refused),
 * and every commit since the last one promoted of `branch` (or since the policy's `since`) must
 * come from a merged change with the approvals the policy requires, as the review system tells
 * the builder's own account.
 */
async function checkReview(p: VerifyPort, project: PromotedProject, commit: string, branch: string, tips: Readonly<Record<string, string>>): Promise<ReviewEvidence | 'none'> {
  for (const [b, tip] of Object.entries(tips)) {
    const lastOfB = p.store.latestPublishedOn(project.name, b);
    if (!lastOfB || lastOfB === commit || !(await p.verifier.isAncestor(project, commit, tip))) continue;
    if (!(await p.verifier.isAncestor(project, lastOfB, commit))) {
      throw new Stop('refused', 'history', `commit ${commit.slice(0, 12)} does not descend from ${lastOfB.slice(0, 12)}, the last commit of ${b} promoted: an older commit, or a rewound branch, is not promoted`);
    }
  }
  const last = p.store.latestPublishedOn(project.name, branch);
  const policy = project.review;
  if (policy === 'none') return 'none';
  const base = last ?? policy.since;
  if (base && last === undefined && !(await p.verifier.isAncestor(project, base, commit))) {
    throw new Stop('refused', 'history', `commit ${commit.slice(0, 12)} does not descend from ${base.slice(0, 12)}, the commit review.since names`);
  }
  const reader = p.reviewers?.get(policy.system);
  if (!reader) throw new Stop('failed', 'review', `no reader for review system ${policy.system} (its credentials were not loaded)`);
  const r = await verifyReview({
    gitDir: p.verifier.mirrorOf(project),
    review: policy,
    reviewProject: policy.project ?? project.name,
    branch,
    branches: project.protectedBranches,
    commit,
    base,
    reader,
    signal: AbortSignal.timeout(REVIEW_TIMEOUT_MS),
  }).catch((e: unknown) => {
    if (isAirlockError(e)) throw new Stop(e.retryable ? 'failed' : 'refused', 'review', `reading the review record failed: ${e.message}`);
    throw e;
  });
  if (!r.ok) throw new Stop('refused', 'review', `no review: ${r.reason}`);
  return r.evidence;
}
