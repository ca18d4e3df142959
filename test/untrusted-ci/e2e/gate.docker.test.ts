/**
 * The gate end to end on real parts: the Gerrit stand-in as the review system (its webhooks, its
 * REST API, its submit rules and its own merges into its own bare repository), the real service
 * (SQLite, merger, scheduler, executor) and real Docker. Three changes are approved in Gerrit; the
 * middle one fails its gate job. The first and the third are voted Verified +2 and submitted by
 * Gerrit, in that order; the middle one gets Verified -2. What Gerrit merged is what was tested:
 * the branch's tree is exactly the tree the gate ran C's jobs on.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GateView } from '../../../untrusted-ci/api/schemas/gate.js';
import type { BuildView } from '#shared/schemas/api/builds.js';
import type { GateEventView } from '../../../untrusted-ci/store/gate-store.js';
import { startTestCi, type TestCi } from '../../support/ci.js';
import { CI_ACCOUNT, startGerrit, type GerritRig } from '../../support/gerrit-rig.js';
import { until } from '../../support/until.js';

// The gate jobs take a few seconds so the three build sets overlap (tested speculatively, in
// parallel), and each build set runs test and lint at once, then report once both passed: the gate
// is told of jobs of one item that run together, and B's failing test resets C while B's lint and
// C's own jobs are still running.
const CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  test:
    command: [sh, -c, "sleep 3; if [ -f broken ]; then echo broken; exit 1; fi; cat *.txt"]
    pipelines: [gate]
  lint:
    command: [sh, -c, "sleep 3; cat base.txt"]
    pipelines: [gate]
  report:
    command: [sh, -c, "echo tested"]
    pipelines: [gate]
    needs: [test, lint]
`;
const PROJECT = 'demo/gated';

describe('gate through the review system (real Docker, real git, Gerrit stand-in)', () => {
  let rig: GerritRig;
  let ci: TestCi;
  beforeAll(async () => {
    rig = await startGerrit();
    rig.gerrit.createProject(PROJECT, { '.airlock.yaml': CONFIG, 'base.txt': 'base\n' });
    // Room for the jobs of the three build sets at once (each asks for the policy's 1 CPU), whatever this machine has.
    ci = await startTestCi({ projects: [{ name: PROJECT, url: rig.gerrit.gitUrl(PROJECT) }], slots: 6, capacity: { cpus: 6 } }, { review: rig });
  });
  afterAll(async () => {
    await ci?.close();
    await rig?.gerrit.close();
  });

  const api = async <T,>(url: string): Promise<T> => {
    const r = await ci.service.app.inject({ method: 'GET', url });
    if (r.statusCode >= 300) throw new Error(`GET ${url} answered ${r.statusCode}: ${r.body}`);
    return r.json() as T;
  };
  const builds = async () => {
    const r = await api<BuildView[] | { builds: BuildView[] }>('/api/builds?limit=100');
    return Array.isArray(r) ? r : r.builds;
  };
  const gateItems = async () => (await api<GateView>('/api/gate')).queues.flatMap((q) => q.items);
  const events = async (kind: 'report' | 'merged') => (await api<{ events: GateEventView[] }>(`/api/gate/events?kind=${kind}&limit=1000`)).events;
  const approve = async (n: number) => {
    rig.gerrit.review(n, 'grace', { labels: { 'Code-Review': 2 } });
    await until(`change ${n} in the gate`, async () => ((await gateItems()).some((i) => i.change === String(n)) || (await events('report')).some((e) => e.change === String(n)) ? true : undefined));
  };

  it('A and C merge through Gerrit, B is voted -2; the branch holds exactly what was tested', async () => {
    const g = rig.gerrit;
    const a = g.upload({ project: PROJECT, owner: 'ada', subject: 'A', files: { 'a.txt': 'A\n' } });
    const b = g.upload({ project: PROJECT, owner: 'ada', subject: 'B', files: { 'b.txt': 'B\n', broken: 'yes\n' } });
    const c = g.upload({ project: PROJECT, owner: 'mallory', subject: 'C', files: { 'c.txt': 'C\n' } });
    // Approved one after the other (the stand-in, like the webhooks plugin, does not keep order).
    for (const x of [a, b, c]) await approve(x.number);
    expect((await gateItems()).map((i) => i.change)).toEqual([String(a.number), String(b.number), String(c.number)]);

    const reports = await until('three gate reports', async () => {
      const r = await events('report');
      return r.length >= 3 ? r : undefined;
    }, 120_000);
    expect(Object.fromEntries(reports.map((e) => [e.change, e.result]))).toEqual({ [a.number]: 'SUCCESS', [b.number]: 'FAILURE', [c.number]: 'SUCCESS' });
    const merged = await events('merged');
    expect(merged.map((e) => e.change)).toEqual([String(a.number), String(c.number)]);

    // Gerrit merged A and C, as airlock-ci, after airlock's Verified +2; B has airlock's -2 and stays open.
    expect(g.changeState(a.number)).toMatchObject({ status: 'MERGED', submitter: CI_ACCOUNT });
    expect(g.changeState(c.number)).toMatchObject({ status: 'MERGED', submitter: CI_ACCOUNT });
    expect(g.changeState(a.number).votes.Verified).toEqual({ [CI_ACCOUNT]: 2 });
    expect(g.changeState(b.number)).toMatchObject({ status: 'NEW' });
    await until('the -2 on B', async () => (g.changeState(b.number).votes.Verified?.[CI_ACCOUNT] === -2 ? true : undefined));

    // The merged events name the commit Gerrit's merges left (what the builder is told of).
    const tip = g.branchTip(PROJECT);
    expect(merged[1]!.commit).toBe(tip);
    expect(git(g.gitUrl(PROJECT), ['rev-parse', `${tip}^2`])).toBe(c.sha);
    const files = git(g.gitUrl(PROJECT), ['ls-tree', '--name-only', 'master']).split('\n');
    expect(files).toEqual(expect.arrayContaining(['a.txt', 'c.txt', 'base.txt']));
    expect(files).not.toContain('b.txt');
    expect(files).not.toContain('broken');

    // What Gerrit merged is what the gate tested: C's passing build ran on exactly this tree.
    const gateBuilds = (await builds()).filter((x) => x.pipeline === 'gate');
    const ofC = await Promise.all(gateBuilds.filter((x) => x.change.change === String(c.number)).sort((x, y) => x.id - y.id).map((x) => ci.waitFor(x.id)));
    expect(ofC).toHaveLength(2); // first on A+B+C (thrown away by the reset), then on A+C
    expect(['cancelled', 'failed']).toContain(ofC[0]!.result);
    expect(ofC[1]!.result).toBe('passed');
    const states = (b: BuildView) => Object.fromEntries(b.jobs.map((j) => [j.name, j.state]));
    expect(states(ofC[1]!)).toEqual({ test: 'passed', lint: 'passed', report: 'passed' });
    // B: its test failed, its lint (running beside it) still ended and passed, report was skipped.
    const ofB = await Promise.all(gateBuilds.filter((x) => x.change.change === String(b.number)).map((x) => ci.waitFor(x.id)));
    expect(ofB.map((x) => [x.result, states(x)])).toEqual([['failed', { test: 'failed', lint: 'passed', report: 'skipped' }]]);
    // C's first build, cancelled by the reset while its jobs ran: none is left running, none passed after it.
    expect(ofC[0]!.jobs.filter((j) => j.state === 'running')).toEqual([]);
    expect(states(ofC[0]!).report).not.toBe('passed');
    const testedTree = git(`${ci.dataDir}/git/mirrors/${mirrorName(ci)}`, ['rev-parse', `${ofC[1]!.commit}^{tree}`]);
    expect(git(g.gitUrl(PROJECT), ['rev-parse', 'master^{tree}'])).toBe(testedTree);

    const after = await api<GateView>('/api/gate');
    expect(after.queues.flatMap((q) => q.items)).toEqual([]);
    expect(after.queues[0]!.window).toBe(Math.floor((20 + 1) / 2) + 1); // +1 (A merged), halved (B failed), +1 (C merged)
  });

  it('puts a git parent ahead: a child approved first waits for its parent, then both merge in order', async () => {
    const g = rig.gerrit;
    const before = (await events('report')).length;
    const parent = g.upload({ project: PROJECT, owner: 'ada', subject: 'parent', files: { 'p.txt': 'parent\n' } });
    const child = g.upload({ project: PROJECT, owner: 'ada', subject: 'child', files: { 'k.txt': 'child\n' }, parent: parent.sha });
    // Both are known to the CI (checked); the child is approved first and must wait for its parent.
    await until('both checked', async () => ((await builds()).filter((b) => b.pipeline === 'check' && [String(parent.number), String(child.number)].includes(b.change.change)).length === 2 ? true : undefined));
    g.review(child.number, 'grace', { labels: { 'Code-Review': 2 } });
    await new Promise((r) => setTimeout(r, 500));
    await ci.service.gate.idle();
    expect(await gateItems()).toEqual([]);
    await approve(parent.number);
    const items = await gateItems();
    expect(items.map((i) => [i.change, i.state])).toEqual([
      [String(parent.number), [`${parent.number},1`]],
      [String(child.number), [`${parent.number},1`, `${child.number},1`]],
    ]);
    const reports = await until('two more reports', async () => {
      const r = (await events('report')).slice(before);
      return r.length >= 2 ? r : undefined;
    }, 120_000);
    expect(reports.map((e) => [e.change, e.result])).toEqual([
      [String(parent.number), 'SUCCESS'],
      [String(child.number), 'SUCCESS'],
    ]);
    expect(g.branchTip(PROJECT)).toBe(child.sha); // two fast-forwards: the child is on top of its parent
  });
});

function mirrorName(ci: TestCi): string {
  return execFileSync('ls', [`${ci.dataDir}/git/mirrors`], { encoding: 'utf8' }).trim().split('\n')[0]!;
}

function git(dir: string, args: string[]): string {
  return execFileSync('git', ['--git-dir', dir, ...args], { encoding: 'utf8' }).trim();
}
