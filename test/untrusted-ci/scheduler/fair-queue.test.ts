/**
 * pickNext as a table: gate before check, round-robin across projects (least recently served
 * first), then across uploaders within a project's check work, first come first served within an
 * uploader (and within a project's gate work). Each case also drains the queue the way the
 * scheduler does (pick, remove, mark served) to pin the whole service order.
 */
import { describe, expect, it } from 'vitest';
import type { Pipeline } from '#shared/schemas/api/builds.js';
import { pickNext, Served, type ServedView } from '../../../untrusted-ci/scheduler/fair-queue.js';
import type { QueuedBuild } from '../../../untrusted-ci/store/build-store.js';

/** `'a'` → check build of project a by uploader u; `'a!'` → gate build; `'a:bob'` → uploaded by bob. Ids follow the list order. */
function queue(spec: string[]): QueuedBuild[] {
  return spec.map((s, i) => {
    const [head = '', author = 'u'] = s.split(':');
    return { id: i + 1, project: head.replace('!', ''), pipeline: (head.endsWith('!') ? 'gate' : 'check') as Pipeline, enqueuedAt: i, author };
  });
}

/** Every build in the order pickNext serves them, as the scheduler's loop does with one slot. */
function drain(q: QueuedBuild[], served = new Served()): number[] {
  const rest = [...q];
  const order: number[] = [];
  for (;;) {
    const next = pickNext(rest, served);
    if (!next) return order;
    rest.splice(rest.indexOf(next), 1);
    served.mark(next);
    order.push(next.id);
  }
}

/** A fixed view: projects served at the given ticks, uploaders never. */
function projectsServed(ticks: Record<string, number>): ServedView {
  return { project: (p) => ticks[p] ?? -1, author: () => -1 };
}

describe('pickNext', () => {
  it('has nothing to pick from an empty queue', () => {
    expect(pickNext([], new Served())).toBeUndefined();
  });

  it.each([
    { name: 'FIFO within one project and one uploader', q: ['a', 'a', 'a'], order: [1, 2, 3] },
    { name: 'gate before check, even when the check came first', q: ['a', 'b', 'c!'], order: [3, 1, 2] },
    { name: 'gate builds are round-robined too, then the checks (b was served longer ago)', q: ['a', 'a!', 'a!', 'b!', 'b'], order: [2, 4, 3, 5, 1] },
    { name: 'round-robin across projects', q: ['a', 'a', 'b', 'b', 'c'], order: [1, 3, 5, 2, 4] },
    { name: 'the project with one build is served second, not 51st', q: [...Array<string>(50).fill('a'), 'b'], order: [1, 51, ...Array.from({ length: 49 }, (_, i) => i + 2)] },
    { name: 'project names with slashes are just names', q: ['org/x', 'org/y', 'org/x'], order: [1, 2, 3] },
    {
      name: "within a project, the uploader with one patch set is served second, not 51st",
      q: [...Array<string>(50).fill('a:mallory'), 'a:alice'],
      order: [1, 51, ...Array.from({ length: 49 }, (_, i) => i + 2)],
    },
    { name: 'round-robin across uploaders of one project', q: ['a:m', 'a:m', 'a:m', 'a:x', 'a:y', 'a:x'], order: [1, 4, 5, 2, 6, 3] },
    { name: 'gate work within a project stays in queue order whoever uploaded it', q: ['a!:m', 'a!:m', 'a!:x'], order: [1, 2, 3] },
    { name: 'the same uploader in two projects is two queues', q: ['a:m', 'a:m', 'b:m', 'a:x'], order: [1, 3, 4, 2] },
  ])('$name', ({ q, order }) => {
    expect(drain(queue(q))).toEqual(order);
  });

  it('serves the project served longest ago first, whatever the arrival order', () => {
    // b was served at tick 5, a at tick 9: b's build goes first although a's arrived first.
    const q = queue(['a', 'b']);
    expect(pickNext(q, projectsServed({ a: 9, b: 5 }))?.id).toBe(2);
    // A project never served beats both.
    expect(pickNext([...q, { id: 3, project: 'c', pipeline: 'check', enqueuedAt: 3, author: 'u' }], projectsServed({ a: 9, b: 5 }))?.id).toBe(3);
  });

  it('among projects never served, the oldest build wins', () => {
    const q: QueuedBuild[] = [
      { id: 7, project: 'z', pipeline: 'check', enqueuedAt: 1, author: 'u' },
      { id: 3, project: 'y', pipeline: 'check', enqueuedAt: 2, author: 'u' },
    ];
    expect(pickNext(q, new Served())?.id).toBe(3);
  });

  it('only considers each project’s oldest build', () => {
    // a's second build (id 2) never competes while id 1 is queued.
    const q = queue(['a', 'a', 'b']);
    expect(pickNext(q, projectsServed({ b: 1 }))?.id).toBe(1);
  });

  it('an uploader who keeps one build queued at a time (submitting the next as soon as one starts) takes turns, not every slot', () => {
    const served = new Served();
    const others = queue(['a:x', 'a:y', 'a:z']);
    const order: string[] = [];
    let id = 100;
    for (let i = 0; i < 6; i++) {
      const q = [...others, { id: id++, project: 'a', pipeline: 'check' as Pipeline, enqueuedAt: id, author: 'mallory' }];
      const next = pickNext(q, served);
      if (!next) break;
      served.mark(next);
      order.push(next.author);
      if (next.author !== 'mallory') others.splice(others.indexOf(next), 1);
    }
    expect(order.slice(0, 4).sort()).toEqual(['mallory', 'x', 'y', 'z']);
  });

  it('forgets uploaders past its bound without letting a forgotten one jump ahead of those remembered', () => {
    const served = new Served(10);
    for (let i = 0; i < 25; i++) served.mark({ project: 'a', author: `u${i}` });
    expect(served.rememberedAuthors).toBeLessThanOrEqual(10);
    // u0 was forgotten long ago: it counts as served no later than anyone remembered, and no earlier than any forgotten one.
    const remembered = served.author('a', 'u24');
    expect(served.author('a', 'u0')).toBeLessThan(remembered);
    expect(served.author('a', 'never-seen')).toBe(served.author('a', 'u0'));
    // The newest is remembered exactly: it goes last.
    expect(pickNext(queue(['a:u24', 'a:u0']), served)?.author).toBe('u0');
  });

  it('does not change its inputs', () => {
    const q = queue(['a', 'b!']);
    const before = JSON.stringify(q);
    pickNext(q, projectsServed({ a: 1 }));
    expect(JSON.stringify(q)).toBe(before);
  });
});
