/**
 * The CI service on PostgreSQL across a restart of its server (real PostgreSQL on a private server
 * of this file, real Docker, real git):
 * - a restart while the service is idle: it takes the next change and runs it, and keeps its
 *   leader lease (same holder, same epoch, renewed after the restart) when the lease is long
 *   enough for the outage (a renewal may fail for up to two thirds of it: untrusted-ci/leadership.ts);
 * - an outage longer than two thirds of a short lease: the service stops leading (it does not exit:
 *   without `onLeadershipLost` it goes on serving as a follower), the lease expires, and another
 *   replica takes it with the next epoch.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openPostgres } from '../../../untrusted-ci/store/database.js';
import { Lease, holderId, type LeaseRow } from '../../../untrusted-ci/store/lease.js';
import type { Db } from '../../../untrusted-ci/store/sql.js';
import { startTestCi, type TestCi } from '../../support/ci.js';
import { tempDir } from '../../support/docker.js';
import { createRepo, type TestRepo } from '../../support/git-repo.js';
import { sharedPostgres } from '../../support/postgres-shared.js';
import { startPostgres, type PgServer } from '../../support/postgres.js';
import { until } from '../../support/until.js';

const CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  test:
    command: [sh, -c, "cat hello.txt"]
`;
const PROJECT = 'demo/pg-restart';

const shared = await sharedPostgres();

describe.skipIf(shared.skip)('the CI service when its PostgreSQL server restarts', () => {
  let server: PgServer;
  let up: TestRepo;
  let dir: string;
  let ci: TestCi | undefined;
  let db: Db | undefined;
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown): void => void unhandled.push(e);

  beforeAll(async () => {
    server = await startPostgres({ durable: true });
    up = createRepo({ '.airlock.yaml': CONFIG, 'hello.txt': 'hello\n' });
    dir = tempDir('airlock-pg-restart-');
    process.on('unhandledRejection', onUnhandled);
  });
  afterEach(async () => {
    await ci?.close();
    ci = undefined;
    await db?.close();
    db = undefined;
  });
  afterAll(async () => {
    process.off('unhandledRejection', onUnhandled);
    up?.dispose();
    await server?.stop();
  });

  /** A CI service on a fresh database of the server, with a leader lease of `leaseMs`. */
  async function start(leaseMs: number): Promise<{ ci: TestCi; db: Db }> {
    const url = await server.createDatabase();
    const urlFile = join(dir, `${leaseMs}.url`);
    writeFileSync(urlFile, `${url}\n`, { mode: 0o600 });
    ci = await startTestCi({ projects: [{ name: PROJECT, url: up.dir }], database: { engine: 'postgres', urlFile }, replicas: { leaseMs } });
    db = await openPostgres(url, { max: 1, onIdleError: () => undefined });
    return { ci, db };
  }

  async function leaseRow(d: Db): Promise<LeaseRow> {
    return (await until('the lease row', () => d.get<LeaseRow>("SELECT * FROM leases WHERE name = 'leader'").catch(() => undefined), 30_000))!;
  }

  async function runChange(c: TestCi, n: number): Promise<void> {
    const change = up.change(n, 1, { 'hello.txt': `hello from change ${n}\n` });
    const id = await c.submit({ project: PROJECT, ref: change.ref, change: String(n), patchset: 1, author: 'alice' });
    const b = await c.waitFor(id);
    expect(b.result, JSON.stringify(b)).toBe('passed');
    const log = await c.service.app.inject({ method: 'GET', url: `/api/builds/${id}/logs/test` });
    expect(log.body).toContain(`hello from change ${n}`);
  }

  it('a restart while idle: the service reconnects, takes the next change and runs it, and keeps its lease', async () => {
    // Renewed every 5 s, given up after 10 s without a renewal: longer than a restart takes.
    const { ci, db } = await start(15_000);
    await runChange(ci, 201);
    expect(ci.service.isLeader).toBe(true);
    const before = await leaseRow(db);
    await server.restart();
    await runChange(ci, 202);
    // Renewed since (on the database's clock, after the restart), by the same holder in the same epoch.
    const restartedAt = (await db.get<{ now: number }>('SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now'))!.now;
    const after = await until('a renewal after the restart', async () => {
      const row = await leaseRow(db);
      return row.updated_at > restartedAt ? row : undefined;
    }, 30_000, 100);
    expect(after).toMatchObject({ holder: before.holder, epoch: before.epoch });
    expect(ci.service.isLeader).toBe(true);
    expect(unhandled).toEqual([]);
  });

  it('an outage longer than two thirds of a short lease: the service stops leading but goes on serving, and another replica takes the lease', async () => {
    const { ci, db } = await start(1000);
    await runChange(ci, 301);
    const before = await leaseRow(db);
    expect(ci.service.isLeader).toBe(true);
    await server.kill();
    await until('the service to stop leading', () => (ci.service.isLeader ? undefined : true), 60_000);
    await server.restart();
    // Still up, answering from the database as a follower.
    const health = await until('the health check to answer', async () => {
      const r = await ci.service.app.inject({ method: 'GET', url: '/healthz' });
      return r.statusCode === 200 ? (r.json() as { ok: boolean; leading: boolean }) : undefined;
    }, 30_000);
    expect(health).toEqual({ ok: true, leading: false });
    const builds = await ci.service.app.inject({ method: 'GET', url: '/api/builds' });
    expect(builds.statusCode).toBe(200);
    // The lease runs out, and another replica takes it with the next epoch.
    const other = new Lease(db, 'leader', holderId(), 60_000);
    await until('another replica to take the lease', async () => ((await other.acquire().catch(() => false)) ? true : undefined), 30_000);
    expect(other.epoch).toBe(before.epoch + 1);
    // A submission to the old leader is forwarded now; the new holder gave no address: 503, try again.
    const change = up.change(302, 1, { 'hello.txt': 'late\n' });
    const r = await ci.service.app.inject({ method: 'POST', url: '/api/changes', payload: { project: PROJECT, ref: change.ref, change: '302', patchset: 1 } });
    expect(r.statusCode).toBe(503);
    expect(r.headers['retry-after']).toBe('2');
    expect(ci.service.isLeader).toBe(false);
    expect(unhandled).toEqual([]);
  });
});
