/**
 * `runCiGc` retention over a real SQLite database and a real filesystem ArtifactStore (no Docker:
 * images off). The default policy: logs passed 7d / failed 30d, artifacts passed 5d / failed 15d.
 */
import { existsSync, mkdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import type { BuildResult } from '#shared/schemas/api/builds.js';
import { buildCiConfig, type LoadedCiConfig } from '../../untrusted-ci/config.js';
import { allBuildIds, runCiGc } from '../../untrusted-ci/gc.js';
import { dataPaths } from '../../untrusted-ci/service.js';
import { BuildStore } from '../../untrusted-ci/store/build-store.js';
import { openDatabase, type Db } from '../../untrusted-ci/store/database.js';
import { tempDir } from '../support/docker.js';

const DAY = 86_400_000;
const NOW = Date.UTC(2030, 0, 1);
const logger = createLogger({ level: 'silent' });

describe('runCiGc', () => {
  let dataDir: string;
  let loaded: LoadedCiConfig;
  let db: Db;
  let clock = NOW;
  let store: BuildStore;
  let seq = 0;
  const root = (): string => dataPaths(dataDir).artifacts;

  /** An object in the fs store, written directly, with its mtime `ageDays` before NOW. */
  const put = (key: string, ageDays: number): void => {
    const file = join(root(), key);
    mkdirSync(join(file, '..'), { recursive: true });
    writeFileSync(file, key);
    const t = new Date(NOW - ageDays * DAY);
    utimesSync(file, t, t);
  };
  const has = (key: string): boolean => existsSync(join(root(), key));

  /** A build of one job `unit` with a log, an artifact and a result, finished `ageDays` before NOW. */
  const finished = async (result: BuildResult, ageDays: number): Promise<string> => {
    clock = NOW - ageDays * DAY - 60_000;
    const id = await running();
    clock = NOW - ageDays * DAY;
    await store.finish(Number(id), result, result);
    return id;
  };
  const running = async (): Promise<string> => {
    seq++;
    const { buildId } = await store.enqueue({ project: 'p', branch: 'master', change: `c${seq}`, patchset: 1, ref: 'refs/heads/x', author: 'a', source: 'api' }, 'check');
    await store.start(buildId);
    await store.planJobs(buildId, [{ name: 'unit', voting: true }]);
    const id = String(buildId);
    for (const key of [`builds/${id}/logs/unit.log`, `builds/${id}/artifacts/unit/out/a.txt`, `builds/${id}/result.json`]) put(key, 100);
    mkdirSync(join(dataPaths(dataDir).builds, id, 'logs'), { recursive: true });
    return id;
  };

  beforeEach(() => {
    dataDir = tempDir('airlock-gc-');
    loaded = buildCiConfig({ version: 1, dataDir }, 'test-config');
    db = openDatabase(dataPaths(dataDir).db);
    store = new BuildStore(db, () => clock);
  });
  afterEach(async () => {
    await db.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('prunes the package cache to the egress policy\'s size, least recently used first', async () => {
    const stateDir = tempDir('airlock-gc-state-');
    const egress = join(dataDir, 'egress.yaml');
    writeFileSync(egress, 'version: 1\ncache: { maxSize: 1500 }\n');
    const l = buildCiConfig({ version: 1, dataDir, runnerStateDir: stateDir, policies: { egress } }, 'test-config');
    const file = (p: string, bytes: number, ageS: number) => {
      const f = join(stateDir, 'egress', 'cache', p);
      mkdirSync(join(f, '..'), { recursive: true });
      writeFileSync(f, Buffer.alloc(bytes));
      utimesSync(f, new Date(NOW - ageS * 1000), new Date(NOW - ageS * 1000));
    };
    file('debian/m0/pool/a.deb', 1000, 100);
    file('npm/x/x-1.tgz', 1000, 10);
    const report = await runCiGc(l, { logger, now: NOW, images: false, git: false, packages: true });
    expect(report.packages).toEqual({ files: 1, bytes: 1000, keptBytes: 1000 });
    expect(existsSync(join(stateDir, 'egress', 'cache', 'npm', 'x', 'x-1.tgz'))).toBe(true);
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('deletes expired logs and artifacts by result class, sweeps old orphans, keeps running builds', async () => {
    const passedOld = await finished('passed', 10); // logs 7d, artifacts 5d: both go
    const passedRecent = await finished('passed', 6); // artifacts go, logs stay
    const failedOld = await finished('failed', 10); // failed: 30d / 15d: both stay
    const failedVeryOld = await finished('failed', 20); // artifacts go, logs stay
    const superseded = await finished('superseded', 8); // counts as passed: both go
    const conflict = await finished('merge-conflict', 20); // counts as failed: logs stay
    const busy = await running(); // objects 100 days old, never finished: kept
    put('builds/9001/logs/unit.log', 40); // unknown to the database, older than 30d: swept
    put('builds/9002/logs/unit.log', 3); // unknown but recent: kept

    const report = await runCiGc(loaded, { logger, now: NOW, images: false, git: false });

    expect(report.retention.logs.sort()).toEqual([passedOld, superseded].sort());
    expect(report.retention.artifacts.map((a) => a.buildId).sort()).toEqual([passedOld, passedRecent, failedVeryOld, superseded, conflict].sort());
    expect(report.retention.orphans).toEqual(['9001']);
    expect(report.retention.deletedObjects).toBe(2 + 5 + 1);
    expect(report.images).toBeUndefined();

    const gone = (id: string, what: 'logs' | 'artifacts'): boolean => !has(what === 'logs' ? `builds/${id}/logs/unit.log` : `builds/${id}/artifacts/unit/out/a.txt`);
    expect([gone(passedOld, 'logs'), gone(passedOld, 'artifacts')]).toEqual([true, true]);
    expect([gone(passedRecent, 'logs'), gone(passedRecent, 'artifacts')]).toEqual([false, true]);
    expect([gone(failedOld, 'logs'), gone(failedOld, 'artifacts')]).toEqual([false, false]);
    expect([gone(failedVeryOld, 'logs'), gone(failedVeryOld, 'artifacts')]).toEqual([false, true]);
    expect([gone(superseded, 'logs'), gone(superseded, 'artifacts')]).toEqual([true, true]);
    expect(gone(conflict, 'logs')).toBe(false);
    expect([gone(busy, 'logs'), gone(busy, 'artifacts')]).toEqual([false, false]);
    expect(has(`builds/${passedOld}/result.json`)).toBe(true); // lives as long as the database knows the build
    expect(has('builds/9001/logs/unit.log')).toBe(false);
    expect(has('builds/9002/logs/unit.log')).toBe(true);

    // The local event files go with the logs (they hold the log text too).
    expect(report.retention.eventDirs).toBe(2);
    expect(existsSync(join(dataPaths(dataDir).builds, passedOld))).toBe(false);
    expect(existsSync(join(dataPaths(dataDir).builds, failedOld))).toBe(true);
    expect(existsSync(join(dataPaths(dataDir).builds, busy))).toBe(true);

    // Idempotent: a second pass plans the same prefixes and finds nothing left to delete.
    const again = await runCiGc(loaded, { logger, now: NOW, images: false, git: false });
    expect(again.retention.deletedObjects).toBe(0);
    expect(again.retention.orphans).toEqual([]);
  });

  it('a dry run plans the same and deletes nothing', async () => {
    const old = await finished('passed', 10);
    put('builds/9001/logs/unit.log', 40);
    const report = await runCiGc(loaded, { logger, now: NOW, dryRun: true });
    expect(report.retention).toMatchObject({ logs: [old], artifacts: [{ buildId: old, job: 'unit' }], orphans: ['9001'], deletedObjects: 0, eventDirs: 0 });
    expect(report.images).toBeUndefined();
    expect(report.git).toBeUndefined();
    expect(has(`builds/${old}/logs/unit.log`)).toBe(true);
    expect(has('builds/9001/logs/unit.log')).toBe(true);
  });

  it('knows every build the database holds, queued and running ones included', async () => {
    const a = await finished('passed', 1);
    const b = await running();
    const { buildId: c } = await store.enqueue({ project: 'p', branch: 'master', change: 'q', patchset: 1, ref: 'refs/heads/x', author: 'a', source: 'api' }, 'check');
    expect(await allBuildIds(db)).toEqual(new Set([a, b, String(c)]));
  });

  it('runs git gc in the mirrors (none yet: nothing to do) and opens the database while another handle holds it', async () => {
    const report = await runCiGc(loaded, { logger, now: NOW, images: false });
    expect(report.git).toBe(true);
    expect(report.retention.deletedObjects).toBe(0);
  });
});
