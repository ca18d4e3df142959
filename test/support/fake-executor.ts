/**
 * FakeExecutor: an in-process `BuildExecutor` for the scheduler's model tier (docs/testing.md "Model tier", after
 * Zuul's `hold_jobs_in_build` and Woodpecker's dummy backend). It never touches git or Docker; what
 * each build does is scripted by the test, and every run is recorded.
 *
 * Matching: a pattern is a picomatch glob tested against the build's project, its change id and
 * `<change>,<patchset>`; `'*'` matches every build.
 *
 * - `hold(pattern)`: builds that start while a matching hold is on wait before finishing.
 * - `release(pattern)`: lifts that hold (`'*'`: every hold) and lets every waiting build that matches
 *   `pattern` go on, whatever other holds say.
 * - `fail(pattern)`: matching builds end with result `failed` (the job's fault, not an error).
 * - `throwRetryable(n)`: the next `n` executions throw `ExecutorFailedError` (retryable).
 * - `throwError(pattern, error)`: matching builds throw `error`.
 * - `outcome(pattern, outcome)`: matching builds end with exactly this outcome (e.g. `merge-conflict`).
 * Precedence when a build ends: a thrown error, then `outcome`, then `fail`, then `passed`.
 *
 * An aborted signal (cancel, supersede, shutdown) makes a running or held build throw
 * `CancelledError` at once, as the real executor does. With `events` and `store`, a build also writes
 * what the real one does: a planned job `unit`, its log line and states, and the final `build` event.
 */
import picomatch from 'picomatch';
import { CancelledError, ExecutorFailedError } from '#shared/errors.js';
import type { BuildResult, BuildView } from '#shared/schemas/api/builds.js';
import type { BuildEvents } from '../../untrusted-ci/logs/build-events.js';
import type { BuildExecutor, BuildOutcome } from '../../untrusted-ci/scheduler/scheduler.js';
import type { BuildStore } from '../../untrusted-ci/store/build-store.js';

/** One execution as the fake saw it. `result` is absent while it runs. */
export interface FakeRun {
  buildId: number;
  project: string;
  change: string;
  patchset: number;
  pipeline: string;
  attempt: number;
  result?: BuildResult | 'threw' | 'aborted';
}

interface Waiting {
  run: FakeRun;
  go: () => void;
}

export class FakeExecutor implements BuildExecutor {
  /** Every execution in start order (retries and re-runs appear again). */
  readonly history: FakeRun[] = [];
  /** The most executions that were in progress at once. */
  maxConcurrent = 0;
  private readonly active = new Set<FakeRun>();
  private readonly holds = new Set<string>();
  private readonly waiting = new Set<Waiting>();
  private readonly failing = new Set<string>();
  private readonly throwing: { pattern: string; error: unknown }[] = [];
  private readonly outcomes: { pattern: string; outcome: BuildOutcome }[] = [];
  private retryableLeft = 0;
  private readonly watchers = new Set<() => void>();

  constructor(private readonly o: { events?: BuildEvents; store?: BuildStore } = {}) {}

  hold(pattern = '*'): void {
    this.holds.add(pattern);
  }

  release(pattern = '*'): void {
    if (pattern === '*') this.holds.clear();
    else this.holds.delete(pattern);
    for (const w of [...this.waiting]) {
      if (matches(pattern, w.run)) {
        this.waiting.delete(w);
        w.go();
      }
    }
  }

  fail(pattern: string): void {
    this.failing.add(pattern);
  }

  throwRetryable(n: number): void {
    this.retryableLeft += n;
  }

  throwError(pattern: string, error: unknown): void {
    this.throwing.push({ pattern, error });
  }

  outcome(pattern: string, outcome: BuildOutcome): void {
    this.outcomes.push({ pattern, outcome });
  }

  /** Executions in progress now (held ones included). */
  get running(): readonly FakeRun[] {
    return [...this.active];
  }

  /** Executions waiting on a hold now. */
  get held(): readonly FakeRun[] {
    return [...this.waiting].map((w) => w.run);
  }

  /** Resolves once `predicate` holds, checked now and after every start, hold and end. No timers. */
  until(predicate: (x: FakeExecutor) => boolean): Promise<void> {
    if (predicate(this)) return Promise.resolve();
    return new Promise((res) => {
      const check = (): void => {
        if (!predicate(this)) return;
        this.watchers.delete(check);
        res();
      };
      this.watchers.add(check);
    });
  }

  async execute(build: BuildView, signal: AbortSignal): Promise<BuildOutcome> {
    const run: FakeRun = {
      buildId: build.id,
      project: build.project,
      change: build.change.change,
      patchset: build.change.patchset,
      pipeline: build.pipeline,
      attempt: build.attempt,
    };
    this.history.push(run);
    this.active.add(run);
    this.maxConcurrent = Math.max(this.maxConcurrent, this.active.size);
    const { events, store } = this.o;
    events?.begin(build.id);
    await store?.planJobs(build.id, [{ name: 'unit', voting: true }]);
    try {
      if ([...this.holds].some((p) => matches(p, run))) await this.waitForRelease(run, signal);
      else this.notify();
      if (signal.aborted) throw new CancelledError('build cancelled');
      if (this.retryableLeft > 0) {
        this.retryableLeft--;
        throw new ExecutorFailedError('the engine hiccupped (scripted)');
      }
      const t = this.throwing.find((x) => matches(x.pattern, run));
      if (t) throw t.error;
      const scripted = this.outcomes.find((x) => matches(x.pattern, run))?.outcome;
      if (scripted) {
        events?.publish(build.id, { type: 'build', state: 'finished', result: scripted.result, reason: scripted.reason });
        run.result = scripted.result;
        return scripted;
      }
      const result: BuildResult = [...this.failing].some((p) => matches(p, run)) ? 'failed' : 'passed';
      const reason = result === 'passed' ? '1 voting job passed' : 'failed: unit';
      const state = result === 'passed' ? 'passed' : 'failed';
      await store?.updateJob(build.id, 'unit', { state: 'running' });
      events?.publish(build.id, { type: 'job', job: 'unit', state: 'running' });
      events?.publish(build.id, { type: 'log', job: 'unit', text: `unit of ${run.change},${run.patchset}\n` });
      await store?.updateJob(build.id, 'unit', { state, exitCode: result === 'passed' ? 0 : 1 });
      events?.publish(build.id, { type: 'job', job: 'unit', state });
      events?.publish(build.id, { type: 'build', state: 'finished', result, reason });
      run.result = result;
      return { result, reason };
    } catch (e) {
      run.result = signal.aborted ? 'aborted' : 'threw';
      throw e;
    } finally {
      this.active.delete(run);
      await events?.end(build.id);
      this.notify();
    }
  }

  private waitForRelease(run: FakeRun, signal: AbortSignal): Promise<void> {
    // Aborted already (while planJobs awaited the database): nothing to wait for.
    if (signal.aborted) return Promise.resolve();
    return new Promise((res) => {
      const w: Waiting = {
        run,
        go: () => {
          signal.removeEventListener('abort', onAbort);
          res();
        },
      };
      const onAbort = (): void => {
        this.waiting.delete(w);
        res();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.add(w);
      this.notify();
    });
  }

  private notify(): void {
    for (const w of [...this.watchers]) w();
  }
}

function matches(pattern: string, run: FakeRun): boolean {
  if (pattern === '*') return true;
  const isMatch = picomatch(pattern, { dot: true });
  return [run.project, run.change, `${run.change},${run.patchset}`].some((s) => isMatch(s));
}

/** A reporter that remembers what it was handed; `failNext` makes the next report throw. */
export class RecordingReporter {
  readonly reported: BuildView[] = [];
  private failures = 0;

  failNext(n = 1): void {
    this.failures += n;
  }

  async report(build: BuildView): Promise<void> {
    if (this.failures > 0) {
      this.failures--;
      throw new Error('the reporter is down (scripted)');
    }
    this.reported.push(build);
  }

  ids(): number[] {
    return this.reported.map((b) => b.id);
  }
}
