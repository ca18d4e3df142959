/**
 * `GET /v1/ui/summary`: the recent promotions from the promotion store, each with the steps of its
 * latest attempt from the audit log, and the audit log's refusals and tail (audit-digest.ts).
 * Nothing is read from the embargo store, and a promotion that names the private namespace is left
 * out (the promoter records only public ones; this is the second fence). Signature and provenance
 * become links into the public lookaside, which `GET /lookaside/…` serves to anyone, and only when
 * the file is under it.
 */
import { isAbsolute, relative, sep } from 'node:path';
import { z } from 'zod';
import type { PromotionStore } from '../promote/promotion-store.js';
import type { AuditDigest } from './audit-digest.js';
import { namesPrivate } from './audit-view.js';
import { BUILDER_SUMMARY_VERSION, PROMOTION_STEPS, type BuilderSummary, type PromotionView, type StepView } from './summary-schema.js';

/** Where the summary comes from: the promotion store (read only), the audit digest, the public lookaside. */
export interface SummarySources {
  promotions: Pick<PromotionStore, 'recent'>;
  audit: AuditDigest;
  /** The public lookaside's root (what `/lookaside/` serves). */
  lookasideDir: string;
  now?: () => number;
}

/** Promotions listed (newest first). */
const PROMOTIONS_SHOWN = 30;
/** What the page reads of a stored result (promote/promoter.ts `PromotionResult`); the rest is ignored. */
const StoredResult = z.object({
  reference: z.string(),
  digest: z.string(),
  signature: z.string(),
  provenance: z.string(),
  step: z.string(),
  reason: z.string(),
}).partial();
/** Characters of a lookaside path the page links to (repository path, `@sha256=<hex>`, file name). */
const LINKABLE = /^[A-Za-z0-9._@=-]+(\/[A-Za-z0-9._@=-]+)*$/;

export async function builderSummary(s: SummarySources): Promise<BuilderSummary> {
  await s.audit.refresh();
  return {
    version: BUILDER_SUMMARY_VERSION,
    generatedAt: (s.now ?? Date.now)(),
    chain: s.audit.chain(),
    promotions: s.promotions.recent(PROMOTIONS_SHOWN).flatMap((row) => promotionView(row, s)),
    refusals: s.audit.refusals(),
    tail: s.audit.tail(),
  };
}

type Row = ReturnType<PromotionStore['recent']>[number];

function promotionView(row: Row, s: SummarySources): PromotionView[] {
  const at = row.key.lastIndexOf('@');
  const project = row.hint?.project ?? row.key.slice(0, at);
  const commit = row.hint?.commit ?? row.key.slice(at + 1);
  const parsed = StoredResult.safeParse(row.result ?? {});
  const result = parsed.success ? parsed.data : {};
  if (namesPrivate(project) || namesPrivate(Object.values(result))) return [];
  const link = (file: string | undefined): string | undefined => lookasideUrl(s.lookasideDir, file);
  const signatureUrl = link(result.signature);
  const provenanceUrl = link(result.provenance);
  const provenanceSignatureUrl = link(result.provenance && `${result.provenance}.asc`);
  const stopped = row.state === 'refused' || row.state === 'failed';
  return [
    {
      project,
      commit,
      ...(row.hint ? { branch: row.hint.branch } : {}),
      state: row.state,
      updatedAt: row.updatedAt,
      steps: steps(row.state, s.audit.attempt(project, commit) ?? {}),
      ...(row.state === 'published' && result.reference ? { reference: result.reference } : {}),
      ...(row.state === 'published' && result.digest ? { digest: result.digest } : {}),
      ...(row.state === 'published' && signatureUrl ? { signatureUrl } : {}),
      ...(row.state === 'published' && provenanceUrl ? { provenanceUrl } : {}),
      ...(row.state === 'published' && provenanceSignatureUrl ? { provenanceSignatureUrl } : {}),
      ...(stopped && result.step ? { stoppedAt: result.step } : {}),
      ...(stopped && result.reason !== undefined ? { reason: result.reason } : {}),
    },
  ];
}

/**
 * Each step with its record, else where the promotion stands: queued, every step waits; running,
 * the first step without a record runs; stopped, the steps after the last record were skipped.
 */
function steps(state: Row['state'], attempt: NonNullable<ReturnType<AuditDigest['attempt']>>): StepView[] {
  const lastRecorded = PROMOTION_STEPS.reduce((last, name, i) => (attempt[name] ? i : last), -1);
  let runningShown = false;
  return PROMOTION_STEPS.map((name, i): StepView => {
    const rec = attempt[name];
    if (rec) return { name, outcome: rec.outcome, at: rec.at, ...(rec.detail ? { detail: rec.detail } : {}) };
    if (state === 'queued') return { name, outcome: 'waiting' };
    if (state === 'published' || i < lastRecorded) return { name, outcome: 'unknown' };
    if (state !== 'running') return { name, outcome: 'skipped' };
    const outcome = runningShown ? 'waiting' : 'running';
    runningShown = true;
    return { name, outcome };
  });
}

/** `/lookaside/<path>` for a file under the public lookaside root; undefined for anything else. */
function lookasideUrl(root: string, file: string | undefined): string | undefined {
  if (!file || !isAbsolute(file)) return undefined;
  const rel = relative(root, file).split(sep).join('/');
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel) || !LINKABLE.test(rel) || namesPrivate(rel)) return undefined;
  return `/lookaside/${rel}`;
}
