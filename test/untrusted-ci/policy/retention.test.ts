import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PolicyInvalidError } from '#shared/errors.js';
import {
  applyRetention,
  loadRetentionPolicy,
  longestPeriod,
  parseRetentionPolicy,
  periodClass,
  planOrphans,
  planRetention,
  scanBuilds,
  type BuildResult,
  type FinishedBuild,
} from '../../../untrusted-ci/policy/retention.js';
import { RetentionPolicy, type RetentionPolicyInput } from '../../../untrusted-ci/schemas/retention-policy.js';
import { FsArtifactStore } from '../../../untrusted-ci/storage/fs-artifact-store.js';
import { artifactPrefix, logKey, resultKey } from '../../../untrusted-ci/storage/keys.js';
import { collect } from '../../contract/artifact-store.contract.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const NOW = Date.UTC(2026, 5, 1);
const policy = loadRetentionPolicy();

const build = (result: BuildResult, age: number, jobs = ['unit']): FinishedBuild => ({ buildId: 'b1', result, finishedAt: NOW - age, jobs });
const policyWith = (input: Partial<RetentionPolicyInput>): RetentionPolicy =>
  RetentionPolicy.parse({ version: 1, logs: { passed: '7d', failed: '30d' }, artifacts: { passed: '5d', failed: '15d' }, ...input });

describe('policies/retention.yaml', () => {
  it('loads with the agreed periods', () => {
    expect(policy).toEqual({
      version: 1,
      logs: { passed: 7 * DAY, failed: 30 * DAY },
      artifacts: { passed: 5 * DAY, failed: 15 * DAY, jobs: {} },
    });
    expect(longestPeriod(policy)).toBe(30 * DAY);
  });
});

describe('periodClass', () => {
  it.each([
    ['passed', 'passed'],
    ['cancelled', 'passed'],
    ['failed', 'failed'],
    ['error', 'failed'],
  ] as const)('%s keeps for the %s period', (result, cls) => expect(periodClass(result)).toBe(cls));
});

describe('planRetention', () => {
  // [result, age, logs expire?, artifacts expire?] against 7d/30d logs and 5d/15d artifacts.
  it.each([
    ['passed', 5 * DAY - 1, false, false],
    ['passed', 5 * DAY, false, true], // exactly the period: expired
    ['passed', 7 * DAY - 1, false, true],
    ['passed', 7 * DAY, true, true],
    ['cancelled', 7 * DAY, true, true],
    ['failed', 7 * DAY, false, false],
    ['failed', 15 * DAY - 1, false, false],
    ['failed', 15 * DAY, false, true],
    ['error', 15 * DAY, false, true],
    ['failed', 30 * DAY - 1, false, true],
    ['failed', 30 * DAY, true, true],
    ['error', 30 * DAY, true, true],
    ['passed', -DAY, false, false], // finished "in the future" (clock skew): keep
  ] as const)('%s, %i ms old: logs %s, artifacts %s', (result, age, logs, artifacts) => {
    const plan = planRetention([build(result, age)], policy, NOW);
    expect(plan.logs).toEqual(logs ? ['b1'] : []);
    expect(plan.artifacts).toEqual(artifacts ? [{ buildId: 'b1', job: 'unit' }] : []);
  });

  it('applies per-job artifact overrides, falling back per period', () => {
    const p = policyWith({ artifacts: { passed: '5d', failed: '15d', jobs: { coverage: { passed: '1d' }, release: { passed: '60d', failed: '60d' } } } });
    const jobs = ['unit', 'coverage', 'release'];
    const arts = (result: BuildResult, age: number): string[] => planRetention([build(result, age, jobs)], p, NOW).artifacts.map((a) => a.job);
    expect(arts('passed', DAY)).toEqual(['coverage']);
    expect(arts('passed', 5 * DAY)).toEqual(['unit', 'coverage']);
    expect(arts('failed', 5 * DAY)).toEqual([]); // coverage's failed period is the default 15d
    expect(arts('failed', 15 * DAY)).toEqual(['unit', 'coverage']);
    expect(arts('failed', 60 * DAY)).toEqual(['unit', 'coverage', 'release']);
    expect(longestPeriod(p)).toBe(60 * DAY);
  });

  it('plans many builds in input order, and nothing for none', () => {
    const builds: FinishedBuild[] = [
      { buildId: 'old-pass', result: 'passed', finishedAt: NOW - 8 * DAY, jobs: ['a', 'b'] },
      { buildId: 'new-pass', result: 'passed', finishedAt: NOW - HOUR, jobs: ['a'] },
      { buildId: 'old-fail', result: 'failed', finishedAt: NOW - 16 * DAY, jobs: ['a'] },
    ];
    expect(planRetention(builds, policy, NOW)).toEqual({
      logs: ['old-pass'],
      artifacts: [
        { buildId: 'old-pass', job: 'a' },
        { buildId: 'old-pass', job: 'b' },
        { buildId: 'old-fail', job: 'a' },
      ],
    });
    expect(planRetention([], policy, NOW)).toEqual({ logs: [], artifacts: [] });
  });
});

describe('planOrphans', () => {
  it('sweeps unknown builds whose newest object is at least the longest period old', () => {
    const newest = new Map([
      ['known-old', NOW - 100 * DAY],
      ['gone-old', NOW - 30 * DAY],
      ['gone-recent', NOW - 30 * DAY + 1],
      ['another-old', NOW - 31 * DAY],
    ]);
    expect(planOrphans(newest, new Set(['known-old']), policy, NOW)).toEqual(['another-old', 'gone-old']);
  });
});

describe('parseRetentionPolicy / loadRetentionPolicy', () => {
  it('names the path of every problem', () => {
    const text = [
      'version: 1',
      'logs: { passed: 7 days, failed: 30d }',
      'artifacts:',
      '  passed: 5d',
      '  failed: 0h',
      '  jobs:',
      '    Bad Name: { passed: 1d }',
      '    unit: { passed: 1d, extra: 2d }',
      'surplus: true',
    ].join('\n');
    const r = parseRetentionPolicy(text, 'retention.yaml');
    expect(r.value).toBeUndefined();
    const paths = r.issues.map((i) => i.path);
    expect(paths).toEqual(expect.arrayContaining(['logs.passed', 'artifacts.failed', 'artifacts.jobs.Bad Name', 'artifacts.jobs.unit', '']));
    expect(r.issues.every((i) => i.file === 'retention.yaml' && i.severity === 'error')).toBe(true);
    expect(r.issues.find((i) => i.path === 'logs.passed')?.message).toMatch(/not a retention period/);
    expect(r.issues.find((i) => i.path === '')?.message).toMatch(/surplus/);
  });

  it.each(['36h', '1h', '3650d'])('accepts the period %s', (p) => {
    expect(parseRetentionPolicy(`version: 1\nlogs: {passed: ${p}, failed: ${p}}\nartifacts: {passed: ${p}, failed: ${p}}\n`, 'f').issues).toEqual([]);
  });

  it.each(['30m', '0d', '3651d', '7', '1.5d', 'd'])('refuses the period %s', (p) => {
    const r = parseRetentionPolicy(`version: 1\nlogs: {passed: ${p}, failed: 1d}\nartifacts: {passed: 1d, failed: 1d}\n`, 'f');
    expect(r.issues.map((i) => i.path)).toEqual(['logs.passed']);
  });

  it('throws PolicyInvalidError for a broken or missing file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'airlock-retention-'));
    try {
      await writeFile(join(dir, 'bad.yaml'), 'version: 2\nlogs: {passed: 7d}\n');
      const e = (() => {
        try {
          loadRetentionPolicy(join(dir, 'bad.yaml'));
        } catch (err) {
          return err;
        }
      })();
      expect(e).toBeInstanceOf(PolicyInvalidError);
      expect((e as PolicyInvalidError).issues.map((i) => i.path)).toEqual(expect.arrayContaining(['version', 'logs.failed', 'artifacts']));
      expect(() => loadRetentionPolicy(join(dir, 'missing.yaml'))).toThrow(PolicyInvalidError);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('applyRetention and scanBuilds on a real store', () => {
  let dir: string;
  let store: FsArtifactStore;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'airlock-retention-store-'));
    store = new FsArtifactStore(dir);
    for (const id of ['b1', 'b2', 'orphan']) {
      await store.put(logKey(id, 'unit'), 'log');
      await store.put(logKey(id, 'lint'), 'log');
      await store.put(`${artifactPrefix(id, 'unit')}out/report.xml`, '<x/>');
      await store.put(`${artifactPrefix(id, 'lint')}lint.txt`, 'ok');
      await store.put(resultKey(id), '{}');
    }
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('deletes exactly the planned prefixes and counts the objects', async () => {
    const newest = await scanBuilds(store);
    expect([...newest.keys()].sort()).toEqual(['b1', 'b2', 'orphan']);
    const orphans = planOrphans(newest, new Set(['b1', 'b2']), policy, Date.now() + 30 * DAY);
    expect(orphans).toEqual(['orphan']);
    const r = await applyRetention(store, { logs: ['b1'], artifacts: [{ buildId: 'b2', job: 'unit' }], orphans });
    expect(r.deletedObjects).toBe(2 + 1 + 5);
    expect((await collect(store.list(''))).map((o) => o.key).sort()).toEqual([
      'builds/b1/artifacts/lint/lint.txt',
      'builds/b1/artifacts/unit/out/report.xml',
      'builds/b1/result.json',
      'builds/b2/artifacts/lint/lint.txt',
      'builds/b2/logs/lint.log',
      'builds/b2/logs/unit.log',
      'builds/b2/result.json',
    ]);
    expect((await applyRetention(store, { logs: ['b1'], artifacts: [] })).deletedObjects).toBe(0); // idempotent
  });

  it('refuses a bad id before deleting anything', async () => {
    await expect(applyRetention(store, { logs: ['b1', '../bad'], artifacts: [] })).rejects.toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
    expect(await store.stat(logKey('b1', 'unit'))).toBeDefined();
  });

  it('attempts every prefix and then reports the failures', async () => {
    // A storage failure: b2's logs folder replaced by a link, which the fs store refuses to follow.
    await rm(join(dir, 'builds', 'b2', 'logs'), { recursive: true });
    await symlink(tmpdir(), join(dir, 'builds', 'b2', 'logs'));
    const e = await applyRetention(store, { logs: ['b2', 'b1'], artifacts: [] }).catch((err: unknown) => err);
    expect(e).toMatchObject({ code: 'AIRLOCK_E_STORAGE_FAILED' });
    expect((e as Error).message).toMatch(/1 of 2 deletions failed \(2 objects deleted\)/);
    expect(await store.stat(logKey('b1', 'unit'))).toBeUndefined();
  });
});
