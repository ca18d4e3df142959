/**
 * The builder's page's view of the audit log, kept up to date by reading only what was appended
 * since the last look (the log only grows; one that shrank or was replaced is read again from the
 * start). Each complete line is checked as `airlock builder audit verify` checks it (its hash, its
 * link to the line before); at the first line that fails the chain is reported broken and nothing
 * after it is shown. A line still being written (no `\n` yet) waits for the next look.
 *
 * Of each record that audit-view.ts lets through it keeps, in bounded memory:
 * - the last `tailSize` records, as whitelisted text;
 * - the last `refusalsKept` refusals: hints refused at the door (`hint-refused`), refused by policy or
 *   source verification (`verify-refused`), promotions that stopped later (`promotion-failed`);
 * - per promotion (`project@commit`), the outcome of each step of its latest attempt (a hint that
 *   queues it again starts a new one), for the last `promotionsKept` promotions.
 * It also drops the `secret-read` records of the embargo lane's steps: the private lane of a commit
 * runs after the public one signed it, and a signed commit is never built publicly again
 * (promote/promotion-store.ts), so a step's secret read for a commit already signed is private.
 */
import { open } from 'node:fs/promises';
import { checkAuditLine, checkAuditLink, GENESIS_HASH, type AuditRecord } from '../audit/audit-log.js';
import { mayShow, shownFields, stringField, valueText } from './audit-view.js';
import { PROMOTION_STEPS, type AuditEntryView, type PromotionStep, type RefusalView, type StepOutcome } from './summary-schema.js';

/** What an audit record said of one step. */
export interface StepRecord {
  outcome: Extract<StepOutcome, 'passed' | 'refused' | 'failed'>;
  detail?: string;
  at: string;
}
export type Attempt = Partial<Record<PromotionStep, StepRecord>>;

/** What is hidden and how much is kept (defaults: 100 records, 50 refusals, 1000 promotions). */
export interface AuditDigestOptions {
  /** Secret paths whose reads are never shown (the embargo key's). */
  hiddenSecretPaths?: readonly string[];
  tailSize?: number;
  refusalsKept?: number;
  promotionsKept?: number;
}

/** The promoter's step names (its `Stop` steps) → the page's six. `internal`: the first step without a record. */
const STEP_OF: Readonly<Record<string, PromotionStep>> = {
  policy: 'verify',
  verify: 'verify',
  history: 'verify',
  review: 'verify',
  config: 'tests',
  dependencies: 'tests',
  environment: 'tests',
  source: 'tests',
  secrets: 'tests',
  tests: 'tests',
  build: 'build',
  'leak-check': 'leak-check',
  push: 'push',
  sign: 'sign',
};
/** Bytes read per step. */
const CHUNK_BYTES = 256 * 1024; // 256 KiB

export class AuditDigest {
  private readonly hidden: ReadonlySet<string>;
  private readonly tailSize: number;
  private readonly refusalsKept: number;
  private readonly promotionsKept: number;
  private reading: Promise<void> = Promise.resolve();
  // Where reading stands.
  private offset = 0;
  private rest = Buffer.alloc(0);
  private line = 0;
  private last: AuditRecord | undefined;
  private shownHead: string | undefined;
  private broken: { line: number; problem: string } | undefined;
  // What is kept.
  private entries: AuditEntryView[] = [];
  private refused: RefusalView[] = [];
  private readonly attempts = new Map<string, Attempt>();
  private readonly signed = new Set<string>();

  constructor(
    readonly file: string,
    o: AuditDigestOptions = {},
  ) {
    this.hidden = new Set(o.hiddenSecretPaths ?? []);
    this.tailSize = o.tailSize ?? 100;
    this.refusalsKept = o.refusalsKept ?? 50;
    this.promotionsKept = o.promotionsKept ?? 1000;
  }

  /** Read what was appended since the last call (calls share one read at a time). */
  refresh(): Promise<void> {
    const run = this.reading.then(() => this.readNew());
    this.reading = run.catch(() => undefined);
    return run;
  }

  /**
   * The chain as far as read: intact, or the first bad line. `head` is the hash of the last record
   * the page shows, not of the last record: that one changes when a hidden (embargo) record is
   * appended, which would tell a viewer when the private lane ran.
   */
  chain(): { ok: true; head: string } | { ok: false; line: number; problem: string } {
    return this.broken ? { ok: false, ...this.broken } : { ok: true, head: this.shownHead ?? GENESIS_HASH };
  }

  /** The last records shown, oldest first. */
  tail(): AuditEntryView[] {
    return [...this.entries];
  }

  /** The last refusals, newest first. */
  refusals(): RefusalView[] {
    return [...this.refused].reverse();
  }

  /** The steps of the latest attempt at `project@commit` that have a record. */
  attempt(project: string, commit: string): Attempt | undefined {
    return this.attempts.get(`${project}@${commit}`);
  }

  private reset(): void {
    this.offset = 0;
    this.rest = Buffer.alloc(0);
    this.line = 0;
    this.last = undefined;
    this.broken = undefined;
    this.entries = [];
    this.refused = [];
    this.attempts.clear();
    this.signed.clear();
  }

  private async readNew(): Promise<void> {
    const h = await open(this.file, 'r');
    try {
      const size = (await h.stat()).size;
      if (size < this.offset) this.reset();
      while (this.offset < size && !this.broken) {
        const chunk = Buffer.alloc(Math.min(CHUNK_BYTES, size - this.offset));
        const { bytesRead } = await h.read(chunk, 0, chunk.length, this.offset);
        if (bytesRead === 0) break;
        this.offset += bytesRead;
        let buf = this.rest.length ? Buffer.concat([this.rest, chunk.subarray(0, bytesRead)]) : chunk.subarray(0, bytesRead);
        for (let nl = buf.indexOf(10); nl >= 0 && !this.broken; nl = buf.indexOf(10)) {
          this.take(buf.subarray(0, nl).toString('utf8'));
          buf = buf.subarray(nl + 1);
        }
        this.rest = Buffer.from(buf);
      }
    } finally {
      await h.close();
    }
  }

  /** One complete line: checked, linked, then folded in. */
  private take(text: string): void {
    this.line++;
    let checked: ReturnType<typeof checkAuditLine>;
    let problem: string | undefined;
    try {
      checked = checkAuditLine(text);
      problem = 'problem' in checked ? checked.problem : checkAuditLink(this.last, checked.record);
    } catch (e) {
      // A line the checks cannot even process (nested past the stack, say) breaks the chain here;
      // it must never be skipped as if it were not there.
      this.broken = { line: this.line, problem: `cannot be checked: ${(e as Error).message.slice(0, 200)}` };
      return;
    }
    if (problem !== undefined || !('record' in checked)) {
      this.broken = { line: this.line, problem: problem ?? 'not an audit record' };
      return;
    }
    this.last = checked.record;
    try {
      this.fold(checked.record);
    } catch (e) {
      this.broken = { line: this.line, problem: `cannot be shown: ${(e as Error).message.slice(0, 200)}` };
    }
  }

  private fold(r: AuditRecord): void {
    if (!mayShow(r, this.hidden)) return;
    const project = stringField(r, 'project');
    const commit = stringField(r, 'commit');
    const key = project !== undefined && commit !== undefined ? `${project}@${commit}` : undefined;
    if (r.kind === 'secret-read' && key !== undefined && this.signed.has(key)) return; // the private lane's
    this.shownHead = r.hash;
    const step = (name: PromotionStep | undefined, outcome: StepRecord['outcome'], detail?: string): void => {
      if (key === undefined) return;
      const a = this.attempts.get(key) ?? this.startAttempt(key);
      const which = name ?? PROMOTION_STEPS.find((s) => a[s] === undefined) ?? 'sign';
      a[which] = { outcome, at: r.at, ...(detail ? { detail } : {}) };
    };
    const text = (name: string): string | undefined => (r[name] === undefined ? undefined : valueText(r[name]!));
    switch (r.kind) {
      case 'hint-accepted':
        if (key !== undefined && r.queued === true) this.startAttempt(key);
        break;
      case 'verify-passed':
        step('verify', 'passed', text('branch') && `on ${text('branch')}`);
        break;
      case 'tests-passed':
        step('tests', 'passed', text('jobs'));
        break;
      case 'tests-failed':
        step('tests', 'failed', text('jobs') && `failed: ${text('jobs')}`);
        break;
      case 'image-built':
        step('build', 'passed', text('image'));
        break;
      case 'leak-check':
        if (r.leaks === 0) step('leak-check', 'passed', `searched for ${text('searched') ?? '?'} secret values: none found`);
        else step('leak-check', 'refused', `${text('leaks') ?? '?'} found: ${text('where') ?? ''}`);
        break;
      case 'pushed':
        step('push', 'passed', text('reference'));
        break;
      case 'signed':
        step('sign', 'passed', text('key') && `key ${text('key')}`);
        if (key !== undefined) this.remember(this.signed, key);
        break;
      case 'verify-refused':
      case 'promotion-failed': {
        const stopped = stringField(r, 'step');
        const reason = text('reason') ?? '';
        step(stopped === undefined ? undefined : STEP_OF[stopped], r.state === 'failed' ? 'failed' : 'refused', stopped && stopped !== 'verify' ? `${stopped}: ${reason}` : reason);
        this.refusal({ at: r.at, kind: r.kind, reason, ...(project ? { project } : {}), ...(commit ? { commit } : {}), ...(stopped ? { step: stopped } : {}) });
        break;
      }
      case 'hint-refused':
        this.refusal({ at: r.at, kind: 'hint-refused', reason: text('reason') ?? '', ...(typeof r.from === 'string' ? { from: r.from } : {}), ...(typeof r.suppressedBefore === 'number' ? { suppressedBefore: r.suppressedBefore } : {}) });
        break;
      default:
        break;
    }
    this.entries.push({ at: r.at, kind: r.kind, fields: shownFields(r) });
    if (this.entries.length > this.tailSize) this.entries.splice(0, this.entries.length - this.tailSize);
  }

  private startAttempt(key: string): Attempt {
    const a: Attempt = {};
    this.attempts.delete(key);
    this.attempts.set(key, a);
    for (const oldest of this.attempts.keys()) {
      if (this.attempts.size <= this.promotionsKept) break;
      this.attempts.delete(oldest);
    }
    return a;
  }

  private remember(set: Set<string>, key: string): void {
    set.delete(key);
    set.add(key);
    for (const oldest of set) {
      if (set.size <= this.promotionsKept) break;
      set.delete(oldest);
    }
  }

  private refusal(v: RefusalView): void {
    this.refused.push(v);
    if (this.refused.length > this.refusalsKept) this.refused.splice(0, this.refused.length - this.refusalsKept);
  }
}
