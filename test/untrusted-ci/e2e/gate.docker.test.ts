/**
 * The gate end to end on real parts: a real upstream git repository, the real service (SQLite,
 * merger, scheduler, executor) and real Docker. Three changes are approved together; the middle
 * one fails its gate job. The first and the third merge, in that order, each moving the upstream
 * branch by compare-and-swap to exactly the commit that was tested; the third was first tested on
 * top of the failing change, then re-tested without it.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GateView } from '../../../shared/schemas/api/gate.js';
import type { BuildView } from '../../../shared/schemas/api/builds.js';
import type { GateEventView } from '../../../untrusted-ci/store/gate-store.js';
import { startTestCi, type TestCi } from '../../support/ci.js';
import { createRepo, type TestRepo } from '../../support/git-repo.js';

// The gate job takes a few seconds so the three build sets overlap (tested speculatively, in parallel).
const CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  test:
    command: [sh, -c, "sleep 3; if [ -f broken ]; then echo broken; exit 1; fi; cat *.txt"]
    pipelines: [gate]
`;

describe('gate (real Docker, real git)', () => {
  let up: TestRepo;
  let ci: TestCi;
  beforeAll(async () => {
    up = createRepo({ '.airlock.yaml': CONFIG, 'base.txt': 'base\n' });
    ci = await startTestCi({ projects: [{ name: 'demo/gated', url: up.dir }], slots: 3 });
  });
  afterAll(async () => {
    await ci?.close();
    up?.dispose();
  });

  const api = async <T,>(method: 'GET' | 'POST', url: string, payload?: object): Promise<T> => {
    const r = await ci.service.app.inject({ method, url, ...(payload ? { payload } : {}) });
    if (r.statusCode >= 300) throw new Error(`${method} ${url} answered ${r.statusCode}: ${r.body}`);
    return r.json() as T;
  };

  it('merges A and C, reports B, and the branch history is exactly what was tested', async () => {
    const tip = up.tip();
    const a = up.change(201, 1, { 'a.txt': 'A\n' });
    const b = up.change(202, 1, { 'b.txt': 'B\n', broken: 'yes\n' });
    const c = up.change(203, 1, { 'c.txt': 'C\n' });

    // A through the approve endpoint (recorded by a check submission first); B and C submitted to the gate directly.
    const checkA = await api<{ change: { id: number } }>('POST', '/api/changes', { project: 'demo/gated', ref: a.ref, change: '201', patchset: 1 });
    await api('POST', `/api/changes/${checkA.change.id}/approve`);
    await api('POST', '/api/changes', { project: 'demo/gated', ref: b.ref, change: '202', patchset: 1, pipeline: 'gate' });
    await api('POST', '/api/changes', { project: 'demo/gated', ref: c.ref, change: '203', patchset: 1, pipeline: 'gate' });

    // All three are queued at once, each on top of the ones ahead (an approval first reads the
    // change's dependencies from git, so wait for the gate to take them in).
    await ci.service.gate.idle();
    const early = await api<GateView>('GET', '/api/gate');
    expect(early.queues.map((q) => q.items.map((i) => i.change))).toEqual([['201', '202', '203']]);

    const reports = await waitForEvents(3);
    const byChange = Object.fromEntries(reports.filter((e) => e.kind === 'report').map((e) => [e.change, e.result]));
    expect(byChange).toEqual({ '201': 'SUCCESS', '202': 'FAILURE', '203': 'SUCCESS' });
    const merged = (await api<{ events: GateEventView[] }>('GET', '/api/gate/events?kind=merged')).events;
    expect(merged.map((e) => e.change)).toEqual(['201', '203']);

    // The branch moved twice, to exactly the tested commits: A (a fast-forward), then C merged onto A.
    expect(up.tip()).toBe(merged[1]!.commit);
    const firstParents = git(up.dir, ['rev-list', '--first-parent', 'master']).split('\n');
    expect(firstParents.slice(0, 3)).toEqual([merged[1]!.commit, a.sha, tip]);
    expect(merged[0]!.commit).toBe(a.sha);
    expect(git(up.dir, ['rev-parse', `${merged[1]!.commit}^2`])).toBe(c.sha);
    const files = git(up.dir, ['ls-tree', '--name-only', 'master']).split('\n');
    expect(files).toEqual(expect.arrayContaining(['a.txt', 'c.txt', 'base.txt']));
    expect(files).not.toContain('b.txt');
    expect(files).not.toContain('broken');

    // C ran twice: first on A+B+C, then on A+C (passed).
    const gateBuilds = (await api<BuildView[] | { builds: BuildView[] }>('GET', '/api/builds?limit=50'));
    const list = (Array.isArray(gateBuilds) ? gateBuilds : gateBuilds.builds).filter((x) => x.pipeline === 'gate');
    // The gate acts on job results; a build record finishes a moment later (logs uploaded): wait for it.
    const ofC = await Promise.all(list.filter((x) => x.change.change === '203').sort((x, y) => x.id - y.id).map((x) => ci.waitFor(x.id)));
    // The first (on A+B+C, with B's broken file) is cancelled by the reset, or, if its own job
    // ended first, failed: either way it was thrown away and C re-tested on A+C.
    expect(ofC).toHaveLength(2);
    expect(['cancelled', 'failed']).toContain(ofC[0]!.result);
    expect(ofC[1]!.result).toBe('passed');
    const ofB = await Promise.all(list.filter((x) => x.change.change === '202').map((x) => ci.waitFor(x.id)));
    expect(ofB.map((x) => x.result)).toEqual(['failed']);

    const after = await api<GateView>('GET', '/api/gate');
    expect(after.queues.flatMap((q) => q.items)).toEqual([]);
    expect(after.queues[0]!.window).toBe(Math.floor((20 + 1) / 2) + 1); // +1 (A merged), halved (B failed), +1 (C merged)
  });

  it('puts a git parent ahead: a child approved first waits for its parent, then both merge in order', async () => {
    const before = (await api<{ events: GateEventView[] }>('GET', '/api/gate/events?kind=report')).events.length;
    const parent = up.change(211, 1, { 'p.txt': 'parent\n' });
    const child = up.change(212, 1, { 'k.txt': 'child\n' }, { parent: parent.sha });
    // Both are known to the CI (checked); the child is approved first and must wait for its parent.
    const p = await api<{ change: { id: number } }>('POST', '/api/changes', { project: 'demo/gated', ref: parent.ref, change: '211', patchset: 1 });
    const k = await api<{ change: { id: number } }>('POST', '/api/changes', { project: 'demo/gated', ref: child.ref, change: '212', patchset: 1 });
    await api('POST', `/api/changes/${k.change.id}/approve`);
    await ci.service.gate.idle();
    expect((await api<GateView>('GET', '/api/gate')).queues.flatMap((q) => q.items)).toEqual([]);
    await api('POST', `/api/changes/${p.change.id}/approve`);
    await ci.service.gate.idle();
    const items = (await api<GateView>('GET', '/api/gate')).queues.flatMap((q) => q.items);
    expect(items.map((i) => [i.change, i.state])).toEqual([
      ['211', ['211,1']],
      ['212', ['211,1', '212,1']],
    ]);
    const reports = (await waitForEvents(before + 2)).slice(before);
    expect(reports.map((e) => [e.change, e.result])).toEqual([
      ['211', 'SUCCESS'],
      ['212', 'SUCCESS'],
    ]);
    expect(up.tip()).toBe(child.sha); // two fast-forwards: the child is on top of its parent
  });

  async function waitForEvents(reportsWanted: number, timeoutMs = 120_000): Promise<GateEventView[]> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const { events } = await api<{ events: GateEventView[] }>('GET', '/api/gate/events?kind=report');
      if (events.length >= reportsWanted) return events;
      if (Date.now() > end) throw new Error(`only ${events.length} gate reports after ${timeoutMs} ms: ${JSON.stringify(await api('GET', '/api/gate'))}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
});

function git(dir: string, args: string[]): string {
  return execFileSync('git', ['-C', dir, ...args], { encoding: 'utf8' }).trim();
}
