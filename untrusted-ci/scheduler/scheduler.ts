/**
 * Scheduler: N executor slots over the durable queue in BuildStore.
 *
 * Contract:
 * - `submit` writes the change and its build before it returns, then wakes the loop; a newer patchset
 *   supersedes the older one's unfinished builds (queued ones finish at once, running ones are aborted).
 * - Each free slot takes `pickNext` of the queued builds (gate first, round-robin across projects, then across uploaders),
 *   marks it running and hands it to the `BuildExecutor` with an AbortSignal.
 * - The executor returns an outcome (a result, even for a merge conflict or a broken config) or throws.
 *   A retryable AirlockError (engine, git, storage hiccup) re-queues the build up to `maxAttempts`;
 *   anything else finishes it as `error`. Every finished build is handed to the Reporter once.
 * - `start` first recovers: builds running when the last process died are queued again and re-run
 *   from scratch; finished builds never reported are reported now. So every accepted change ends
 *   with a reported result.
 * - `close` stops taking work and aborts running builds *without* finishing them: they stay
 *   `running` in the database and the next start re-runs them, as after a crash.
 */
import { isAirlockError, type Issue } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import type { BuildResult, BuildView, Pipeline } from '#shared/schemas/api/builds.js';
import type { BuildStore, NewChange } from '../store/build-store.js';
import { Served } from './fair-queue.js';
import { QueueHeadsCache } from './queue-heads.js';
import type { Slots } from './slots.js';

/** What running one build came to. A failing job is an outcome, not an exception. */
export interface BuildOutcome {
  result: BuildResult;
  reason: string;
  issues?: Issue[];
}

/** Runs one build from its record; must honour the signal promptly and clean up after itself. */
export interface BuildExecutor {
  execute(build: BuildView, signal: AbortSignal): Promise<BuildOutcome>;
  /** A build was just queued by `submit` (e.g. to fetch its change while it waits); not awaited, must not reject. */
  queued?(build: BuildView): Promise<void>;
}

/** Records or publishes a finished build's result (the store, Gerrit's REST API, …). Must be idempotent. */
export interface Reporter {
  report(build: BuildView): Promise<void>;
}

/** Called on every build state change, for metrics and live streams. */
export type BuildListener = (build: BuildView) => void;

export interface SchedulerOptions {
  store: BuildStore;
  executor: BuildExecutor;
  reporters: Reporter[];
  slots: number;
  logger: Logger;
  maxAttempts?: number;
  onChange?: BuildListener;
  /**
   * When the executor takes an executor slot only while a job runs (see slots.ts), the scheduler
   * starts up to `slots + prepareAhead` builds, so the next builds are prepared while containers
   * run. `busy` then counts slots in use. Default: a build holds its slot from start to end.
   */
  executionSlots?: Slots;
  prepareAhead?: number;
  /** How long the queue's project heads are kept before they are read again in full (queue-heads.ts; default 2 s). */
  headsMaxAgeMs?: number;
}

const SUPERSEDED = 'superseded';
const CANCELLED = 'cancelled';
const SHUTDOWN = 'shutdown';

export class Scheduler {
  private readonly running = new Map<number, { controller: AbortController; done: Promise<void> }>();
  private readonly served = new Served();
  /** The queue's project heads, kept between picks (queue-heads.ts). */
  private readonly heads: QueueHeadsCache;
  private closed = false;
  /** `start` has recovered: nothing is started before (a build started then would be taken for the last process's). */
  private started = false;
  private scheduled = false;
  /** A fill pass is running (they are asynchronous now: one at a time, and one more if kicked meanwhile). */
  private filling = false;
  private refill = false;
  private readonly idleWaiters = new Set<() => void>();

  constructor(private readonly o: SchedulerOptions) {
    this.heads = new QueueHeadsCache(o.store, o.headsMaxAgeMs === undefined ? {} : { maxAgeMs: o.headsMaxAgeMs });
  }

  get slots(): number {
    return this.o.slots;
  }
  get busy(): number {
    return this.o.executionSlots?.busy ?? this.running.size;
  }
  /** Builds started at most: the slots, plus those prepared ahead while the slots run jobs. */
  private get inFlight(): number {
    return this.o.slots + (this.o.executionSlots ? (this.o.prepareAhead ?? 0) : 0);
  }
  runningIds(): number[] {
    return [...this.running.keys()];
  }

  /** Recover from the last process, report what was never reported, and start taking work. */
  async start(): Promise<void> {
    const requeued = await this.o.store.recover();
    if (requeued.length > 0) this.o.logger.warn({ builds: requeued }, 'builds that were running at the last stop are queued again');
    for (const id of await this.o.store.unreported()) await this.report(id);
    this.started = true;
    this.kick();
  }

  /** Accept a change: durable before this returns. */
  async submit(change: NewChange, pipeline: Pipeline): Promise<{ build: BuildView; superseded: number[] }> {
    const r = await this.o.store.enqueue(change, pipeline);
    for (const id of r.superseded) await this.cancel(id, SUPERSEDED, `superseded by patchset ${change.patchset}`);
    const build = await this.o.store.build(r.buildId);
    void this.o.executor.queued?.(build);
    this.o.onChange?.(build);
    this.kick();
    return { build, superseded: r.superseded };
  }

  /** Cancel a queued or running build; a finished one is left as it is. */
  async cancel(id: number, why: typeof SUPERSEDED | typeof CANCELLED = CANCELLED, reason = 'cancelled'): Promise<void> {
    const stop = (): boolean => {
      const run = this.running.get(id);
      run?.controller.abort(new CancelReason(why, reason));
      return run !== undefined;
    };
    if (stop()) return;
    const result = why === SUPERSEDED ? 'superseded' : 'cancelled';
    // Only a queued build is finished here. The database may run a fill pass's start of it before
    // this write (PostgreSQL: another connection); the pass holds it in `running` before that
    // start, so it is stopped there instead of marked finished while it runs.
    if (await this.o.store.finishQueued(id, result, reason)) return void this.report(id);
    if (stop()) return;
    // Running with no run here (left by a scheduler that was closed): finished as before.
    if (await this.o.store.finish(id, result, reason)) void this.report(id);
  }

  /** Wake the loop (coalesced: many kicks in one tick schedule one pass). */
  kick(): void {
    // Before `start`, builds only queue (the gate's start submits its items before the scheduler
    // recovers: one started here then would be queued again by `recover`, while it runs).
    if (this.scheduled || this.closed || !this.started) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.fillOnce();
    });
  }

  /** Resolves when no build is queued or running (tests, the benchmark, the demo). */
  async idle(): Promise<void> {
    if (await this.isIdle()) return;
    return new Promise((res) => {
      this.idleWaiters.add(res);
      this.kick(); // a pass that finds it idle wakes the waiter
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.heads.close();
    for (const r of this.running.values()) r.controller.abort(new CancelReason(SHUTDOWN, 'the service is stopping'));
    await Promise.all([...this.running.values()].map((r) => r.done));
  }

  private async isIdle(): Promise<boolean> {
    if (this.running.size > 0) return false;
    const c = await this.o.store.counts();
    return this.running.size === 0 && c.queued === 0;
  }

  /** One fill pass at a time; a kick during one asks for another after it. Never throws. */
  private async fillOnce(): Promise<void> {
    if (this.filling) {
      this.refill = true;
      return;
    }
    this.filling = true;
    try {
      do {
        this.refill = false;
        await this.fill();
      } while (this.refill && !this.closed);
    } catch (err) {
      // The database did not answer (e.g. PostgreSQL restarting): try again shortly.
      this.o.logger.warn({ err }, 'the scheduler could not read the queue; it tries again');
      setTimeout(() => this.kick(), 1000).unref();
    } finally {
      this.filling = false;
    }
  }

  private async fill(): Promise<void> {
    if (this.closed) return;
    // Each pick reads the queue's group heads (pickNextFrom), not the whole queue, and keeps the
    // projects' heads for the next pick (queue-heads.ts): the chosen build's project is read again.
    while (this.running.size < this.inFlight && !this.closed) {
      const next = await this.heads.pick(this.served);
      if (!next || this.running.has(next.id)) break;
      // Held in `running` before the store says so: a cancel meanwhile aborts it instead of
      // finishing a build that is about to run.
      const controller = new AbortController();
      let started!: (ok: boolean) => void;
      const gate = new Promise<boolean>((r) => (started = r));
      const done = gate
        .then((ok) => (ok ? this.run(next.id, controller) : undefined))
        // The database failed under the build (its record stays `running`: the next start re-runs it).
        .catch((err: unknown) => this.o.logger.error({ err, build: next.id }, 'a build could not be run or recorded'))
        .finally(() => {
          this.running.delete(next.id);
          this.kick();
        });
      this.running.set(next.id, { controller, done });
      let ok = false;
      try {
        ok = await this.o.store.start(next.id);
      } finally {
        started(ok);
      }
      if (ok) this.served.mark(next);
    }
    if (this.idleWaiters.size > 0 && (await this.isIdle())) for (const w of this.drainWaiters()) w();
  }

  private drainWaiters(): (() => void)[] {
    const ws = [...this.idleWaiters];
    this.idleWaiters.clear();
    return ws;
  }

  private async run(id: number, controller: AbortController): Promise<void> {
    const build = await this.o.store.build(id);
    const log = this.o.logger.child({ build: id, project: build.project, change: `${build.change.change},${build.change.patchset}` });
    this.o.onChange?.(build);
    let outcome: BuildOutcome;
    try {
      // Cancelled between being chosen and being marked running (a slower database leaves room):
      // the executor is not asked to start what is already stopped.
      if (controller.signal.aborted) throw controller.signal.reason;
      outcome = await this.o.executor.execute(build, controller.signal);
    } catch (e) {
      const why = controller.signal.reason instanceof CancelReason ? controller.signal.reason : undefined;
      if (why?.kind === SHUTDOWN) return; // stays running: the next start re-runs it
      if (why) outcome = { result: why.kind === SUPERSEDED ? 'superseded' : 'cancelled', reason: why.reason };
      else if (isAirlockError(e) && e.retryable && build.attempt < (this.o.maxAttempts ?? 3)) {
        log.warn({ err: e, attempt: build.attempt }, 'build failed for a reason outside the change; queued again');
        await this.o.store.requeue(id, build.attempt);
        return;
      } else {
        log.error({ err: e }, 'build errored');
        outcome = { result: 'error', reason: isAirlockError(e) ? `${e.code}: ${e.message}` : `internal error: ${(e as Error).message}` };
      }
    }
    const why = controller.signal.reason instanceof CancelReason ? controller.signal.reason : undefined;
    if (why?.kind === SHUTDOWN) return;
    if (why && outcome.result !== 'superseded' && outcome.result !== 'cancelled') {
      outcome = { result: why.kind === SUPERSEDED ? 'superseded' : 'cancelled', reason: why.reason };
    }
    // This run's result only: if the build was started again elsewhere meanwhile (this replica
    // lost the lead and did not know yet), nothing is recorded or reported.
    if (!(await this.o.store.finish(id, outcome.result, outcome.reason, outcome.issues, build.attempt))) {
      log.warn({ result: outcome.result, attempt: build.attempt }, 'build ended, but its record is no longer this run\'s (finished, or started again by another replica): its result is dropped');
      return;
    }
    log.info({ result: outcome.result, reason: outcome.reason }, 'build finished');
    await this.report(id);
  }

  private async report(id: number): Promise<void> {
    try {
      const build = await this.o.store.build(id);
      this.o.onChange?.(build);
      for (const r of this.o.reporters) await r.report(build);
      await this.o.store.markReported(id);
    } catch (e) {
      // Left unreported: the next start reports it again.
      this.o.logger.error({ err: e, build: id }, 'reporting failed');
    }
  }
}

/** Why a build's signal was aborted. */
export class CancelReason {
  constructor(
    readonly kind: typeof SUPERSEDED | typeof CANCELLED | typeof SHUTDOWN,
    readonly reason: string,
  ) {}
}
