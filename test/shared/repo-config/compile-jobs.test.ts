/**
 * compileJobs: `.airlock.yaml` (already parsed) → the ordered JobSpecs one build runs. Pure, so
 * every case builds its input with the real schema and asserts on the compiled IR.
 */
import { describe, expect, it } from 'vitest';
import { AirlockYaml } from '#shared/schemas/airlock-yaml.js';
import { JobId } from '#shared/schemas/job-spec.js';
import { compileJobs, type CompileContext } from '#shared/repo-config/compile-jobs.js';

const COMMIT = 'c0ffee'.padEnd(40, '0');
const ctx = (over: Partial<CompileContext> = {}): CompileContext => ({
  buildId: 42,
  attempt: 1,
  pipeline: 'check',
  image: 'airlock/base:busybox',
  vars: { project: 'org/app', branch: 'main', change: 'I1234', patchset: 3, commit: COMMIT },
  ...over,
});
const yaml = (jobs: Record<string, unknown>): AirlockYaml => AirlockYaml.parse({ version: 1, environment: { image: 'airlock/base:busybox' }, jobs });

describe('compileJobs', () => {
  it('with jobs the schema refused (a file checked for all its problems at once): needs on them not judged, no "no job runs", nothing compiled', () => {
    const cfg = yaml({ unit: { command: 'make test', needs: ['build'] }, other: { command: 'x', pipelines: ['gate'] } });
    const without = compileJobs(cfg, ctx());
    // A need on a job that is not in the file at all is parseAirlockYaml's to say ("no job named"), not said twice.
    expect(without.issues).toEqual([]);
    const broken = compileJobs(cfg, ctx({ brokenJobs: ['build'] }));
    expect(broken).toEqual({ jobs: [], issues: [] });
    const none = compileJobs(yaml({ other: { command: 'x', pipelines: ['gate'] } }), ctx({ brokenJobs: ['build'] }));
    expect(none.issues).toEqual([]);
    expect(compileJobs(yaml({ other: { command: 'x', pipelines: ['gate'] } }), ctx()).issues.map((i) => i.message)).toEqual(['no job runs in the check pipeline']);
    // A need on a job that is in the file but not in this pipeline is still said.
    const gateOnly = compileJobs(yaml({ unit: { command: 'x', needs: ['other'] }, other: { command: 'x', pipelines: ['gate'] } }), ctx({ brokenJobs: ['build'] }));
    expect(gateOnly.issues.map((i) => i.message)).toEqual(['needs other, which does not run in the check pipeline']);
  });

  it('orders jobs topologically, ties in file order', () => {
    const cfg = yaml({
      package: { command: 'make package', needs: ['build', 'test'] },
      lint: { command: 'make lint' },
      test: { command: 'make test', needs: ['build'] },
      build: { command: 'make' },
      docs: { command: 'make docs' },
    });
    const { jobs, issues } = compileJobs(cfg, ctx());
    expect(issues).toEqual([]);
    expect(jobs.map((j) => j.name)).toEqual(['lint', 'build', 'test', 'package', 'docs']);
    expect(jobs.map((j) => j.spec.id)).toEqual(['b42-a1-j0', 'b42-a1-j1', 'b42-a1-j2', 'b42-a1-j3', 'b42-a1-j4']);
    expect(jobs.find((j) => j.name === 'package')!.needs).toEqual(['build', 'test']);
  });

  it('keeps only the jobs of the build’s pipeline', () => {
    const cfg = yaml({
      unit: { command: 'make test' },
      integration: { command: 'make it', pipelines: ['gate'] },
      quick: { command: 'make quick', pipelines: ['check'] },
    });
    expect(compileJobs(cfg, ctx({ pipeline: 'check' })).jobs.map((j) => j.name)).toEqual(['unit', 'quick']);
    expect(compileJobs(cfg, ctx({ pipeline: 'gate' })).jobs.map((j) => j.name)).toEqual(['unit', 'integration']);
  });

  it('reports a job that needs one outside the pipeline, and compiles nothing', () => {
    const cfg = yaml({
      build: { command: 'make', pipelines: ['gate'] },
      test: { command: 'make test', needs: ['build'] },
    });
    expect(compileJobs(cfg, ctx())).toEqual({
      jobs: [],
      issues: [{ file: '.airlock.yaml', path: 'jobs.test.needs[0]', message: 'needs build, which does not run in the check pipeline', severity: 'error' }],
    });
  });

  it('reports a pipeline with no job at all', () => {
    const cfg = yaml({ deploy: { command: 'x', pipelines: ['gate'] } });
    const r = compileJobs(cfg, ctx({ file: 'repo/.airlock.yaml' }));
    expect(r.jobs).toEqual([]);
    expect(r.issues).toEqual([{ file: 'repo/.airlock.yaml', path: 'jobs', message: 'no job runs in the check pipeline', severity: 'error' }]);
  });

  it('runs a string command through sh -c and an array as is', () => {
    const cfg = yaml({ a: { command: 'echo "$HOME" && exit 3' }, b: { command: ['python3', '-m', 'pytest', '-x'] } });
    const [a, b] = compileJobs(cfg, ctx()).jobs;
    expect(a!.spec.command).toEqual(['sh', '-c', 'echo "$HOME" && exit 3']);
    expect(b!.spec.command).toEqual(['python3', '-m', 'pytest', '-x']);
  });

  it('sets the AIRLOCK_* variables, which a job’s own env cannot override', () => {
    const cfg = yaml({ unit: { command: 'true', env: { FOO: 'bar', AIRLOCK_COMMIT: 'spoofed', AIRLOCK_JOB: 'other', CI: 'false' } } });
    const [unit] = compileJobs(cfg, ctx({ pipeline: 'check', buildId: 7 })).jobs;
    expect(unit!.spec.env).toEqual({
      FOO: 'bar',
      CI: 'true',
      AIRLOCK: 'true',
      AIRLOCK_PIPELINE: 'check',
      AIRLOCK_PROJECT: 'org/app',
      AIRLOCK_BRANCH: 'main',
      AIRLOCK_CHANGE: 'I1234',
      AIRLOCK_PATCHSET: '3',
      AIRLOCK_COMMIT: COMMIT,
      AIRLOCK_BUILD: '7',
      AIRLOCK_JOB: 'unit',
    });
  });

  it.each([
    ['10s', 10_000],
    ['500ms', 500],
    ['1.5m', 90_000],
    ['2h', 7_200_000],
    [30, 30_000], // a bare number is seconds
  ])('turns a job timeout of %j into a JobSpec limit of %i ms', (timeout, ms) => {
    const cfg = yaml({ unit: { command: 'true', timeout } });
    const { jobs, issues } = compileJobs(cfg, ctx());
    expect(issues).toEqual([]);
    // JobSpec holds resolved milliseconds (what resolveLimits and the runner's timer use).
    expect(jobs[0]!.spec.limits.timeout).toBe(ms);
  });

  it('passes resources through as bytes and leaves unset limits to policy', () => {
    const cfg = yaml({ unit: { command: 'true', resources: { memory: '512m', cpus: 1.5, pids: 256, workspace: '1g' } }, lint: { command: 'true' } });
    const [unit, lint] = compileJobs(cfg, ctx()).jobs;
    expect(unit!.spec.limits).toEqual({ memory: 512 * 1024 ** 2, cpus: 1.5, pids: 256, workspace: 1024 ** 3 });
    expect(lint!.spec.limits).toEqual({});
    expect(unit!.spec.image).toBe('airlock/base:busybox');
  });

  it('carries artifacts and voting', () => {
    const cfg = yaml({ unit: { command: 'true', artifacts: ['out/**'], voting: false } });
    const [unit] = compileJobs(cfg, ctx()).jobs;
    expect(unit!.spec.artifacts).toEqual(['out/**']);
    expect(unit!.voting).toBe(false);
  });

  it('makes job ids valid for the longest job names, large build ids and many jobs', () => {
    const long = `a${'b'.repeat(62)}`;
    const jobs: Record<string, unknown> = { [long]: { command: 'true' } };
    for (let i = 0; i < 255; i++) jobs[`${long.slice(0, 58)}-${String(i).padStart(3, '0')}`] = { command: 'true' };
    const r = compileJobs(yaml(jobs), ctx({ buildId: Number.MAX_SAFE_INTEGER, attempt: 99 }));
    expect(r.issues).toEqual([]);
    expect(r.jobs).toHaveLength(256);
    const ids = r.jobs.map((j) => j.spec.id);
    for (const id of ids) expect(JobId.safeParse(id).success, id).toBe(true);
    expect(new Set(ids).size).toBe(256);
    // Ids differ between attempts, so a retry never meets the containers of the one before.
    const again = compileJobs(yaml(jobs), ctx({ buildId: Number.MAX_SAFE_INTEGER, attempt: 100 }));
    expect(again.jobs[0]!.spec.id).not.toBe(ids[0]);
  });

  it('reports a spec the runner would refuse under the job’s name', () => {
    // The image is the caller's, not the repo's; a bad one is an issue, not a throw.
    const r = compileJobs(yaml({ unit: { command: 'true' } }), ctx({ image: 'NOT A REF' }));
    expect(r.jobs).toEqual([]);
    expect(r.issues.map((i) => i.path)).toEqual(['jobs.unit.image']);
  });

  it('holds a build to the policy\'s budget: jobs per build, and the sum of their timeouts', () => {
    const budget = { jobs: 3, timeMs: 60 * 60_000, defaultTimeoutMs: 30 * 60_000 };
    const four = yaml({ a: { command: 'true', timeout: '1m' }, b: { command: 'true', timeout: '1m' }, c: { command: 'true', timeout: '1m' }, d: { command: 'true', timeout: '1m' } });
    expect(compileJobs(four, ctx({ budget })).issues.map((i) => i.message)).toEqual(['4 jobs run in the check pipeline; the policy allows at most 3 per build']);
    // Two jobs with the policy's 30 min and one of 10 min: 70 min, over an hour.
    const long = yaml({ a: { command: 'true' }, b: { command: 'true' }, c: { command: 'true', timeout: '10m' } });
    const r = compileJobs(long, ctx({ budget }));
    expect(r.jobs).toEqual([]);
    expect(r.issues).toEqual([expect.objectContaining({ path: 'jobs', message: expect.stringMatching(/^the jobs of the check pipeline may run 70 min together \(the sum of their timeouts\); the policy allows 60 min per build/) })]);
    expect(compileJobs(yaml({ a: { command: 'true' }, b: { command: 'true', timeout: '29m' } }), ctx({ budget })).issues).toEqual([]);
  });
});
