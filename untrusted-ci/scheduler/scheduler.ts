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
import { pickNext, Served } from './fair-queue.js';
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
}

const SUPERSEDED = 'superseded';
const CANCELLED = 'cancelled';
const SHUTDOWN = 'shutdown';

export class Scheduler {
  private readonly running = new Map<number, { controller: AbortController; done: Promise<void> }>();
  private readonly served = new Served();
  private closed = false;
  private scheduled = false;
  private readonly idleWaiters = new Set<() => void>();

  constructor(private readonly o: SchedulerOptions) {}

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
    const requeued = this.o.store.recover();
    if (requeued.length > 0) this.o.logger.warn({ builds: requeued }, 'builds that were running at the last stop are queued again');
    for (const id of this.o.store.unreported()) await this.report(id);
    this.kick();
  }

  /** Accept a change: durable before this returns. */
  submit(change: NewChange, pipeline: Pipeline): { build: BuildView; superseded: number[] } {
    const r = this.o.store.enqueue(change, pipeline);
    for (const id of r.superseded) this.cancel(id, SUPERSEDED, `superseded by patchset ${change.patchset}`);
    const build = this.o.store.build(r.buildId);
    this.o.onChange?.(build);
    this.kick();
    return { build, superseded: r.superseded };
  }

  /** Cancel a queued or running build; a finished one is left as it is. */
  cancel(id: number, why: typeof SUPERSEDED | typeof CANCELLED = CANCELLED, reason = 'cancelled'): void {
    const run = this.running.get(id);
    if (run) {
      run.controller.abort(new CancelReason(why, reason));
      return;
    }
    if (this.o.store.finish(id, why === SUPERSEDED ? 'superseded' : 'cancelled', reason)) void this.report(id);
  }

  /** Wake the loop (coalesced: many kicks in one tick schedule one pass). */
  kick(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.fill();
    });
  }

  /** Resolves when no build is queued or running (tests, the benchmark, the demo). */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((res) => this.idleWaiters.add(res));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const r of this.running.values()) r.controller.abort(new CancelReason(SHUTDOWN, 'the service is stopping'));
    await Promise.all([...this.running.values()].map((r) => r.done));
  }

  private isIdle(): boolean {
    const c = this.o.store.counts();
    return this.running.size === 0 && c.queued === 0;
  }

  private fill(): void {
    if (this.closed) return;
    if (this.running.size >= this.inFlight) return;
    const queued = this.o.store.queued().filter((b) => !this.running.has(b.id));
    while (this.running.size < this.inFlight && queued.length > 0) {
      const next = pickNext(queued, this.served);
      if (!next) break;
      queued.splice(queued.indexOf(next), 1);
      if (!this.o.store.start(next.id)) continue;
      this.served.mark(next);
      const controller = new AbortController();
      const done = this.run(next.id, controller).finally(() => {
        this.running.delete(next.id);
        this.kick();
        if (this.isIdle()) for (const w of this.drainWaiters()) w();
      });
      this.running.set(next.id, { controller, done });
    }
    if (this.running.size === 0 && this.isIdle()) for (const w of this.drainWaiters()) w();
  }

  private drainWaiters(): (() => void)[] {
    const ws = [...this.idleWaiters];
    this.idleWaiters.clear();
    return ws;
  }

  private async run(id: number, controller: AbortController): Promise<void> {
    const build = this.o.store.build(id);
    const log = this.o.logger.child({ build: id, project: build.project, change: `${build.change.change},${build.change.patchset}` });
    this.o.onChange?.(build);
    let outcome: BuildOutcome;
    try {
      outcome = await this.o.executor.execute(build, controller.signal);
    } catch (e) {
      const why = controller.signal.reason instanceof CancelReason ? controller.signal.reason : undefined;
      if (why?.kind === SHUTDOWN) return; // stays running: the next start re-runs it
      if (why) outcome = { result: why.kind === SUPERSEDED ? 'superseded' : 'cancelled', reason: why.reason };
      else if (isAirlockError(e) && e.retryable && build.attempt < (this.o.maxAttempts ?? 3)) {
        log.warn({ err: e, attempt: build.attempt }, 'build failed for a reason outside the change; queued again');
        this.o.store.requeue(id);
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
    this.o.store.finish(id, outcome.result, outcome.reason, outcome.issues);
    log.info({ result: outcome.result, reason: outcome.reason }, 'build finished');
    await this.report(id);
  }

  private async report(id: number): Promise<void> {
    const build = this.o.store.build(id);
    this.o.onChange?.(build);
    try {
      for (const r of this.o.reporters) await r.report(build);
      this.o.store.markReported(id);
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
