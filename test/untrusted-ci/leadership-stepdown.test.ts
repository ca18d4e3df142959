/**
 * Leadership (untrusted-ci/leadership.ts) over a lease whose answers the test decides, on fake
 * timers: when the leader must step down, and that starting to lead does not stop it renewing.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Leadership } from '../../untrusted-ci/leadership.js';
import type { Lease } from '../../untrusted-ci/store/lease.js';
import { createLogger } from '#shared/logging.js';

const TTL = 9_000;

/** A lease that is always won, and whose renewals answer as `renew` says. */
function fakeLease(renew: () => Promise<boolean>): { lease: Lease; renewals: () => number } {
  let n = 0;
  const lease = {
    epoch: 1,
    holder: 'me',
    acquire: async () => true,
    renew: () => (n++, renew()),
    release: async () => undefined,
  } as unknown as Lease;
  return { lease, renewals: () => n };
}

describe('leadership', { timeout: 10_000 }, () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('steps down when a renewal hangs (the database unreachable, no answer at all), before the lease could pass on', async () => {
    const { lease } = fakeLease(() => new Promise<boolean>(() => {}));
    // The database answers nothing at all: giving the lease up hangs too.
    (lease as unknown as { release: () => Promise<void> }).release = () => new Promise<void>(() => {});
    const lost: string[] = [];
    const l = new Leadership({ lease, ttlMs: TTL, logger: createLogger({ level: 'silent' }), address: () => 'http://me', onAcquired: async () => {}, onLost: async (why) => void lost.push(why) });
    await l.start();
    expect(l.isLeader).toBe(true);
    await vi.advanceTimersByTimeAsync(TTL - 1);
    expect(lost).toHaveLength(1);
    expect(l.isLeader).toBe(false);
    await l.close();
  });

  it('keeps renewing while its leader parts are still starting', async () => {
    const { lease, renewals } = fakeLease(async () => true);
    let started!: () => void;
    const lost: string[] = [];
    const l = new Leadership({
      lease,
      ttlMs: TTL,
      logger: createLogger({ level: 'silent' }),
      address: () => 'http://me',
      onAcquired: () => new Promise<void>((r) => (started = r)),
      onLost: async (why) => void lost.push(why),
    });
    await l.start();
    await vi.advanceTimersByTimeAsync(TTL * 2);
    expect(renewals()).toBeGreaterThanOrEqual(5);
    expect(lost).toEqual([]);
    started();
    await l.close();
  });

  it("steps down in time when the host's wall clock is set back meanwhile (it counts on a monotonic clock)", async () => {
    const { lease } = fakeLease(() => new Promise<boolean>(() => {}));
    const lost: string[] = [];
    const l = new Leadership({ lease, ttlMs: TTL, logger: createLogger({ level: 'silent' }), address: () => 'http://me', onAcquired: async () => {}, onLost: async (why) => void lost.push(why) });
    await l.start();
    vi.setSystemTime(Date.now() - 3_600_000); // NTP steps the clock back an hour
    await vi.advanceTimersByTimeAsync(TTL - 1);
    expect(lost).toHaveLength(1);
    await l.close();
  });

  it('closes even while a renewal hangs', async () => {
    const { lease } = fakeLease(async () => true);
    const l = new Leadership({ lease, ttlMs: TTL, logger: createLogger({ level: 'silent' }), address: () => 'http://me', onAcquired: async () => {}, onLost: async () => {} });
    await l.start();
    (lease as unknown as { renew: () => Promise<boolean> }).renew = () => new Promise<boolean>(() => {});
    await vi.advanceTimersByTimeAsync(TTL / 3); // a round starts, and hangs
    let closed = false;
    const closing = l.close().then(() => (closed = true));
    await vi.advanceTimersByTimeAsync(TTL);
    expect(closed).toBe(true);
    await closing;
  });
});
