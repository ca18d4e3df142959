/**
 * The private PostgreSQL server of the tests (`postgres.ts`) and the run's shared one
 * (`postgres-shared.ts`), against Debian's real PostgreSQL.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { Client } from 'pg';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { type PgServer, postgresAvailability, reapStaleServers, serverProcesses, startPostgres } from './postgres.js';
import { sharedPostgres } from './postgres-shared.js';
import { until } from './until.js';

const shared = await sharedPostgres();

async function query<T extends Record<string, unknown>>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(sql, params)).rows;
  } finally {
    await c.end();
  }
}

/** The pg error code (SQLSTATE) a connection or query fails with. */
async function failure(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return String((e as { code?: unknown }).code ?? (e as Error).message);
  }
  throw new Error('expected a failure');
}

function alive(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

describe.skipIf(shared.skip)('a private PostgreSQL server', () => {
  const servers: PgServer[] = [];
  const start = async (durable = false): Promise<PgServer> => {
    const s = await startPostgres({ durable });
    servers.push(s);
    return s;
  };
  afterAll(async () => {
    for (const s of servers) await s.stop();
  });

  it('answers on 127.0.0.1 with its own settings, as the postgres user when root, and is not the system cluster', async () => {
    const s = await start();
    expect(s.port).not.toBe(5432);
    expect(s.url).toMatch(new RegExp(`^postgres://airlock:[0-9a-f]{48}@127\\.0\\.0\\.1:${s.port}/postgres$`));
    const [row] = await query<Record<string, string>>(
      s.url,
      "SELECT current_setting('data_directory') AS data, current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS sync, current_setting('full_page_writes') AS fpw, current_setting('listen_addresses') AS listen, current_setting('unix_socket_directories') AS sock, current_setting('server_version_num') AS v",
    );
    expect(row).toEqual({ data: `${s.dir}/data`, fsync: 'off', sync: 'off', fpw: 'off', listen: '127.0.0.1', sock: `${s.dir}/sock`, v: expect.stringMatching(new RegExp(`^${s.version}`)) });
    const a = postgresAvailability();
    if (!a.ok) throw new Error(a.reason);
    const uid = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${s.pid}/status`, 'utf8'))?.[1];
    expect(Number(uid)).toBe(a.runAs.uid);
    if (process.getuid?.() === 0) expect(Number(uid)).not.toBe(0);
    expect(statSync(`${s.dir}/data`).uid).toBe(a.runAs.uid);
  });

  it('creates a table, and a restart keeps its data on the same port; old connections fail, new ones work', async () => {
    const s = await start();
    const url = await s.createDatabase();
    const old = new Client({ connectionString: url });
    await old.connect();
    const lost = new Promise<Error>((resolve) => old.on('error', resolve));
    await old.query('CREATE TABLE builds (id int PRIMARY KEY, state text NOT NULL)');
    await old.query("INSERT INTO builds VALUES (1, 'queued'), (2, 'running')");
    const [port, pid] = [s.port, s.pid];
    await s.restart();
    expect(s.port).toBe(port);
    expect(s.pid).not.toBe(pid);
    expect(alive(pid ?? 0)).toBe(false);
    // The connection from before the restart is closed by the server.
    expect((await lost).message).toMatch(/terminat|Connection terminated/i);
    await old.end().catch(() => undefined);
    expect(await query(url, 'SELECT id, state FROM builds ORDER BY id')).toEqual([
      { id: 1, state: 'queued' },
      { id: 2, state: 'running' },
    ]);
  });

  it('kill (SIGKILL) then restart recovers every committed row of a durable server', async () => {
    const s = await start(true);
    expect(await query(s.url, "SELECT current_setting('fsync') AS f, current_setting('synchronous_commit') AS s, current_setting('full_page_writes') AS p")).toEqual([{ f: 'on', s: 'on', p: 'on' }]);
    const url = await s.createDatabase('crash');
    const c = new Client({ connectionString: url });
    c.on('error', () => undefined);
    await c.connect();
    await c.query('CREATE TABLE jobs (id int PRIMARY KEY)');
    await c.query('INSERT INTO jobs SELECT generate_series(1, 500)');
    const pid = s.pid ?? 0;
    await s.kill();
    expect(s.pid).toBeUndefined();
    expect(alive(pid)).toBe(false);
    expect(serverProcesses(`${s.dir}/data`)).toEqual([]);
    expect(await failure(query(url, 'SELECT 1'))).toBe('ECONNREFUSED');
    await c.end().catch(() => undefined);
    await s.restart();
    expect(s.logTail(200)).toMatch(/database system was interrupted|not properly shut down/);
    expect(await query(url, 'SELECT count(*)::int AS n FROM jobs')).toEqual([{ n: 500 }]);
  });

  it('refuses a wrong password and a login without one (SCRAM, no trust)', async () => {
    const s = await start();
    const wrong = new URL(s.url);
    wrong.password = 'not-the-password';
    expect(await failure(query(wrong.toString(), 'SELECT 1'))).toBe('28P01');
    const none = new URL(s.url);
    none.password = '';
    expect(await failure(query(none.toString(), 'SELECT 1'))).toMatch(/password|28P01/i);
    const hba = readFileSync(`${s.dir}/data/pg_hba.conf`, 'utf8');
    expect(hba.split('\n').filter((l) => l.trim() && !l.startsWith('#'))).toEqual(['host all all 127.0.0.1/32 scram-sha-256']);
  });

  it('keeps two databases apart: neither sees the other’s tables, neither owner may connect to the other', async () => {
    const s = await start();
    const a = await s.createDatabase('alpha');
    const b = await s.createDatabase();
    await query(a, 'CREATE TABLE secrets (v text)');
    await query(a, "INSERT INTO secrets VALUES ('a')");
    expect(await failure(query(b, 'SELECT * FROM secrets'))).toBe('42P01');
    const crossed = new URL(b);
    crossed.pathname = '/alpha';
    expect(await failure(query(crossed.toString(), 'SELECT 1'))).toBe('42501');
    expect(await failure(s.createDatabase('alpha'))).toBe('42710');
    expect(await failure(s.createDatabase("x'; DROP DATABASE alpha; --"))).toMatch(/want \[a-z_\]/);
  });

  it('stop ends the server and deletes its directory', async () => {
    const s = await startPostgres();
    const pid = s.pid ?? 0;
    expect(alive(pid)).toBe(true);
    await s.stop();
    expect(alive(pid)).toBe(false);
    expect(existsSync(s.dir)).toBe(false);
    await s.stop();
  });

  it('a server whose owner process is killed (SIGKILL, no stop) goes away, and its directory is reaped', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/postgres-child.ts'], { stdio: ['ignore', 'pipe', 'inherit'] });
    onTestFinished(() => void child.kill('SIGKILL'));
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    const started = await until('the child to start its server', () => {
      const m = /STARTED (.*)\n/.exec(out);
      if (m?.[1]) return JSON.parse(m[1]) as { pid: number; dir: string };
      if (child.exitCode !== null) throw new Error(`the child exited ${child.exitCode}`);
      return undefined;
    });
    expect(alive(started.pid)).toBe(true);
    expect(reapStaleServers()).not.toContain(started.dir);
    child.kill('SIGKILL');
    await until('the orphaned postmaster to exit', () => (alive(started.pid) ? undefined : true));
    expect(existsSync(started.dir)).toBe(true);
    expect(reapStaleServers()).toContain(started.dir);
    expect(existsSync(started.dir)).toBe(false);
  });
});

describe.skipIf(shared.skip)('the run’s shared PostgreSQL server', () => {
  it('gives each file a database of its own on one server', async () => {
    const again = await sharedPostgres();
    expect(again).toBe(shared);
    const a = await shared.createDatabase();
    const b = await shared.createDatabase();
    expect(new URL(a).port).toBe(new URL(shared.adminUrl).port);
    expect(new URL(a).pathname).not.toBe(new URL(b).pathname);
    await query(a, 'CREATE TABLE t (v int)');
    expect(await failure(query(b, 'SELECT * FROM t'))).toBe('42P01');
  });
});
