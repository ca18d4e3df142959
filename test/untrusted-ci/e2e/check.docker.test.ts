/**
 * The check pipeline end to end: real git upstreams, the real service, real Docker.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRepo, type TestRepo } from '../../support/git-repo.js';
import { startTestCi, type TestCi } from '../../support/ci.js';

const CONFIG_OK = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  build:
    command: echo building $AIRLOCK_PROJECT && mkdir -p out && echo artifact > out/a.txt && if [ -f slow ]; then sleep 60; fi
    artifacts: [out/**]
  test:
    command: [sh, -c, "cat hello.txt && test -f hello.txt"]
    needs: [build]
  report:
    command: echo reporting
    needs: [test]
    voting: false
`;

describe('check pipeline', () => {
  let up: TestRepo;
  let ci: TestCi;
  beforeAll(async () => {
    up = createRepo({ '.airlock.yaml': CONFIG_OK, 'hello.txt': 'hello\n' });
    ci = await startTestCi({ projects: [{ name: 'demo/app', url: up.dir }] });
  });
  afterAll(async () => {
    await ci?.close();
    up?.dispose();
  });

  it('runs a passing change and stores logs and artifacts', async () => {
    const change = up.change(101, 1, { 'hello.txt': 'hello from the change\n' });
    const id = await ci.submit({ project: 'demo/app', ref: change.ref, change: '101', patchset: 1, author: 'alice' });
    const b = await ci.waitFor(id);
    expect(b.result, JSON.stringify(b)).toBe('passed');
    expect(b.jobs.map((j) => [j.name, j.state])).toEqual([
      ['build', 'passed'],
      ['test', 'passed'],
      ['report', 'passed'],
    ]);
    expect(b.jobs[0]!.artifacts).toEqual([{ path: 'out/a.txt', bytes: 9 }]);
    const log = await ci.service.app.inject({ method: 'GET', url: `/api/builds/${id}/logs/test` });
    expect(log.statusCode).toBe(200);
    expect(log.body).toContain('hello from the change');
    const result = await ci.service.artifacts.getBuffer(`builds/${id}/result.json`, 1 << 20);
    expect(JSON.parse(result.toString()).result).toBe('passed');
  });

  it('reports a failing job as a failed build, and skips what needs it', async () => {
    const change = up.change(102, 1, { 'hello.txt': null });
    const b = await ci.waitFor(await ci.submit({ project: 'demo/app', ref: change.ref, change: '102' }));
    expect(b.result).toBe('failed');
    expect(b.reason).toBe('failed: test');
    expect(b.jobs.find((j) => j.name === 'test')).toMatchObject({ state: 'failed', exitCode: 1 });
    expect(b.jobs.find((j) => j.name === 'report')).toMatchObject({ state: 'skipped', reason: 'needs test, which did not pass' });
  });

  it('fails a broken config with every problem listed', async () => {
    const change = up.change(103, 1, {
      '.airlock.yaml': `version: 1
environment: { image: airlock/base:busybox }
jobs:
  test:
    command: true
    resources: { memory: 64g }
    needs: [nope]
  other: { comand: true }
`,
    });
    const b = await ci.waitFor(await ci.submit({ project: 'demo/app', ref: change.ref, change: '103' }));
    expect(b.result).toBe('config-error');
    expect(b.jobs).toEqual([]);
    const paths = b.issues.map((i) => i.path);
    expect(paths).toEqual(expect.arrayContaining(['jobs.other']));
    expect(b.issues.every((i) => i.file === '.airlock.yaml')).toBe(true);
  });

  it('reports a merge conflict as a result', async () => {
    const change = up.change(104, 1, { 'hello.txt': 'mine\n' });
    up.commit({ 'hello.txt': 'theirs\n' });
    const b = await ci.waitFor(await ci.submit({ project: 'demo/app', ref: change.ref, change: '104' }));
    expect(b.result).toBe('merge-conflict');
    expect(b.reason).toBe('merge conflict with branch master');
    expect(b.issues.map((i) => i.file)).toEqual(['hello.txt']);
  });

  it('cancels a running build when a newer patchset arrives, and runs the new one', async () => {
    const ps1 = up.change(105, 1, { slow: '1' });
    const old = await ci.submit({ project: 'demo/app', ref: ps1.ref, change: '105', patchset: 1 });
    await until(async () => (await ci.service.store.build(old)).jobs.some((j) => j.state === 'running'));
    const ps2 = up.change(105, 2, { 'hello.txt': 'fixed\n' });
    const next = await ci.submit({ project: 'demo/app', ref: ps2.ref, change: '105', patchset: 2 });
    const o = await ci.waitFor(old);
    expect(o.result).toBe('superseded');
    expect(o.reason).toBe('superseded by patchset 2');
    expect(o.jobs.find((j) => j.name === 'build')?.state).toBe('cancelled');
    expect((await ci.waitFor(next)).result).toBe('passed');
    // An event for the older patchset arriving late is refused, not run.
    const late = await ci.service.app.inject({ method: 'POST', url: '/api/changes', payload: { project: 'demo/app', ref: ps1.ref, change: '105', patchset: 1 } });
    expect(late.statusCode).toBe(409);
    expect(late.json()).toMatchObject({ code: 'AIRLOCK_E_CONFLICT' });
  });
});

async function until(cond: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}
