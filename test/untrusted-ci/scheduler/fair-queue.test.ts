/**
 * pickNext as a table: gate before check, round-robin across projects (least recently served
 * first), first come first served within a project. Each case also drains the queue the way the
 * scheduler does (pick, remove, mark served) to pin the whole service order.
 */
import { describe, expect, it } from 'vitest';
import type { Pipeline } from '../../../shared/schemas/api/builds.js';
import { pickNext } from '../../../untrusted-ci/scheduler/fair-queue.js';
import type { QueuedBuild } from '../../../untrusted-ci/store/build-store.js';

/** `'a'` → check build of project a; `'a!'` → gate build of project a. Ids follow the list order. */
function queue(spec: string[]): QueuedBuild[] {
  return spec.map((s, i) => ({ id: i + 1, project: s.replace('!', ''), pipeline: (s.endsWith('!') ? 'gate' : 'check') as Pipeline, enqueuedAt: i }));
}

/** Every build in the order pickNext serves them, as the scheduler's loop does with one slot. */
function drain(q: QueuedBuild[], served = new Map<string, number>()): number[] {
  const rest = [...q];
  const order: number[] = [];
  let tick = Math.max(0, ...served.values());
  for (;;) {
    const next = pickNext(rest, served);
    if (!next) return order;
    rest.splice(rest.indexOf(next), 1);
    served.set(next.project, ++tick);
    order.push(next.id);
  }
}

describe('pickNext', () => {
  it('has nothing to pick from an empty queue', () => {
    expect(pickNext([], new Map())).toBeUndefined();
  });

  it.each([
    { name: 'FIFO within one project', q: ['a', 'a', 'a'], order: [1, 2, 3] },
    { name: 'gate before check, even when the check came first', q: ['a', 'b', 'c!'], order: [3, 1, 2] },
    { name: 'gate builds are round-robined too, then the checks (b was served longer ago)', q: ['a', 'a!', 'a!', 'b!', 'b'], order: [2, 4, 3, 5, 1] },
    { name: 'round-robin across projects', q: ['a', 'a', 'b', 'b', 'c'], order: [1, 3, 5, 2, 4] },
    { name: 'the project with one build is served second, not 51st', q: [...Array<string>(50).fill('a'), 'b'], order: [1, 51, ...Array.from({ length: 49 }, (_, i) => i + 2)] },
    { name: 'project names with slashes are just names', q: ['org/x', 'org/y', 'org/x'], order: [1, 2, 3] },
  ])('$name', ({ q, order }) => {
    expect(drain(queue(q))).toEqual(order);
  });

  it('serves the project served longest ago first, whatever the arrival order', () => {
    // b was served at tick 5, a at tick 9: b's build goes first although a's arrived first.
    const q = queue(['a', 'b']);
    expect(pickNext(q, new Map([['a', 9], ['b', 5]]))?.id).toBe(2);
    // A project never served beats both.
    expect(pickNext([...q, { id: 3, project: 'c', pipeline: 'check', enqueuedAt: 3 }], new Map([['a', 9], ['b', 5]]))?.id).toBe(3);
  });

  it('among projects never served, the oldest build wins', () => {
    const q: QueuedBuild[] = [
      { id: 7, project: 'z', pipeline: 'check', enqueuedAt: 1 },
      { id: 3, project: 'y', pipeline: 'check', enqueuedAt: 2 },
    ];
    expect(pickNext(q, new Map())?.id).toBe(3);
  });

  it('only considers each project’s oldest build', () => {
    // a's second build (id 2) never competes while id 1 is queued.
    const q = queue(['a', 'a', 'b']);
    expect(pickNext(q, new Map([['b', 1]]))?.id).toBe(1);
  });

  it('does not change its inputs', () => {
    const q = queue(['a', 'b!']);
    const served = new Map([['a', 1]]);
    const before = JSON.stringify([q, [...served]]);
    pickNext(q, served);
    expect(JSON.stringify([q, [...served]])).toBe(before);
  });
});
