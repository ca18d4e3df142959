import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { afterAll, describe, expect, it } from 'vitest';
import { LABEL_OWNER } from '#shared/runner/labels.js';
import { newOwnerId } from '#shared/runner/owner.js';
import { ImageCache } from '../../../untrusted-ci/environments/image-cache.js';
import { cleanup, exists, input, logger, makeRig, testPolicy, type Rig } from './env-support.js';

const PREFIX = `envc-${process.pid}`;
const external = new Set<string>();
let clock = 1_000_000;
// This file's GC manages this file's projects only: other test files build on the same engine.
const rig = makeRig(testPolicy(), { now: () => clock, externalPins: async () => external, projects: (p) => p.startsWith(PREFIX) });
const containers: Docker.Container[] = [];

afterAll(async () => {
  for (const c of containers) await c.remove({ force: true }).catch(() => {});
  await cleanup(rig, PREFIX);
});

/** A tiny environment (COPY only: no RUN container) whose content is `content`. */
async function build(r: Rig, project: string, content: string) {
  return r.builder.ensure(await input(r, project, 'FROM airlock/base:busybox\nCOPY f /f\n', { f: content }));
}

async function container(image: string, labels: Record<string, string> = {}, start = false): Promise<Docker.Container> {
  const c = await rig.docker.createContainer({ Image: image, Cmd: ['sleep', '30'], Labels: labels, HostConfig: { NetworkMode: 'none' } });
  containers.push(c);
  if (start) await c.start();
  return c;
}

describe('ImageCache (real Docker)', () => {
  it('with budget 0 removes unpinned images, never a pinned, externally pinned or container-used one', async () => {
    const p = `${PREFIX}-pins`;
    const pinned = await build(rig, p, 'a');
    const ext = await build(rig, p, 'b');
    const used = await build(rig, p, 'c');
    const free = await build(rig, p, 'd');
    for (const r of [ext, used, free]) r.release();
    external.add(ext.image);
    const c = await container(used.image);

    const report = await rig.cache.gc({ budgetBytes: 0 });
    expect(report.removed).toEqual([free.image]);
    expect(report.freedBytes).toBeGreaterThan(0);
    expect(report.kept).toBe(3);
    for (const r of [pinned, ext, used]) expect(await exists(rig.docker, r.image)).toBe(true);
    expect(await exists(rig.docker, free.image)).toBe(false);

    pinned.release();
    external.delete(ext.image);
    await c.remove({ force: true });
    const again = await rig.cache.gc({ budgetBytes: 0 });
    expect(new Set(again.removed)).toEqual(new Set([pinned.image, ext.image, used.image]));
    expect(again.kept).toBe(0);
  });

  it('evicts the least recently used first; keepRecent keeps each project newest', async () => {
    const p = `${PREFIX}-lru`;
    clock = 1_000_000;
    const x = await build(rig, p, 'x');
    clock = 2_000_000;
    const y = await build(rig, p, 'y');
    clock = 3_000_000;
    const z = await build(rig, p, 'z');
    clock = 4_000_000;
    const x2 = await build(rig, p, 'x'); // a use: x is now the newest
    expect(x2.cached).toBe(true);
    for (const r of [x, y, z, x2]) r.release();
    const usage = JSON.parse(readFileSync(join(rig.dir, 'state', 'usage.json'), 'utf8')) as Record<string, number>;
    expect(usage).toMatchObject({ [x.image]: 4_000_000, [y.image]: 2_000_000, [z.image]: 3_000_000 });

    const total = async () => (await rig.cache.list()).reduce((n, i) => n + i.bytes, 0);
    expect((await rig.cache.gc({ budgetBytes: (await total()) - 1 })).removed).toEqual([y.image]);
    expect((await rig.cache.gc({ budgetBytes: (await total()) - 1 })).removed).toEqual([z.image]);

    const keep1 = new ImageCache({ docker: rig.docker, policy: testPolicy({ cache: { keepRecent: 1 } }), logger, usageFile: join(rig.dir, 'state', 'usage.json'), projects: (q) => q === p });
    expect((await keep1.gc({ budgetBytes: 0 })).removed).toEqual([]);
    expect(await exists(rig.docker, x.image)).toBe(true);
    const idle = new ImageCache({ docker: rig.docker, policy: testPolicy({ cache: { minIdle: 60_000 } }), logger, usageFile: join(rig.dir, 'state', 'usage.json'), projects: (q) => q === p, now: () => 4_030_000 });
    expect((await idle.gc({ budgetBytes: 0 })).removed).toEqual([]);
    expect((await rig.cache.gc({ budgetBytes: 0 })).removed).toEqual([x.image]);
  });

  it('a GC racing ensure() never removes the image ensure() returned', async () => {
    const p = `${PREFIX}-race`;
    const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
    let cached = 0;
    let held: (() => void) | undefined;
    // Rounds of three on one content: a new build racing GC; the image present but unpinned
    // (ensure's lookup races GC's removal: either outcome is fine); the image still pinned (a hit).
    for (let i = 0; i < 15; i++) {
      const inp = await input(rig, p, 'FROM airlock/base:busybox\nCOPY f /f\n', { f: `race-${Math.floor(i / 3)}` });
      const gcFirst = i % 2 === 0;
      const [r] = await Promise.all([
        (gcFirst ? delay(Math.random() * 10) : Promise.resolve()).then(() => rig.builder.ensure(inp)),
        (gcFirst ? Promise.resolve() : delay(Math.random() * 10)).then(() => rig.cache.gc({ budgetBytes: 0 })),
        rig.cache.gc({ budgetBytes: 0 }),
      ]);
      if (r.cached) cached++;
      // Still there, and usable, after every GC that raced it and one more.
      await rig.cache.gc({ budgetBytes: 0 });
      expect(await exists(rig.docker, r.image)).toBe(true);
      await (await container(r.image)).remove();
      if (i % 3 === 1) held = r.release;
      else {
        r.release();
        held?.();
        held = undefined;
      }
    }
    expect(cached).toBeGreaterThanOrEqual(5);
  });

  it('removes stopped airlock containers of dead runners only', async () => {
    const dead = await container('airlock/base:busybox', { [LABEL_OWNER]: 'gone-runner' });
    // A *running* container of a dead runner is not this GC's (it lists stopped ones and never
    // forces a removal), but it is not asserted here: every JobRunner's reaper, in the test files
    // running alongside, rightly removes a dead runner's running containers too.
    const alive = await container('airlock/base:busybox', { [LABEL_OWNER]: newOwnerId() });
    const foreign = await container('airlock/base:busybox');
    await rig.cache.gc();
    // Not asserted: the count. A JobRunner's reaper in a test file running alongside may remove
    // the dead runner's container first (rightly), and then this GC has nothing left to count.
    const ids = new Set((await rig.docker.listContainers({ all: true })).map((c) => c.Id));
    expect(ids.has(dead.id)).toBe(false);
    expect(ids.has(alive.id)).toBe(true);
    expect(ids.has(foreign.id)).toBe(true);
  });
});
