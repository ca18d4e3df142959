/**
 * Placement by resources (untrusted-ci/scheduler/capacity.ts): which waiters start given the host's
 * capacity and what runs — fits, waits, first come first served, a big job passed at most
 * `overtakes` times and then waited for, a need larger than the host refused with its figures —
 * and through Slots, the same with real grants and releases.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { admit, capacityFor, hold, NOTHING_HELD, tooLarge, type HostCapacity, type Need } from '../../../untrusted-ci/scheduler/capacity.js';
import { Slots } from '../../../untrusted-ci/scheduler/slots.js';

const GiB = 1024 ** 3;
const cap = (o: Partial<HostCapacity> = {}): HostCapacity => ({ slots: 8, memory: 8 * GiB, cpus: 4, overtakes: 2, ...o });
const need = (gib: number, cpus = 1): Need => ({ memory: gib * GiB, cpus });
const waiting = (...ns: Need[]) => ns.map((n) => ({ need: n, overtaken: 0 }));
const running = (...ns: Need[]) => ns.reduce((h, n) => hold(h, n), NOTHING_HELD);

describe('admit', () => {
  it.each([
    ['everything that fits, in order', cap(), running(), waiting(need(2), need(2), need(2)), [0, 1, 2]],
    ['memory: the third does not fit beside what runs', cap(), running(need(4)), waiting(need(2), need(2), need(1)), [0, 1]],
    ['CPUs, fractions summed exactly', cap({ cpus: 1 }), running(need(1, 0.1), need(1, 0.2)), waiting(need(1, 0.7), need(1, 0.1)), [0]],
    ['slots cap the count whatever room is left', cap({ slots: 2 }), running(need(1)), waiting(need(1), need(1)), [0]],
    ['nothing while the host is full', cap(), running(need(8)), waiting(need(1)), []],
    ['a small one passes a big one that does not fit', cap(), running(need(6)), waiting(need(4), need(1)), [1]],
    ['an environment build (no need) only needs a slot', cap(), running(need(8, 4)), waiting({ memory: 0, cpus: 0 }), [0]],
  ])('%s', (_name, c, held, w, admitted) => {
    expect(admit(c, held, w).admitted).toEqual(admitted);
  });

  it('counts how often a waiter was passed; once it has been passed `overtakes` times, nothing behind it starts', () => {
    const c = cap({ overtakes: 2 });
    const big = { need: need(4), overtaken: 0 };
    // Passed by two small ones: it has been passed twice, so the third small one waits behind it.
    const first = admit(c, running(need(6)), [big, ...waiting(need(0.5), need(0.5), need(0.5))]);
    expect(first).toEqual({ admitted: [1, 2], overtaken: [2, 0, 0, 0] });
    // Later, with room for the small one but not the big one: still nothing passes.
    expect(admit(c, running(need(6)), [{ ...big, overtaken: 2 }, ...waiting(need(0.5))]).admitted).toEqual([]);
    // With room for it, it starts, and the one behind it too.
    expect(admit(c, running(need(2)), [{ ...big, overtaken: 2 }, ...waiting(need(0.5))]).admitted).toEqual([0, 1]);
  });

  it('overtakes 0 is strict first come, first served', () => {
    expect(admit(cap({ overtakes: 0 }), running(need(6)), waiting(need(4), need(1))).admitted).toEqual([]);
  });

  it('never admits past the capacity, and never passes a waiter more than `overtakes` times (property)', () => {
    const arbNeed = fc.record({ memory: fc.integer({ min: 0, max: 8 }).map((g) => g * GiB), cpus: fc.integer({ min: 0, max: 40 }).map((t) => t / 10) });
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 3 }), fc.array(arbNeed, { maxLength: 4 }), fc.array(fc.record({ need: arbNeed, overtaken: fc.integer({ min: 0, max: 3 }) }), { maxLength: 8 }), (overtakes, run, w) => {
        const c = cap({ overtakes, slots: 6 });
        const held = running(...run.filter((_, i) => i < 6));
        const { admitted, overtaken } = admit(c, held, w);
        const after = admitted.reduce((h, i) => hold(h, w[i]!.need), held);
        if (admitted.length > 0) {
          expect(after.count).toBeLessThanOrEqual(c.slots);
          expect(after.memory).toBeLessThanOrEqual(Math.max(c.memory, held.memory));
          expect(after.milliCpus).toBeLessThanOrEqual(Math.max(4000, held.milliCpus));
        }
        // A waiter already passed `overtakes` times is never passed again.
        for (const [i, x] of w.entries()) if (x.overtaken >= overtakes && !admitted.includes(i)) expect(admitted.some((a) => a > i)).toBe(false);
        for (const [i, n] of overtaken.entries()) expect(n).toBeLessThanOrEqual(Math.max(w[i]!.overtaken, overtakes));
      }),
      { numRuns: 300 },
    );
  });
});

describe('tooLarge and capacityFor', () => {
  it('refuses a need larger than the whole host, naming both figures', () => {
    expect(tooLarge(cap(), need(8, 4))).toBeUndefined();
    expect(tooLarge(cap(), need(16))?.message).toBe("the job's limits ask for 16 GiB of memory, more than the 8 GiB this host has for jobs: it could never start here (ask for less in .airlock.yaml, or the operator raises capacity)");
    expect(tooLarge(cap(), need(1, 6))?.message).toContain('6 CPUs, more than the 4 this host has for jobs');
  });

  it('defaults to the machine: its memory minus the reserve (at least half of it), its CPUs', () => {
    expect(capacityFor(2, { reserve: GiB, overtakes: 4 }, { memory: 16 * GiB, cpus: 8 })).toEqual({ slots: 2, memory: 15 * GiB, cpus: 8, overtakes: 4 });
    expect(capacityFor(2, { reserve: GiB, overtakes: 4 }, { memory: GiB, cpus: 1 }).memory).toBe(GiB / 2);
    expect(capacityFor(3, { memory: 4 * GiB, reserve: GiB, cpus: 2.5, overtakes: 0 }, { memory: 16 * GiB, cpus: 8 })).toEqual({ slots: 3, memory: 4 * GiB, cpus: 2.5, overtakes: 0 });
  });
});

describe('Slots with a capacity', () => {
  const flush = () => new Promise<void>((r) => setImmediate(r));
  /** How a promise stands now, without waiting for it. */
  const settled = <T>(p: Promise<T>) => {
    let state: 'pending' | 'granted' | 'rejected' = 'pending';
    p.then(
      () => (state = 'granted'),
      () => (state = 'rejected'),
    );
    return { p, state: () => state };
  };

  it('grants what fits, holds the rest until room is released, first come first served', async () => {
    const slots = new Slots(4, { memory: 4 * GiB, cpus: 2, overtakes: 0 });
    const order: string[] = [];
    const take = (name: string, n: Need) => slots.acquire(undefined, n).then((r) => (order.push(name), r));
    const a = await take('a', need(3));
    const b = take('b', need(2));
    const c = take('c', need(1));
    await flush();
    expect(order).toEqual(['a']); // c would fit, but b came first (overtakes 0)
    expect(slots.usage).toMatchObject({ memory: 3 * GiB, cpus: 1 });
    a();
    const [rb, rc] = await Promise.all([b, c]);
    expect(order).toEqual(['a', 'b', 'c']);
    rb();
    rc();
    expect(slots.usage).toMatchObject({ memory: 0, cpus: 0 });
    expect(slots.busy).toBe(0);
  });

  it('lets small jobs pass a big one a bounded number of times, then the big one starts before any more', async () => {
    const slots = new Slots(8, { memory: 4 * GiB, cpus: 8, overtakes: 2 });
    const order: string[] = [];
    const take = (name: string, n: Need) => slots.acquire(undefined, n).then((r) => (order.push(name), r));
    const first = await take('first', need(2));
    const big = take('big', need(4));
    const s1 = await take('s1', need(1));
    const s2 = await take('s2', need(1));
    const s3 = take('s3', need(0.5));
    await flush();
    expect(order).toEqual(['first', 's1', 's2']); // the host is full anyway
    s1();
    await flush();
    expect(order).toEqual(['first', 's1', 's2']); // room for s3, but big has been passed twice
    first();
    s2();
    const rbig = await big;
    expect(order).toEqual(['first', 's1', 's2', 'big']);
    rbig();
    (await s3)();
    expect(order.at(-1)).toBe('s3');
  });

  it('refuses a job larger than the whole capacity at once, and a waiter that leaves lets the ones behind it start', async () => {
    const slots = new Slots(4, { memory: 4 * GiB, cpus: 2, overtakes: 0 });
    const refused = settled(slots.acquire(undefined, need(5)));
    await flush();
    expect(refused.state()).toBe('rejected'); // at once, not left waiting for room that never comes
    await expect(refused.p).rejects.toMatchObject({ code: 'AIRLOCK_E_POLICY_VIOLATION', message: expect.stringContaining('5 GiB of memory, more than the 4 GiB') });
    expect(slots.busy).toBe(0);
    const held = await slots.acquire(undefined, need(2));
    const ctl = new AbortController();
    const big = slots.acquire(ctl.signal, need(4));
    const small = settled(slots.acquire(undefined, need(1)));
    await flush();
    expect(small.state()).toBe('pending'); // behind big (overtakes 0)
    ctl.abort();
    await expect(big).rejects.toMatchObject({ code: 'AIRLOCK_E_CANCELLED' });
    await flush();
    expect(small.state()).toBe('granted');
    (await small.p)();
    held();
    expect(slots.busy).toBe(0);
  });
});
