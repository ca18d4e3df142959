/**
 * The scheduler's choice read from the store's group heads (`pickNextFrom`, skip scans by index)
 * is the pure fair queue's (`pickNext` over the whole queue): the same build, every time, for
 * random queues (gate and check builds of several projects and uploaders) and random histories of
 * who was served — on both engines of the CI database.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pickNext, pickNextFrom, Served } from '../../../untrusted-ci/scheduler/fair-queue.js';
import { BuildStore } from '../../../untrusted-ci/store/build-store.js';
import { storeEngines, type FreshDb } from '../../support/store-engines.js';

const engines = await storeEngines();

const Build = fc.record({
  gate: fc.boolean(),
  project: fc.constantFrom('p0', 'p1', 'p2', 'p3'),
  author: fc.constantFrom('ann', 'bob', 'cy', 'dee'),
});

describe.each(engines)('pickNextFrom on $name', ({ skip, fresh }) => {
  let made: FreshDb | undefined;
  beforeAll(async () => {
    if (!skip) made = await fresh();
  });
  afterAll(async () => {
    await made?.dispose();
  });

  it.skipIf(skip)('chooses what pickNext chooses over the whole queue, build after build', async () => {
    const db = made!.db;
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(Build, { minLength: 1, maxLength: 14 }), fc.array(fc.nat(13), { maxLength: 6 }), async (builds, marks) => {
        await db.run('DELETE FROM jobs');
        await db.run('DELETE FROM builds');
        await db.run('DELETE FROM changes');
        const store = new BuildStore(db);
        for (const b of builds) {
          const change = { project: b.project, branch: 'main', change: `c${++n}`, patchset: 1, ref: 'refs/x', author: b.author, source: 'api' };
          if (b.gate) await store.enqueueGateBuild((await store.recordChange(change)).id, [], n);
          else await store.enqueue(change, 'check');
        }
        const served = new Served();
        const all = await store.queued();
        for (const m of marks) if (all[m]) served.mark(all[m]!); // some history of who was served
        for (;;) {
          const whole = await store.queued();
          const expected = pickNext(whole, served);
          const got = await pickNextFrom(store, served);
          expect(got?.id).toBe(expected?.id);
          if (!got) break;
          expect(got).toEqual(expected);
          expect(await store.start(got.id)).toBe(true);
          served.mark(got);
        }
      }),
      { numRuns: 40 },
    );
  });
});
