import { describe, expect, it } from 'vitest';
import { Slots } from '../../../untrusted-ci/scheduler/slots.js';

describe('Slots', () => {
  it('never grants more than its size, serves waiters in order, and releases idempotently', async () => {
    const slots = new Slots(2);
    const a = await slots.acquire();
    const b = await slots.acquire();
    expect(slots.busy).toBe(2);
    const order: string[] = [];
    const c = slots.acquire().then((r) => (order.push('c'), r));
    const d = slots.acquire().then((r) => (order.push('d'), r));
    await Promise.resolve();
    expect(order).toEqual([]);
    a();
    a(); // a second release of the same grant frees nothing more
    const rc = await c;
    expect(order).toEqual(['c']);
    expect(slots.busy).toBe(2);
    b();
    const rd = await d;
    expect(order).toEqual(['c', 'd']);
    rc();
    rd();
    expect(slots.busy).toBe(0);
  });

  it('lets a cancelled waiter leave the line without taking a slot', async () => {
    const slots = new Slots(1);
    const held = await slots.acquire();
    const ctl = new AbortController();
    const waiting = slots.acquire(ctl.signal);
    const next = slots.acquire();
    ctl.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'AIRLOCK_E_CANCELLED' });
    held();
    const r = await next;
    expect(slots.busy).toBe(1);
    r();
    expect(slots.busy).toBe(0);
    await expect(slots.acquire(ctl.signal)).rejects.toBeTruthy();
  });
});
