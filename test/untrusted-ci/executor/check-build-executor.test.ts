/**
 * CheckBuildExecutor on the pure tier: the real merger (git), build store, event stream and
 * artifact store; the environment provider and the job runner are in-memory stand-ins of their
 * ports (the docker tier — test/untrusted-ci/e2e — runs the real ones). What a build does with
 * its jobs: a graph of their needs, a dependent of a failed job skipped with the reason, the others still
 * run, the build budget, a job the runner refuses, cancellation, and that whatever it took is
 * released.
 */
import { testDatabase } from '../../support/store-engines.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CancelledError, ExecutorFailedError, PolicyViolationError } from '#shared/errors.js';
import type { RunOptions } from '#shared/runner/job-runner.js';
import type { JobSpec } from '#shared/schemas/job-spec.js';
import { until } from '../../support/until.js';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import { loadEnvironmentPolicy } from '../../../untrusted-ci/environments/policy.js';
import { FsArtifactStore } from '../../../untrusted-ci/storage/fs-artifact-store.js';
import { logKey } from '../../../untrusted-ci/storage/keys.js';
import { CheckBuildExecutor, type EnvironmentProvider } from '../../../untrusted-ci/executor/build-executor.js';
import { BuildEvents } from '../../../untrusted-ci/logs/build-events.js';
import { Merger } from '../../../untrusted-ci/merger/merger.js';
import { BuildStore } from '../../../untrusted-ci/store/build-store.js';
import { FakeRunner } from '../../support/fake-runner.js';
import { Slots } from '../../../untrusted-ci/scheduler/slots.js';
import { createRepo, type FileContent, type TestRepo } from '../../support/git-repo.js';

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
const environmentPolicy = loadEnvironmentPolicy();
let n = 0;

interface RigOptions {
  runner?: FakeRunner;
  policy?: JobPolicy;
  environments?: EnvironmentProvider;
  yaml?: string;
  /** More files in the change, beside .airlock.yaml. */
  files?: Record<string, FileContent>;
  slots?: Slots;
}

async function rig(o: RigOptions = {}) {
  const id = ++n;
  const up = createRepo({ 'README.md': 'hello\n' });
  repos.push(up);
  const change = up.change(100 + id, 1, { '.airlock.yaml': o.yaml ?? config(JOBS), ...o.files });
  const store = new BuildStore((await testDatabase()));
  const events = new BuildEvents(join(root, `events-${id}`));
  const artifacts = new FsArtifactStore(join(root, `artifacts-${id}`));
  const runner = o.runner ?? new FakeRunner();
  let released = 0;
  let prepared = 0;
  const environments: EnvironmentProvider = o.environments ?? {
    prepare: async () => (prepared++, { image: `sha256:${'e'.repeat(64)}`, cached: true, release: () => void released++ }),
  };
  const log: string[] = [];
  events.watch((b, e) => void (e.type === 'log' && e.job === 'setup' && log.push(e.text)));
  const project = { name: `org/app${id}`, url: up.url, branches: [] };
  const executor = new CheckBuildExecutor({
    store,
    events,
    merger: new Merger({ root: join(root, `merger-${id}`) }),
    runner,
    environments,
    artifacts,
    policy: o.policy ?? policy,
    environmentPolicy,
    projects: [project],
    workDir: join(root, `work-${id}`),
    logger: createLogger({ level: 'silent' }),
    ...(o.slots ? { slots: o.slots } : {}),
  });
  const { buildId } = await store.enqueue({ project: project.name, branch: 'master', change: String(100 + id), patchset: 1, ref: change.ref, author: 'someone', source: 'test' }, 'check');
  await store.start(buildId);
  const jobs = async () => Object.fromEntries((await store.build(buildId)).jobs.map((j) => [j.name, j.reason ? `${j.state}: ${j.reason}` : j.state]));
  return { executor, store, runner, buildId, artifacts, jobs, up, change, released: () => released, prepared: () => prepared, log, build: () => store.build(buildId) };
}

describe('CheckBuildExecutor (pure tier: runner and environment through their ports)', () => {
  it('runs the jobs as a graph of their needs; all voting jobs passing is a pass; logs uploaded; the environment released', async () => {
    const r = await rig();
    const out = await r.executor.execute(await r.build(), new AbortController().signal);
    expect(out).toEqual({ result: 'passed', reason: '4 voting jobs passed' });
    // build, lint and docs need nothing and start together (which reaches the runner first is the
    // file system's race); unit once build passed, after once unit did.
    const ran = r.runner.ran.map((x) => x.job);
    expect([...ran].sort()).toEqual(['after', 'build', 'docs', 'lint', 'unit']);
    expect(ran.indexOf('build')).toBeLessThan(ran.indexOf('unit'));
    expect(ran.indexOf('unit')).toBeLessThan(ran.indexOf('after'));
    expect(await r.jobs()).toEqual({ build: 'passed: exit 0', unit: 'passed: exit 0', lint: 'passed: exit 0', after: 'passed: exit 0', docs: 'passed: exit 0' });
    expect(readFileSync(join(r.artifacts.root, logKey(String(r.buildId), 'unit')), 'utf8')).toBe('log of unit\n');
    expect(r.released()).toBe(1);
  });

  it('a queued check is fetched while it waits: its build merges onto the branch as that fetch found it, and fetches nothing', async () => {
    const r = await rig();
    await r.executor.queued(await r.build());
    r.up.commit({ 'moved.txt': 'the branch moved after the enqueue\n' });
    expect(await r.executor.execute(await r.build(), new AbortController().signal)).toEqual({ result: 'passed', reason: '4 voting jobs passed' });
    // A fast-forward onto the tip of the enqueue: the change itself. Fetched at the build's start,
    // the moved tip would have made a merge commit.
    expect((await r.build()).commit).toBe(r.change.sha);
  });

  it('skips the dependents of a failed job with the reason, still runs the others, and fails on the voting ones', async () => {
    const r = await rig({ runner: new FakeRunner((s) => (['unit', 'docs'].includes(s.env.AIRLOCK_JOB ?? '') ? 'failed' : 'passed')) });
    const out = await r.executor.execute(await r.build(), new AbortController().signal);
    expect(out).toEqual({ result: 'failed', reason: 'failed: unit, after' });
    expect(r.runner.ran.map((x) => x.job).sort()).toEqual(['build', 'docs', 'lint', 'unit']);
    expect(await r.jobs()).toEqual({ build: 'passed: exit 0', unit: 'failed: exit 1', lint: 'passed: exit 0', after: 'skipped: needs unit, which did not pass', docs: 'failed: exit 1' });
    expect(r.released()).toBe(1);
  });

  it('a job the runner refuses (the change asked for too much) fails with the reason; the build goes on', async () => {
    const refusal = new PolicyViolationError([{ file: 'job', path: 'limits.memory', message: 'more memory than the policy allows', severity: 'error' }]);
    const r = await rig({ runner: new FakeRunner((s) => (s.env.AIRLOCK_JOB === 'build' ? refusal : 'passed')) });
    const out = await r.executor.execute(await r.build(), new AbortController().signal);
    expect(out).toEqual({ result: 'failed', reason: 'failed: build, unit, after' });
    expect(await r.jobs()).toMatchObject({ build: `failed: ${refusal.message}`, unit: 'skipped: needs build, which did not pass', lint: 'passed: exit 0' });
  });

  it('places each job by its memory and CPUs: one larger than the whole host fails naming the figures, the others run and free their room', async () => {
    const slots = new Slots(4, { memory: 768 * 1024 ** 2, cpus: 2 });
    const yaml = config(job('build', '    resources: { memory: 512m }\n') + job('unit', '    needs: [build]\n    resources: { memory: 256m }\n') + job('lint'));
    const r = await rig({ yaml, slots });
    const out = await r.executor.execute(await r.build(), new AbortController().signal);
    // lint takes the policy's 1 GiB: more than the host's 768 MiB for jobs.
    expect(out).toEqual({ result: 'failed', reason: 'failed: lint' });
    expect(r.runner.ran.map((x) => x.job)).toEqual(['build', 'unit']);
    expect(await r.jobs()).toMatchObject({ build: 'passed: exit 0', unit: 'passed: exit 0' });
    expect((await r.jobs()).lint).toBe(
      "failed: ci.yaml: capacity: the job's limits ask for 1 GiB of memory, more than the 768 MiB this host has for jobs: it could never start here (ask for less in .airlock.yaml, or the operator raises capacity)",
    );
    expect(slots.usage).toMatchObject({ memory: 0, cpus: 0 });
    expect(slots.busy).toBe(0);
  });

  it('makes ready (workspace, container) at most as many jobs as there are slots while they wait for one', async () => {
    // Six independent jobs, one slot: each job's container is made before its slot is taken
    // (beforeStart), but no more of them wait so than there are slots.
    let inside = 0;
    let most = 0;
    const runner = new FakeRunner();
    const run = runner.run.bind(runner);
    runner.run = async (spec, opts) => {
      most = Math.max(most, ++inside);
      try {
        // Each job holds its slot a while, as a container runs.
        const take = opts.beforeStart;
        return await run(spec, { ...opts, beforeStart: async () => (await take?.(), await new Promise((res) => setTimeout(res, 30))) });
      } finally {
        inside--;
      }
    };
    const slots = new Slots(1);
    const r = await rig({ yaml: config(['a', 'b', 'c', 'd', 'e', 'f'].map((n) => job(n)).join('')), slots, runner });
    expect(await r.executor.execute(await r.build(), new AbortController().signal)).toEqual({ result: 'passed', reason: '6 voting jobs passed' });
    expect(r.runner.ran).toHaveLength(6);
    expect(most).toBeLessThanOrEqual(2); // one made ready and waiting, one running
    expect(slots.busy).toBe(0);
  });

  it('an engine failure of one job stops the jobs running beside it, and the build throws it (to be run again)', async () => {
    let lintStopped = false;
    // lint runs until it is stopped; build's engine fails meanwhile.
    class Held extends FakeRunner {
      override async run(spec: JobSpec, opts: RunOptions) {
        if (spec.env.AIRLOCK_JOB === 'lint') {
          // (Already stopped when it gets here, if the other job failed first: a slower database.)
          if (!opts.signal?.aborted) await new Promise((res) => opts.signal?.addEventListener('abort', res, { once: true }));
          lintStopped = true;
        }
        return super.run(spec, opts);
      }
    }
    const r = await rig({ runner: new Held((s) => (s.env.AIRLOCK_JOB === 'build' ? new ExecutorFailedError('engine gone') : 'passed')) });
    const cancel = new AbortController(); // only to free lint should the build not stop it
    const out = r.executor.execute(await r.build(), cancel.signal);
    out.catch(() => undefined);
    await until('lint stopped by the engine failure beside it', () => (lintStopped ? true : undefined), 30_000).catch((e: unknown) => {
      cancel.abort();
      throw e;
    });
    await expect(out).rejects.toMatchObject({ code: 'AIRLOCK_E_EXECUTOR_FAILED', message: 'engine gone' });
    expect(r.released()).toBe(1);
  });

  it('refuses jobs over the build budget as a config error, before any job runs', async () => {
    const r = await rig({ policy: { ...policy, build: { ...policy.build, jobs: 3 } } });
    const out = await r.executor.execute(await r.build(), new AbortController().signal);
    expect(out).toMatchObject({ result: 'config-error', reason: '.airlock.yaml has 1 problem' });
    expect(out.issues?.[0]?.message).toBe('5 jobs run in the check pipeline; the policy allows at most 3 per build');
    expect(r.runner.ran).toEqual([]);
    expect((await r.build()).jobs).toEqual([]);
  });

  it('a policy violation of the environment is a config error listing it; no job runs', async () => {
    const r = await rig({
      environments: {
        prepare: async () => {
          throw new PolicyViolationError([{ file: '.airlock.yaml', path: 'environment.image', message: 'not an allowed image', severity: 'error' }]);
        },
      },
    });
    const out = await r.executor.execute(await r.build(), new AbortController().signal);
    expect(out).toMatchObject({ result: 'config-error', reason: '.airlock.yaml has 1 problem', issues: [{ path: 'environment.image' }] });
    expect(r.runner.ran).toEqual([]);
  });

  it('cancelled during a job: no further job starts, and the build throws CancelledError (not a failure)', async () => {
    const ac = new AbortController();
    const r = await rig({
      runner: new FakeRunner((s) => {
        if (s.env.AIRLOCK_JOB === 'unit') ac.abort();
        return 'passed';
      }),
    });
    await expect(r.executor.execute(await r.build(), ac.signal)).rejects.toBeInstanceOf(CancelledError);
    // build, lint and docs started together before the abort; after, which needs unit, never starts.
    expect(r.runner.ran.map((x) => x.job).sort()).toEqual(['build', 'docs', 'lint', 'unit']);
    expect(await r.jobs()).toMatchObject({ build: 'passed: exit 0', unit: 'passed: exit 0', lint: 'passed: exit 0', after: 'waiting' });
    expect(r.released()).toBe(1);
  });

  describe('the publish section: nothing the trusted builder cannot publish passes the check', () => {
    const withPublish = (publish: string) => `${config(JOBS)}publish: ${publish}\n`;
    const run = async (o: RigOptions) => {
      const r = await rig(o);
      const out = await r.executor.execute(await r.build(), new AbortController().signal);
      return { r, out, lines: (out.issues ?? []).map((i) => `${i.severity}: ${i.file}: ${i.path}: ${i.message}`) };
    };

    it('a publish Dockerfile that is not in the commit: a config error naming the path and the fix; nothing is prepared or run', async () => {
      const { r, out, lines } = await run({ yaml: withPublish('{ dockerfile: deploy/Dockerfile }') });
      expect(out).toMatchObject({ result: 'config-error', reason: '.airlock.yaml has 1 problem' });
      expect(lines).toEqual(['error: .airlock.yaml: publish.dockerfile: deploy/Dockerfile is not in the repository: the trusted builder builds the published image from it after the merge; commit it, or fix the path']);
      expect(r.prepared()).toBe(0);
      expect(r.runner.ran).toEqual([]);
    });

    it('a publish Dockerfile on a base the CI does not allow: a config error naming the file, the line and the allowed bases', async () => {
      const { out, lines } = await run({ yaml: withPublish('{ dockerfile: deploy/Dockerfile }'), files: { 'deploy/Dockerfile': 'FROM airlock/base:busybox AS build\nRUN true\nFROM debian:12\nCOPY --from=build /bin/true /true\n' } });
      expect(out).toMatchObject({ result: 'config-error', reason: '.airlock.yaml has 1 problem' });
      expect(lines).toEqual(['error: deploy/Dockerfile: deploy/Dockerfile:3: FROM image "debian:12" is not an allowed base image (allowed: airlock/base:busybox, airlock/base:bookworm)']);
    });

    it('a publish Dockerfile that fetches from the network (and names an image by a variable): every problem, each with its fix', async () => {
      const dockerfile = 'ARG B=evil/image\nFROM airlock/base:busybox\nADD https://example.com/tool.tgz /opt/\nCOPY --from=$B /x /x\n';
      const { out, lines } = await run({ yaml: withPublish('{ dockerfile: Dockerfile.release }'), files: { 'Dockerfile.release': dockerfile } });
      expect(out).toMatchObject({ result: 'config-error', reason: '.airlock.yaml has 2 problems' });
      expect(lines).toEqual([
        'error: Dockerfile.release: Dockerfile.release:3: ADD "https://example.com/tool.tgz" would download during the build: builds have no network; vendor the file into the repository',
        'error: Dockerfile.release: Dockerfile.release:4: COPY --from "$B" uses variable substitution: write the image name out (build arguments are chosen after the allowlist check)',
      ]);
    });

    it('a publish context that is not a directory of the commit is a config error too', async () => {
      const { out, lines } = await run({ yaml: withPublish('{ dockerfile: Dockerfile, context: app }'), files: { Dockerfile: 'FROM airlock/base:busybox\n' } });
      expect(out).toMatchObject({ result: 'config-error', reason: '.airlock.yaml has 1 problem' });
      expect(lines).toEqual(["error: .airlock.yaml: publish.context: app is not in the repository: the trusted builder sends this directory as the published image's build context; commit it, or name another (default .)"]);
      const file = await run({ yaml: withPublish('{ dockerfile: Dockerfile, context: Dockerfile }'), files: { Dockerfile: 'FROM airlock/base:busybox\n' } });
      expect(file.lines).toEqual(['error: .airlock.yaml: publish.context: Dockerfile is not a directory: the build context is a directory of the repository (default .)']);
    });

    it('a publish Dockerfile that is a symbolic link (it could point out of the repository) is a config error saying so', async () => {
      const { out, lines } = await run({ yaml: withPublish('{ dockerfile: Dockerfile }'), files: { Dockerfile: { symlink: '/etc/passwd' } } });
      expect(out).toMatchObject({ result: 'config-error', reason: '.airlock.yaml has 1 problem' });
      expect(lines).toEqual(['error: .airlock.yaml: publish.dockerfile: Dockerfile is a symbolic link, not a regular file']);
    });

    it('a good publish section passes; no section at all is a warning in the setup log, and the build still passes', async () => {
      const good = await run({ yaml: withPublish('{ dockerfile: deploy/Dockerfile, context: deploy }'), files: { 'deploy/Dockerfile': 'FROM airlock/base:bookworm\nCOPY . /app\n', 'deploy/app.sh': 'echo hi\n' } });
      expect(good.out).toEqual({ result: 'passed', reason: '4 voting jobs passed' });
      expect(good.r.log.join('')).not.toContain('warning');
      const none = await run({});
      expect(none.out).toEqual({ result: 'passed', reason: '4 voting jobs passed' });
      expect(none.r.log.join('')).toContain('[airlock] warning: .airlock.yaml: publish: no publish section: the trusted builder will not publish this project');
    });
  });

  it('lists a structural, a needs and a policy problem of .airlock.yaml together, with the publish problem, in one build', async () => {
    const yaml = [
      'version: 1',
      'environment: { image: airlock/base:busybox }',
      'jobs:',
      '  build: { command: make, pipelines: [check], nedds: [] }',
      '  unit: { command: make test, pipelines: [check], needs: [biuld] }',
      '  big: { command: make, pipelines: [check], resources: { memory: 64g } }',
      'publish: { dockerfile: Dockerfile }',
      '',
    ].join('\n');
    const r = await rig({ yaml });
    const out = await r.executor.execute(await r.build(), new AbortController().signal);
    expect(out).toMatchObject({ result: 'config-error', reason: '.airlock.yaml has 4 problems' });
    expect(out.issues?.map((i) => `${i.path}: ${i.message}`)).toEqual([
      'jobs.build: Unrecognized key: "nedds"; did you mean "needs"?',
      'jobs.unit.needs[0]: no job named "biuld"; did you mean "build"?',
      'jobs.big.resources.memory: asks for 64 GiB, policy allows at most 1 GiB',
      'publish.dockerfile: Dockerfile is not in the repository: the trusted builder builds the published image from it after the merge; commit it, or fix the path',
    ]);
    expect(r.prepared()).toBe(0);
  });
});
