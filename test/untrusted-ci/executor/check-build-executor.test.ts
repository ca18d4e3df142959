/**
 * CheckBuildExecutor on the pure tier: the real merger (git), build store, event stream and
 * artifact store; the environment provider and the job runner are in-memory stand-ins of their
 * ports (the docker tier — test/untrusted-ci/e2e — runs the real ones). What a build does with
 * its jobs: needs order, a dependent of a failed job skipped with the reason, the others still
 * run, the build budget, a job the runner refuses, cancellation, and that whatever it took is
 * released.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CancelledError, PolicyViolationError } from '#shared/errors.js';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import { FsArtifactStore } from '../../../untrusted-ci/storage/fs-artifact-store.js';
import { logKey } from '../../../untrusted-ci/storage/keys.js';
import { CheckBuildExecutor, type EnvironmentProvider } from '../../../untrusted-ci/executor/build-executor.js';
import { BuildEvents } from '../../../untrusted-ci/logs/build-events.js';
import { Merger } from '../../../untrusted-ci/merger/merger.js';
import { openDatabase } from '../../../untrusted-ci/store/database.js';
import { BuildStore } from '../../../untrusted-ci/store/build-store.js';
import { FakeRunner } from '../../support/fake-runner.js';
import { createRepo, type TestRepo } from '../../support/git-repo.js';

const root = mkdtempSync(join(tmpdir(), 'airlock-executor-'));
const repos: TestRepo[] = [];
afterAll(() => {
  repos.forEach((r) => r.dispose());
  rmSync(root, { recursive: true, force: true });
});

const job = (name: string, extra = '') => `  ${name}:\n    command: [sh, -c, "echo ${name}"]\n    pipelines: [check]\n${extra}`;
const JOBS = job('build') + job('unit', '    needs: [build]\n') + job('lint') + job('after', '    needs: [unit]\n') + job('docs', '    voting: false\n');
const config = (jobs: string) => `version: 1\nenvironment: { image: airlock/base:busybox }\njobs:\n${jobs}`;
const policy = loadJobPolicy();
let n = 0;

interface RigOptions {
  runner?: FakeRunner;
  policy?: JobPolicy;
  environments?: EnvironmentProvider;
  yaml?: string;
}

async function rig(o: RigOptions = {}) {
  const id = ++n;
  const up = createRepo({ 'README.md': 'hello\n' });
  repos.push(up);
  const change = up.change(100 + id, 1, { '.airlock.yaml': o.yaml ?? config(JOBS) });
  const store = new BuildStore(openDatabase(':memory:'));
  const events = new BuildEvents(join(root, `events-${id}`));
  const artifacts = new FsArtifactStore(join(root, `artifacts-${id}`));
  const runner = o.runner ?? new FakeRunner();
  let released = 0;
  const environments: EnvironmentProvider = o.environments ?? {
    prepare: async () => ({ image: `sha256:${'e'.repeat(64)}`, cached: true, release: () => void released++ }),
  };
  const project = { name: `org/app${id}`, url: up.url, branches: [] };
  const executor = new CheckBuildExecutor({
    store,
    events,
    merger: new Merger({ root: join(root, `merger-${id}`) }),
    runner,
    environments,
    artifacts,
    policy: o.policy ?? policy,
    projects: [project],
    workDir: join(root, `work-${id}`),
    logger: createLogger({ level: 'silent' }),
  });
  const { buildId } = store.enqueue({ project: project.name, branch: 'master', change: String(100 + id), patchset: 1, ref: change.ref, author: 'someone', source: 'test' }, 'check');
  store.start(buildId);
  const jobs = () => Object.fromEntries(store.build(buildId).jobs.map((j) => [j.name, j.reason ? `${j.state}: ${j.reason}` : j.state]));
  return { executor, store, runner, buildId, artifacts, jobs, released: () => released, build: () => store.build(buildId) };
}

describe('CheckBuildExecutor (pure tier: runner and environment through their ports)', () => {
  it('runs the jobs in needs order; all voting jobs passing is a pass; logs uploaded; the environment released', async () => {
    const r = await rig();
    const out = await r.executor.execute(r.build(), new AbortController().signal);
    expect(out).toEqual({ result: 'passed', reason: '4 voting jobs passed' });
    expect(r.runner.ran.map((x) => x.job)).toEqual(['build', 'unit', 'lint', 'after', 'docs']);
    expect(r.jobs()).toEqual({ build: 'passed: exit 0', unit: 'passed: exit 0', lint: 'passed: exit 0', after: 'passed: exit 0', docs: 'passed: exit 0' });
    expect(readFileSync(join(r.artifacts.root, logKey(String(r.buildId), 'unit')), 'utf8')).toBe('log of unit\n');
    expect(r.released()).toBe(1);
  });

  it('skips the dependents of a failed job with the reason, still runs the others, and fails on the voting ones', async () => {
    const r = await rig({ runner: new FakeRunner((s) => (['unit', 'docs'].includes(s.env.AIRLOCK_JOB ?? '') ? 'failed' : 'passed')) });
    const out = await r.executor.execute(r.build(), new AbortController().signal);
    expect(out).toEqual({ result: 'failed', reason: 'failed: unit, after' });
    expect(r.runner.ran.map((x) => x.job)).toEqual(['build', 'unit', 'lint', 'docs']);
    expect(r.jobs()).toEqual({ build: 'passed: exit 0', unit: 'failed: exit 1', lint: 'passed: exit 0', after: 'skipped: needs unit, which did not pass', docs: 'failed: exit 1' });
    expect(r.released()).toBe(1);
  });

  it('a job the runner refuses (the change asked for too much) fails with the reason; the build goes on', async () => {
    const refusal = new PolicyViolationError([{ file: 'job', path: 'limits.memory', message: 'more memory than the policy allows', severity: 'error' }]);
    const r = await rig({ runner: new FakeRunner((s) => (s.env.AIRLOCK_JOB === 'build' ? refusal : 'passed')) });
    const out = await r.executor.execute(r.build(), new AbortController().signal);
    expect(out).toEqual({ result: 'failed', reason: 'failed: build, unit, after' });
    expect(r.jobs()).toMatchObject({ build: `failed: ${refusal.message}`, unit: 'skipped: needs build, which did not pass', lint: 'passed: exit 0' });
  });

  it('refuses jobs over the build budget as a config error, before any job runs', async () => {
    const r = await rig({ policy: { ...policy, build: { ...policy.build, jobs: 3 } } });
    const out = await r.executor.execute(r.build(), new AbortController().signal);
    expect(out).toMatchObject({ result: 'config-error', reason: '.airlock.yaml has 1 problem' });
    expect(out.issues?.[0]?.message).toBe('5 jobs run in the check pipeline; the policy allows at most 3 per build');
    expect(r.runner.ran).toEqual([]);
    expect(r.build().jobs).toEqual([]);
  });

  it('a policy violation of the environment is a config error listing it; no job runs', async () => {
    const r = await rig({
      environments: {
        prepare: async () => {
          throw new PolicyViolationError([{ file: '.airlock.yaml', path: 'environment.image', message: 'not an allowed image', severity: 'error' }]);
        },
      },
    });
    const out = await r.executor.execute(r.build(), new AbortController().signal);
    expect(out).toMatchObject({ result: 'config-error', reason: '.airlock.yaml has 1 problem', issues: [{ path: 'environment.image' }] });
    expect(r.runner.ran).toEqual([]);
  });

  it('cancelled during a job: no further job runs, and the build throws CancelledError (not a failure)', async () => {
    const ac = new AbortController();
    const r = await rig({
      runner: new FakeRunner((s) => {
        if (s.env.AIRLOCK_JOB === 'unit') ac.abort();
        return 'passed';
      }),
    });
    await expect(r.executor.execute(r.build(), ac.signal)).rejects.toBeInstanceOf(CancelledError);
    expect(r.runner.ran.map((x) => x.job)).toEqual(['build', 'unit']);
    expect(r.jobs()).toMatchObject({ build: 'passed: exit 0', unit: 'passed: exit 0', lint: 'waiting' });
    expect(r.released()).toBe(1);
  });
});
