/**
 * The scheduler's kept project heads (queue-heads.ts): with every write through the store, a pick
 * from the kept heads is the pure fair queue's choice over the whole queue, whatever happened in
 * between (builds queued, started, cancelled, queued again, recovered) — on both engines. Writes
 * the store does not see (another process's) are seen after `maxAgeMs`, and a kept head that is
 * no longer queued never makes a pick say "nothing".
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pickNext, Served } from '../../../untrusted-ci/scheduler/fair-queue.js';
import { QueueHeadsCache } from '../../../untrusted-ci/scheduler/queue-heads.js';
import { BuildStore } from '../../../untrusted-ci/store/build-store.js';
import type { Db } from '../../../untrusted-ci/store/database.js';
import { storeEngines, type FreshDb } from '../../support/store-engines.js';

const engines = await storeEngines();

const Op = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('enqueue' as const), gate: fc.boolean(), project: fc.constantFrom('p0', 'p1', 'p2', 'p3'), author: fc.constantFrom('ann', 'bob', 'cy') }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('pick' as const) }) },
  fc.record({ op: fc.constant('cancel' as const), nth: fc.nat(20) }),
  fc.record({ op: fc.constant('requeue' as const), nth: fc.nat(20) }),
  fc.record({ op: fc.constant('finish' as const), nth: fc.nat(20) }),
  fc.record({ op: fc.constant('recover' as const) }),
);

async function empty(db: Db): Promise<void> {
  await db.run('DELETE FROM jobs');
  await db.run('DELETE FROM builds');
  await db.run('DELETE FROM changes');
}

describe.each(engines)('QueueHeadsCache on $name', ({ skip, fresh }) => {
  let made: FreshDb | undefined;
  let n = 0;
  beforeAll(async () => {
    if (!skip) made = await fresh();
  });
  afterAll(async () => {
    await made?.dispose();
  });

  const change = (project: string, author: string) => ({ project, branch: 'main', change: `c${++n}`, patchset: 1, ref: 'refs/x', author, source: 'api' });

  it.skipIf(skip)('picks what pickNext picks over the whole queue, after any writes through the store', async () => {
    const db = made!.db;
    await fc.assert(
      fc.asyncProperty(fc.array(Op, { minLength: 1, maxLength: 30 }), async (ops) => {
        await empty(db);
        const store = new BuildStore(db);
        // A clock that never moves: every pick after the first uses kept heads.
        const heads = new QueueHeadsCache(store, { now: () => 0 });
        const served = new Served();
        try {
          for (const o of ops) {
            const running = async (): Promise<number[]> => (await store.builds({ state: 'running', limit: 100 })).map((b) => b.id).sort((a, b) => a - b);
            const queued = await store.queued();
            if (o.op === 'enqueue') {
              if (o.gate) await store.enqueueGateBuild((await store.recordChange(change(o.project, o.author))).id, [], n);
              else await store.enqueue(change(o.project, o.author), 'check');
            } else if (o.op === 'pick') {
              const expected = pickNext(queued, served);
              const got = await heads.pick(served);
              expect(got?.id).toBe(expected?.id);
              if (got) {
                expect(await store.start(got.id)).toBe(true);
                served.mark(got);
              }
            } else if (o.op === 'cancel' && queued.length > 0) {
              await store.finishQueued(queued[o.nth % queued.length]!.id, 'cancelled', 'test');
            } else if (o.op === 'requeue' || o.op === 'finish') {
              const r = await running();
              if (r.length === 0) continue;
              const id = r[o.nth % r.length]!;
              if (o.op === 'requeue') await store.requeue(id);
              else await store.finish(id, 'passed', 'ok', [], (await store.build(id)).attempt);
            } else if (o.op === 'recover') {
              await store.recover();
            }
          }
          // And to the end of the queue.
          for (;;) {
            const expected = pickNext(await store.queued(), served);
            const got = await heads.pick(served);
            expect(got?.id).toBe(expected?.id);
            if (!got) break;
            expect(await store.start(got.id)).toBe(true);
            served.mark(got);
          }
        } finally {
          heads.close();
        }
      }),
      { numRuns: 60 },
    );
  });

  it.skipIf(skip)('keeps the heads between picks: one project read again a pick, not every project', async () => {
    const db = made!.db;
    await empty(db);
    const store = new BuildStore(db);
    const heads = new QueueHeadsCache(store, { now: () => 0 });
    for (let p = 0; p < 20; p++) for (let i = 0; i < 3; i++) await store.enqueue(change(`p${p}`, `u${i}`), 'check');
    const served = new Served();
    for (let i = 0; i < 30; i++) {
      const got = await heads.pick(served);
      expect(await store.start(got!.id)).toBe(true);
      served.mark(got!);
    }
    // One full read of each pipeline at the first pick; then the chosen project's head only. Each
    // project's uploaders are read in full at its first pick; at its second only the uploader served.
    expect(heads.reads.full).toBe(2);
    expect(heads.reads.uploaders).toBe(20);
    expect(heads.reads.head).toBe(29 + 10);
    heads.close();
  });

  it.skipIf(skip)('keeps a project\'s uploaders between its picks: one uploader read again a pick', async () => {
    const db = made!.db;
    await empty(db);
    const store = new BuildStore(db);
    const heads = new QueueHeadsCache(store, { now: () => 0 });
    for (let round = 0; round < 2; round++) for (let i = 0; i < 40; i++) await store.enqueue(change('big', `u${i}`), 'check');
    const served = new Served();
    const order: string[] = [];
    for (let i = 0; i < 80; i++) {
      const expected = pickNext(await store.queued(), served);
      const got = await heads.pick(served);
      expect(got?.id).toBe(expected?.id);
      order.push(got!.author);
      expect(await store.start(got!.id)).toBe(true);
      served.mark(got!);
    }
    expect(new Set(order.slice(0, 40)).size).toBe(40); // every uploader once before any twice
    expect(heads.reads.uploaders).toBe(1);
    expect(heads.reads.head).toBe(79 * 2); // the project's head and the uploader served
    expect(await heads.pick(served)).toBeUndefined();
    heads.close();
  });

  it.skipIf(skip)('sees at once a new uploader of a project whose uploaders it keeps', async () => {
    const db = made!.db;
    await empty(db);
    const store = new BuildStore(db);
    const heads = new QueueHeadsCache(store, { now: () => 0 });
    const served = new Served();
    const a = (await store.enqueue(change('p', 'ann'), 'check')).buildId;
    const b = (await store.enqueue(change('p', 'bob'), 'check')).buildId;
    await store.enqueue(change('p', 'bob'), 'check');
    for (const want of [a, b]) {
      const got = await heads.pick(served);
      expect(got?.id).toBe(want);
      await store.start(got!.id);
      served.mark(got!);
    }
    // cy was never served: cy's build goes before bob's second.
    const c = (await store.enqueue(change('p', 'cy'), 'check')).buildId;
    expect((await heads.pick(served))?.id).toBe(c);
    expect(heads.reads.uploaders).toBe(1);
    heads.close();
  });

  it.skipIf(skip)('sees at once a build queued again (a retry, a recovery) in a project it had read as empty', async () => {
    const db = made!.db;
    for (const how of ['requeue', 'recover'] as const) {
      await empty(db);
      const store = new BuildStore(db);
      const heads = new QueueHeadsCache(store, { now: () => 0 });
      const served = new Served();
      const a = (await store.enqueue(change('p0', 'ann'), 'check')).buildId;
      const b1 = (await store.enqueue(change('p1', 'bob'), 'check')).buildId;
      await store.enqueue(change('p1', 'bob'), 'check'); // p1 stays queued
      for (const want of [a, b1]) {
        const got = await heads.pick(served);
        expect(got?.id).toBe(want);
        await store.start(got!.id);
        served.mark(got!);
      }
      // p0 was read again after its pick: nothing queued there. Now `a` is queued again; p0 was
      // served before p1, so it goes first.
      if (how === 'requeue') await store.requeue(a);
      else {
        await store.finish(b1, 'passed', 'ok', [], 1);
        await store.recover();
      }
      expect((await heads.pick(served))?.id, how).toBe(a);
      heads.close();
    }
  });

  it.skipIf(skip)('sees writes the store did not make after maxAgeMs, and never says "nothing" from a stale head', async () => {
    const db = made!.db;
    await empty(db);
    const store = new BuildStore(db);
    let now = 0;
    const heads = new QueueHeadsCache(store, { maxAgeMs: 1000, now: () => now });
    const served = new Served();
    const a = (await store.enqueue(change('pa', 'ann'), 'check')).buildId;
    const b = (await store.enqueue(change('pa', 'bob'), 'check')).buildId;
    expect((await heads.pick(served))?.id).toBe(a);
    await store.start(a);
    served.mark({ project: 'pa', author: 'ann' });

    // Another process queues a build of a new project, and takes `b` (raw SQL: the store is not told).
    const other = new BuildStore(db);
    const c = (await other.enqueue(change('pz', 'zed'), 'check')).buildId;
    await db.run("UPDATE builds SET state = 'running' WHERE id = ?", [b]);
    // pa's head is read again (it was picked): nothing queued there. pz is not known yet, and the
    // kept list is empty: a fresh read finds pz rather than saying "nothing".
    expect((await heads.pick(served))?.id).toBe(c);
    await store.start(c);
    served.mark({ project: 'pz', author: 'zed' });

    // Kept heads that another process changed: a build of pb queued by it is missed until the heads age.
    const d = (await other.enqueue(change('pb', 'dee'), 'check')).buildId;
    const e = (await store.enqueue(change('pc', 'eve'), 'check')).buildId;
    served.mark({ project: 'pc', author: 'eve' }); // pc served last: pb would go first, were it known
    expect((await heads.pick(served))?.id).toBe(e);
    await store.start(e);
    now += 1000;
    expect((await heads.pick(served))?.id).toBe(d);
    heads.close();
  });
});
