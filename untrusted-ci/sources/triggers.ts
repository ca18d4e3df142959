/**
 * What the CI does with a parsed trigger event, whatever system sent it, and with a change the
 * review system's catch-up read (`reconcileChange`). Decisions plus calls into the scheduler, the
 * gate and the review state:
 * - `patchset` of a registered project on a checked branch → a check build (superseding older
 *   patchsets); the gate drops the change's older patchset. From the review system, its votes
 *   start afresh (a trivial rebase keeps them, as the review system does);
 * - `approval` (a review system's comment with votes) → that reviewer's votes are recorded; when
 *   the change becomes ready for the gate (approved by a person, no veto, open, not WIP, not
 *   private) the gate takes it in, when it stops being ready the gate takes it out. A comment
 *   saying `recheck` runs the check again;
 * - `change-merged` → the change leaves the gate (merged in the review system);
 * - `change-abandoned` → the gate drops it (and the changes that need it), its check builds stop;
 *   restored, it may come back;
 * - `change-state` → WIP or private: out of the gate; private: its check builds stop too (its
 *   content must not reach the public CI);
 * - anything else is acknowledged and ignored, with the reason.
 * Approvals come only from the review system: without one configured, nothing enters the gate.
 *
 * With the review system's REST API at hand (`reread`), an event is only a hint, as its sender is
 * authenticated by a secret project owners can read: what it says of votes, status and flags is
 * not taken; the change is read again from the review system, and that record is applied
 * (`reconcileChange`). Only `recheck` and a new patch set's check act at once (a check fetches the
 * patch set from the project's repository; it proves nothing and merges nothing).
 */
import type { ApprovalEvent, PatchsetEvent, TriggerEvent } from '#shared/schemas/events/trigger.js';
import type { CiConfig } from '../config.js';
import type { GateRuntime } from '../pipelines/gate-runtime.js';
import type { ReviewState, Readiness } from '../review/review-state.js';
import type { ReviewedChange } from '../review/review-system.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { BuildStore, NewChange } from '../store/build-store.js';
import { KeyedLock } from '../merger/mirror.js';

export type TriggerOutcome =
  | { accepted: true; builds: number[]; superseded: number[]; gate?: 'approved' | 'unapproved' | 'merged' | 'abandoned' | 'restored' }
  | { accepted: false; reason: string };

export interface TriggerDeps {
  config: Readonly<CiConfig>;
  scheduler: Scheduler;
  store?: BuildStore;
  gate?: GateRuntime;
  /** What the CI knows of each change in the review system; absent: no review system, no gate. */
  reviewState?: ReviewState;
  /** Read a change again from the review system and apply what it says (asynchronously). */
  reread?: (project: string, change: string) => void;
}

/** A comment that asks for the check to run again (Zuul's convention): a line that says just `recheck`. */
const RECHECK = /^\s*recheck\s*$/im;

/**
 * One change's events are acted on one at a time (in this process): each reads what is known of
 * the change, then writes, and two deliveries of one patch set must not both find it unchecked.
 */
const perChange = new KeyedLock();
const changeKey = (project: string, change: string): string => `${project}\u0000${change}`;

export function handleTrigger(event: TriggerEvent, deps: TriggerDeps): Promise<TriggerOutcome> {
  return perChange.run(changeKey(event.project, 'change' in event ? event.change : ''), () => handleTriggerNow(event, deps));
}

async function handleTriggerNow(event: TriggerEvent, deps: TriggerDeps): Promise<TriggerOutcome> {
  const project = deps.config.projects.find((p) => p.name === event.project);
  if (!project) return { accepted: false, reason: `project ${event.project} is not registered with this CI` };
  if (event.kind === 'ref-updated') return { accepted: false, reason: 'no pipeline acts on ref-updated events yet' };
  if (project.branches.length > 0 && !project.branches.includes(event.branch)) return { accepted: false, reason: `branch ${event.branch} of ${event.project} is not checked` };
  const review = event.source === 'gerrit' ? deps.reviewState : undefined;
  const reread = event.source === 'gerrit' && review ? deps.reread : undefined;

  if (reread && event.kind !== 'patchset') {
    // Votes, status and flags come from the review system's own record, not from the event.
    const outcome: TriggerOutcome = { accepted: true, builds: [], superseded: [] };
    if (event.kind === 'approval' && event.comment !== undefined && RECHECK.test(commentBody(event.comment))) {
      const latest = await deps.store?.latestChange(event.project, event.change);
      if (!latest || latest.patchset <= event.patchset) {
        const { build, superseded } = await deps.scheduler.submit(newChange(event), 'check');
        outcome.builds.push(build.id);
        outcome.superseded.push(...superseded);
      }
    }
    reread(event.project, event.change);
    return outcome;
  }

  switch (event.kind) {
    case 'change-merged': {
      await review?.status(event.project, event.change, 'merged');
      if (!deps.gate) return { accepted: false, reason: 'the gate is not running' };
      deps.gate.mergedElsewhere(event.project, event.change);
      return { accepted: true, builds: [], superseded: [], gate: 'merged' };
    }
    case 'change-abandoned': {
      if (!review) return { accepted: false, reason: 'no review system is configured: the gate takes no changes' };
      const r = await review.status(event.project, event.change, event.abandoned ? 'abandoned' : 'open');
      if (event.abandoned) {
        await stopChecks(deps, event.project, event.change, 'the change was abandoned');
        deps.gate?.abandoned(event.project, event.change);
      } else deps.gate?.restored(event.project, event.change);
      await tellGate(deps, event.project, event.change, r);
      return { accepted: true, builds: [], superseded: [], gate: event.abandoned ? 'abandoned' : 'restored' };
    }
    case 'change-state': {
      if (!review) return { accepted: false, reason: 'no review system is configured: the gate takes no changes' };
      const r = await review.flags(event.project, event.change, { ...(event.wip !== undefined ? { wip: event.wip } : {}), ...(event.private !== undefined ? { private: event.private } : {}) });
      if (event.private) await stopChecks(deps, event.project, event.change, 'the change became private');
      await tellGate(deps, event.project, event.change, r);
      return { accepted: true, builds: [], superseded: [], ...(r.before !== r.after ? { gate: r.after ? 'approved' : 'unapproved' } : {}) };
    }
    case 'approval': {
      if (!review || !deps.gate || !deps.store) return { accepted: false, reason: 'no review system is configured: the gate takes no changes' };
      const latest = await deps.store.latestChange(event.project, event.change);
      if (latest && latest.patchset > event.patchset) return { accepted: false, reason: `patchset ${event.patchset} is outdated (the change is at ${latest.patchset})` };
      const r = await review.votes({
        project: event.project,
        change: event.change,
        branch: event.branch,
        patchset: event.patchset,
        ref: event.ref,
        account: event.author,
        votes: Object.fromEntries(event.approvals.map((a) => [a.type, a.value])),
        ...(event.owner ? { owner: event.owner } : {}),
      });
      const outcome: TriggerOutcome = { accepted: true, builds: [], superseded: [] };
      if (r.before !== r.after) {
        deps.gate.approval(await deps.store.recordChange(newChange(event)), r.after);
        outcome.gate = r.after ? 'approved' : 'unapproved';
      }
      if (event.comment !== undefined && RECHECK.test(commentBody(event.comment))) {
        const { build, superseded } = await deps.scheduler.submit(newChange(event), 'check');
        outcome.builds.push(build.id);
        outcome.superseded.push(...superseded);
      }
      if (!outcome.gate && outcome.builds.length === 0) return { accepted: false, reason: 'the comment changes neither the gate nor the check' };
      return outcome;
    }
    case 'patchset': {
      // Told twice (a redelivery with another body, or the catch-up came first): checked once.
      const known = await deps.store?.latestChange(event.project, event.change);
      if (known && known.patchset === event.patchset && ((await deps.store?.builds({ change: known.id, pipeline: 'check', limit: 1 }))?.length ?? 0) > 0) {
        reread?.(event.project, event.change);
        return { accepted: false, reason: `patchset ${event.patchset} of change ${event.change} is already checked` };
      }
      const r = await review?.patchset({
        project: event.project,
        change: event.change,
        branch: event.branch,
        patchset: event.patchset,
        ref: event.ref,
        ...(event.patchsetKind ? { kind: event.patchsetKind } : {}),
        ...(event.wip !== undefined ? { wip: event.wip } : {}),
        ...(event.owner ? { owner: event.owner } : {}),
        uploader: event.author,
      });
      const { build, superseded } = await deps.scheduler.submit(newChange(event), 'check');
      deps.gate?.patchset(build.change);
      // Votes carried over to this patch set: the review system's record says which.
      if (reread) reread(event.project, event.change);
      else if (r?.after) deps.gate?.approval(build.change, true);
      return { accepted: true, builds: [build.id], superseded };
    }
  }
}

/**
 * A change as the review system's REST API shows it now (the catch-up): whatever the CI missed
 * while it was not listening is done now, as if the events had come: a new patch set is checked,
 * a merge or abandonment leaves the gate, votes that make or unmake an approval move it in or out.
 */
export function reconcileChange(c: ReviewedChange, deps: TriggerDeps): Promise<{ checked?: number; gate?: 'approved' | 'unapproved' } | undefined> {
  return perChange.run(changeKey(c.project, c.change), () => reconcileChangeNow(c, deps));
}

async function reconcileChangeNow(c: ReviewedChange, deps: TriggerDeps): Promise<{ checked?: number; gate?: 'approved' | 'unapproved' } | undefined> {
  const project = deps.config.projects.find((p) => p.name === c.project);
  const state = deps.reviewState;
  if (!project || !state || !deps.store) return undefined;
  if (project.branches.length > 0 && !project.branches.includes(c.branch)) return undefined;
  const r = await state.reconcile(c);
  if (c.status === 'merged' && r.oldStatus !== 'merged') deps.gate?.mergedElsewhere(c.project, c.change);
  if (c.status === 'abandoned' && r.oldStatus !== 'abandoned') {
    await stopChecks(deps, c.project, c.change, 'the change was abandoned');
    deps.gate?.abandoned(c.project, c.change);
  }
  if (c.status === 'open' && r.oldStatus === 'abandoned') deps.gate?.restored(c.project, c.change);
  if (c.private) await stopChecks(deps, c.project, c.change, 'the change is private');
  const out: { checked?: number; gate?: 'approved' | 'unapproved' } = {};
  const change: NewChange = { project: c.project, branch: c.branch, change: c.change, patchset: c.patchset, ref: c.ref, author: c.uploader ?? c.owner, ...(c.subject ? { subject: c.subject.slice(0, 1024) } : {}), source: 'gerrit' };
  const known = await deps.store.latestChange(c.project, c.change);
  if (c.status === 'open' && !c.private && (!known || known.patchset < c.patchset)) {
    const { build } = await deps.scheduler.submit(change, 'check');
    deps.gate?.patchset(build.change);
    out.checked = build.id;
  }
  if (r.before !== r.after && deps.gate) {
    deps.gate.approval(await deps.store.recordChange(change), r.after);
    out.gate = r.after ? 'approved' : 'unapproved';
  }
  return out;
}

/**
 * Once the gate has loaded its last snapshot (a start, a takeover): every change the review state
 * holds ready that the gate does not hold approved is told to it. The review state is written
 * when an approval's event is handled, the gate's state when its batch is saved: a leader that
 * died in between left an approval only the review state knows, and nothing would tell the gate
 * again (the event's redelivery changes nothing in the review state, and the catch-up's cursor
 * may already be past the change). Returns how many changes were told.
 */
export async function resumeApprovals(deps: TriggerDeps): Promise<number> {
  const state = deps.reviewState;
  const gate = deps.gate;
  const store = deps.store;
  if (!state || !gate || !store) return 0;
  let told = 0;
  for (const r of await state.readyChanges()) {
    await perChange.run(changeKey(r.project, r.change), async () => {
      if (gate.holdsApproved(r.project, r.change, r.patchset) || !(await state.ready(r.project, r.change))) return;
      const c = await store.latestChange(r.project, r.change);
      if (!c || c.patchset !== r.patchset) return;
      gate.approval(c, true);
      told++;
    });
  }
  return told;
}

/**
 * The review system does not show the change to airlock any more (a change made private, or
 * deleted): it leaves the gate and its checks stop, as for a private change.
 */
export function hideChange(project: string, change: string, deps: TriggerDeps): Promise<void> {
  return perChange.run(changeKey(project, change), async () => {
    const r = await deps.reviewState?.flags(project, change, { private: true });
    await stopChecks(deps, project, change, 'the review system no longer shows the change');
    if (r) await tellGate(deps, project, change, r);
  });
}

/** The gate learns of a readiness change at the change's current patch set. */
async function tellGate(deps: TriggerDeps, project: string, change: string, r: Readiness): Promise<void> {
  if (r.before === r.after || !deps.gate || !deps.store) return;
  const c = await deps.store.latestChange(project, change);
  if (c && c.patchset === r.patchset) deps.gate.approval(c, r.after);
}

async function stopChecks(deps: TriggerDeps, project: string, change: string, why: string): Promise<void> {
  for (const id of (await deps.store?.unfinishedOf(project, change, 'check')) ?? []) await deps.scheduler.cancel(id, 'cancelled', why);
}

/** Gerrit puts `Patch Set N: <votes>` and a blank line before the reviewer's own words. */
function commentBody(comment: string): string {
  return comment.replace(/^Patch Set \d+:[^\n]*\n?\n?/, '');
}

/** The change an event names, as the store records it. */
function newChange(event: PatchsetEvent | ApprovalEvent): NewChange {
  return {
    project: event.project,
    branch: event.branch,
    change: event.change,
    patchset: event.patchset,
    ref: event.ref,
    author: event.author,
    ...('subject' in event && event.subject ? { subject: event.subject } : {}),
    source: event.source,
  };
}
