/**
 * What the CI does with a parsed trigger event, whatever system sent it. Pure decision plus calls
 * into the scheduler and the gate:
 * - `patchset` of a registered project on a checked branch → a check build (superseding older
 *   patchsets); the gate drops the change's older patchset;
 * - `approval` with Code-Review +2 → the gate (the change is recorded at that patchset); a
 *   Code-Review vote that takes a +2 back, or a -2 veto → the approval is withdrawn;
 * - `change-merged` → the change leaves the gate (merged in the review system);
 * - anything else is acknowledged and ignored, with the reason.
 */
import type { ApprovalEvent, PatchsetEvent, TriggerEvent } from '../../shared/schemas/events/trigger.js';
import type { CiConfig } from '../config.js';
import type { GateRuntime } from '../pipelines/gate-runtime.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { BuildStore, NewChange } from '../store/build-store.js';

export type TriggerOutcome =
  | { accepted: true; builds: number[]; superseded: number[]; gate?: 'approved' | 'unapproved' | 'merged' }
  | { accepted: false; reason: string };

/** The label and value that approve a change for the gate. */
export const APPROVAL_LABEL = 'Code-Review';
export const APPROVAL_VALUE = 2;

export function handleTrigger(
  event: TriggerEvent,
  deps: { config: Readonly<CiConfig>; scheduler: Scheduler; store?: BuildStore; gate?: GateRuntime },
): TriggerOutcome {
  const project = deps.config.projects.find((p) => p.name === event.project);
  if (!project) return { accepted: false, reason: `project ${event.project} is not registered with this CI` };
  if (event.kind === 'ref-updated') return { accepted: false, reason: 'no pipeline acts on ref-updated events yet' };
  if (project.branches.length > 0 && !project.branches.includes(event.branch)) return { accepted: false, reason: `branch ${event.branch} of ${event.project} is not checked` };

  if (event.kind === 'change-merged') {
    if (!deps.gate) return { accepted: false, reason: 'the gate is not running' };
    deps.gate.mergedElsewhere(event.project, event.change);
    return { accepted: true, builds: [], superseded: [], gate: 'merged' };
  }

  if (event.kind === 'approval') {
    if (!deps.gate || !deps.store) return { accepted: false, reason: 'the gate is not running' };
    const vote = event.approvals.find((a) => a.type === APPROVAL_LABEL);
    if (!vote) return { accepted: false, reason: `no ${APPROVAL_LABEL} vote in this comment` };
    const approved = vote.value >= APPROVAL_VALUE;
    // A veto (-2) always takes the change out; otherwise only a vote that lowers a +2 does.
    // TODO(#4): votes per reviewer (one reviewer's +1 after another's +2 should not unapprove).
    const veto = vote.value <= -APPROVAL_VALUE;
    if (!approved && !veto && (vote.oldValue === undefined || vote.oldValue < APPROVAL_VALUE)) {
      return { accepted: false, reason: `${APPROVAL_LABEL} ${vote.value} neither approves nor takes an approval back` };
    }
    const latest = deps.store.latestChange(event.project, event.change);
    if (latest && latest.patchset > event.patchset) return { accepted: false, reason: `patchset ${event.patchset} is outdated (the change is at ${latest.patchset})` };
    const c = deps.store.recordChange(newChange(event));
    deps.gate.approval(c, approved);
    return { accepted: true, builds: [], superseded: [], gate: approved ? 'approved' : 'unapproved' };
  }

  const { build, superseded } = deps.scheduler.submit(newChange(event), 'check');
  deps.gate?.patchset(build.change);
  return { accepted: true, builds: [build.id], superseded };
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
