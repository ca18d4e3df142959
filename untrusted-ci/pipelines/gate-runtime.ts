/**
 * GateRuntime: the gate's I/O around the pure DependentPipelineManager. One per service.
 *
 * Event loop (docs/conventions.md "One event loop"): `post` queues events; one async loop drains them in batches, hands each
 * batch to the model (results before triggers), saves the model's snapshot and the batch's merges
 * and reports in one transaction (GateStore), then carries out the effects:
 * - `prepare` → a gate build in the BuildStore (its change stack, its build set), run by the
 *   Scheduler and the CheckBuildExecutor like any build; the executor calls back through
 *   `GateHooks`: `prepared` once the merge, config and job list are known, `awaitStart` before
 *   each job (a job runs only once the model started it), `jobDone` after each;
 * - `cancel-builds` / a build set that ended while its build runs → the build is cancelled;
 * - `submit` → the review system (`ReviewSystem`): the change is read again there (still open, at
 *   the tested patch set, not WIP, still approved), gets the gate's Verified +2 with the build's
 *   message, and the review system is asked to submit it; its answer (merged, with the branch tip
 *   it left, or a refusal such as a 409) is answered `submitted`. airlock never writes a branch;
 * - `merged`, `report`, `report-start` → the `gate_events` outbox (in the same transaction).
 * Builds that end without telling the model (an infrastructure error after the retries, a crash)
 * are turned into results by `report` (this runtime is also a Scheduler Reporter).
 *
 * Restart: the snapshot is loaded, every unfinished gate build is cancelled, and `recover()`
 * resets the items whose builds were lost and re-asks submits that were in flight (idempotent: a
 * change the review system shows merged answers merged).
 *
 * Enqueue (`approval`): the change's dependencies are read from git, and every commit between the
 * branch tip and the change must be the current patch set of an open change the gate knows (which
 * then becomes a need: approved and ahead in the queue, or the change waits); a commit that is an
 * outdated patch set or belongs to no change keeps the change out, and the reason is reported.
 */
import type { Logger } from '#shared/logging.js';
import type { GateView } from '../api/schemas/gate.js';
import type { BuildView, ChangeView, JobState } from '#shared/schemas/api/builds.js';
import type { ProjectConfig } from '../config.js';
import { isAirlockError } from '#shared/errors.js';
import { retry } from '#shared/retry.js';
import type { Merger } from '../merger/merger.js';
import { gatePassMessage, type Links, type VotesConfig } from '../review/review-messages.js';
import type { ReviewOutbox } from '../review/review-outbox.js';
import { approvedBy, type ApprovalRule, type ReviewedChange, type ReviewSystem } from '../review/review-system.js';
import type { Reporter, Scheduler } from '../scheduler/scheduler.js';
import type { BuildStore } from '../store/build-store.js';
import type { GateStore, NewGateEvent } from '../store/gate-store.js';
import { DependentPipelineManager } from './managers/dependent.js';
import type { JobNode, StateEntry } from './model/build-set.js';
import { changeKey, splitChangeKey } from './model/changes.js';
import { resolveNeeds, type OpenChange } from './needs.js';
import type { Effect, PipelineEvent, PrepareOutcome } from './model/events.js';
import type { NeededChange } from './model/changes.js';
import type { WindowConfig } from './model/window.js';
import { observeBatch, residents, type GateMetricsPort, type Residents } from './gate-metrics.js';

const PIPELINE = 'gate';
/** Wait before a failed submit is tried once more. */
const SUBMIT_RETRY_MS = 2_000;

/** What the executor tells the gate about a gate build. */
export interface GateHooks {
  prepared(build: BuildView, outcome: PrepareOutcome): void;
  /** Resolves when the model has started `job` of this build's build set; rejects when the signal aborts. */
  awaitStart(build: BuildView, job: string, signal: AbortSignal): Promise<void>;
  jobDone(build: BuildView, job: string, state: JobState): void;
}

export interface GateRuntimeOptions {
  store: BuildStore;
  gateStore: GateStore;
  scheduler: () => Scheduler;
  merger: Merger;
  projects: readonly ProjectConfig[];
  window: WindowConfig;
  queues: Readonly<Record<string, readonly string[]>>;
  logger: Logger;
  now?: () => number;
  /** Called after a batch that merged something was saved (the hint sender wakes up). */
  onMerged?: () => void;
  /**
   * The gate could not save its state (the database failed, or this replica no longer leads): it
   * stops taking events, and the service stops leading (the next leader, or this process started
   * again, recovers from the last snapshot saved).
   */
  onStateLost?: (err: unknown) => void;
  /** Called after each batch was applied: the queues may look different (the status page). */
  onChange?: () => void;
  /** The review system that merges (absent: the gate tests but cannot merge anything). */
  review?: GateReview;
  /** Told of resets and of items leaving their queue (the service's metrics). */
  metrics?: GateMetricsPort;
}

/** What the gate needs of the review system to have a change merged. */
export interface GateReview {
  system: ReviewSystem;
  outbox: Pick<ReviewOutbox, 'exclusive'>;
  rule: ApprovalRule;
  votes: VotesConfig;
  links: Links;
  /** A change read again before its submit: the CI's own record follows what the review system says. */
  onReread?: (c: ReviewedChange) => void;
}

/** Commits between a branch tip and an approved change at most (each must belong to a reviewed change). */
const MAX_COMMITS_BETWEEN = 1000;


export class GateRuntime implements GateHooks, Reporter {
  private manager: DependentPipelineManager;
  private readonly pending: PipelineEvent[] = [];
  private draining = false;
  private readonly inFlight = new Set<Promise<unknown>>();
  /** The last save (persist): the next waits for it. */
  private saving: Promise<void> = Promise.resolve();
  private readonly idleWaiters = new Set<() => void>();
  /** build set → gate build id, and back (the gate's own builds of this run: a restart cancels the others) */
  private readonly builds = new Map<number, number>();
  private readonly buildSetOf = new Map<number, number>();
  /** build set → jobs the model started / jobs whose result was handed in */
  private readonly started = new Map<number, Set<string>>();
  private readonly answered = new Map<number, Set<string>>();
  private readonly preparedSets = new Set<number>();
  private readonly waiters = new Map<string, Set<{ resolve: () => void }>>();
  private closed = false;
  /** Gate builds the gate itself cancelled (any other cancellation is news to the model). */
  private readonly cancelledByGate = new Set<number>();
  /** item → its latest build set (a report names its build); build set → the commit its merge left. */
  private readonly itemBuildSets = new Map<number, number>();
  private readonly mergedCommits = new Map<number, string>();
  /** The tail of the ordered trigger chain (see `inOrder`). */
  private triggers: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: GateRuntimeOptions) {
    this.manager = this.fresh();
  }

  private fresh(): DependentPipelineManager {
    return new DependentPipelineManager({ now: this.now, window: this.o.window, queues: this.o.queues });
  }
  private readonly now = (): number => (this.o.now ?? Date.now)();

  /** Load the last snapshot and make its lost work run again. Call before the scheduler starts. */
  async start(): Promise<void> {
    const json = await this.o.gateStore.loadState(PIPELINE);
    if (json !== undefined) {
      try {
        this.manager = DependentPipelineManager.fromJSON({ now: this.now, window: this.o.window, queues: this.o.queues }, json);
      } catch (e) {
        const kept = `${PIPELINE}.unreadable.${this.now()}`;
        await this.o.gateStore.save(kept, json, []);
        this.o.logger.error({ err: e, kept }, 'the saved gate state cannot be read; it is kept aside and the gate starts empty');
        this.manager = this.fresh();
      }
    }
    // Build set ids go on after those that gate builds in the store already name.
    this.manager.reserveIds((await this.o.store.maxGateBuildSet()) + 1);
    const cancelled = await this.o.store.cancelUnfinished('gate', 'the service restarted; the gate runs this build set again');
    if (cancelled.length > 0) this.o.logger.warn({ builds: cancelled }, 'gate builds of the last run cancelled; their items are tested again');
    const before = this.residentsNow();
    this.draining = true;
    try {
      await this.apply(this.manager.recover(), before);
    } finally {
      this.draining = false;
    }
    if (this.pending.length > 0) this.post();
  }

  /**
   * Whether the gate holds this change approved at this patch set (or a newer one), or merged (the
   * review state may not have heard of the merge yet).
   */
  holdsApproved(project: string, change: string, patchset: number): boolean {
    const known = this.manager.change(changeKey(project, change));
    if (!known) return false;
    if (known.status === 'merged') return true;
    return known.status === 'open' && (known.patchset > patchset || (known.patchset === patchset && known.approved));
  }

  /** Queue events for the model. */
  post(...events: PipelineEvent[]): void {
    if (this.closed) return;
    this.pending.push(...events);
    if (!this.draining) {
      this.draining = true;
      queueMicrotask(() => void this.drain());
    }
  }

  /** Resolves when no event is pending and no effect is being carried out (tests, bench, demo). */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((res) => this.idleWaiters.add(res));
  }

  /** The model, for read-only views (status page, API). */
  get model(): DependentPipelineManager {
    return this.manager;
  }

  /** Stop taking events. Builds waiting to start stay waiting until the scheduler aborts them. */
  close(): void {
    this.closed = true;
  }

  /** The queues as the status page and `GET /api/gate` show them. */
  view(): GateView {
    return {
      queues: this.manager.changeQueues.map((q) => ({
        name: q.name,
        window: q.window,
        items: q.items.map((i) => {
          const [project, change] = splitChangeKey(i.change);
          const ahead = q.item(i.ahead);
          const bs = i.buildSet;
          const build = bs.configured ? this.buildOf(bs.id) : undefined;
          return {
            project,
            change,
            patchset: i.patchset,
            ahead: ahead ? splitChangeKey(ahead.change)[1] : null,
            active: i.active,
            live: i.live,
            state: (bs.state ?? []).map((s) => `${splitChangeKey(s.change)[1]},${s.patchset}`),
            failing: [...bs.failingReasons],
            jobs: (bs.jobs ?? []).map((j) => ({ name: j.name, voting: j.voting, result: bs.build(j.name)?.result ?? null })),
            ...(build !== undefined ? { build } : {}),
            enqueuedAt: i.enqueuedAt,
          };
        }),
      })),
    };
  }

  // ---- triggers -----------------------------------------------------------------------------

  /**
   * A change was approved (or lost its approval) at patchset `c.patchset`. The model enqueues it
   * when it is ready; an approval of an outdated patchset is ignored by the model.
   */
  approval(c: ChangeView, approved: boolean): void {
    const key = changeKey(c.project, c.change);
    if (!approved) {
      this.inOrder(() => [{ type: 'approval', change: key, approved: false, patchset: c.patchset }]);
      return;
    }
    // Dependencies are read from git at once (after the events already posted are applied, so
    // every change submitted before is a candidate); approvals keep their order among themselves.
    const resolved = Promise.resolve().then(() => this.needsOf(c));
    this.inOrder(async () => {
      const r = await resolved;
      if (!r.ok) {
        // Fail closed: without its dependencies the change could merge before (or without) them.
        await this.persist([
          { kind: 'report', project: c.project, branch: c.branch, change: c.change, patchset: c.patchset, result: 'FAILURE', message: `not enqueued: ${r.reason}` },
        ]);
        return [];
      }
      const known = this.manager.change(key);
      if (known && known.patchset > c.patchset) return []; // a newer patchset came meanwhile: this approval is outdated
      return [
        // The approved commit is gated, not whatever the ref points at later.
        { type: 'change', change: { id: key, project: c.project, branch: c.branch, patchset: c.patchset, needs: r.needs, approved: known?.patchset === c.patchset ? known.approved : false, ref: r.sha } },
        { type: 'approval', change: key, approved: true, patchset: c.patchset },
      ];
    });
  }

  /** Post approvals in the order they arrived, though each first reads git. */
  private inOrder(events: () => PipelineEvent[] | Promise<PipelineEvent[]>): void {
    const next = this.triggers.then(events).then(
      (es) => this.post(...es),
      (e: unknown) => this.o.logger.error({ err: e }, 'a gate trigger failed'),
    );
    this.triggers = next;
    this.track(next);
  }

  /**
   * What the change needs among the open changes the gate knows (every submitted patchset is
   * known): its git parent when that is another open change's commit, and its Depends-On footers.
   * A git failure leaves it with no needs (logged): its own commit still carries its git ancestors.
   */
  private async needsOf(c: ChangeView): Promise<{ ok: true; needs: NeededChange[]; sha: string } | { ok: false; reason: string }> {
    const candidates: OpenChange[] = [];
    for (const rec of this.manager.openChanges()) {
      const [project, change] = splitChangeKey(rec.id);
      if (rec.ref !== null && !(project === c.project && change === c.change)) candidates.push({ project, change, patchset: rec.patchset, ref: rec.ref });
    }
    try {
      const r = await resolveNeeds({ project: c.project, change: c.change, patchset: c.patchset, ref: c.ref }, candidates, async (project, refs) => {
        const p = this.o.projects.find((x) => x.name === project);
        if (!p) return new Map();
        return this.o.merger.commitInfo(p, refs);
      });
      if (r.problems.length > 0) this.o.logger.warn({ change: c.change, project: c.project, problems: r.problems }, 'some dependencies of an approved change could not be resolved');
      if (r.sha === undefined) return { ok: false, reason: `its ref ${c.ref} was not found` };
      const project = this.o.projects.find((x) => x.name === c.project);
      if (!project) return { ok: false, reason: `project ${c.project} is not registered` };
      // Every commit the merge would bring in must be a reviewed change's current patch set.
      const between = await this.o.merger.commitsBetween(project, c.branch, r.sha, MAX_COMMITS_BETWEEN);
      if (between.kind === 'missing') return { ok: false, reason: between.message };
      if (between.kind === 'too-many') return { ok: false, reason: `more than ${MAX_COMMITS_BETWEEN} commits lie between branch ${c.branch} and it` };
      const byCommit = new Map(r.candidates.filter((x) => x.project === c.project).map((x) => [x.sha, x]));
      const needs = [...r.needs];
      const unaccounted: string[] = [];
      for (const sha of between.commits) {
        if (sha === r.sha) continue;
        const owner = byCommit.get(sha);
        if (!owner) unaccounted.push(sha);
        else if (!needs.some((n) => n.change === owner.change)) needs.push({ change: owner.change, patchset: owner.patchset });
      }
      if (unaccounted.length > 0) {
        const more = unaccounted.length > 1 ? ` (and ${unaccounted.length - 1} more)` : '';
        return {
          ok: false,
          reason: `commit ${unaccounted[0]!.slice(0, 12)}${more} between branch ${c.branch} and this change is not the current patch set of an open change (an outdated patch set, or a commit never reviewed): rebase the change onto ${c.branch} or onto reviewed changes`,
        };
      }
      return { ok: true, needs, sha: r.sha };
    } catch (e) {
      this.o.logger.error({ err: e, change: c.change, project: c.project }, 'cannot read the dependencies of an approved change');
      return { ok: false, reason: `its dependencies could not be read from git (${(e as Error).message.slice(0, 200)}); approve it again` };
    }
  }

  /** A patchset was submitted: the gate learns of the change (a possible dependency) and drops an older patchset's item. */
  patchset(c: ChangeView): void {
    // Posted at once (an approval still resolving for an older patchset is then dropped as outdated).
    const key = changeKey(c.project, c.change);
    const known = this.manager.change(key);
    if (known && known.patchset >= c.patchset) return;
    this.post({ type: 'change', change: { id: key, project: c.project, branch: c.branch, patchset: c.patchset, needs: [], approved: false, ref: c.ref } });
  }

  /** The change merged elsewhere (in the review system): it leaves the gate. */
  mergedElsewhere(project: string, change: string): void {
    this.post({ type: 'merged-elsewhere', change: changeKey(project, change) });
  }

  abandoned(project: string, change: string): void {
    this.post({ type: 'abandon', change: changeKey(project, change) });
  }

  /** An abandoned change was restored: it may be approved into the gate again. */
  restored(project: string, change: string): void {
    this.post({ type: 'restore', change: changeKey(project, change) });
  }

  private isIdle(): boolean {
    return this.pending.length === 0 && !this.draining && this.inFlight.size === 0;
  }

  /** Hand the pending events to the model, batch after batch, until none is left (one drain at a time). */
  private async drain(): Promise<void> {
    try {
      while (this.pending.length > 0 && !this.closed) {
        const batch = this.pending.splice(0);
        const before = this.residentsNow();
        await this.apply(this.manager.handle(batch), before);
      }
    } catch (e) {
      this.o.logger.error({ err: e }, 'the gate failed to process events');
    } finally {
      this.draining = false;
      this.settle();
    }
  }

  private settle(): void {
    if (this.isIdle()) for (const w of [...this.idleWaiters]) (this.idleWaiters.delete(w), w());
  }

  /** The items in the queues, when someone counts how long they stay. */
  private residentsNow(): Residents | undefined {
    return this.o.metrics ? residents(this.manager) : undefined;
  }

  /** Persist the snapshot with the batch's outbox records, then carry out the requests. */
  private async apply(effects: Effect[], before: Residents | undefined): Promise<void> {
    const outbox: NewGateEvent[] = [];
    for (const e of effects) {
      const rec = this.outboxRecord(e);
      if (rec) outbox.push(rec);
    }
    try {
      await this.persist(outbox);
    } catch (e) {
      // The model moved on but the database did not: stop here; the next start recovers from the last snapshot.
      this.closed = true;
      this.o.logger.fatal({ err: e }, 'the gate cannot save its state; it stops taking events, and this replica stops leading');
      this.o.onStateLost?.(e);
      return;
    }
    if (outbox.some((r) => r.kind === 'merged')) this.o.onMerged?.();
    if (this.o.metrics && before) {
      try {
        observeBatch(this.o.metrics, PIPELINE, before, this.manager, effects, this.now());
      } catch (err) {
        this.o.logger.warn({ err }, 'the gate could not update its metrics');
      }
    }
    for (const e of effects) {
      try {
        await this.perform(e);
      } catch (err) {
        this.o.logger.error({ err, effect: e.type }, 'a gate request failed');
      }
    }
    this.o.onChange?.();
  }

  private outboxRecord(e: Effect): NewGateEvent | undefined {
    const c = (change: string) => this.manager.change(change);
    const base = (change: string, patchset: number) => {
      const rec = c(change);
      const [project, number] = splitChangeKey(change);
      return { project: rec?.project ?? project, branch: rec?.branch ?? '', change: number, patchset };
    };
    switch (e.type) {
      case 'merged': {
        // The commit the review system's merge left on the branch (what the builder is told of).
        const build = this.buildOf(e.buildSet);
        const commit = this.mergedCommits.get(e.buildSet);
        this.mergedCommits.delete(e.buildSet);
        return { kind: 'merged', ...base(e.change, e.patchset), ...(commit ? { commit } : {}), ...(build !== undefined ? { build } : {}) };
      }
      case 'report': {
        const set = e.item !== null ? this.itemBuildSets.get(e.item) : undefined;
        const build = set !== undefined ? this.buildOf(set) : undefined;
        if (e.item !== null) this.itemBuildSets.delete(e.item);
        return { kind: 'report', ...base(e.change, e.patchset), result: e.result, message: e.message, ...(build !== undefined ? { build } : {}) };
      }
      case 'report-start':
        return { kind: 'start', ...base(e.change, e.patchset) };
      default:
        return undefined;
    }
  }

  private async perform(e: Effect): Promise<void> {
    switch (e.type) {
      case 'prepare':
        this.itemBuildSets.set(e.item, e.buildSet);
        await this.startBuildSet(e.buildSet, e.change, e.patchset, e.state);
        return;
      case 'start-build': {
        let s = this.started.get(e.buildSet);
        if (!s) this.started.set(e.buildSet, (s = new Set()));
        s.add(e.job.name);
        for (const w of this.waiters.get(`${e.buildSet}:${e.job.name}`) ?? []) w.resolve();
        this.waiters.delete(`${e.buildSet}:${e.job.name}`);
        return;
      }
      case 'cancel-builds':
        this.cancelBuildSet(e.buildSet, 'the gate stopped these builds: a change they need failed');
        return;
      case 'build-set-ended': {
        // Reset or dequeued: its build is of no use any more. Reported (merged, failed): every job
        // has its result and the build is finishing on its own, unless it still waits to start a
        // job the model will never start.
        const waiting = [...this.waiters.keys()].some((k) => k.startsWith(`${e.buildSet.id}:`));
        if (e.buildSet.fate === 'reset' || e.buildSet.fate === 'dequeued' || waiting) {
          this.cancelBuildSet(e.buildSet.id, e.buildSet.fate === 'reset' ? 'reset: the changes ahead of it changed' : `the build set ended (${e.buildSet.fate ?? 'ended'})`);
        }
        this.forget(e.buildSet.id);
        return;
      }
      case 'submit':
        this.track(this.submit(e.item, e.buildSet, e.change, e.state));
        return;
      case 'report':
        this.o.logger.info({ change: e.change, patchset: e.patchset, result: e.result }, e.message);
        return;
      case 'merged':
        this.o.logger.info({ change: e.change, patchset: e.patchset, project: e.project, branch: e.branch }, 'merged by the gate');
        return;
      default:
        return;
    }
  }

  /**
   * Save the model's snapshot with outbox records, one save after another, each taking the snapshot
   * when its turn comes. Two saves at once (a batch's, and a refused approval's from the trigger
   * chain) could otherwise commit in either order (PostgreSQL: two connections; a retried
   * transaction keeps its snapshot), and the older snapshot stay.
   */
  private persist(events: NewGateEvent[]): Promise<void> {
    const mine = this.saving.then(() => this.o.gateStore.save(PIPELINE, this.manager.toJSON(), events));
    this.saving = mine.catch(() => undefined);
    return mine;
  }

  private track(p: Promise<unknown>): void {
    this.inFlight.add(p);
    void p.finally(() => {
      this.inFlight.delete(p);
      this.settle();
    });
  }

  private async startBuildSet(buildSet: number, change: string, patchset: number, state: StateEntry[]): Promise<void> {
    const me = state[state.length - 1]!;
    const [, number] = splitChangeKey(change);
    const row = await this.o.store.latestChange(me.project, number);
    if (!row || row.patchset !== patchset) {
      this.post({ type: 'prepared', buildSet, outcome: { kind: 'config-error', message: `change ${number},${patchset} of ${me.project} is not recorded` } });
      return;
    }
    // The merger builds one repository: the changes of this project and branch, in state order.
    const stack = state.filter((s) => s.project === me.project && s.branch === me.branch && s.ref !== null).map((s) => ({ ref: s.ref!, label: `${splitChangeKey(s.change)[1]},${s.patchset}` }));
    const id = await this.o.store.enqueueGateBuild(row.id, stack, buildSet);
    this.builds.set(buildSet, id);
    this.buildSetOf.set(id, buildSet);
    this.o.scheduler().kick();
  }

  private cancelBuildSet(buildSet: number, reason: string): void {
    const id = this.buildOf(buildSet);
    if (id !== undefined) {
      this.cancelledByGate.add(id);
      this.track(this.o.scheduler().cancel(id, 'cancelled', reason).catch((err: unknown) => this.o.logger.error({ err, build: id }, 'a gate build could not be cancelled')));
    }
  }

  /** The gate build running a build set (builds of the last run were cancelled at start: none of theirs is current). */
  private buildOf(buildSet: number): number | undefined {
    return this.builds.get(buildSet);
  }

  /** What a gate build of this run runs (its build set), if it is one. */
  private infoOf(build: number): { buildSet: number } | undefined {
    const buildSet = this.buildSetOf.get(build);
    return buildSet === undefined ? undefined : { buildSet };
  }

  private forget(buildSet: number): void {
    const id = this.builds.get(buildSet);
    if (id !== undefined) this.buildSetOf.delete(id);
    this.builds.delete(buildSet);
    this.started.delete(buildSet);
    this.answered.delete(buildSet);
    this.preparedSets.delete(buildSet);
  }

  /**
   * Ask the review system to merge the change (see the module comment). A review system that
   * cannot be reached is asked once more after a pause; then the item fails with MERGE_FAILURE.
   */
  private async submit(item: number, buildSet: number, change: string, state: StateEntry[]): Promise<void> {
    const me = state[state.length - 1]!;
    const [, number] = splitChangeKey(change);
    const build = this.buildOf(buildSet);
    const tested = build !== undefined ? (await this.o.store.gateBuild(build))?.commit : undefined;
    const review = this.o.review;
    const refused = (message: string): PipelineEvent => ({ type: 'submitted', item, merged: false, message });
    let answer: PipelineEvent;
    if (!tested) answer = refused(`no tested commit is recorded for change ${change}`);
    else if (!review) answer = refused('no review system is configured: airlock does not merge changes itself');
    else {
      try {
        answer = await retry(
          async (attempt) => {
            try {
              return await review.outbox.exclusive(me.project, number, () => this.askToMerge(review, item, buildSet, me, number, build));
            } catch (e) {
              this.o.logger.warn({ err: e, change, attempt }, 'asking the review system to merge failed');
              throw e;
            }
          },
          // a gate that is closing asks the second time without the pause
          { attempts: 2, baseDelayMs: SUBMIT_RETRY_MS, sleep: (ms) => (this.closed ? Promise.resolve() : new Promise((res) => setTimeout(res, ms))) },
        );
      } catch (failure) {
        answer = refused(`the review system could not be asked to merge it: ${isAirlockError(failure) ? failure.message : (failure as Error).message}`);
      }
    }
    this.post(answer);
  }

  /** Re-read, vote +2, submit: the review system decides. Runs with no other post for the change in between. */
  private async askToMerge(review: GateReview, item: number, buildSet: number, me: StateEntry, number: string, build: number | undefined): Promise<PipelineEvent> {
    const refused = (message: string): PipelineEvent => ({ type: 'submitted', item, merged: false, message });
    const now = await review.system.change(me.project, number);
    if (now) review.onReread?.(now);
    if (!now) return refused('the review system no longer shows the change');
    if (now.status === 'merged') {
      // Merged already: by this gate before a restart (a submit re-asked), or by someone else.
      return this.mergedAnswer(review, item, buildSet, me);
    }
    if (now.status === 'abandoned') return refused('it was abandoned in the review system');
    if (now.branch !== me.branch) return refused(`the review system says it targets branch ${now.branch}, not ${me.branch}, where it was tested`);
    if (now.patchset !== me.patchset) return refused(`patch set ${now.patchset} was uploaded meanwhile (this is patch set ${me.patchset})`);
    // The tested commit: the one the approval was given on (recorded when the gate took it in).
    const tested = me.ref ?? '';
    if (now.revision !== tested) return refused(`its patch set ${me.patchset} is commit ${now.revision.slice(0, 12)} in the review system, not the tested ${tested.slice(0, 12)}`);
    if (now.wip) return refused('it is marked work in progress in the review system');
    if (now.private) return refused('it is private in the review system');
    const authors = [now.owner, now.uploader].filter((x): x is string => x !== undefined);
    if (!approvedBy(now.votes, review.rule, review.system.account, authors)) {
      return refused(`it is no longer approved in the review system (${review.rule.label} +${review.rule.value} from a reviewer${review.rule.selfApproval ? '' : ' other than its author'}, and no veto)`);
    }
    const view = build !== undefined ? await this.o.store.build(build) : undefined;
    // Vote on, and submit, exactly the tested commit: the review system refuses if it is no longer current.
    await review.system.post({ project: me.project, change: number, patchset: me.patchset, revision: tested, ...gatePassMessage(view, review.votes, review.links) });
    const r = await review.system.submit(me.project, number, me.branch, tested);
    if (r.kind === 'refused') return refused(r.reason);
    if (r.commit) this.mergedCommits.set(buildSet, r.commit);
    return { type: 'submitted', item, merged: true };
  }

  private async mergedAnswer(review: GateReview, item: number, buildSet: number, me: StateEntry): Promise<PipelineEvent> {
    const tip = await review.system.branchTip(me.project, me.branch).catch(() => undefined);
    if (tip) this.mergedCommits.set(buildSet, tip);
    return { type: 'submitted', item, merged: true };
  }

  // ---- GateHooks (called by the executor) ---------------------------------------------------

  prepared(build: BuildView, outcome: PrepareOutcome): void {
    const info = this.infoOf(build.id);
    if (!info || this.preparedSets.has(info.buildSet) || !this.manager.isCurrentBuildSet(info.buildSet)) return;
    this.preparedSets.add(info.buildSet);
    this.post({ type: 'prepared', buildSet: info.buildSet, outcome });
  }

  awaitStart(build: BuildView, job: string, signal: AbortSignal): Promise<void> {
    const info = this.infoOf(build.id);
    if (!info || this.started.get(info.buildSet)?.has(job) || this.closed) return Promise.resolve();
    const key = `${info.buildSet}:${job}`;
    return new Promise((resolve, reject) => {
      const w = { resolve: () => (signal.removeEventListener('abort', onAbort), resolve()) };
      const onAbort = () => {
        const set = this.waiters.get(key);
        set?.delete(w);
        if (set?.size === 0) this.waiters.delete(key);
        reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      let set = this.waiters.get(key);
      if (!set) this.waiters.set(key, (set = new Set()));
      set.add(w);
    });
  }

  jobDone(build: BuildView, job: string, state: JobState): void {
    if (state !== 'passed' && state !== 'failed' && state !== 'error') return; // the model skips and cancels on its own
    const info = this.infoOf(build.id);
    if (!info || !this.manager.isCurrentBuildSet(info.buildSet)) return;
    let s = this.answered.get(info.buildSet);
    if (!s) this.answered.set(info.buildSet, (s = new Set()));
    s.add(job);
    this.post({ type: 'build-completed', buildSet: info.buildSet, job, result: state === 'passed' ? 'SUCCESS' : state === 'failed' ? 'FAILURE' : 'ERROR' });
  }

  /** Reporter: a gate build ended. Whatever the executor did not tell the model becomes a result here. */
  async report(build: BuildView): Promise<void> {
    if (build.pipeline !== 'gate') return;
    if ((build.result === 'cancelled' || build.result === 'superseded') && this.cancelledByGate.delete(build.id)) return;
    const info = this.infoOf(build.id);
    // Builds of build sets that ended, or that the restart cancelled, are no news to the model.
    if (!info || this.buildOf(info.buildSet) !== build.id || !this.manager.isCurrentBuildSet(info.buildSet)) return;
    const why = `build ${build.id} ended ${build.result ?? 'without a result'}: ${build.reason ?? ''}`.trim();
    if (!this.preparedSets.has(info.buildSet)) {
      this.preparedSets.add(info.buildSet);
      const outcome: PrepareOutcome = build.result === 'merge-conflict' ? { kind: 'conflict', message: build.reason ?? 'merge conflict' } : { kind: 'config-error', message: why };
      this.post({ type: 'prepared', buildSet: info.buildSet, outcome });
      return;
    }
    const answered = this.answered.get(info.buildSet) ?? new Set<string>();
    for (const job of this.started.get(info.buildSet) ?? []) {
      if (!answered.has(job)) this.post({ type: 'build-completed', buildSet: info.buildSet, job, result: 'ERROR' });
    }
  }
}

/** Jobs as the model sees them, from the executor's compiled jobs. */
export function jobNodes(jobs: readonly { name: string; voting: boolean; needs: readonly string[] }[]): JobNode[] {
  return jobs.map((j) => ({ name: j.name, voting: j.voting, needs: [...j.needs] }));
}

