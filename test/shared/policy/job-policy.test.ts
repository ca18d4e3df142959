import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { PolicyInvalidError, PolicyViolationError } from '#shared/errors.js';
import {
  checkAgainstPolicy,
  DEFAULT_JOB_POLICY_FILE,
  loadJobPolicy,
  parseJobPolicy,
  resolveLimits,
} from '#shared/policy/job-policy.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import { LIMIT_UNITS, LimitsRequest, type LimitsRequestInput } from '#shared/schemas/limits.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const POLICY_TEXT = readFileSync(DEFAULT_JOB_POLICY_FILE, 'utf8');
const policy = loadJobPolicy();

/** A copy of the real policy with another runtime section. */
const withRuntime = (runtime: JobPolicy['runtime']): JobPolicy => ({ ...policy, runtime });
const request = (input: LimitsRequestInput) => LimitsRequest.parse(input);

describe('policies/untrusted-job.yaml', () => {
  it('loads without issues', () => {
    const r = parseJobPolicy(POLICY_TEXT, 'policies/untrusted-job.yaml');
    expect(r.issues).toEqual([]);
    expect(r.value).toEqual(policy);
  });

  it('has sane values', () => {
    expect(policy.version).toBe(1);
    expect(policy.user.uid).toBeGreaterThan(0);
    expect(policy.user.gid).toBeGreaterThan(0);
    expect(policy.limits.memory).toBe(GiB);
    expect(policy.limits.memory).toBeGreaterThanOrEqual(64 * MiB);
    expect(policy.limits.cpus).toBeGreaterThan(0);
    expect(policy.limits.pids).toBeGreaterThanOrEqual(64);
    expect(policy.limits.pids).toBeLessThanOrEqual(4096);
    expect(policy.limits.timeout).toBe(30 * 60_000);
    expect(policy.limits.tmp).toBeLessThan(policy.limits.memory); // /tmp pages count against memory
    expect(policy.limits.logCap).toBeLessThan(policy.limits.memory);
    expect(policy.limits.artifacts).toBeLessThanOrEqual(policy.limits.workspace);
    expect(policy.limits.artifactFiles).toBeGreaterThan(0);
    expect(policy.killGrace).toBeGreaterThan(0);
    expect(policy.killGrace).toBeLessThan(policy.limits.timeout);
    expect(policy.runtime.default).toBe('runc');
    expect(policy.runtime.allowed).toContain(policy.runtime.default);
  });
});

describe('parseJobPolicy', () => {
  it('collects every problem at once, each naming its path and the file', () => {
    const broken = POLICY_TEXT.replace('version: 1', 'version: 2')
      .replace('memory: 1g', 'memory: lots')
      .replace('cpus: 1 ', 'cpus: -1 ')
      .replace('pids: 256', 'pids: 2')
      .replace('timeout: 30m', 'timeout: forever')
      .replace('killGrace: 2s', 'killGrace: 0s');
    expect(broken).not.toBe(POLICY_TEXT);
    const r = parseJobPolicy(broken, 'policies/broken.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues.map((i) => i.path).sort()).toEqual(
      ['killGrace', 'limits.cpus', 'limits.memory', 'limits.pids', 'limits.timeout', 'version'].sort(),
    );
    for (const issue of r.issues) {
      expect(issue.file).toBe('policies/broken.yaml');
      expect(issue.severity).toBe('error');
      expect(issue.message).not.toBe('');
    }
    expect(r.issues.find((i) => i.path === 'limits.memory')?.message).toContain('"lots"');
  });

  it('reports a missing limit by its path', () => {
    const r = parseJobPolicy(POLICY_TEXT.replace(/^ {2}logCap:.*\n/m, ''), 'p.yaml');
    expect(r.issues.map((i) => i.path)).toEqual(['limits.logCap']);
  });

  it.each([
    ['a top-level key', POLICY_TEXT + 'privileged: true\n', '', 'privileged'],
    ['a key under limits', POLICY_TEXT.replace('limits:\n', 'limits:\n  gpus: 4\n'), 'limits', 'gpus'],
    ['a key under user', POLICY_TEXT.replace('gid: 1000 }', 'gid: 1000, groups: [0] }'), 'user', 'groups'],
    ['a key under runtime', POLICY_TEXT.replace('runtime:\n', 'runtime:\n  privileged: true\n'), 'runtime', 'privileged'],
  ])('rejects an unknown key: %s', (_what, text, path, key) => {
    expect(text).not.toBe(POLICY_TEXT);
    const r = parseJobPolicy(text, 'p.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues).toHaveLength(1);
    expect(r.issues[0]?.path).toBe(path);
    expect(r.issues[0]?.message).toContain(key);
  });

  it('rejects uid 0 and gid 0', () => {
    const r = parseJobPolicy(POLICY_TEXT.replace('user: { uid: 1000, gid: 1000 }', 'user: { uid: 0, gid: 0 }'), 'p.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues.map((i) => i.path).sort()).toEqual(['user.gid', 'user.uid']);
  });

  it('rejects a default runtime that is not allowed', () => {
    const r = parseJobPolicy(POLICY_TEXT.replace('allowed: [runc, runsc]', 'allowed: [runsc]'), 'p.yaml');
    expect(r.issues.map((i) => i.path)).toEqual(['runtime']);
  });

  it('passes YAML-level problems through with the file name', () => {
    const r = parseJobPolicy('version: 1\nversion: 1\n', 'policies/dup.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues).toHaveLength(1);
    expect(r.issues[0]?.file).toBe('policies/dup.yaml');
  });

  it('loadJobPolicy throws PolicyInvalidError for a missing file', () => {
    expect(() => loadJobPolicy('/nonexistent/airlock-policy.yaml')).toThrow(PolicyInvalidError);
  });
});

/**
 * One row per limit: a request below the real policy's ceiling, one above it, and how the
 * violation message must show both values.
 */
const LIMIT_TABLE: { key: keyof LimitsRequestInput; tighter: unknown; looser: unknown; asked: string; allowed: string }[] = [
  { key: 'memory', tighter: '512m', looser: '2g', asked: '2 GiB', allowed: '1 GiB' },
  { key: 'cpus', tighter: 0.5, looser: 2, asked: '2', allowed: '1' },
  { key: 'pids', tighter: 64, looser: 512, asked: '512', allowed: '256' },
  { key: 'timeout', tighter: '10m', looser: '1h', asked: '60 min', allowed: '30 min' },
  { key: 'logCap', tighter: '1m', looser: '20m', asked: '20 MiB', allowed: '10 MiB' },
  { key: 'workspace', tighter: '1g', looser: '4g', asked: '4 GiB', allowed: '2 GiB' },
  { key: 'tmp', tighter: '32m', looser: '128m', asked: '128 MiB', allowed: '64 MiB' },
  { key: 'artifacts', tighter: '128m', looser: '512m', asked: '512 MiB', allowed: '256 MiB' },
  { key: 'artifactFiles', tighter: 100, looser: 20_000, asked: '20000', allowed: '10000' },
];

describe('checkAgainstPolicy', () => {
  it('has a table row for every limit', () => {
    expect(LIMIT_TABLE.map((r) => r.key).sort()).toEqual(Object.keys(LIMIT_UNITS).sort());
  });

  it('accepts an empty request and the policy itself', () => {
    expect(checkAgainstPolicy({}, undefined, policy)).toEqual([]);
    expect(checkAgainstPolicy({ ...policy.limits }, policy.runtime.default, policy)).toEqual([]);
  });

  it.each(LIMIT_TABLE)('tightening $key passes', ({ key, tighter }) => {
    expect(checkAgainstPolicy(request({ [key]: tighter }), undefined, policy)).toEqual([]);
  });

  it.each(LIMIT_TABLE)('loosening $key yields one issue naming limits.$key, $asked and $allowed', ({ key, looser, asked, allowed }) => {
    const issues = checkAgainstPolicy(request({ [key]: looser }), undefined, policy, '.airlock.yaml');
    expect(issues).toEqual([
      {
        file: '.airlock.yaml',
        path: `limits.${key}`,
        message: `asks for ${asked}, policy allows at most ${allowed}`,
        severity: 'error',
      },
    ]);
  });

  it.each(LIMIT_TABLE)('$key one unit above the ceiling is refused', ({ key }) => {
    const ceiling = policy.limits[key];
    const step = key === 'cpus' ? 0.01 : 1;
    expect(checkAgainstPolicy({ [key]: ceiling }, undefined, policy)).toEqual([]);
    expect(checkAgainstPolicy({ [key]: ceiling + step }, undefined, policy).map((i) => i.path)).toEqual([`limits.${key}`]);
  });

  it('loosening every limit yields one issue per limit', () => {
    const all = Object.fromEntries(LIMIT_TABLE.map((r) => [r.key, r.looser]));
    const issues = checkAgainstPolicy(request(all), undefined, policy);
    expect(issues.map((i) => i.path).sort()).toEqual(LIMIT_TABLE.map((r) => `limits.${r.key}`).sort());
  });

  it.each([
    { policyRuntime: { default: 'runc', allowed: ['runc', 'runsc'] }, asked: 'runsc', issue: undefined },
    { policyRuntime: { default: 'runc', allowed: ['runc', 'runsc'] }, asked: 'runc', issue: undefined },
    { policyRuntime: { default: 'runsc', allowed: ['runc', 'runsc'] }, asked: 'runsc', issue: undefined },
    { policyRuntime: { default: 'runsc', allowed: ['runc', 'runsc'] }, asked: 'runc', issue: /loosen/ },
    { policyRuntime: { default: 'runsc', allowed: ['runsc'] }, asked: 'runc', issue: /not allowed/ },
    { policyRuntime: { default: 'runc', allowed: ['runc'] }, asked: 'runsc', issue: /not allowed/ },
  ] as const)('policy $policyRuntime.default of [$policyRuntime.allowed], job asks $asked', ({ policyRuntime, asked, issue }) => {
    const issues = checkAgainstPolicy({}, asked, withRuntime({ default: policyRuntime.default, allowed: [...policyRuntime.allowed] }));
    if (issue === undefined) {
      expect(issues).toEqual([]);
    } else {
      expect(issues).toHaveLength(1);
      expect(issues[0]?.path).toBe('runtime');
      expect(issues[0]?.message).toMatch(issue);
      expect(issues[0]?.message).toContain(asked);
    }
  });

  it('no runtime asked: no runtime issue, even under a runsc-only policy', () => {
    expect(checkAgainstPolicy({}, undefined, withRuntime({ default: 'runsc', allowed: ['runsc'] }))).toEqual([]);
  });
});

describe('resolveLimits', () => {
  it('takes the policy for everything not asked', () => {
    const r = resolveLimits({}, undefined, policy);
    expect(r.runtime).toBe('runc');
    expect(r.limits).toEqual({
      memory: GiB,
      cpus: 1,
      pids: 256,
      timeout: 30 * 60_000,
      logCap: 10 * MiB,
      workspace: 2 * GiB,
      tmp: 64 * MiB,
      artifacts: 256 * MiB,
      artifactFiles: 10_000,
    });
  });

  it('merges the request over the policy where it tightens', () => {
    const r = resolveLimits(request({ memory: '256m', timeout: '5m', artifactFiles: 0 }), 'runsc', policy);
    expect(r.runtime).toBe('runsc');
    expect(r.limits.memory).toBe(256 * MiB);
    expect(r.limits.timeout).toBe(300_000);
    expect(r.limits.artifactFiles).toBe(0);
    expect(r.limits.cpus).toBe(policy.limits.cpus);
    expect(r.limits.pids).toBe(policy.limits.pids);
    expect(r.limits.workspace).toBe(policy.limits.workspace);
  });

  it('does not change the policy it was given', () => {
    const before = structuredClone(policy);
    resolveLimits(request({ memory: '256m' }), 'runsc', policy);
    expect(policy).toEqual(before);
  });

  it('throws one PolicyViolationError listing every violation', () => {
    const strict = withRuntime({ default: 'runsc', allowed: ['runc', 'runsc'] });
    let caught: unknown;
    try {
      resolveLimits(request({ memory: '2g', cpus: 4, pids: 64 }), 'runc', strict, 'repo/.airlock.yaml');
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(PolicyViolationError);
    const err = caught as PolicyViolationError;
    expect(err.code).toBe('AIRLOCK_E_POLICY_VIOLATION');
    expect(err.issues).toHaveLength(3);
    expect(err.issues.map((i) => i.path).sort()).toEqual(['limits.cpus', 'limits.memory', 'runtime']);
    expect(err.issues.every((i) => i.file === 'repo/.airlock.yaml')).toBe(true);
    expect(err.message).toContain('repo/.airlock.yaml: limits.memory: asks for 2 GiB, policy allows at most 1 GiB');
  });
});
