import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { backoffDelay, retry, type RetryOptions } from '#shared/retry.js';

/** An operation that fails with `failures[i]` on attempt i+1 and then succeeds with 'ok'. */
function failing(failures: unknown[]): { op: (attempt: number) => Promise<string>; calls: number[] } {
  const calls: number[] = [];
  return {
    calls,
    op: async (attempt) => {
      calls.push(attempt);
      if (attempt <= failures.length) throw failures[attempt - 1];
      return 'ok';
    },
  };
}

function recorder(): { sleep: NonNullable<RetryOptions['sleep']>; waits: number[] } {
  const waits: number[] = [];
  return { waits, sleep: async (ms) => void waits.push(ms) };
}

describe('retry', () => {
  it('retries until success, waiting base·2^(n-1) capped at max', async () => {
    const { op, calls } = failing([new Error('a'), new Error('b'), new Error('c'), new Error('d')]);
    const { sleep, waits } = recorder();
    const seen: [string, number, number][] = [];
    const value = await retry(op, { attempts: 5, baseDelayMs: 100, maxDelayMs: 500, sleep, onRetry: (e, n, ms) => seen.push([(e as Error).message, n, ms]) });
    expect(value).toBe('ok');
    expect(calls).toEqual([1, 2, 3, 4, 5]);
    expect(waits).toEqual([100, 200, 400, 500]);
    expect(seen).toEqual([['a', 1, 100], ['b', 2, 200], ['c', 3, 400], ['d', 4, 500]]);
  });

  it('gives up after `attempts`, throwing the last failure or what `exhausted` makes of it', async () => {
    const { sleep, waits } = recorder();
    const last = new Error('third');
    await expect(retry(failing([new Error('1'), new Error('2'), last]).op, { attempts: 3, baseDelayMs: 1, sleep })).rejects.toBe(last);
    expect(waits).toEqual([1, 2]);
    const mapped = await retry(failing([last, last, last]).op, { attempts: 3, baseDelayMs: 1, sleep, exhausted: (e, n) => new RangeError(`${(e as Error).message} after ${n}`) }).catch((e: unknown) => e);
    expect(mapped).toBeInstanceOf(RangeError);
    expect((mapped as Error).message).toBe('third after 3');
  });

  it('stops at once on a failure that is not retryable, without `exhausted` and without waiting', async () => {
    const { sleep, waits } = recorder();
    const fatal = new TypeError('fatal');
    const { op, calls } = failing([new Error('transient'), fatal]);
    const err = await retry(op, { attempts: 5, baseDelayMs: 10, sleep, retryable: (e) => !(e instanceof TypeError), exhausted: () => new Error('not this') }).catch((e: unknown) => e);
    expect(err).toBe(fatal);
    expect(calls).toEqual([1, 2]);
    expect(waits).toEqual([10]);
  });

  it('one attempt means no retry; a fraction rounds up; fewer than one is refused', async () => {
    const { op, calls } = failing([new Error('x')]);
    await expect(retry(op, { attempts: 1, baseDelayMs: 10 })).rejects.toThrow('x');
    expect(calls).toEqual([1]);
    const { op: op2, calls: calls2 } = failing([new Error('1'), new Error('2'), new Error('3')]);
    await expect(retry(op2, { attempts: 2.5, baseDelayMs: 1, sleep: recorder().sleep })).rejects.toThrow('3');
    expect(calls2).toEqual([1, 2, 3]);
    for (const attempts of [0, -1, Number.NaN]) await expect(retry(op, { attempts, baseDelayMs: 10 })).rejects.toBeInstanceOf(RangeError);
    expect(calls).toEqual([1]);
  });

  it('a Retry-After lengthens a wait, never past the cap', async () => {
    const { sleep, waits } = recorder();
    const asked = (ms: number) => Object.assign(new Error('429'), { retryAfterMs: ms });
    await retry(failing([asked(50), asked(5_000), asked(0)]).op, {
      attempts: 4,
      baseDelayMs: 100,
      maxDelayMs: 1_000,
      sleep,
      retryAfterMs: (e) => (e as { retryAfterMs?: number }).retryAfterMs,
    });
    expect(waits).toEqual([100, 1_000, 400]);
  });

  it('an aborted signal stops before the next attempt, and a wait it cuts short', async () => {
    const stop = new AbortController();
    const { op, calls } = failing([new Error('1'), new Error('2')]);
    const err = await retry(op, {
      attempts: 5,
      baseDelayMs: 10,
      signal: stop.signal,
      aborted: () => new Error('cancelled'),
      sleep: async () => stop.abort(),
    }).catch((e: unknown) => e);
    expect((err as Error).message).toBe('cancelled');
    expect(calls).toEqual([1]);

    // the default wait is a real timer that the signal ends: an hour's wait ends at the abort
    const stop2 = new AbortController();
    const pending = retry(
      async () => {
        throw new Error('down');
      },
      { attempts: 2, baseDelayMs: 3_600_000, signal: stop2.signal, onRetry: () => queueMicrotask(() => stop2.abort(new Error('reason'))) },
    );
    await expect(pending).rejects.toThrow('reason');

    // aborted before the first attempt: no attempt at all
    const { op: op3, calls: calls3 } = failing([]);
    await expect(retry(op3, { attempts: 3, baseDelayMs: 1, signal: AbortSignal.abort(new Error('early')) })).rejects.toThrow('early');
    expect(calls3).toEqual([]);
  });

  it('a wait that fails for its own reason (not an abort) ends the retry with that failure', async () => {
    const boom = new Error('sleep broke');
    await expect(retry(failing([new Error('1')]).op, { attempts: 3, baseDelayMs: 1, sleep: () => Promise.reject(boom) })).rejects.toBe(boom);
  });
});

describe('backoffDelay', () => {
  it('equal jitter draws from [d/2, d], rounded; Retry-After and the cap apply after it', () => {
    const b = { baseDelayMs: 1_000, maxDelayMs: 300_000, jitter: 'equal' as const };
    expect(backoffDelay(1, { ...b, random: () => 0 })).toBe(500);
    expect(backoffDelay(1, { ...b, random: () => 0.999999 })).toBe(1_000);
    expect(backoffDelay(3, { ...b, random: () => 0.5 })).toBe(3_000);
    expect(backoffDelay(100, { ...b, random: () => 0 })).toBe(150_000);
    expect(backoffDelay(1, { ...b, random: () => 0 }, 7_000)).toBe(7_000);
    expect(backoffDelay(1, { ...b, random: () => 0 }, 10_000_000)).toBe(300_000);
    expect(backoffDelay(2, { baseDelayMs: 2_000, factor: 1 })).toBe(2_000);
    expect(backoffDelay(5, { baseDelayMs: 500 })).toBe(8_000); // no cap
  });

  it('stays within [d/2, d] (and at most the cap) for any failure count and jitter draw', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 10_000 }), fc.integer({ min: 0, max: 60_000 }), fc.integer({ min: 0, max: 600_000 }), fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), (n, base, cap, r) => {
        const d = Math.min(cap, base * 2 ** Math.min(n - 1, 40));
        const ms = backoffDelay(n, { baseDelayMs: base, maxDelayMs: cap, jitter: 'equal', random: () => r });
        expect(Number.isInteger(ms)).toBe(true);
        expect(ms).toBeGreaterThanOrEqual(Math.floor(d / 2));
        expect(ms).toBeLessThanOrEqual(Math.min(cap, Math.ceil(d)));
      }),
    );
  });
});
