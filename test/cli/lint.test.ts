/**
 * `airlock lint` against the CI's own verdict. Each bad file is also committed as a change to a real
 * upstream repository and run through the CI's real CheckBuildExecutor (real Merger and git,
 * SQLite store, the policies/ files, the repository environments over a Docker client that is
 * never reached: every case here ends before the engine would be asked anything): lint must list
 * exactly the issues the build ends with, and its one-line reason. The command itself runs
 * through bin/airlock.js in a child process, for its output and exit code.
 */
import { testDatabase } from '../support/store-engines.js';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { FsArtifactStore } from '../../untrusted-ci/storage/fs-artifact-store.js';
import { formatIssues, type Issue } from '#shared/errors.js';
import { runLint } from '../../cli/lint.js';
import { NO_PUBLISH_SECTION } from '../../untrusted-ci/executor/config-check.js';
import { ProjectConfig } from '../../untrusted-ci/config.js';
import { loadEnvironmentPolicy } from '../../untrusted-ci/environments/policy.js';
import type { EnvironmentBuilder } from '../../untrusted-ci/environments/environment-builder.js';
import { createRepoEnvironments } from '../../untrusted-ci/environments/repo-environments.js';
import { CheckBuildExecutor } from '../../untrusted-ci/executor/build-executor.js';
import type { JobRunnerPort } from '#shared/runner/job-plan.js';
import { BuildEvents } from '../../untrusted-ci/logs/build-events.js';
import type { BuildOutcome } from '../../untrusted-ci/scheduler/scheduler.js';
import { BuildStore } from '../../untrusted-ci/store/build-store.js';
import { mergerRig } from '../support/merger-rig.js';
import type { Egress } from '../../untrusted-ci/egress/egress.js';
import { loadEgressPolicy } from '../../untrusted-ci/egress/policy.js';

const bin = new URL('../../bin/airlock.js', import.meta.url).pathname;
const SAMPLE = new URL('../../demo/sample-project/', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'airlock-lint-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const { merger, upstream } = mergerRig('lint');

/** What the CI's check build of a change holding these files ends with. */
async function ciVerdict(files: Record<string, string>): Promise<BuildOutcome> {
  const { up, project } = upstream();
  const c = up.change(1, 1, files);
  const store = new BuildStore((await testDatabase()));
  const { buildId } = await store.enqueue({ project: project.name, branch: 'master', change: '1', patchset: 1, ref: c.ref, author: 'alice', source: 'test' }, 'check');
  const never = (what: string) => () => {
    throw new Error(`${what} is not reached by a config error`);
  };
  const executor = new CheckBuildExecutor({
    store,
    events: new BuildEvents(mkdtempSync(join(dir, 'events-'))),
    merger,
    runner: { run: never('the job runner') } as JobRunnerPort,
    environments: createRepoEnvironments({ docker: new Docker({ socketPath: '/nonexistent/docker.sock' }), policy: loadEnvironmentPolicy(), builder: { ensure: never('the environment builder') } as unknown as EnvironmentBuilder }),
    artifacts: new FsArtifactStore(mkdtempSync(join(dir, 'artifacts-'))),
    policy: loadJobPolicy(),
    environmentPolicy: loadEnvironmentPolicy(),
    projects: [ProjectConfig.parse(project)],
    workDir: mkdtempSync(join(dir, 'work-')),
    logger: createLogger({ level: 'silent' }),
    // The shipped egress policy, as lint reads it; no run gets as far as asking for packages here.
    egress: { policy: loadEgressPolicy(), forRun: never('the package proxies') } as unknown as Egress,
  });
  return executor.execute(await store.build(buildId), new AbortController().signal);
}

/** Issues as `airlock lint` prints them: one a line, warnings marked. */
function asLintPrints(issues: readonly Issue[]): string {
  return issues.map((i) => `${i.severity === 'warning' ? 'warning: ' : ''}${formatIssues([i])}\n`).join('');
}

/** These files in a fresh directory; returns the path of its .airlock.yaml. */
function workingCopy(files: Record<string, string>): string {
  const where = mkdtempSync(join(dir, 'wc-'));
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(where, path, '..'), { recursive: true });
    writeFileSync(join(where, path), text);
  }
  return join(where, '.airlock.yaml');
}

/** `airlock lint` through the real entry point, in a child process. */
function spawnLint(cwd: string, ...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, 'lint', ...args], { cwd, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The command's action in this process (the same code; a child process costs seconds). */
async function lint(file: string, flags: { json?: boolean; policies?: string } = {}): Promise<{ status: number; stdout: string }> {
  const out: string[] = [];
  const status = await runLint(file, flags, (s) => void out.push(s));
  return { status, stdout: out.join('') };
}

const STRUCTURE = [
  'version: 1',
  'environment: { image: airlock/base:busybox }',
  'jobs:',
  '  build: { command: make, colour: blue }',
  '  test: { command: make test }',
  '',
].join('\n');
const NEEDS = ['version: 1', 'environment: { image: airlock/base:busybox }', 'jobs:', '  build: { command: make }', '  test: { command: make test, needs: [biuld] }', ''].join('\n');
const OVER_POLICY = ['version: 1', 'environment: { image: airlock/base:busybox }', 'jobs:', '  test:', '    command: make test', '    resources: { memory: 64g, pids: 100000 }', ''].join('\n');
const SYNTAX = ['version: 1', 'environment: { image: airlock/base:busybox }', 'jobs:', '  test: { command: make test', ''].join('\n');
const MISSING_KEY = ['version: 1', 'environment: { image: airlock/base:busybox }', 'jobs:', '  test: { timeout: 5m }', ''].join('\n');
const NEAR_MISS = ['version: 1', 'environment: { image: airlock/base:busybox }', 'jobs:', '  build: { command: make }', '  test: { command: make test, nedds: [build] }', ''].join('\n');
const PUBLISHED = ['version: 1', 'environment: { image: airlock/base:busybox }', 'jobs:', '  test: { command: make test }', 'publish: { dockerfile: Dockerfile }', ''].join('\n');
/** A structural, a needs and a policy problem, and a publish Dockerfile that is not there. */
const ALL_AT_ONCE = [
  'version: 1',
  'environment: { image: airlock/base:busybox }',
  'jobs:',
  '  build: { command: make, colour: blue }',
  '  test: { command: make test, needs: [biuld] }',
  '  big: { command: make, resources: { memory: 64g } }',
  'publish: { dockerfile: deploy/Dockerfile }',
  '',
].join('\n');
const LOCKFILE_MISSING = ['version: 1', 'environment: { image: airlock/base:busybox }', 'jobs:', '  test: { command: npm test, network: packages }', 'dependencies: { npm: [package-lock.json] }', ''].join('\n');
const IMAGE_NOT_ALLOWED = ['version: 1', 'environment: { image: "debian:12" }', 'jobs:', '  test: { command: make test }', ''].join('\n');

describe('airlock lint', () => {
  it('passes the sample project (a Dockerfile environment read next to the file): exit 0, ok', () => {
    const where = mkdtempSync(join(dir, 'sample-'));
    cpSync(SAMPLE, where, { recursive: true });
    const r = spawnLint(where);
    expect(r.stdout).toBe('./.airlock.yaml: ok\n');
    expect(r.status).toBe(0);
    const j = spawnLint('/', join(where, '.airlock.yaml'), '--json');
    expect(JSON.parse(j.stdout)).toEqual({ ok: true, problems: [] });
    expect(j.status).toBe(0);
  });

  for (const [name, text, code, more] of [
    ['a structurally bad file', STRUCTURE, 'AIRLOCK_E_INVALID_INPUT'],
    ['a job that needs one that does not exist', NEEDS, 'AIRLOCK_E_INVALID_INPUT'],
    ['resources over the job policy', OVER_POLICY, 'AIRLOCK_E_POLICY_VIOLATION'],
    ['an image the environment policy does not allow', IMAGE_NOT_ALLOWED, 'AIRLOCK_E_POLICY_VIOLATION'],
    ['a YAML syntax error (line and column)', SYNTAX, 'AIRLOCK_E_INVALID_INPUT'],
    ['a missing key', MISSING_KEY, 'AIRLOCK_E_INVALID_INPUT'],
    ['a near-miss key', NEAR_MISS, 'AIRLOCK_E_INVALID_INPUT'],
    ['a publish Dockerfile that is not there', PUBLISHED, 'AIRLOCK_E_INVALID_INPUT'],
    ['a publish Dockerfile on a base the CI does not allow', PUBLISHED, 'AIRLOCK_E_POLICY_VIOLATION', { Dockerfile: 'FROM debian:12\n' }],
    ['a lockfile the builder would fetch from that is not there', LOCKFILE_MISSING, 'AIRLOCK_E_INVALID_INPUT'],
    ['a publish Dockerfile that fetches from the network', PUBLISHED, 'AIRLOCK_E_POLICY_VIOLATION', { Dockerfile: 'FROM airlock/base:busybox\nADD https://example.com/x.tgz /x\n' }],
  ] as const) {
    it(`${name}: the issues and reason the CI's build ends with, exit 2`, async () => {
      const files = { '.airlock.yaml': text, ...more };
      const ci = await ciVerdict(files);
      expect(ci.result).toBe('config-error');
      expect(ci.issues?.length).toBeGreaterThan(0);

      const file = workingCopy(files);
      const r = await lint(file);
      expect(r.status).toBe(2);
      expect(r.stdout).toBe(`${asLintPrints(ci.issues!)}${file}: ${ci.reason}\n`);

      const j = await lint(file, { json: true });
      expect(j.status).toBe(2);
      const problems = ci.issues!.map((i) => ({
        path: i.path,
        message: i.message,
        code: i.severity === 'error' ? code : 'AIRLOCK_E_INVALID_INPUT',
        severity: i.severity,
        ...(i.line !== undefined ? { line: i.line, column: i.column } : {}),
      }));
      expect(JSON.parse(j.stdout)).toEqual({ ok: false, problems });
    });
  }

  it('a structural, a needs, a policy and a publish problem: all in one pass, as the CI lists them, each with its code', async () => {
    const ci = await ciVerdict({ '.airlock.yaml': ALL_AT_ONCE });
    const file = workingCopy({ '.airlock.yaml': ALL_AT_ONCE });
    const r = await lint(file);
    expect(r.stdout).toBe(`${asLintPrints(ci.issues!)}${file}: ${ci.reason}\n`);
    expect(ci.reason).toBe('.airlock.yaml has 4 problems');
    const j = JSON.parse((await lint(file, { json: true })).stdout) as { problems: { path: string; message: string; code: string }[] };
    expect(j.problems.map((p) => `${p.code}: ${p.path}: ${p.message}`)).toEqual([
      'AIRLOCK_E_INVALID_INPUT: jobs.build: Unrecognized key: "colour"',
      'AIRLOCK_E_INVALID_INPUT: jobs.test.needs[0]: no job named "biuld"; did you mean "build"?',
      'AIRLOCK_E_POLICY_VIOLATION: jobs.big.resources.memory: asks for 64 GiB, policy allows at most 1 GiB',
      'AIRLOCK_E_INVALID_INPUT: publish.dockerfile: deploy/Dockerfile is not in the repository: the trusted builder builds the published image from it after the merge; commit it, or fix the path',
    ]);
  });

  it('the messages name what is wrong', async () => {
    expect((await lint(workingCopy({ '.airlock.yaml': STRUCTURE }))).stdout).toContain('.airlock.yaml: jobs.build: Unrecognized key: "colour"\n');
    expect((await lint(workingCopy({ '.airlock.yaml': NEEDS }))).stdout).toContain('.airlock.yaml: jobs.test.needs[0]: no job named "biuld"; did you mean "build"?\n');
    expect((await lint(workingCopy({ '.airlock.yaml': OVER_POLICY }))).stdout).toContain('.airlock.yaml: jobs.test.resources.memory: asks for 64 GiB, policy allows at most 1 GiB\n');
    expect((await lint(workingCopy({ '.airlock.yaml': IMAGE_NOT_ALLOWED }))).stdout).toContain('is not an allowed base image');
    expect((await lint(workingCopy({ '.airlock.yaml': SYNTAX }))).stdout).toMatch(/^\.airlock\.yaml: \(root\): YAML: .* \(line 5, column 1\)\n/);
    expect(JSON.parse((await lint(workingCopy({ '.airlock.yaml': SYNTAX }), { json: true })).stdout).problems[0]).toMatchObject({ line: 5, column: 1 });
    expect((await lint(workingCopy({ '.airlock.yaml': MISSING_KEY }))).stdout).toContain('.airlock.yaml: jobs.test.command: required\n');
    expect((await lint(workingCopy({ '.airlock.yaml': NEAR_MISS }))).stdout).toContain('.airlock.yaml: jobs.test: Unrecognized key: "nedds"; did you mean "needs"?\n');
    expect((await lint(workingCopy({ '.airlock.yaml': PUBLISHED }))).stdout).toContain('.airlock.yaml: publish.dockerfile: Dockerfile is not in the repository: the trusted builder builds the published image from it after the merge; commit it, or fix the path\n');
    expect((await lint(workingCopy({ '.airlock.yaml': PUBLISHED, Dockerfile: 'FROM debian:12\n' }))).stdout).toContain('Dockerfile: Dockerfile:1: FROM image "debian:12" is not an allowed base image');
    expect((await lint(workingCopy({ '.airlock.yaml': PUBLISHED, Dockerfile: 'FROM airlock/base:busybox\nADD https://example.com/x.tgz /x\n' }))).stdout).toContain(
      'Dockerfile: Dockerfile:2: ADD "https://example.com/x.tgz" would download during the build: builds have no network; vendor the file into the repository\n',
    );
  });

  it('a missing file: exit 2 with "file not found" (as the CI says) on stderr, in JSON on stdout', () => {
    const empty = mkdtempSync(join(dir, 'empty-'));
    const r = spawnLint(empty);
    expect(r.status).toBe(2);
    expect(r.stderr).toBe('airlock: lint: cannot read ./.airlock.yaml: file not found\n');
    expect(r.stdout).toBe('');
    const j = spawnLint(empty, '--json');
    expect(JSON.parse(j.stdout)).toEqual({ ok: false, problems: [{ path: '', message: 'file not found', code: 'AIRLOCK_E_INVALID_INPUT', severity: 'error' }] });
    expect(j.status).toBe(2);
  });

  it('--policies DIR: the same file judged by a stricter job policy', async () => {
    const policies = mkdtempSync(join(dir, 'policies-'));
    cpSync(new URL('../../policies/', import.meta.url).pathname, policies, { recursive: true });
    const job = join(policies, 'untrusted-job.yaml');
    writeFileSync(job, readFileSync(job, 'utf8').replace(/^  memory: 1g /m, '  memory: 256m'));
    const file = workingCopy({ '.airlock.yaml': ['version: 1', 'environment: { image: airlock/base:busybox }', 'jobs:', '  test: { command: make, resources: { memory: 512m } }', ''].join('\n') });
    expect((await lint(file)).status).toBe(0);
    const r = await lint(file, { policies });
    expect(r.stdout).toContain('.airlock.yaml: jobs.test.resources.memory: asks for 512 MiB, policy allows at most 256 MiB\n');
    expect(r.status).toBe(2);
  });

  it('a job in one pipeline only: a warning for the other, still exit 0', async () => {
    const file = workingCopy({ '.airlock.yaml': ['version: 1', 'environment: { image: airlock/base:busybox }', 'jobs:', '  test: { command: make, pipelines: [check] }', ''].join('\n') });
    const r = await lint(file);
    expect(r.stdout).toBe(`warning: .airlock.yaml: publish: ${NO_PUBLISH_SECTION}\nwarning: .airlock.yaml: jobs: no job runs in the gate pipeline\n${file}: ok\n`);
    expect(r.status).toBe(0);
  });
});
