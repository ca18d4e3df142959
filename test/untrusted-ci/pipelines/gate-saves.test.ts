/**
 * The gate runtime's saves (untrusted-ci/pipelines/gate-runtime.ts): the snapshot that stays in
 * the database is the newest, whatever order the database runs concurrent saves in.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { GateRuntime } from '../../../untrusted-ci/pipelines/gate-runtime.js';
import { DEFAULT_WINDOW } from '../../../untrusted-ci/pipelines/model/window.js';
import { Scheduler } from '../../../untrusted-ci/scheduler/scheduler.js';
import { BuildStore } from '../../../untrusted-ci/store/build-store.js';
import { openDatabase, type Db } from '../../../untrusted-ci/store/database.js';
import { GateStore, type NewGateEvent } from '../../../untrusted-ci/store/gate-store.js';
import type { Merger } from '../../../untrusted-ci/merger/merger.js';
import type { ProjectConfig } from '../../../untrusted-ci/config.js';
import { FakeExecutor } from '../../support/fake-executor.js';

const logger = createLogger({ level: 'silent' });

/** Holds the save of a refused approval until another save has committed (as a slower connection would). */
class SlowRefusals extends GateStore {
  private committed: (() => void) | undefined;
  override async save(pipeline: string, state: unknown, events: readonly NewGateEvent[]): Promise<void> {
    if (events.some((e) => e.message?.startsWith('not enqueued'))) {
      const other = new Promise<void>((r) => (this.committed = r));
      let turns = 0;
      const fallback = (async () => {
        while (turns++ < 200) await new Promise((r) => setImmediate(r));
      })();
      await Promise.race([other, fallback]);
      return super.save(pipeline, state, events);
    }
    await super.save(pipeline, state, events);
    this.committed?.();
  }
}

const dbs: Db[] = [];
afterEach(async () => {
  for (const d of dbs.splice(0)) await d.close();
});

describe('the gate runtime saves', () => {
  it('leave the newest snapshot, when a refused approval and a later batch save at once', async () => {
    const db = openDatabase(':memory:');
    dbs.push(db);
    const store = new BuildStore(db);
    const gateStore = new SlowRefusals(db);
    const scheduler = new Scheduler({ store, executor: new FakeExecutor(), reporters: [], slots: 1, logger });
    // A merger that finds no commit: every approval is refused (fail closed), with a save of its own.
    const merger = { commitInfo: async () => new Map(), commitsBetween: async () => ({ kind: 'missing', message: 'no such ref' }) } as unknown as Merger;
    const gate = new GateRuntime({
      store,
      gateStore,
      scheduler: () => scheduler,
      merger,
      projects: [{ name: 'p', branches: [] } as unknown as ProjectConfig],
      window: DEFAULT_WINDOW,
      queues: {},
      logger,
    });
    await gate.start();
    const change = (id: string) => ({ project: 'p', branch: 'main', change: id, patchset: 1, ref: `refs/changes/${id}/1`, author: 'alice', source: 'test' });
    const a = await store.recordChange(change('1'));
    const b = await store.recordChange(change('2'));
    gate.approval(a, true); // refused: its save is slow
    await new Promise((r) => setImmediate(r));
    gate.patchset(b); // a later batch: the gate learns of change 2
    await gate.idle();
    for (let i = 0; i < 300; i++) await new Promise((r) => setImmediate(r));
    const saved = JSON.stringify(await gateStore.loadState('gate'));
    expect(saved).toContain('refs/changes/2/1');
    await gate.close();
    await scheduler.close();
  });
});
