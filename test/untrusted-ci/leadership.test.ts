/**
 * Leadership among replicas (untrusted-ci/leadership.ts) over a real lease (store/lease.ts) in
 * SQLite: taking the lease, taking over an expired one, losing it (a refused renewal, the database
 * unreachable for two thirds of the lease), giving it up on close and when the leader parts do not
 * start. Time for the "unreachable" rule is an injected clock; waits are for conditions, never for
 * an amount of time.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StorageFailedError } from '#shared/errors.js';
import { createLogger } from '#shared/logging.js';
import { Leadership, type LeadershipOptions } from '../../untrusted-ci/leadership.js';
import { openDatabase } from '../../untrusted-ci/store/database.js';
import { Lease, holderId } from '../../untrusted-ci/store/lease.js';
import type { Db } from '../../untrusted-ci/store/sql.js';
import { until } from '../support/until.js';

const logger = createLogger({ level: 'silent' });

/** A real lease whose database calls can be made to fail, and which counts them. */
class FlakyLease extends Lease {
  failing = false;
  calls = 0;
  private check(): void {
    this.calls++;
    if (this.failing) throw new StorageFailedError('cannot reach the database (a test)');
  }
  override async acquire(address?: string): Promise<boolean> {
    this.check();
    return super.acquire(address);
  }
  override async renew(): Promise<boolean> {
    this.check();
    return super.renew();
  }
}

let db: Db;
const open: Leadership[] = [];
beforeEach(() => {
  db = openDatabase(':memory:');
});
afterEach(async () => {
  for (const l of open.splice(0)) await l.close();
  await db.close();
});

interface Made {
  leadership: Leadership;
  lease: FlakyLease;
  acquired: number;
  lost: string[];
}

/** `leaseMs`: the lease's own time in the database, when it should differ from the leadership's `ttlMs`. */
function make(ttlMs: number, o: Partial<Pick<LeadershipOptions, 'onAcquired' | 'now'>> & { address?: string; leaseMs?: number } = {}): Made {
  const lease = new FlakyLease(db, 'leader', holderId(), o.leaseMs ?? ttlMs);
  const made: Made = { lease, acquired: 0, lost: [], leadership: undefined as unknown as Leadership };
  made.leadership = new Leadership({
    lease,
    ttlMs,
    logger,
    address: () => o.address ?? 'http://127.0.0.1:1',
    onAcquired:
      o.onAcquired ??
      (async () => {
        made.acquired++;
      }),
    onLost: async (why) => {
      made.lost.push(why);
    },
    ...(o.now ? { now: o.now } : {}),
  });
  open.push(made.leadership);
  return made;
}

/** Waits until `lease` has been called `n` more times (the leadership's timer has ticked). */
async function ticks(lease: FlakyLease, n: number): Promise<void> {
  const from = lease.calls;
  await until(`${n} more calls on the lease`, () => (lease.calls >= from + n ? true : undefined), 30_000, 10);
}

describe('leadership', () => {
  it('takes a free lease at start, before start() returns, with its address, and starts the leader parts once', async () => {
    const a = make(60_000, { address: 'http://replica-a:8080' });
    await a.leadership.start();
    expect(a.leadership.isLeader).toBe(true);
    expect(a.acquired).toBe(1);
    expect(await a.lease.current()).toEqual({ holder: a.lease.holder, address: 'http://replica-a:8080', epoch: 1 });
    // A second replica stays a follower while the first renews.
    const b = make(60_000);
    await b.leadership.start();
    expect(b.leadership.isLeader).toBe(false);
    expect(b.acquired).toBe(0);
  });

  it('a follower keeps asking and takes over when the holder lets its lease expire', async () => {
    // The holder took the lease and then stopped renewing (paused, cut off, killed).
    const holder = new Lease(db, 'leader', holderId(), 300);
    expect(await holder.acquire('http://old')).toBe(true);
    const b = make(300, { address: 'http://new' });
    await b.leadership.start();
    expect(b.leadership.isLeader).toBe(false);
    await until('the follower to lead', () => (b.leadership.isLeader ? true : undefined), 30_000, 10);
    expect(b.acquired).toBe(1);
    expect(await b.lease.current()).toMatchObject({ holder: b.lease.holder, address: 'http://new', epoch: 2 });
    expect(b.lost).toEqual([]);
  });

  it('a follower whose database calls fail stays a follower, and leads once they succeed', async () => {
    const b = make(300);
    b.lease.failing = true;
    await b.leadership.start();
    await ticks(b.lease, 2);
    expect(b.leadership.isLeader).toBe(false);
    expect(b.acquired).toBe(0);
    b.lease.failing = false;
    await until('the follower to lead', () => (b.leadership.isLeader ? true : undefined), 30_000, 10);
    expect(b.lost).toEqual([]);
  });

  it('a refused renewal (another replica holds the lease) calls onLost once, and the replica stops for good', async () => {
    const a = make(300);
    await a.leadership.start();
    expect(a.leadership.isLeader).toBe(true);
    // Another replica took it (as after this one was paused past its lease).
    await db.run("UPDATE leases SET holder = 'someone-else', epoch = epoch + 1, expires_at = expires_at + 600000 WHERE name = 'leader'");
    await until('onLost', () => (a.lost.length > 0 ? true : undefined), 30_000, 10);
    expect(a.lost).toEqual([expect.stringContaining('another replica holds the leader lease')]);
    expect(a.leadership.isLeader).toBe(false);
    // The lease comes free again: the lost replica does not ask for it (its timer is stopped), while
    // a follower that keeps asking ticks on and takes it.
    await db.run("UPDATE leases SET expires_at = 0 WHERE name = 'leader'");
    const callsAfterLoss = a.lease.calls;
    // Its row lasts: a renewal that a loaded machine delays must not cost it the lease here.
    const c = make(300, { leaseMs: 600_000 });
    await c.leadership.start();
    expect(c.leadership.isLeader).toBe(true);
    await ticks(c.lease, 3);
    expect(a.lease.calls).toBe(callsAfterLoss);
    expect(a.leadership.isLeader).toBe(false);
    expect(a.lost).toHaveLength(1);
    expect(a.acquired).toBe(1);
  });

  it('a database error calls onLost only once no renewal has succeeded for two thirds of the lease', async () => {
    let now = 1_000_000;
    // The rule runs on the injected clock; the row in the database lasts long enough not to expire meanwhile.
    const a = make(600, { now: () => now, leaseMs: 600_000 });
    await a.leadership.start();
    expect(a.leadership.isLeader).toBe(true);
    a.lease.failing = true;
    // Silent for 300 ms of 600: renewals fail, but this replica still leads.
    now += 300;
    await ticks(a.lease, 3);
    expect(a.lost).toEqual([]);
    expect(a.leadership.isLeader).toBe(true);
    // The database answers again: renewed, the silence starts over.
    a.lease.failing = false;
    await ticks(a.lease, 2);
    a.lease.failing = true;
    now += 300; // 600 ms since the start, but only 300 since the last renewal
    await ticks(a.lease, 2);
    expect(a.lost).toEqual([]);
    // Past two thirds (400 ms) since the last renewal: no longer leads.
    now += 150;
    await until('onLost', () => (a.lost.length > 0 ? true : undefined), 30_000, 10);
    expect(a.lost).toEqual([expect.stringContaining('could not be renewed for 450 ms')]);
    expect(a.leadership.isLeader).toBe(false);
  });

  it('holds: leading with a renewal less than two thirds of the lease old; false at once past that, before the watchdog has run (a process that wakes from a pause)', async () => {
    let now = 1_000_000;
    // A long lease: its timer (a third of it) does not tick during the test; only the clock moves.
    const a = make(600_000, { now: () => now });
    const calls = a.lease.calls;
    await a.leadership.start();
    expect(a.leadership.holds).toBe(true);
    now += 399_999;
    expect(a.leadership.holds).toBe(true);
    // Paused past two thirds: the watchdog has not run (isLeader still says so), holds says not.
    now += 1;
    expect(a.leadership.isLeader).toBe(true);
    expect(a.leadership.holds).toBe(false);
    expect(a.lease.calls).toBe(calls + 1); // only the acquire: no round ran
    // A follower never holds.
    const b = make(600_000);
    await b.leadership.start();
    expect(b.leadership.holds).toBe(false);
  });

  it('close() gives the lease up, so another replica takes it at once (not when it expires)', async () => {
    const a = make(600_000);
    await a.leadership.start();
    expect(a.leadership.isLeader).toBe(true);
    const b = new Lease(db, 'leader', holderId(), 600_000);
    expect(await b.acquire()).toBe(false);
    await a.leadership.close();
    expect(a.leadership.isLeader).toBe(false);
    expect(await b.acquire('http://b')).toBe(true);
    expect(b.epoch).toBe(2);
    expect(a.lost).toEqual([]);
  });

  it('onAcquired throwing gives the lease up and calls onLost', async () => {
    const a = make(600_000, {
      onAcquired: async () => {
        throw new Error('the gate would not start');
      },
    });
    await a.leadership.start();
    expect(a.leadership.isLeader).toBe(false);
    expect(a.lost).toEqual([expect.stringContaining('leader parts did not start')]);
    // Released, not left to expire in ten minutes.
    expect(await a.lease.current()).toBeUndefined();
    const b = new Lease(db, 'leader', holderId(), 600_000);
    expect(await b.acquire()).toBe(true);
  });
});
