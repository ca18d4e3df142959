/**
 * What the CI knows of each change in the review system, durably (the CI database): its status,
 * current patch set, work-in-progress and private flags, and every reviewer's votes on it. The
 * gate takes a change in when this says it is ready (`gateReady`: open, not WIP, not private,
 * approved by someone other than airlock and not vetoed) and takes it out when that stops.
 *
 * Votes are tracked per reviewer and label, as each `comment-added` event lists its author's
 * votes: one reviewer's +1 after another's +2 leaves the change approved; the +2's author taking
 * it back, or anyone's -2, does not. A new patch set starts with no votes except those the review
 * system carries over: the approval label's votes on a trivial rebase or an unchanged commit (the
 * patch set kinds in `copyOnKinds`, Gerrit's defaults), and a veto always. These are airlock's
 * reading of events; the review system's own record wins: the catch-up (`reconcile`) replaces the
 * votes with what its REST API says, and the gate re-reads the change before it asks for a submit.
 *
 * Every method returns the change's readiness before and after, so the caller tells the gate only
 * of a change.
 */
import type { Db, Sql } from '../store/sql.js';
import { gateReady, type ApprovalRule, type PatchsetKind, type ReviewedChange } from './review-system.js';

export type ChangeStatus = ReviewedChange['status'];

/** A change's readiness for the gate before and after an update, and its (current) patch set. */
export interface Readiness {
  before: boolean;
  after: boolean;
  patchset: number;
}

/** What the review state keeps of a `ReviewedChange` (an event may not name the owner). */
export type KnownChange = Pick<ReviewedChange, 'project' | 'change' | 'branch' | 'status' | 'patchset' | 'ref' | 'wip' | 'private' | 'uploader' | 'votes'> & { owner?: string };

export interface ReviewStateOptions {
  rule: ApprovalRule;
  /** airlock's own account in the review system. */
  self: string;
  /** Patch set kinds on which the approval label's votes carry over. */
  copyOnKinds?: readonly PatchsetKind[];
  now?: () => number;
}

/** Labels and reviewers kept per change at most (the rest of a hostile flood is dropped). */
const MAX_VOTES_PER_CHANGE = 1000;

interface ChangeRow {
  project: string;
  change: string;
  branch: string;
  status: ChangeStatus;
  patchset: number;
  ref: string;
  wip: number;
  private: number;
  owner: string | null;
  uploader: string | null;
}

export class ReviewState {
  private readonly copy: ReadonlySet<PatchsetKind>;
  private readonly now: () => number;

  constructor(
    private readonly db: Db,
    private readonly o: ReviewStateOptions,
  ) {
    this.copy = new Set(o.copyOnKinds ?? ['TRIVIAL_REBASE', 'NO_CHANGE']);
    this.now = o.now ?? Date.now;
  }

  async get(project: string, change: string, on: Sql = this.db): Promise<KnownChange | undefined> {
    const row = await on.get<ChangeRow>('SELECT * FROM review_changes WHERE project = ? AND change = ?', [project, change]);
    if (!row) return undefined;
    return {
      project: row.project,
      change: row.change,
      branch: row.branch,
      status: row.status,
      patchset: row.patchset,
      ref: row.ref,
      wip: row.wip === 1,
      private: row.private === 1,
      ...(row.owner !== null ? { owner: row.owner } : {}),
      ...(row.uploader !== null ? { uploader: row.uploader } : {}),
      votes: await this.votesOf(on, row.project, row.change, row.patchset),
    };
  }

  async ready(project: string, change: string, on: Sql = this.db): Promise<boolean> {
    const c = await this.get(project, change, on);
    return c !== undefined && gateReady(c, this.o.rule, this.o.self);
  }

  /**
   * Every change ready for the gate now (open, not WIP, not private, approved under the rule), with
   * its current patch set: what a gate that starts from its last snapshot must hold (an approval
   * recorded here just before the process died may never have reached the gate's saved state).
   * Read as candidates first (a vote of the rule's value on the current patch set), then each
   * checked as `ready` checks it.
   */
  async readyChanges(): Promise<{ project: string; change: string; patchset: number }[]> {
    const candidates = await this.db.all<{ project: string; change: string }>(
      `SELECT c.project, c.change FROM review_changes c
       WHERE c.status = 'open' AND c.wip = 0 AND c.private = 0
         AND EXISTS (SELECT 1 FROM review_votes v WHERE v.project = c.project AND v.change = c.change AND v.patchset = c.patchset AND v.label = ? AND v.value >= ?)
       ORDER BY c.updated_at, c.project, c.change`,
      [this.o.rule.label, this.o.rule.value],
    );
    const out: { project: string; change: string; patchset: number }[] = [];
    for (const { project, change } of candidates) {
      const c = await this.get(project, change);
      if (c && gateReady(c, this.o.rule, this.o.self)) out.push({ project, change, patchset: c.patchset });
    }
    return out;
  }

  /**
   * A new patch set (or the first one seen). Votes of the approval label carry over from the
   * patch set before when its kind says so; a veto always does. An older patch set than the one
   * known changes nothing.
   */
  patchset(p: { project: string; change: string; branch: string; patchset: number; ref: string; kind?: PatchsetKind; wip?: boolean; owner?: string; uploader?: string }): Promise<Readiness> {
    return this.update(p.project, p.change, async (t, old) => {
      if (old && p.patchset < old.patchset) return undefined;
      const people = { owner: p.owner ?? old?.owner ?? null, uploader: p.uploader ?? (old && p.patchset === old.patchset ? old.uploader : null) };
      if (old && p.patchset === old.patchset) return { ...old, ...people, ref: p.ref, ...(p.wip !== undefined ? { wip: p.wip ? 1 : 0 } : {}) };
      if (old) {
        const carried = (await this.votesOf(t, p.project, p.change, old.patchset))[this.o.rule.label] ?? {};
        const keepAll = p.kind !== undefined && this.copy.has(p.kind);
        for (const [who, v] of Object.entries(carried)) if (keepAll || v <= -this.o.rule.value) await putVote(t, p.project, p.change, p.patchset, who, this.o.rule.label, v);
        await t.run('DELETE FROM review_votes WHERE project = ? AND change = ? AND patchset < ?', [p.project, p.change, p.patchset]);
      }
      return { project: p.project, change: p.change, branch: p.branch, status: old?.status === 'merged' ? 'merged' : 'open', patchset: p.patchset, ref: p.ref, wip: p.wip ? 1 : (old?.wip ?? 0), private: old?.private ?? 0, ...people };
    });
  }

  /**
   * A reviewer's votes on patch set `patchset` (each label listed replaces that reviewer's vote on
   * it; 0 removes it). Votes on an outdated patch set are ignored; a newer one than known is taken
   * as a new patch set first (its patchset-created event was missed).
   */
  async votes(p: { project: string; change: string; branch: string; patchset: number; ref: string; account: string; votes: Readonly<Record<string, number>>; owner?: string }): Promise<Readiness> {
    const known = await this.get(p.project, p.change);
    if (known && p.patchset < known.patchset) {
      const ready = await this.ready(p.project, p.change);
      return { before: ready, after: ready, patchset: known.patchset };
    }
    const first = !known || p.patchset > known.patchset ? await this.patchset({ project: p.project, change: p.change, branch: p.branch, patchset: p.patchset, ref: p.ref, ...(p.owner ? { owner: p.owner } : {}) }) : undefined;
    const r = await this.update(p.project, p.change, async (t, old) => {
      if (!old) return undefined;
      const count = (await t.get<{ n: number }>('SELECT COUNT(*) AS n FROM review_votes WHERE project = ? AND change = ?', [p.project, p.change]))?.n ?? 0;
      let room = MAX_VOTES_PER_CHANGE - count;
      for (const [label, value] of Object.entries(p.votes)) {
        if (value === 0) await t.run('DELETE FROM review_votes WHERE project = ? AND change = ? AND patchset = ? AND account = ? AND label = ?', [p.project, p.change, p.patchset, p.account, label]);
        else if (room-- > 0 || (await hasVote(t, p.project, p.change, p.patchset, p.account, label))) await putVote(t, p.project, p.change, p.patchset, p.account, label, value);
      }
      return old;
    });
    return first ? { ...r, before: first.before } : r;
  }

  /** The change was merged, abandoned or restored (`open`). */
  status(project: string, change: string, status: ChangeStatus): Promise<Readiness> {
    return this.update(project, change, async (_t, old) => (old && old.status !== 'merged' ? { ...old, status } : undefined));
  }

  /** The work-in-progress or private flag changed. */
  flags(project: string, change: string, f: { wip?: boolean; private?: boolean }): Promise<Readiness> {
    return this.update(project, change, async (_t, old) =>
      old ? { ...old, ...(f.wip !== undefined ? { wip: f.wip ? 1 : 0 } : {}), ...(f.private !== undefined ? { private: f.private ? 1 : 0 } : {}) } : undefined,
    );
  }

  /** Replace what is known of a change by what the review system says now (catch-up, re-read). */
  async reconcile(c: ReviewedChange): Promise<Readiness & { newPatchset: boolean; oldStatus?: ChangeStatus }> {
    const known = await this.get(c.project, c.change);
    const newPatchset = !known || c.patchset > known.patchset;
    const r = await this.update(c.project, c.change, async (t, old) => {
      if (old && c.patchset < old.patchset) return undefined;
      await t.run('DELETE FROM review_votes WHERE project = ? AND change = ?', [c.project, c.change]);
      let room = MAX_VOTES_PER_CHANGE;
      for (const [label, byWho] of Object.entries(c.votes)) {
        for (const [who, v] of Object.entries(byWho)) {
          if (room-- > 0) await t.run('INSERT INTO review_votes (project, change, patchset, account, label, value) VALUES (?,?,?,?,?,?)', [c.project, c.change, c.patchset, who, label, v]);
        }
      }
      return { project: c.project, change: c.change, branch: c.branch, status: c.status, patchset: c.patchset, ref: c.ref, wip: c.wip ? 1 : 0, private: c.private ? 1 : 0, owner: c.owner, uploader: c.uploader ?? null };
    });
    return { ...r, newPatchset, ...(known ? { oldStatus: known.status } : {}) };
  }

  private async votesOf(on: Sql, project: string, change: string, patchset: number): Promise<Record<string, Record<string, number>>> {
    const out: Record<string, Record<string, number>> = {};
    for (const v of await on.all<{ account: string; label: string; value: number }>('SELECT account, label, value FROM review_votes WHERE project = ? AND change = ? AND patchset = ? ORDER BY account, label', [
      project,
      change,
      patchset,
    ])) {
      (out[v.label] ??= {})[v.account] = v.value;
    }
    return out;
  }

  /** Read the row, let `next` change it (undefined: leave it), write it; readiness before and after. */
  private update(project: string, change: string, next: (t: Sql, old: ChangeRow | undefined) => Promise<ChangeRow | undefined>): Promise<Readiness> {
    return this.db.tx(async (t): Promise<Readiness> => {
      const before = await this.ready(project, change, t);
      const old = await t.get<ChangeRow>('SELECT * FROM review_changes WHERE project = ? AND change = ?', [project, change]);
      const row = await next(t, old);
      if (row) {
        await t.run(
          `INSERT INTO review_changes (project, change, branch, status, patchset, ref, wip, private, owner, uploader, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)
           ON CONFLICT(project, change) DO UPDATE SET branch = excluded.branch, status = excluded.status, patchset = excluded.patchset, ref = excluded.ref, wip = excluded.wip,
             private = excluded.private, owner = excluded.owner, uploader = excluded.uploader, updated_at = excluded.updated_at`,
          [row.project, row.change, row.branch, row.status, row.patchset, row.ref, row.wip, row.private, row.owner, row.uploader, this.now()],
        );
      }
      const patchset = row?.patchset ?? old?.patchset ?? 0;
      return { before, after: await this.ready(project, change, t), patchset };
    });
  }
}

function hasVote(t: Sql, project: string, change: string, patchset: number, account: string, label: string): Promise<boolean> {
  return t.get('SELECT 1 AS one FROM review_votes WHERE project = ? AND change = ? AND patchset = ? AND account = ? AND label = ?', [project, change, patchset, account, label]).then((r) => r !== undefined);
}

async function putVote(t: Sql, project: string, change: string, patchset: number, account: string, label: string, value: number): Promise<void> {
  await t.run(
    `INSERT INTO review_votes (project, change, patchset, account, label, value) VALUES (?,?,?,?,?,?)
     ON CONFLICT (project, change, patchset, account, label) DO UPDATE SET value = excluded.value`,
    [project, change, patchset, account, label, value],
  );
}
