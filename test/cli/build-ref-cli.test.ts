/**
 * `airlock status` and `logs` naming a build by change (`--change N[,PS] --project P`) or by the
 * CI's id (`#17`): the real command (a child process) against the CI's real HTTP API on a real port,
 * built by `buildApi` from real parts (SQLite BuildStore, the Scheduler, BuildEvents, an
 * FsArtifactStore) with the FakeExecutor in place of Docker, as in test/untrusted-ci/api/api.test.ts.
 */
import { testDatabase } from '../support/store-engines.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { BuildView, SubmitAnswer, type SubmitChangeInput } from '#shared/schemas/api/builds.js';
import { buildApi } from '../../untrusted-ci/api/app.js';
import { createCiMetrics } from '../../untrusted-ci/api/metrics.js';
import { buildCiConfig } from '../../untrusted-ci/config.js';
import { BuildEvents } from '../../untrusted-ci/logs/build-events.js';
import { createStoreReporter } from '../../untrusted-ci/reporting/store-reporter.js';
import { Scheduler } from '../../untrusted-ci/scheduler/scheduler.js';
import { BuildStore } from '../../untrusted-ci/store/build-store.js';
import { FsArtifactStore } from '../../untrusted-ci/storage/fs-artifact-store.js';
import { FakeExecutor } from '../support/fake-executor.js';
import { runAirlock } from '../support/run-child.js';

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

let server = '';
function airlock(args: string[]): Promise<Run> {
  return runAirlock(args, { AIRLOCK_SERVER: server, AIRLOCK_LOG_LEVEL: 'error' }).then((r) => ({ status: r.code, stdout: r.stdout, stderr: r.stderr }));
}

const refDb = await testDatabase();

describe('naming a build by change or by #id, against a running CI API', { timeout: 300_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-ref-'));
  const db = refDb;
  const store = new BuildStore(db);
  const events = new BuildEvents(join(dir, 'builds'));
  const artifacts = new FsArtifactStore(join(dir, 'artifacts'));
  const executor = new FakeExecutor({ events, store });
  const logger = createLogger({ level: 'silent' });
  const loaded = buildCiConfig(
    { version: 1, dataDir: join(dir, 'data'), slots: 1, projects: [{ name: 'app', url: '/srv/git/app.git' }, { name: 'lib', url: '/srv/git/lib.git' }] },
    'test-config',
    dir,
  );
  const scheduler = new Scheduler({ store, executor, reporters: [createStoreReporter(artifacts)], slots: 1, logger });
  let app: FastifyInstance;
  const ids: Record<string, number> = {};

  const submit = async (c: Partial<SubmitChangeInput>): Promise<number> => {
    const r = await app.inject({ method: 'POST', url: '/api/changes', payload: { project: 'app', ref: 'refs/changes/01/1/1', author: 'alice', ...c } });
    return SubmitAnswer.parse(r.json()).builds[0]!;
  };

  beforeAll(async () => {
    const metrics = createCiMetrics({ queued: () => ({ check: 0, gate: 0 }), busy: () => scheduler.busy, slots: 1 });
    app = await buildApi({ config: loaded.config, store, scheduler, events, artifacts, metrics, logger });
    await scheduler.start();
    // app: change 3 at patch sets 1, 2 (built twice), then 4 recorded with no build yet (an approval
    // names it); change 5 at patch set 1. lib: change 5 too (the same number in another project).
    ids.c3ps1 = await submit({ change: '3', patchset: 1, ref: 'refs/changes/03/3/1' });
    ids.c3ps2 = await submit({ change: '3', patchset: 2, ref: 'refs/changes/03/3/2' });
    ids.c3ps2b = await submit({ change: '3', patchset: 2, ref: 'refs/changes/03/3/2' });
    ids.app5 = await submit({ change: '5', patchset: 1, ref: 'refs/changes/05/5/1' });
    ids.lib5 = await submit({ project: 'lib', change: '5', patchset: 2, ref: 'refs/changes/05/5/2' });
    ids.c7 = await submit({ change: '7', patchset: 1, ref: 'refs/changes/07/7/1' });
    await scheduler.idle();
    await store.recordChange({ project: 'app', branch: 'master', change: '3', patchset: 4, ref: 'refs/changes/03/3/4', author: 'alice', source: 'gerrit' });
    server = await app.listen({ host: '127.0.0.1', port: 0 });
  });
  afterAll(async () => {
    await app?.close();
    await scheduler.close();
    executor.release('*');
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const shown = (r: Run): number => BuildView.parse(JSON.parse(r.stdout)).id;

  it('--project P --change N is the latest build of the current patch set; N,PS that patch set\'s; #id and id the build', async () => {
    const [byChange, byPs, byHash, byId, text, overview] = await Promise.all([
      airlock(['status', '--project', 'lib', '--change', '5', '--json']),
      airlock(['status', '--project', 'app', '--change', '5,1', '--json']),
      airlock(['status', `#${ids.c7}`, '--json']),
      airlock(['status', String(ids.c7), '--json']),
      airlock(['status', '--change', '7']), // one project has it: no --project needed
      airlock(['status', '--project', 'app']),
    ]);
    for (const r of [byChange, byPs, byHash, byId, text, overview]) expect([r.status, r.stderr]).toEqual([0, '']);
    expect([shown(byChange), shown(byPs), shown(byHash), shown(byId)]).toEqual([ids.lib5, ids.app5, ids.c7, ids.c7]);
    expect(text.stdout).toMatch(new RegExp(`^build #${ids.c7} · check · app master · change 7,1 by alice\n`));
    expect(overview.stdout).toMatch(new RegExp(`^#${ids.c7}\\s+check\\s+app\\s+7,1\\s+passed`, 'm'));
  });

  it('an outdated patch set by number is shown, with a note; --change N whose current patch set has no build is an error naming the fix', async () => {
    const [old, current] = await Promise.all([
      airlock(['status', '--project', 'app', '--change', '3,2', '--json']),
      airlock(['status', '--project', 'app', '--change', '3']),
    ]);
    expect(old.status, old.stderr).toBe(0);
    expect(shown(old)).toBe(ids.c3ps2b); // the patch set's latest build
    expect(old.stderr).toBe(`airlock: note: --change 3,2 --project app: patch set 2 is outdated: change 3 of app is at patch set 4; build #${ids.c3ps2b} is of the old one\n`);
    expect(current.status).toBe(2);
    expect(current.stdout).toBe('');
    expect(current.stderr).toBe(
      `airlock: AIRLOCK_E_INVALID_INPUT: command line: change: --change 3 --project app: change 3 of app is at patch set 4, which has no build yet; patch set 2 is outdated — say --change 3,2 --project app to see its build #${ids.c3ps2b} anyway\n`,
    );
  });

  it('a change number in several projects without --project is ambiguous: the projects are listed, exit 2', async () => {
    const [text, json] = await Promise.all([airlock(['status', '--change', '5']), airlock(['logs', '--change', '5', '--json'])]);
    expect(text.status).toBe(2);
    expect(text.stderr).toBe('airlock: AIRLOCK_E_INVALID_INPUT: command line: change: --change 5: change 5 is in several projects (app, lib); say which with --project P\n');
    expect(json.status).toBe(2);
    expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: 'AIRLOCK_E_INVALID_INPUT', statusCode: 400 } });
  });

  it('a missing change, patch set or build id, or a build of another project, is an error naming the reference, exit 2', async () => {
    const [change, inProject, ps, id, both, none, bad, other] = await Promise.all([
      airlock(['status', '--change', '99']),
      airlock(['status', '--change', '7', '--project', 'lib']),
      airlock(['logs', '--change', '7,3']),
      airlock(['status', '#999999']),
      airlock(['status', '7', '--change', '7']),
      airlock(['logs']),
      airlock(['status', '3,2']),
      airlock(['logs', `#${ids.c7}`, '--project', 'lib']),
    ]);
    for (const r of [change, inProject, ps, id, both, none, bad, other]) expect([r.status, r.stdout]).toEqual([2, '']);
    expect(other.stderr).toContain(`build #${ids.c7} is of project app, not lib`);
    expect(change.stderr).toContain('AIRLOCK_E_NOT_FOUND: --change 99: this CI has no change 99; check the number and the project');
    expect(inProject.stderr).toContain('AIRLOCK_E_NOT_FOUND: --change 7 --project lib: this CI has no change 7 in project lib');
    expect(ps.stderr).toContain('AIRLOCK_E_NOT_FOUND: --change 7,3: change 7 of app has no patch set 3 on this CI; it is at patch set 1');
    expect(id.stderr).toContain('AIRLOCK_E_NOT_FOUND: no build #999999');
    expect(both.stderr).toContain('not both');
    expect(none.stderr).toContain('name a build: its id (#17 or 17');
    expect(bad.stderr).toContain('say --change 3,2');
  });

  it('logs takes the same references', async () => {
    const [byChange, byHash] = await Promise.all([airlock(['logs', '--change', '7', '--project', 'app']), airlock(['logs', `#${ids.c7}`])]);
    for (const r of [byChange, byHash]) {
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).toContain(`airlock: build #${ids.c7} passed`);
    }
    expect(byChange.stdout).toBe(byHash.stdout);
  });
});
