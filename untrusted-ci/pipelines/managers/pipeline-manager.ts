/**
 * PipelineManager: Zuul's queue processor over the pure model (docs/gate.md "The queue processor"), shared by the
 * check (independent) and gate (dependent) managers, which override a few hooks.
 *
 * Contract:
 * - `handle(events)` is synchronous and deterministic: it applies the batch's result events, then
 *   its trigger events, then runs `processQueues` until a pass changes nothing, and returns the
 *   effects produced, in order. The clock is injected; nothing here does I/O.
 * - Answers for a build set that is no longer current (reset, dequeued) are ignored.
 * - `toJSON()` is the whole state; `fromJSON` (in the subclasses) restores it. Requests in flight
 *   when the state was saved (prepare, builds, submit) must be re-issued by the caller or answered.
 *
 * The processing of one item (`processOneItem`) follows Zuul's `_processOneItem` step by step; the
 * comments name the Zuul behaviour each step reproduces.
 */
import { InternalError } from '#shared/errors.js';
import { BuildSet, type Fate, type JobNode, type StateEntry } from '../model/build-set.js';
import { ChangeQueue, ChangeQueueJson } from '../model/change-queue.js';
import { ChangeRecord, ChangeRegistry, type ChangeKey } from '../model/changes.js';
import { isResultEvent, type Effect, type PipelineEvent, type ReportResult, type ResultEvent, type TriggerEvent } from '../model/events.js';
import { QueueItem } from '../model/queue-item.js';
import { z } from 'zod';

export const ManagerJson = z.strictObject({
  version: z.literal(1),
  kind: z.enum(['check', 'gate']),
  nextId: z.number().int().min(1),
  changes: z.array(ChangeRecord),
  queues: z.array(ChangeQueueJson),
});
export type ManagerJson = z.infer<typeof ManagerJson>;

/** Passes after which the processor is assumed to loop (a bug, never a user's doing). */
const MAX_PASSES = 10_000;

export abstract class PipelineManager {
  abstract readonly kind: 'check' | 'gate';
  protected changes = new ChangeRegistry();
  protected queues: ChangeQueue[] = [];
  protected nextId = 1;
  private effects: Effect[] = [];

  constructor(protected readonly now: () => number) {}

  // ---- hooks --------------------------------------------------------------------------------

  /** Put the change (and what it needs) into the pipeline; false if it was not enqueued. */
  protected abstract addChange(id: ChangeKey): boolean;
  /** Whether a live item may stay: approved, current, open (gate). */
  protected abstract meetsRequirements(item: QueueItem, change: ChangeRecord | undefined): boolean;
  /** Why a live item's needs are no longer satisfied (a needed change left the queue unmerged), or null. */
  protected abstract missingNeeds(item: QueueItem, queue: ChangeQueue): string | null;
  /** Whether a change the item needs sits in an item that is failing (docs/gate.md "Failure and reset", rule 5). */
  protected abstract needsFailingItem(item: QueueItem, queue: ChangeQueue): boolean;
  /** The item reached the head with all jobs complete: report, submit or dequeue it. */
  protected abstract finish(item: QueueItem, queue: ChangeQueue, result: ReportResult, message: string): void;
  /** The answer to a `submit` effect. */
  protected abstract submitted(item: QueueItem, queue: ChangeQueue, merged: boolean, message: string | undefined): void;

  // ---- the event loop -----------------------------------------------------------------------

  handle(events: readonly PipelineEvent[]): Effect[] {
    try {
      for (const e of events) if (isResultEvent(e)) this.applyResult(e);
      for (const e of events) if (!isResultEvent(e)) this.applyTrigger(e);
      let passes = 0;
      while (this.processQueues()) {
        if (++passes > MAX_PASSES) throw new InternalError(`the ${this.kind} pipeline did not settle after ${MAX_PASSES} passes`);
      }
      this.prune();
      return this.effects;
    } finally {
      this.effects = [];
    }
  }

  /** Whether `id` is the current build set of an item (answers for any other are ignored). */
  isCurrentBuildSet(id: number): boolean {
    return this.findItem((i) => i.buildSet.id === id) !== undefined;
  }

  /** Ids below `n` are taken (by records outside the model): never hand them out. */
  reserveIds(n: number): void {
    this.nextId = Math.max(this.nextId, n);
  }

  /**
   * After a restart the world has lost every request that was in flight. Items whose build set was
   * waiting for its prepare or its builds get a fresh one (prepared and run again: on the same
   * state, unless something ahead changed meanwhile); submits that were not answered are asked
   * again (the answer for a branch that already moved to the tested commit is "merged"). Items
   * whose builds all finished keep their results.
   */
  recover(): Effect[] {
    for (const q of this.queues) {
      for (const item of q.items) {
        const bs = item.buildSet;
        if (item.submitting) {
          this.effects.push({ type: 'submit', item: item.id, buildSet: bs.id, change: item.change, patchset: item.patchset, state: [...(bs.state ?? [])] });
        } else if (bs.configured && !bs.allJobsComplete()) {
          this.cancelJobs(item, q, true, 'reset', false);
        }
      }
    }
    return this.handle([]);
  }

  /** The queues, for status pages and tests (read-only use). */
  get changeQueues(): readonly ChangeQueue[] {
    return this.queues;
  }
  change(id: ChangeKey): ChangeRecord | undefined {
    return this.changes.get(id);
  }
  /** Open changes the pipeline knows, in the order it heard of them. */
  openChanges(): ChangeRecord[] {
    return [...this.changes.all()].filter((c) => c.status === 'open');
  }

  toJSON(): ManagerJson {
    return { version: 1, kind: this.kind, nextId: this.nextId, changes: this.changes.toJSON(), queues: this.queues.map((q) => q.toJSON()) };
  }

  protected restore(json: unknown): void {
    const j = ManagerJson.parse(json);
    if (j.kind !== this.kind) throw new InternalError(`a ${j.kind} pipeline's state cannot be loaded into a ${this.kind} pipeline`);
    this.nextId = j.nextId;
    this.changes = ChangeRegistry.fromJSON(j.changes);
    this.queues = j.queues.map((q) => ChangeQueue.fromJSON(q));
  }

  // ---- results ------------------------------------------------------------------------------

  private applyResult(e: ResultEvent): void {
    if (e.type === 'submitted') {
      const found = this.findItem((i) => i.id === e.item);
      if (found && found.item.submitting) this.submitted(found.item, found.queue, e.merged, e.message);
      return;
    }
    const found = this.findItem((i) => i.buildSet.id === e.buildSet);
    if (!found) return;
    const bs = found.item.buildSet;
    if (e.type === 'prepared') {
      if (bs.merge !== 'pending') return;
      if (e.outcome.kind === 'ok') bs.mergeCompleted(e.outcome.jobs);
      else if (e.outcome.kind === 'conflict') bs.setUnableToMerge(e.outcome.message);
      else bs.setConfigError(e.outcome.message);
      return;
    }
    bs.completeBuild(e.job, e.result, this.now());
  }

  // ---- triggers -----------------------------------------------------------------------------

  private applyTrigger(e: TriggerEvent): void {
    switch (e.type) {
      case 'change': {
        const old = this.changes.get(e.change.id);
        if (old && e.change.patchset < old.patchset) return; // a late event about an old patchset
        if (old?.status === 'merged') return; // a merged change takes no new patchsets
        const status = old && old.patchset === e.change.patchset ? old.status : 'open';
        this.changes.put({ ...e.change, needs: e.change.needs.map((n) => ({ ...n })), status });
        if (old && e.change.patchset > old.patchset) {
          this.removeItems((i) => i.change === e.change.id && i.patchset < e.change.patchset, `a new patchset (${e.change.patchset}) was uploaded`);
        }
        return;
      }
      case 'enqueue':
        this.addChange(e.change);
        return;
      case 'approval': {
        const c = this.changes.get(e.change);
        if (!c || (e.patchset !== undefined && e.patchset !== c.patchset)) return; // an approval of an outdated patchset
        this.changes.put({ ...c, approved: e.approved });
        if (e.approved) this.addChange(e.change);
        return;
      }
      case 'abandon': {
        const c = this.changes.get(e.change);
        if (!c || c.status === 'merged') return;
        this.changes.put({ ...c, status: 'abandoned' });
        const queues = this.removeItems((i) => i.change === e.change, 'the change was abandoned');
        this.removeDependents(e.change, queues);
        return;
      }
      case 'restore': {
        const c = this.changes.get(e.change);
        if (c?.status === 'abandoned') this.changes.put({ ...c, status: 'open' });
        return;
      }
      case 'merged-elsewhere': {
        const c = this.changes.get(e.change);
        if (!c) return;
        this.changes.put({ ...c, status: 'merged' });
        this.removeItems((i) => i.change === e.change, 'the change was merged outside this pipeline');
        return;
      }
    }
  }

  /**
   * Zuul `removeItem` on live items: cancel and drop each (resetting those behind). Reported
   * DEQUEUED only if its start was reported (Zuul `dequeueItem`). Returns the queues it left.
   */
  private removeItems(match: (i: QueueItem) => boolean, why: string): Set<ChangeQueue> {
    const left = new Set<ChangeQueue>();
    for (const q of this.queues) {
      for (const item of q.items) {
        if (!item.live || !match(item) || item.submitting) continue; // a submit in flight decides that item's fate
        this.cancelJobs(item, q, true, 'dequeued');
        if (item.reportedStart) this.report(item, 'DEQUEUED', `removed from the ${this.kind} pipeline: ${why}`);
        q.dequeue(item);
        left.add(q);
      }
    }
    this.dropEmptyQueues();
    return left;
  }

  /**
   * Zuul `removeAbandonedChange`: live items of the same queue that need an abandoned change
   * (directly or through another removed item) leave at once, reported DEPENDENCY_FAILED like any
   * needing-change dequeue. (A check item keeps testing on its own copy of the dependency.)
   */
  private removeDependents(abandoned: ChangeKey, queues: ReadonlySet<ChangeQueue>): void {
    const removed = new Set<ChangeKey>([abandoned]);
    for (let again = true; again; ) {
      again = false;
      for (const q of this.queues) {
        if (!queues.has(q)) continue; // Zuul: only the queue the abandoned change was in
        for (const item of q.items) {
          if (!item.live || item.submitting || removed.has(item.change)) continue;
          const needs = this.changes.get(item.change)?.needs ?? [];
          const gone = needs.find((n) => removed.has(n.change));
          if (!gone) continue;
          this.cancelJobs(item, q, true, 'dequeued');
          this.report(item, 'DEPENDENCY_FAILED', `this change depends on a change that failed to merge (change ${gone.change} is needed)`);
          this.onUnsuccessful(q);
          q.dequeue(item);
          removed.add(item.change);
          again = true;
        }
      }
    }
    this.dropEmptyQueues();
  }

  // ---- the queue processor ------------------------------------------------------------------

  /** One pass over every queue; true if anything changed (Zuul `processQueue`). */
  private processQueues(): boolean {
    let changed = false;
    for (const q of [...this.queues]) {
      let nnfi: QueueItem | null = null;
      for (const item of q.items) {
        if (!q.contains(item)) continue;
        const r = this.processOneItem(item, nnfi, q);
        changed ||= r.changed;
        nnfi = r.nnfi;
      }
    }
    this.dropEmptyQueues();
    return changed;
  }

  private processOneItem(item: QueueItem, nnfi: QueueItem | null, q: ChangeQueue): { changed: boolean; nnfi: QueueItem | null } {
    // A submit is in flight: the item stays where it is, as the base of those behind, until it is answered.
    if (item.submitting) return { changed: false, nnfi: item };
    let changed = false;
    const failing: string[] = [];
    // Zuul: a non-live item ahead does not count as ahead (the check pipeline's dependencies).
    let ahead = q.item(item.ahead) ?? null;
    if (ahead && !ahead.live) ahead = null;

    // Requirements are re-read on every pass (docs/gate.md "Requirements are re-read"): approval, current patchset, needs.
    if (item.live) {
      const change = this.changes.get(item.change);
      const unmet = !this.meetsRequirements(item, change);
      const missing = unmet ? null : this.missingNeeds(item, q);
      if (unmet || missing !== null) {
        this.cancelJobs(item, q, true, 'dequeued');
        if (unmet) this.report(item, 'DEQUEUED', `removed from the ${this.kind} pipeline: it lost its approval or is no longer open at this patchset`);
        else this.report(item, 'DEPENDENCY_FAILED', `this change depends on a change that failed to merge (${missing})`);
        this.onUnsuccessful(q);
        q.dequeue(item);
        return { changed: true, nnfi };
      }
    }

    item.active = q.isActionable(item);
    let ready = false;
    if (this.needsFailingItem(item, q)) {
      // Rule 5: stay behind the failing change it needs; stop its builds but keep the build set.
      failing.push('a needed change is failing');
      if (this.cancelJobs(item, q, false, 'reset')) changed = true;
    } else {
      // Rule 1: tested on a base that is not the nearest non-failing item ahead: move and reset.
      // Zuul compares even a root (ahead null) with nnfi: an item moved to the root when the
      // items ahead failed goes back behind one of them that was reset and is no longer failing.
      const aheadMerged = ahead !== null && this.changes.get(ahead.change)?.status === 'merged';
      if (ahead !== nnfi && !aheadMerged) {
        q.moveItem(item, nnfi);
        this.cancelJobs(item, q, true, 'reset');
        changed = true;
      }
      // Behind a submit in flight, wait for its answer before fixing a state (Zuul submits within
      // the pass, so the items behind see the change merged, not speculative).
      if (item.active && item.live && !(item.buildSet.configured === false && q.itemsAhead(item).some((i) => i.submitting))) {
        const p = this.prepareItem(item, q);
        changed ||= p.changed;
        ready = p.ready;
        const bs = item.buildSet;
        if (ready && (bs.jobs?.length ?? 0) > 0 && !item.reportedStart) {
          item.reportedStart = true;
          this.effects.push({ type: 'report-start', item: item.id, change: item.change, patchset: item.patchset });
          changed = true;
        }
        if (bs.unableToMerge !== null) failing.push('it has a merge conflict');
        if (bs.configError !== null) failing.push('it has an invalid configuration');
      }
    }
    if (ready && this.executeJobs(item)) changed = true;
    if (item.buildSet.anyVotingJobFailed()) failing.push('at least one job failed');
    if (!item.live && q.itemsBehind(item).length === 0) {
      q.dequeue(item);
      return { changed: true, nnfi };
    }
    const canReport = ahead === null && item.live && item.buildSet.configured && item.buildSet.allJobsComplete();
    item.buildSet.failingReasons = failing;
    if (canReport) {
      const v = this.verdict(item.buildSet);
      this.finish(item, q, v.result, v.message);
      changed = true;
      if (item.submitting) return { changed, nnfi: item };
    } else if (failing.length === 0 && item.live) {
      nnfi = item;
    }
    return { changed, nnfi };
  }

  /** Fix the state on first sight and ask for it; ready once it merged and its jobs are known. */
  private prepareItem(item: QueueItem, q: ChangeQueue): { ready: boolean; changed: boolean } {
    const bs = item.buildSet;
    if (!bs.configured) {
      const chain = [...q.itemsAhead(item)].reverse();
      chain.push(item);
      const state = chain.map((i) => this.stateEntry(i));
      bs.configure(state, this.now());
      this.effects.push({ type: 'prepare', buildSet: bs.id, item: item.id, queue: q.name, change: item.change, patchset: item.patchset, state });
      return { ready: false, changed: true };
    }
    if (bs.merge !== 'complete' || bs.unableToMerge !== null || bs.configError !== null) return { ready: false, changed: false };
    return { ready: true, changed: false };
  }

  private stateEntry(i: QueueItem): StateEntry {
    const c = this.changes.get(i.change);
    if (!c) throw new InternalError(`change ${i.change} is queued but unknown`);
    return { change: i.change, patchset: i.patchset, project: c.project, branch: c.branch, ref: c.ref };
  }

  /** Start every job whose dependencies succeeded; skip those whose dependencies did not. */
  private executeJobs(item: QueueItem): boolean {
    const bs = item.buildSet;
    const jobs = bs.jobs ?? [];
    const names = new Set(jobs.map((j) => j.name));
    let changed = false;
    for (let progress = true; progress; ) {
      progress = false;
      for (const job of jobs) {
        if (bs.build(job.name)) continue;
        const deps = job.needs.map((n) => bs.build(n));
        const blocked = job.needs.some((n) => !names.has(n)) || deps.some((d) => d !== undefined && d.result !== null && d.result !== 'SUCCESS');
        if (blocked) bs.skip(job.name, this.now());
        else if (deps.every((d) => d?.result === 'SUCCESS')) this.startBuild(item, job);
        else continue;
        progress = changed = true;
      }
    }
    return changed;
  }

  private startBuild(item: QueueItem, job: JobNode): void {
    const bs = item.buildSet;
    bs.startBuild(job.name, this.now());
    this.effects.push({ type: 'start-build', buildSet: bs.id, item: item.id, change: item.change, job, state: [...(bs.state ?? [])] });
  }

  /**
   * Zuul `cancelJobs`: abort the item's running builds and, with `prime`, replace a configured
   * build set by a fresh one (`fate` records how the old one ended); then the same for every item
   * behind it. True if anything was aborted or reset.
   */
  protected cancelJobs(item: QueueItem, q: ChangeQueue, prime: boolean, fate: Fate, recurse = true): boolean {
    let changed = false;
    const bs = item.buildSet;
    const aborted = bs.abortRunning(this.now());
    if (aborted.length > 0) {
      this.effects.push({ type: 'cancel-builds', buildSet: bs.id, jobs: aborted });
      changed = true;
    }
    if (prime && bs.configured) {
      this.endBuildSet(bs, fate);
      item.buildSet = BuildSet.create(this.nextId++, item.id, item.change, item.patchset);
      changed = true;
    }
    if (recurse) for (const b of q.itemsBehind(item)) if (this.cancelJobs(b, q, prime, 'reset')) changed = true;
    return changed;
  }

  protected endBuildSet(bs: BuildSet, fate: Fate): void {
    if (!bs.configured || bs.fate !== null) return;
    bs.end(fate, this.now());
    this.effects.push({ type: 'build-set-ended', buildSet: bs.toJSON() });
  }

  /** Zuul `_reportItem`'s choice of action (docs/gate.md "Reporting"). */
  private verdict(bs: BuildSet): { result: ReportResult; message: string } {
    if (bs.configError !== null) return { result: 'CONFIG_ERROR', message: `invalid configuration: ${bs.configError}` };
    if (bs.unableToMerge !== null) return { result: 'MERGE_CONFLICT', message: `merge failed: ${bs.unableToMerge}` };
    const jobs = bs.jobs ?? [];
    if (jobs.length === 0) return { result: 'NO_JOBS', message: `no ${this.kind} jobs apply to this change` };
    const lines = jobs.map((j) => `${j.name}: ${bs.build(j.name)?.result ?? 'NOT_RUN'}${j.voting ? '' : ' (non-voting)'}`).join(', ');
    if (bs.allVotingJobsSucceeded()) return { result: 'SUCCESS', message: `build succeeded (${this.kind}): ${lines}` };
    return { result: 'FAILURE', message: `build failed (${this.kind}): ${lines}` };
  }

  // ---- helpers for the managers -------------------------------------------------------------

  protected report(item: QueueItem, result: ReportResult, message: string): void {
    this.effects.push({ type: 'report', item: item.id, change: item.change, patchset: item.patchset, result, message });
  }

  /** A report for a change that never got an item (it could not be enqueued). */
  protected reportChange(c: ChangeRecord, result: ReportResult, message: string): void {
    this.effects.push({ type: 'report', item: null, change: c.id, patchset: c.patchset, result, message });
  }

  protected emit(e: Effect): void {
    this.effects.push(e);
  }

  /** An item did not succeed (failure, conflict, missing requirement): the gate shrinks its window. */
  protected onUnsuccessful(_q: ChangeQueue): void {}

  protected newItem(q: ChangeQueue, c: ChangeRecord, live: boolean): QueueItem {
    const id = this.nextId++;
    const item = QueueItem.create({ id, buildSetId: this.nextId++, change: c.id, patchset: c.patchset, live, ahead: null, now: this.now() });
    q.enqueue(item);
    return item;
  }

  /** The live item of a change anywhere in the pipeline. */
  protected liveItem(id: ChangeKey): { item: QueueItem; queue: ChangeQueue } | undefined {
    return this.findItem((i) => i.live && i.change === id);
  }

  protected findItem(match: (i: QueueItem) => boolean): { item: QueueItem; queue: ChangeQueue } | undefined {
    for (const queue of this.queues) for (const item of queue.items) if (match(item)) return { item, queue };
    return undefined;
  }

  /** The first dependency cycle reachable from `id` through open changes, as a path, or null. */
  protected cycleFrom(id: ChangeKey): ChangeKey[] | null {
    const state = new Map<ChangeKey, 'visiting' | 'done'>();
    const path: ChangeKey[] = [];
    const visit = (c: ChangeKey): ChangeKey[] | null => {
      const s = state.get(c);
      if (s === 'done') return null;
      if (s === 'visiting') return [...path.slice(path.indexOf(c)), c];
      const rec = this.changes.get(c);
      if (!rec || rec.status !== 'open') return null;
      state.set(c, 'visiting');
      path.push(c);
      for (const n of rec.needs) {
        const found = visit(n.change);
        if (found) return found;
      }
      path.pop();
      state.set(c, 'done');
      return null;
    };
    return visit(id);
  }

  private dropEmptyQueues(): void {
    this.queues = this.queues.filter((q) => !q.dynamic || q.length > 0);
  }

  /** Forget closed changes nothing refers to any more. */
  private prune(): void {
    const keep = new Set<ChangeKey>();
    for (const q of this.queues) {
      for (const i of q.items) {
        keep.add(i.change);
        for (const s of i.buildSet.state ?? []) keep.add(s.change);
      }
    }
    for (const c of this.changes.all()) if (c.status === 'open') for (const n of c.needs) keep.add(n.change);
    this.changes.prune(keep);
  }
}
