/**
 * The one retry helper: run an operation until it succeeds, fails in a way that is not worth
 * another try, or runs out of attempts, waiting with exponential backoff in between.
 *
 * Waits: before attempt n+1 (after the n-th failure) the wait is
 *   d = min(maxDelayMs, baseDelayMs · factor^(n-1))
 * drawn from [d/2, d] with `jitter: 'equal'` (exactly d with `'none'`), then lengthened to a
 * Retry-After the failure carries (never past `maxDelayMs`), and rounded to whole milliseconds.
 * `backoffDelay` is that formula alone, for loops that are not a bounded retry (the CI's delivery
 * loop).
 *
 * What ends it:
 *   - success: the value;
 *   - a failure `retryable` says no to: that failure, thrown as it is;
 *   - the last attempt failing: `exhausted(failure, attempts)` if given (callers turn it into their
 *     own "unavailable" error), else the failure as it is;
 *   - `signal` aborted before an attempt or during a wait: `aborted()` if given, else the signal's
 *     reason. An attempt under way is not interrupted here: hand the signal to the operation.
 *
 * No timers of its own beyond `sleep` (injectable, so tests do not wait); no dependency.
 */
import { setTimeout as delay } from 'node:timers/promises';

export interface Backoff {
  /** The wait after the first failure. */
  baseDelayMs: number;
  /** No wait is longer (default: no cap). */
  maxDelayMs?: number;
  /** Growth per failure (default 2; 1 waits the same each time). */
  factor?: number;
  /** `equal`: each wait drawn from [d/2, d]; `none` (default): exactly d. */
  jitter?: 'none' | 'equal';
  /** In [0, 1): the jitter's source (default Math.random). */
  random?: () => number;
}

export interface RetryOptions extends Backoff {
  /** Attempts in all, the first included (at least 1; a fraction rounds up). */
  attempts: number;
  /** Whether a failure is worth another attempt (default: every failure is). */
  retryable?: (failure: unknown, attempt: number) => boolean;
  /** How long the other side asked us to wait after this failure (e.g. an HTTP Retry-After). */
  retryAfterMs?: (failure: unknown) => number | undefined;
  /** Called before each wait: the failure, the attempt that failed (1-based) and the wait. */
  onRetry?: (failure: unknown, attempt: number, delayMs: number) => void;
  /** What to throw when the last attempt failed with a retryable failure (default: that failure). */
  exhausted?: (failure: unknown, attempts: number) => unknown;
  signal?: AbortSignal;
  /** What to throw when `signal` is aborted (default: the signal's reason). */
  aborted?: () => unknown;
  /** Waits; gets `signal` so it can stop early. Default: a real timer that honours the signal. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

/** An HTTP Retry-After in delta-seconds, in ms (at most 6 digits); an HTTP date or anything else is ignored. */
export function parseRetryAfter(value: string | null | undefined): number | undefined {
  return value && /^[0-9]{1,6}$/.test(value.trim()) ? Number(value.trim()) * 1000 : undefined;
}

/** The wait after `failures` failures (1 = the first). See the module comment for the formula. */
export function backoffDelay(failures: number, b: Backoff, retryAfterMs?: number): number {
  const max = b.maxDelayMs ?? Number.POSITIVE_INFINITY;
  const d = Math.min(max, b.baseDelayMs * (b.factor ?? 2) ** Math.min(Math.max(failures, 1) - 1, 40));
  const waited = b.jitter === 'equal' ? d / 2 + ((b.random ?? Math.random)() * d) / 2 : d;
  return Math.round(Math.min(max, Math.max(waited, retryAfterMs ?? 0)));
}

/** Runs `op(attempt)` (attempt 1, 2, …) under `o`; see the module comment. */
export async function retry<T>(op: (attempt: number) => Promise<T>, o: RetryOptions): Promise<T> {
  if (!(o.attempts >= 1) || !Number.isFinite(o.attempts)) throw new RangeError(`retry: attempts must be a finite number, at least 1, not ${o.attempts}`);
  const sleep = o.sleep ?? ((ms: number, signal?: AbortSignal) => delay(ms, undefined, signal ? { signal } : {}));
  const abort = (): unknown => (o.aborted ? o.aborted() : o.signal?.reason);
  for (let attempt = 1; ; attempt++) {
    if (o.signal?.aborted) throw abort();
    let failure: unknown;
    try {
      return await op(attempt);
    } catch (e) {
      failure = e;
    }
    if (o.retryable && !o.retryable(failure, attempt)) throw failure;
    if (attempt >= o.attempts) throw o.exhausted ? o.exhausted(failure, attempt) : failure;
    const ms = backoffDelay(attempt, o, o.retryAfterMs?.(failure));
    o.onRetry?.(failure, attempt, ms);
    try {
      await sleep(ms, o.signal);
    } catch (e) {
      if (o.signal?.aborted) throw abort();
      throw e;
    }
  }
}
