/**
 * A private PostgreSQL server for tests: Debian's binaries (`/usr/lib/postgresql/<major>/bin`, the
 * newest installed; `scripts/bootstrap.sh` installs the package), a fresh `initdb` in a temp dir
 * of its own, listening on 127.0.0.1 on a free port, never the system's cluster on 5432.
 *
 * - Who runs it: PostgreSQL refuses to run as root, so as root the server runs as the Debian
 *   `postgres` user (`setpriv`); as any other user it runs as that user.
 * - Logins: one superuser with a random password (`url`), SCRAM over 127.0.0.1 only: `pg_hba.conf`
 *   has no `trust` line and no socket login. `createDatabase()` adds a database with an owner role
 *   of its own (random password) that no other role may connect to.
 * - Settings: fsync, synchronous_commit and full_page_writes off (fast), or all on with
 *   `durable: true`, for a test in which a crash must not lose a committed transaction (with
 *   synchronous_commit off a commit can return before its WAL is written, and a SIGKILL loses it).
 * - Lifetime: `stop()` shuts it down and deletes its directory. The postmaster is this process's
 *   direct child under `setpriv --pdeathsig QUIT`, so when this process dies, even by SIGKILL, the
 *   server gets an immediate shutdown. The directory it leaves then is deleted by the next
 *   `startPostgres()` on the machine: each directory names its owner process (pid and start time)
 *   and is reaped once that process is gone (`reapStaleServers`).
 *
 * One server serves a whole vitest run (`postgres-global-setup.ts`, `postgres-shared.ts`); a test
 * that restarts or kills its server starts its own with `startPostgres()`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Client } from 'pg';

/** Where Debian installs each major version's server binaries. */
export const PG_LIB = '/usr/lib/postgresql';
/** Every server directory is `<tmpdir>/airlock-pg-XXXXXX`; the reaper looks only at those. */
export const DIR_PREFIX = 'airlock-pg-';
const ADMIN = 'airlock';
const READY_MS = 60_000;
const STOP_MS = 60_000;
/** A directory without an owner file this old is abandoned (one being created has it within ms). */
const OWNERLESS_MS = 10 * 60_000;
const SETPRIV = '/usr/bin/setpriv';

export interface StartPostgresOptions {
  /** fsync, synchronous_commit and full_page_writes on, as a deployment runs; default off (fast). */
  durable?: boolean;
  /** More server settings (`-c name=value`), after the harness's own. */
  settings?: Readonly<Record<string, string | number>>;
}

/** A running private server. Every method may be called in any state; `stop()` is final. */
export interface PgServer {
  /** The superuser's URL: `postgres://airlock:<password>@127.0.0.1:<port>/postgres`. */
  readonly url: string;
  readonly port: number;
  /** The server's own directory (data/, sock/, postgres.log); deleted by `stop()`. */
  readonly dir: string;
  /** PostgreSQL's major version, e.g. 15. */
  readonly version: number;
  /** The postmaster's pid, or undefined while it is not running. */
  readonly pid: number | undefined;
  /** A fresh database owned by a fresh role (the name, random `t_…` by default): its URL. */
  createDatabase(name?: string): Promise<string>;
  /** Fast shutdown (SIGINT), then the directory is deleted. */
  stop(): Promise<void>;
  /** Fast shutdown if running, then start again: same port, same data, same passwords. */
  restart(): Promise<void>;
  /** A crash: SIGKILL to the postmaster, then to every process of this server still alive; returns once all are gone. `restart()` recovers. */
  kill(): Promise<void>;
  /** The end of the server's log, for a failure message. */
  logTail(lines?: number): string;
}

export type PgAvailability = { ok: true; bin: string; version: number; runAs: RunAs } | { ok: false; reason: string };

/** Whom the server runs as: the `postgres` user when this process is root, else this process's user. */
export interface RunAs {
  uid: number;
  gid: number;
  /** setpriv's arguments before `--pdeathsig`. */
  setpriv: string[];
}

/** Whether this machine can run a private server, and with which binaries; the reason when not. */
export function postgresAvailability(): PgAvailability {
  let versions: number[] = [];
  try {
    versions = readdirSync(PG_LIB)
      .filter((v) => /^\d+$/.test(v) && existsSync(join(PG_LIB, v, 'bin', 'postgres')) && existsSync(join(PG_LIB, v, 'bin', 'initdb')))
      .map(Number)
      .sort((a, b) => b - a);
  } catch {
    versions = [];
  }
  const version = versions[0];
  if (version === undefined) return { ok: false, reason: `Debian's postgresql is not installed (no ${PG_LIB}/<version>/bin/postgres; scripts/bootstrap.sh installs it)` };
  if (!existsSync(SETPRIV)) return { ok: false, reason: `${SETPRIV} (util-linux) is missing` };
  const uid = process.getuid?.() ?? -1;
  if (uid !== 0) return { ok: true, bin: join(PG_LIB, String(version), 'bin'), version, runAs: { uid, gid: process.getgid?.() ?? -1, setpriv: [] } };
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  const [, , u, g] = line?.split(':') ?? [];
  if (u === undefined || g === undefined) return { ok: false, reason: 'running as root, and there is no postgres user to run the server as (the postgresql package adds it)' };
  return { ok: true, bin: join(PG_LIB, String(version), 'bin'), version, runAs: { uid: Number(u), gid: Number(g), setpriv: ['--reuid=postgres', '--regid=postgres', '--init-groups', '--no-new-privs', '--inh-caps=-all'] } };
}

/** initdb in a fresh directory, start the server, wait until it answers. Throws (with the log's end) when it cannot. */
export async function startPostgres(options: StartPostgresOptions = {}): Promise<PgServer> {
  const a = postgresAvailability();
  if (!a.ok) throw new Error(`cannot start PostgreSQL: ${a.reason}`);
  reapStaleServers();
  const dir = ownedTempDir();
  try {
    const server = new Server(a, dir, options);
    await server.init();
    return server;
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** A fresh `<tmpdir>/airlock-pg-<kind>XXXXXX` (mode 0700) that names this process as its owner, so that `reapStaleServers` deletes it once this process is gone. */
export function ownedTempDir(kind = ''): string {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), `${DIR_PREFIX}${kind}`)));
  writeFileSync(join(dir, 'owner'), `${ownerId(process.pid)}\n`);
  return dir;
}

/** A fresh database on the server at `adminUrl` (a superuser's), owned by a new role of the same name with a random password; PUBLIC may not connect to it. Returns the owner's URL. */
export async function createDatabase(adminUrl: string, name = `t_${randomBytes(6).toString('hex')}`): Promise<string> {
  // Identifiers go into SQL text (CREATE ROLE takes no parameters): only these characters.
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`database name ${JSON.stringify(name)}: want [a-z_][a-z0-9_]*, at most 63 characters`);
  const password = randomBytes(18).toString('hex');
  const client = new Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`CREATE ROLE ${name} LOGIN PASSWORD '${password}'`);
    await client.query(`CREATE DATABASE ${name} OWNER ${name}`);
    await client.query(`REVOKE ALL ON DATABASE ${name} FROM PUBLIC`);
  } finally {
    await client.end();
  }
  const url = new URL(adminUrl);
  url.username = name;
  url.password = password;
  url.pathname = `/${name}`;
  return url.toString();
}

class Server implements PgServer {
  readonly version: number;
  private portNo = 0;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly password = randomBytes(24).toString('hex');
  private readonly data: string;
  private readonly sock: string;
  private readonly logFile: string;

  constructor(
    private readonly a: Extract<PgAvailability, { ok: true }>,
    readonly dir: string,
    private readonly options: StartPostgresOptions,
  ) {
    this.version = a.version;
    this.data = join(dir, 'data');
    this.sock = join(dir, 'sock');
    this.logFile = join(dir, 'postgres.log');
  }

  get url(): string {
    return `postgres://${ADMIN}:${this.password}@127.0.0.1:${this.portNo}/postgres`;
  }

  get port(): number {
    return this.portNo;
  }

  get pid(): number | undefined {
    const c = this.child;
    return c && c.exitCode === null && c.signalCode === null ? c.pid : undefined;
  }

  async init(): Promise<void> {
    const { uid, gid } = this.a.runAs;
    // As root the server's user must be able to walk down to its directory (a TMPDIR under /root would not do).
    for (let p = dirname(this.dir); uid !== process.getuid?.(); p = dirname(p)) {
      const st = statSync(p);
      if (st.uid !== uid && (st.mode & 0o001) === 0) throw new Error(`the server's user (uid ${uid}) cannot reach ${this.dir}: ${p} is closed to it; set TMPDIR to a directory it can reach, such as /tmp`);
      if (p === '/') break;
    }
    chownSync(this.dir, uid, gid);
    mkdirSync(this.sock, { mode: 0o700 });
    chownSync(this.sock, uid, gid);
    const pwfile = join(this.dir, 'pwfile');
    writeFileSync(pwfile, `${this.password}\n`, { mode: 0o600 });
    chownSync(pwfile, uid, gid);
    writeFileSync(this.logFile, '');
    chownSync(this.logFile, uid, gid);
    // -N: no fsync of the new cluster (a test's data dir lives as long as the test).
    await this.run(join(this.a.bin, 'initdb'), ['-D', this.data, '-U', ADMIN, `--pwfile=${pwfile}`, '-A', 'scram-sha-256', '-E', 'UTF8', '--locale=C', '-N']);
    rmSync(pwfile);
    const hba = join(this.data, 'pg_hba.conf');
    writeFileSync(hba, '# airlock test harness (test/support/postgres.ts): SCRAM passwords over 127.0.0.1 only; no trust, no socket login\nhost all all 127.0.0.1/32 scram-sha-256\n');
    chownSync(hba, uid, gid);
    // A free port now; the port can be taken before the server binds it, so a bind failure tries another.
    for (let attempt = 1; ; attempt++) {
      this.portNo = await freePort();
      try {
        await this.launch();
        break;
      } catch (e) {
        if (attempt >= 3 || !/could not bind|could not create any TCP\/IP sockets/i.test(this.logTail())) throw e;
      }
    }
  }

  createDatabase(name?: string): Promise<string> {
    return createDatabase(this.url, name);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.shutdown();
    rmSync(this.dir, { recursive: true, force: true });
  }

  async restart(): Promise<void> {
    if (this.stopped) throw new Error('restart() after stop()');
    await this.shutdown();
    await this.launch();
  }

  async kill(): Promise<void> {
    const pid = this.pid;
    if (pid !== undefined) {
      process.kill(pid, 'SIGKILL');
      await this.exited;
    }
    await killServerProcesses(this.data);
  }

  logTail(lines = 20): string {
    try {
      return readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** Fast shutdown; past STOP_MS immediate shutdown, then SIGKILL. */
  private async shutdown(): Promise<void> {
    const pid = this.pid;
    if (pid !== undefined) {
      const steps: NodeJS.Signals[] = ['SIGINT', 'SIGQUIT', 'SIGKILL'];
      for (const signal of steps) {
        if (this.pid === undefined) break;
        try {
          process.kill(pid, signal);
        } catch {
          // exited meanwhile
        }
        if (await within(this.exited, STOP_MS)) break;
      }
    }
    await killServerProcesses(this.data);
  }

  private settings(): string[] {
    const fast = this.options.durable ? 'on' : 'off';
    const s: Record<string, string | number> = {
      listen_addresses: '127.0.0.1',
      port: this.portNo,
      unix_socket_directories: this.sock,
      fsync: fast,
      synchronous_commit: fast,
      full_page_writes: fast,
      max_connections: 200,
      ...this.options.settings,
    };
    return Object.entries(s).flatMap(([k, v]) => ['-c', `${k}=${v}`]);
  }

  private async launch(): Promise<void> {
    const log = openSync(this.logFile, 'a');
    let child: ChildProcess;
    try {
      // setpriv execs the postmaster, so child.pid is the postmaster's. --pdeathsig QUIT: an
      // immediate shutdown when this process dies (the server is started in the foreground, not
      // through pg_ctl, so it stays this process's child).
      child = spawn(SETPRIV, [...this.a.runAs.setpriv, '--pdeathsig', 'QUIT', '--', join(this.a.bin, 'postgres'), '-D', this.data, ...this.settings()], {
        cwd: this.dir,
        stdio: ['ignore', log, log],
        env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' },
      });
    } finally {
      closeSync(log);
    }
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once('exit', () => resolve());
      child.once('error', () => resolve());
    });
    const deadline = Date.now() + READY_MS;
    let last = '';
    for (;;) {
      if (this.pid === undefined) throw new Error(`PostgreSQL exited at start (${describeExit(child)}); ${this.logFile}:\n${this.logTail()}`);
      const probe = new Client({ host: '127.0.0.1', port: this.portNo, user: ADMIN, password: this.password, database: 'postgres' });
      probe.on('error', () => undefined);
      try {
        await probe.connect();
        await probe.query('SELECT 1');
        return;
      } catch (e) {
        last = e instanceof Error ? e.message : String(e);
      } finally {
        await probe.end().catch(() => undefined);
      }
      if (Date.now() > deadline) {
        await this.shutdown();
        throw new Error(`PostgreSQL did not answer on 127.0.0.1:${this.portNo} within ${READY_MS / 1000} s (last: ${last}); ${this.logFile}:\n${this.logTail()}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Run a program (initdb) as the server's user; throws with its output when it fails. */
  private run(cmd: string, args: string[]): Promise<void> {
    return new Promise((resolve, reject) => {
      const child = spawn(SETPRIV, [...this.a.runAs.setpriv, '--pdeathsig', 'KILL', '--', cmd, ...args], {
        cwd: this.dir,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' },
      });
      let out = '';
      child.stdout?.on('data', (d: Buffer) => (out += d.toString('utf8')));
      child.stderr?.on('data', (d: Buffer) => (out += d.toString('utf8')));
      child.on('error', reject);
      child.on('close', (code, signal) => (code === 0 ? resolve() : reject(new Error(`${cmd} failed (${signal ?? `exit ${code}`}):\n${out.trim().split('\n').slice(-20).join('\n')}`))));
    });
  }
}

function describeExit(c: ChildProcess): string {
  return c.signalCode ? `signal ${c.signalCode}` : `exit ${c.exitCode ?? '?'}`;
}

async function within(p: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([p.then(() => true as const), t]);
  } finally {
    clearTimeout(timer);
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** `pid start-time pid-namespace`: a pid alone could be reused; another pid namespace's pids mean nothing here. */
function ownerId(pid: number): string | undefined {
  try {
    // Field 22 of /proc/PID/stat, counted after the command name's closing parenthesis.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    return `${pid} ${start} ${readlinkSync('/proc/self/ns/pid')}`;
  } catch {
    return undefined;
  }
}

/** The pids of every process whose working directory is `dataDir`: a postmaster and its children live there. */
export function serverProcesses(dataDir: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readlinkSync(`/proc/${entry}/cwd`) === dataDir) pids.push(Number(entry));
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}

/** SIGKILL every process of the server in `dataDir`, and wait until none is left. */
async function killServerProcesses(dataDir: string): Promise<void> {
  const deadline = Date.now() + STOP_MS;
  for (;;) {
    const pids = serverProcesses(dataDir);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (Date.now() > deadline) throw new Error(`processes of the PostgreSQL server in ${dataDir} outlived SIGKILL: ${pids.join(', ')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Delete the directories of servers whose owner process is gone (a test process killed before
 * its `stop()`), killing any process of theirs still alive. Directories of live owners, of another
 * pid namespace, or not readable by this user are left alone. Returns the directories deleted.
 */
export function reapStaleServers(): string[] {
  const reaped: string[] = [];
  const here = readlinkSync('/proc/self/ns/pid');
  let names: string[];
  try {
    names = readdirSync(tmpdir()).filter((n) => n.startsWith(DIR_PREFIX));
  } catch {
    return reaped;
  }
  for (const name of names) {
    const dir = join(tmpdir(), name);
    try {
      let owner: string | undefined;
      try {
        owner = readFileSync(join(dir, 'owner'), 'utf8').trim();
      } catch {
        if (Date.now() - statSync(dir).mtimeMs < OWNERLESS_MS) continue;
      }
      if (owner !== undefined) {
        const [pid, , ns] = owner.split(' ');
        if (ns !== here) continue;
        if (ownerId(Number(pid)) === owner) continue;
      }
      const data = join(dir, 'data');
      for (const pid of serverProcesses(data)) process.kill(pid, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
      reaped.push(dir);
    } catch {
      // another user's, or being reaped by someone else
    }
  }
  return reaped;
}

