/**
 * The gate's half of the merger against real git: deterministic merge commits (a stack rebuilt
 * gives the same ids) and submit, the compare-and-swap push of a tested commit to the canonical
 * repository (a bare upstream in a temp dir).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { GitFailedError, InvalidInputError } from '../../../shared/errors.js';
import { runGit } from '../../../shared/git/git.js';
import { Merger, type PrepareRequest, type PrepareResult, type Project, type SubmitRequest } from '../../../untrusted-ci/merger/merger.js';
import { fetchRefName, Mirror } from '../../../untrusted-ci/merger/mirror.js';
import type { TestChange, TestRepo } from '../../support/git-repo.js';
import { mergerRig } from '../../support/merger-rig.js';

const { root, merger, upstream } = mergerRig('s');
let seq = 0;
const change = (c: TestChange): { ref: string; label: string } => ({ ref: c.ref, label: c.label });
async function prepare(m: Merger, req: Omit<PrepareRequest, 'buildId' | 'branch'>): Promise<Extract<PrepareResult, { kind: 'merged' }>> {
  const r = await m.prepare({ branch: 'master', buildId: `b${++seq}`, ...req });
  if (r.kind !== 'merged') throw new Error(`expected merged, got ${JSON.stringify(r)}`);
  return r;
}
function submit(req: Omit<SubmitRequest, 'branch'>): ReturnType<Merger['submit']> {
  return merger.submit({ branch: 'master', ...req });
}
async function mirrorGit(name: string, ...args: string[]): Promise<string> {
  return (await runGit(args, { gitDir: Mirror.of(root, name).dir })).stdout.toString('utf8').trim();
}

/** A (based on the old tip) and B (on A), then master moves on, so each step is a real merge. */
function gateScenario(): { up: TestRepo; project: Project; a: TestChange; b: TestChange; tip: string } {
  const { up, project } = upstream();
  const a = up.change(100, 1, { 'a.txt': 'A\n' });
  const b = up.change(101, 1, { 'b.txt': 'B\n' }, { parent: a.sha });
  const tip = up.commit({ 'README.md': 'moved on\n' });
  return { up, project, a, b, tip };
}

describe('deterministic merge commits', () => {
  it("gives A's step the same commit in A's build and in A+B's, in any mirror", async () => {
    const { project, a, b } = gateScenario();
    const alone = await prepare(merger, { project, changes: [change(a)] });
    const stacked = await prepare(merger, { project, changes: [change(a), change(b)] });
    expect(alone.steps[0]?.mode).toBe('merge');
    expect(stacked.steps[0]?.result).toBe(alone.steps[0]?.result);
    const otherRoot = mkdtempSync(join(tmpdir(), 'airlock-merger-submit-other-'));
    try {
      const fresh = await prepare(new Merger({ root: otherRoot }), { project, changes: [change(a), change(b)] });
      expect(fresh.steps.map((s) => s.result)).toEqual(stacked.steps.map((s) => s.result));
    } finally {
      rmSync(otherRoot, { recursive: true, force: true });
    }
  });

  it('dates a merge at the later committer date of its parents, as airlock', async () => {
    const { project, a, tip } = gateScenario();
    const r = await prepare(merger, { project, changes: [change(a)] });
    const [tipDate, aDate] = (await mirrorGit(project.name, 'log', '--no-walk', '--format=%ct', tip, a.sha)).split('\n').map(Number);
    expect(await mirrorGit(project.name, 'log', '-1', '--format=%at %ct %an <%ae> %cn <%ce>', r.commit)).toBe(
      `${Math.max(tipDate ?? 0, aDate ?? 0)} ${Math.max(tipDate ?? 0, aDate ?? 0)} airlock <airlock@localhost> airlock <airlock@localhost>`,
    );
  });
});

describe('submit', () => {
  it('merges A then B, each moving the branch from the state it was tested on', async () => {
    const { up, project, a, b, tip } = gateScenario();
    const forA = await prepare(merger, { project, changes: [change(a)] });
    const forB = await prepare(merger, { project, changes: [change(a), change(b)] });
    const aTested = forA.commit;
    const bTested = forB.commit;
    const bExpected = forB.steps[0]?.result ?? '';

    expect(await submit({ project, expected: tip, commit: aTested })).toEqual({ kind: 'merged', commit: aTested });
    expect(up.tip()).toBe(aTested);
    expect(await submit({ project, expected: bExpected, commit: bTested })).toEqual({ kind: 'merged', commit: bTested });
    expect(up.git('rev-list', '--first-parent', '--max-count=3', 'master').split('\n')).toEqual([bTested, aTested, tip]);
    expect(up.git('show', 'master:b.txt')).toBe('B'); // the objects went along
    expect(await mirrorGit(project.name, 'rev-parse', fetchRefName('refs/heads/master'))).toBe(bTested);
    // A retry of a submit that landed is idempotent.
    expect(await submit({ project, expected: bExpected, commit: bTested })).toEqual({ kind: 'merged', commit: bTested });
    // The next prepare starts from the new tip.
    expect((await prepare(merger, { project, changes: [] })).commit).toBe(bTested);
  });

  it('refuses when the branch moved meanwhile, naming its tip, and leaves it alone', async () => {
    const { up, project, a, tip } = gateScenario();
    const fileProject = { ...project, url: `file://${up.dir}` };
    const tested = (await prepare(merger, { project: fileProject, changes: [change(a)] })).commit;
    const moved = up.commit({ 'c.txt': 'C\n' });
    expect(await merger.submit({ project: fileProject, branch: 'refs/heads/master', expected: tip, commit: tested })).toEqual({
      kind: 'refused',
      reason: `branch master is at ${moved}, not ${tip}`,
    });
    expect(up.tip()).toBe(moved);
    up.git('update-ref', '-d', 'refs/heads/master');
    expect(await submit({ project, expected: tip, commit: tested })).toEqual({ kind: 'refused', reason: 'branch master not found' });
  });

  it('refuses a commit that does not descend from expected, or that the mirror lacks', async () => {
    const { up, project, a, tip } = gateScenario();
    const c = up.change(102, 1, { 'c.txt': 'C\n' }, { parent: tip });
    const aTested = (await prepare(merger, { project, changes: [change(a)] })).commit;
    const cTested = (await prepare(merger, { project, changes: [change(c)] })).commit;
    expect(await submit({ project, expected: aTested, commit: cTested })).toEqual({
      kind: 'refused',
      reason: `commit ${cTested} does not descend from ${aTested}`,
    });
    const ghost = 'f'.repeat(40);
    expect(await submit({ project, expected: tip, commit: ghost })).toEqual({ kind: 'refused', reason: `commit ${ghost} not found in the mirror` });
    expect(await submit({ project, expected: ghost, commit: aTested })).toEqual({ kind: 'refused', reason: `expected commit ${ghost} not found in the mirror` });
    expect(await submit({ project: { name: 'never-prepared', url: up.url }, expected: tip, commit: aTested })).toMatchObject({ kind: 'refused' });
    expect(up.tip()).toBe(tip);
  });

  it('throws GitFailedError when the canonical repository cannot be reached', async () => {
    const { project, a, tip } = gateScenario();
    const tested = (await prepare(merger, { project, changes: [change(a)] })).commit;
    await expect(submit({ project: { ...project, url: join(root, 'no-such-repo.git') }, expected: tip, commit: tested })).rejects.toBeInstanceOf(GitFailedError);
  });

  it('rejects malformed input, listing every problem', async () => {
    const err = await merger
      .submit({ project: { name: 'x', url: 'ext::sh -c true' }, branch: '-x', expected: 'HEAD', commit: 'abc123' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as InvalidInputError).issues.map((i) => i.path)).toEqual(['project.url', 'branch', 'expected', 'commit']);
  });
});
