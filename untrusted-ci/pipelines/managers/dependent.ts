/**
 * The gate: Zuul's dependent pipeline manager (`zuul/manager/dependent.py`; docs/gate.md).
 *
 * - Queues: projects listed together in `queues` share one change queue; every other project has
 *   its own, named after it. A queue keeps its window for the life of the manager.
 * - Enqueue (`addChange`): only approved, open changes. Unmerged needs (git parent, Depends-On) go
 *   ahead in the same queue first, recursively; a need in a queue this change does not share is
 *   refused with a FAILURE report; a need that is not approved, outdated or abandoned leaves the
 *   change out silently until the need becomes ready (then `enqueueBehind` pulls it in).
 * - A head that passes is submitted (effect `submit`); `submitted` says whether the branch really
 *   moved. Merged: the window grows and a `merged` effect is emitted. Refused: MERGE_FAILURE and
 *   every item behind is reset. Any other verdict shrinks the window and resets those behind.
 */
import type { Fate } from '../model/build-set.js';
import { ChangeQueue } from '../model/change-queue.js';
import type { ChangeKey, ChangeRecord } from '../model/changes.js';
import type { ReportResult } from '../model/events.js';
import type { QueueItem } from '../model/queue-item.js';
import { DEFAULT_WINDOW, grownWindow, shrunkWindow, type WindowConfig } from '../model/window.js';
import { PipelineManager } from './pipeline-manager.js';

export interface DependentOptions {
  now: () => number;
  window?: WindowConfig;
  /** Shared queues: name → projects. A project may appear in one queue only. */
  queues?: Readonly<Record<string, readonly string[]>>;
}

type NeedCheck = { kind: 'ok'; toEnqueue: ChangeKey[] } | { kind: 'abort'; warning?: string };

export class DependentPipelineManager extends PipelineManager {
  readonly kind = 'gate' as const;
  private readonly window: WindowConfig;
  private readonly shared: Readonly<Record<string, readonly string[]>>;

  constructor(o: DependentOptions) {
    super(o.now);
    this.window = o.window ?? DEFAULT_WINDOW;
    this.shared = o.queues ?? {};
  }

  static fromJSON(o: DependentOptions, json: unknown): DependentPipelineManager {
    const m = new DependentPipelineManager(o);
    m.restore(json);
    return m;
  }

  /** The queue a change belongs to (created on first use). */
  private queueFor(c: ChangeRecord): ChangeQueue {
    const name = Object.entries(this.shared).find(([, ps]) => ps.includes(c.project))?.[0] ?? c.project;
    let q = this.queues.find((x) => x.name === name);
    if (!q) {
      q = new ChangeQueue(name, this.shared[name] ?? [c.project], false, this.window.initial);
      this.queues.push(q);
    }
    return q;
  }

  protected addChange(id: ChangeKey): boolean {
    const c = this.changes.get(id);
    if (!c || c.status !== 'open' || !c.approved) return false;
    if (this.liveItem(id)) return true;
    const cycle = this.cycleFrom(id);
    if (cycle) {
      // Zuul checks readiness first: a cycle with an unapproved member is left alone, silently.
      const ready = cycle.every((x) => this.changes.get(x)?.approved === true);
      if (ready) this.reportChange(c, 'FAILURE', `dependency cycle detected (${cycle.join(' → ')}) and circular dependencies are not allowed`);
      return false;
    }
    return this.add(c, new Set());
  }

  /** Zuul `addChange` for a ready change whose dependency graph has no cycle. */
  private add(c: ChangeRecord, history: Set<ChangeKey>): boolean {
    if (this.liveItem(c.id)) return true;
    history.add(c.id);
    const q = this.queueFor(c);
    const needs = this.checkNeeds(c, q);
    if (needs.kind === 'abort') {
      if (needs.warning) this.reportChange(c, 'FAILURE', `build failed: ${needs.warning}`);
      return false;
    }
    for (const n of needs.toEnqueue) {
      const nc = this.changes.get(n);
      if (!nc || history.has(n) || !this.add(nc, history)) return false;
    }
    if (this.liveItem(c.id)) return true;
    this.newItem(q, c, true);
    this.enqueueBehind(c, q, history);
    return true;
  }

  /** Zuul `getMissingNeededChanges` at enqueue time. */
  private checkNeeds(c: ChangeRecord, q: ChangeQueue): NeedCheck {
    const toEnqueue: ChangeKey[] = [];
    for (const need of c.needs) {
      const n = this.changes.get(need.change);
      if (!n) return { kind: 'abort' };
      if (n.status === 'merged') continue;
      if (this.queueFor(n) !== q) {
        return {
          kind: 'abort',
          warning: `change ${n.id} in project ${n.project} does not share a change queue with change ${c.id} in project ${c.project}`,
        };
      }
      if (n.status !== 'open' || n.patchset !== need.patchset) return { kind: 'abort' };
      if (this.liveItem(n.id)) continue;
      if (!n.approved) return { kind: 'abort' };
      toEnqueue.push(n.id);
    }
    return { kind: 'ok', toEnqueue };
  }

  /** Zuul `enqueueChangesBehind`: approved changes that need this one join behind it. */
  private enqueueBehind(c: ChangeRecord, q: ChangeQueue, history: Set<ChangeKey>): void {
    for (const d of [...this.changes.all()]) {
      if (d.status !== 'open' || !d.approved || history.has(d.id) || this.liveItem(d.id)) continue;
      if (!d.needs.some((n) => n.change === c.id && n.patchset === c.patchset)) continue;
      if (this.queueFor(d) !== q) continue;
      this.add(d, history);
    }
  }

  protected meetsRequirements(item: QueueItem, c: ChangeRecord | undefined): boolean {
    return c !== undefined && c.status === 'open' && c.approved && c.patchset === item.patchset;
  }

  /** Every unmerged need must sit in a live item ahead of this one in list order, at the patchset needed. */
  protected missingNeeds(item: QueueItem, q: ChangeQueue): string | null {
    const ahead = q.listAhead(item).filter((i) => i.live);
    for (const need of this.changes.get(item.change)?.needs ?? []) {
      const n = this.changes.get(need.change);
      if (n?.status === 'merged') continue;
      if (!n) return `change ${need.change} is unknown`;
      if (n.patchset !== need.patchset) return `change ${n.id} has a newer patchset than the one needed`;
      if (!ahead.some((i) => i.change === n.id && i.patchset === need.patchset)) return `change ${n.id} is no longer ahead in the queue`;
    }
    return null;
  }

  /** Zuul `getFailingDependentItems`. */
  protected needsFailingItem(item: QueueItem, q: ChangeQueue): boolean {
    for (const need of this.changes.get(item.change)?.needs ?? []) {
      const holder = q.items.find((i) => i.live && i.change === need.change);
      if (holder && holder !== item && holder.buildSet.failingReasons.length > 0) return true;
    }
    return false;
  }

  protected finish(item: QueueItem, q: ChangeQueue, result: ReportResult, message: string): void {
    if (result === 'SUCCESS') {
      item.submitting = true;
      this.emit({ type: 'submit', item: item.id, buildSet: item.buildSet.id, change: item.change, patchset: item.patchset, state: [...(item.buildSet.state ?? [])] });
      return;
    }
    this.report(item, result, message);
    this.onUnsuccessful(q);
    this.leave(item, q, 'failed');
  }

  protected submitted(item: QueueItem, q: ChangeQueue, merged: boolean, message: string | undefined): void {
    item.submitting = false;
    const bs = item.buildSet;
    const c = this.changes.get(item.change);
    if (merged && c) {
      this.changes.put({ ...c, status: 'merged' });
      this.report(item, 'SUCCESS', `build succeeded (gate) and merged`);
      q.window = grownWindow(q.window, this.window);
      this.emit({ type: 'window', queue: q.name, window: q.window });
      this.emit({ type: 'merged', item: item.id, buildSet: bs.id, change: item.change, patchset: item.patchset, project: c.project, branch: c.branch });
      this.endBuildSet(bs, 'merged');
      q.dequeue(item);
      return;
    }
    // Passed but did not merge: not the change's fault, so the window stays (Zuul `test_submit_failure`).
    this.report(item, 'MERGE_FAILURE', `build succeeded (gate) but the change could not be merged: ${message ?? 'submit refused'}`);
    this.leave(item, q, 'failed');
  }

  /** The head leaves without merging: reset everything behind it (Zuul `MergeFailure`), then dequeue. */
  private leave(item: QueueItem, q: ChangeQueue, fate: Fate): void {
    this.endBuildSet(item.buildSet, fate);
    for (const b of q.itemsBehind(item)) this.cancelJobs(b, q, true, 'reset');
    q.dequeue(item);
  }

  protected override onUnsuccessful(q: ChangeQueue): void {
    const w = shrunkWindow(q.window, this.window);
    if (w === q.window) return;
    q.window = w;
    this.emit({ type: 'window', queue: q.name, window: w });
  }
}
