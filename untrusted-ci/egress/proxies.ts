/**
 * The caching proxies of one CI host, started and supervised by the CI service (docs/dependencies.md):
 *
 * - **apt-cacher-ng** (Debian's package) for the Debian mirrors of the egress policy: an HTTP
 *   proxy made for exactly this, which caches .debs and index files and, with `ForceManaged`, serves
 *   nothing but the mirrors it was given (`Remap-` lines). It listens on a loopback port of this
 *   host only; jobs never reach it but through the egress front (./front.ts).
 * - **verdaccio** (npm, pinned) for the npm registry: a registry proxy that caches packuments and
 *   tarballs; nobody may publish to it. It listens on a unix socket only.
 *
 * Both run as the unprivileged user `airlock-proxy` (made by the bootstrap), with their state under
 * `<stateDir>/egress/` and nothing else of the CI's readable to them. The cache is shared by public
 * builds only; `./cache-gc.ts` keeps it to the policy's size. A proxy that exits is started again
 * after a backoff (1 s doubling to 30 s); while it is down the front answers 503.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, lchownSync, lstatSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { connect, createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { ExecutorFailedError } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import type { EgressPolicy } from './policy.js';

export const PROXY_USER = 'airlock-proxy';
const START_MS = 30_000;
const MAX_BACKOFF_MS = 30_000;

export interface ProxiesOptions {
  /** `<stateDir>/egress`: caches, configs, sockets. */
  dir: string;
  policy: EgressPolicy;
  logger?: Logger;
  /** The user the proxies run as (default airlock-proxy); tests may pass another existing one. */
  user?: string;
}

/** One Debian mirror as the cache knows it: its URL prefix and the cache directory apt-cacher-ng files it under. */
export interface MirrorCache {
  prefix: string;
  dir: string;
}

interface Supervised {
  name: string;
  child?: ChildProcess;
  up: boolean;
  backoff: number;
  /** The end of its output, for errors. */
  tail: string;
  timer?: NodeJS.Timeout;
}

export class PackageProxies {
  /** apt-cacher-ng's loopback port (when the policy has Debian mirrors). */
  aptPort?: number;
  /** verdaccio's unix socket (when the policy has an npm registry). */
  npmSocket?: string;
  /** verdaccio's storage: `<name>/<file>.tgz`, `<name>/package.json`. */
  readonly npmStorage: string;
  readonly mirrors: MirrorCache[] = [];
  private readonly procs: Supervised[] = [];
  private stopped = false;

  private constructor(
    private readonly o: ProxiesOptions,
    private readonly ids: { uid: number; gid: number },
  ) {
    this.npmStorage = join(o.dir, 'cache', 'npm');
  }

  /** The directories the cache lives in (for the size bound). */
  get cacheDirs(): string[] {
    return PackageProxies.cacheDirsOf(this.o.dir);
  }

  /** The cache directories under an egress directory (`airlock ci gc` prunes them with no proxy running). */
  static cacheDirsOf(dir: string): string[] {
    return [join(dir, 'cache', 'debian'), join(dir, 'cache', 'npm')];
  }

  /** The proxies' process ids now (for tests and status). */
  pids(): number[] {
    return this.procs.flatMap((p) => (p.child?.pid !== undefined && p.child.exitCode === null ? [p.child.pid] : []));
  }

  /** Whether the proxy for a source is answering now. */
  up(name: 'debian' | 'npm'): boolean {
    return this.procs.find((p) => p.name === name)?.up ?? false;
  }

  /**
   * What starting would need, checked without starting anything (the CI does it at its own start,
   * so a host without them is told then, not at the first build that asks): the proxy user, root
   * (to become it), and each tool the policy's sources need.
   */
  static preflight(policy: EgressPolicy, user = PROXY_USER): void {
    userIds(user);
    if (process.getuid?.() !== 0) throw new ExecutorFailedError('the package proxies are started by root (as the user airlock-proxy): run the CI as root, or give no run a package source in policies/egress.yaml');
    const missing = ['socat', 'setpriv', 'nsenter'].filter((t) => !onPath(t));
    if (policy.sources.debian && !existsSync('/usr/sbin/apt-cacher-ng')) missing.push('apt-cacher-ng');
    if (missing.length > 0) throw new ExecutorFailedError(`policies/egress.yaml gives runs package sources, and this host lacks ${missing.join(', ')} (run npm run bootstrap)`);
    if (policy.sources.npm) {
      try {
        createRequire(import.meta.url).resolve('verdaccio/package.json');
      } catch {
        throw new ExecutorFailedError('policies/egress.yaml names an npm registry, and verdaccio is not installed (npm ci)');
      }
    }
  }

  static async start(o: ProxiesOptions): Promise<PackageProxies> {
    const ids = userIds(o.user ?? PROXY_USER);
    const p = new PackageProxies(o, ids);
    try {
      // Root owns every directory above what the proxies write (so they cannot put a symbolic link
      // where root later writes or changes owners): egress/, cache/ and conf/ are root's; the
      // proxies own only cache/debian, cache/npm, run/ and log/. Top down, each checked with lstat.
      mkdirSync(o.dir, { recursive: true, mode: 0o711 });
      untraversable(dirname(o.dir));
      const root = { uid: 0, gid: 0 };
      ownedDir(o.dir, root, 0o711);
      ownedDir(join(o.dir, 'cache'), root, 0o711);
      ownedDir(join(o.dir, 'conf'), root, 0o755);
      for (const d of ['cache/debian', 'cache/npm', 'run', 'log']) ownedDir(join(o.dir, d), ids, 0o700);
      const starting: Promise<void>[] = [];
      if (o.policy.sources.debian) starting.push(p.startApt(o.policy.sources.debian.mirrors));
      if (o.policy.sources.npm) starting.push(p.startNpm(o.policy.sources.npm.registry));
      await Promise.all(starting);
      return p;
    } catch (e) {
      await p.stop();
      throw e;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(
      this.procs.map(async (s) => {
        if (s.timer) clearTimeout(s.timer);
        const c = s.child;
        if (!c || c.exitCode !== null || c.signalCode !== null) return;
        const gone = new Promise<void>((resolve) => c.once('exit', () => resolve()));
        c.kill('SIGTERM');
        const t = setTimeout(() => c.kill('SIGKILL'), 5_000);
        await gone;
        clearTimeout(t);
      }),
    );
  }

  private async startApt(mirrors: readonly string[]): Promise<void> {
    const { dir } = this.o;
    const port = await freePort();
    const remaps = mirrors.map((m, i) => {
      const u = new URL(m);
      const name = `m${i}`;
      this.mirrors.push({ prefix: m, dir: join(dir, 'cache', 'debian', name) });
      return `Remap-${name}: ${u.host}${u.pathname.replace(/\/$/, '')} ; ${m.replace(/\/$/, '')}`;
    });
    const conf = join(dir, 'conf', 'apt-cacher-ng');
    ownedDir(conf, { uid: 0, gid: 0 }, 0o755);
    writeFileSync(
      join(conf, 'acng.conf'),
      [
        '# Written by airlock (untrusted-ci/egress/proxies.ts) from policies/egress.yaml; rewritten at each start.',
        `CacheDir: ${join(dir, 'cache', 'debian')}`,
        `LogDir: ${join(dir, 'log')}`,
        `SocketPath: ${join(dir, 'run', 'acng.sock')}`,
        `PidFile: ${join(dir, 'run', 'acng.pid')}`,
        'BindAddress: 127.0.0.1',
        `Port: ${port}`,
        'ForeGround: 1',
        // Only the mirrors below, nothing else: the front checks the same list before it forwards.
        'ForceManaged: 1',
        'PassThroughPattern: ^$',
        'ExThreshold: 4',
        'UnbufferLogs: 1',
        'NetworkTimeout: 60',
        ...remaps,
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    const bin = ['/usr/sbin/apt-cacher-ng'].find((b) => existsSync(b));
    if (!bin) throw new ExecutorFailedError('the egress policy names Debian mirrors, and apt-cacher-ng is not installed on this host (run npm run bootstrap)');
    this.aptPort = port;
    await this.supervise('debian', bin, ['-c', conf], () => canConnect({ port, host: '127.0.0.1' }));
  }

  private async startNpm(registry: string): Promise<void> {
    const { dir } = this.o;
    const socket = join(dir, 'run', 'npm.sock');
    const config = join(dir, 'conf', 'verdaccio.yaml');
    const htpasswd = join(dir, 'conf', 'htpasswd');
    writeFileSync(htpasswd, '', { mode: 0o644 });
    writeFileSync(
      config,
      [
        '# Written by airlock (untrusted-ci/egress/proxies.ts) from policies/egress.yaml; rewritten at each start.',
        `storage: ${JSON.stringify(this.npmStorage)}`,
        'uplinks:',
        '  upstream:',
        `    url: ${JSON.stringify(registry)}`,
        '    cache: true',
        '    maxage: 10m',
        '    timeout: 60s',
        '    max_fails: 4',
        '    fail_timeout: 30s',
        // kept-alive TLS connections to the registry: a cold install asks it for every packument and tarball
        '    agent_options: { keepAlive: true, maxSockets: 32, maxFreeSockets: 16 }',
        'packages:',
        "  '**':",
        '    access: $all',
        '    publish: $nobody',
        '    unpublish: $nobody',
        '    proxy: upstream',
        'auth:',
        '  htpasswd:',
        `    file: ${JSON.stringify(htpasswd)}`,
        '    max_users: -1',
        'web: { enable: false }',
        'publish: { allow_offline: false }',
        'max_body_size: 1mb',
        'log: { type: stdout, format: json, level: warn }',
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    let bin: string;
    try {
      bin = join(dirname(createRequire(import.meta.url).resolve('verdaccio/package.json')), 'bin', 'verdaccio');
    } catch {
      throw new ExecutorFailedError('the egress policy names an npm registry, and verdaccio is not installed (npm ci)');
    }
    rmSync(socket, { force: true });
    this.npmSocket = socket;
    // --use-openssl-ca: the host's trust store (/etc/ssl/certs), as apt and git use, not Node's bundled one.
    await this.supervise('npm', process.execPath, ['--use-openssl-ca', bin, '-c', config, '-l', `unix:${socket}`], () => canConnect({ path: socket }));
  }

  /** Start `cmd` as the proxy user, wait until `ready`, and start it again whenever it exits. */
  private async supervise(name: string, cmd: string, args: string[], ready: () => Promise<boolean>): Promise<void> {
    const s: Supervised = { name, up: false, backoff: 1_000, tail: '' };
    this.procs.push(s);
    const launch = (): ChildProcess => {
      // setpriv: the proxy user, and SIGTERM when this process dies (a crashed CI leaves no proxy behind).
      const child = spawn('setpriv', [`--reuid=${this.ids.uid}`, `--regid=${this.ids.gid}`, '--clear-groups', '--pdeathsig', 'TERM', '--', cmd, ...args], {
        cwd: this.o.dir,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
          HOME: join(this.o.dir, 'run'),
          NODE_ENV: 'production',
          ...(process.env.NODE_EXTRA_CA_CERTS ? { NODE_EXTRA_CA_CERTS: process.env.NODE_EXTRA_CA_CERTS } : {}),
        },
      });
      s.child = child;
      s.tail = '';
      const keep = (d: Buffer) => {
        s.tail = (s.tail + d.toString('utf8')).slice(-2048);
      };
      child.stdout?.on('data', keep);
      child.stderr?.on('data', keep);
      child.on('error', (e) => this.o.logger?.warn({ err: e, proxy: name }, 'package proxy: cannot start'));
      child.on('exit', (code, signal) => {
        s.up = false;
        if (this.stopped) return;
        this.o.logger?.warn({ proxy: name, code, signal, tail: s.tail.trim().split('\n').slice(-3).join(' | ') }, `package proxy ${name} exited; starting it again in ${s.backoff / 1000} s`);
        s.timer = setTimeout(() => {
          s.timer = undefined;
          if (this.stopped) return;
          const again = launch();
          void waitReady(again, ready).then((ok) => {
            s.up = ok;
            if (ok) s.backoff = 1_000;
          });
        }, s.backoff);
        s.backoff = Math.min(MAX_BACKOFF_MS, s.backoff * 2);
      });
      return child;
    };
    const child = launch();
    if (!(await waitReady(child, ready))) {
      throw new ExecutorFailedError(`the ${name} package proxy did not start within ${START_MS / 1000} s: ${s.tail.trim().split('\n').slice(-3).join(' | ') || '(no output)'}`);
    }
    s.up = true;
  }
}

async function waitReady(child: ChildProcess, ready: () => Promise<boolean>): Promise<boolean> {
  const deadline = Date.now() + START_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) return false;
    if (await ready()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

function canConnect(to: { port: number; host: string } | { path: string }): Promise<boolean> {
  return new Promise((resolve) => {
    const s = 'path' in to ? connect(to.path) : connect(to.port, to.host);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * A loopback port free now, below 32768: apt-cacher-ng reads its port as a signed 16-bit number
 * (seen here: 32768 and up fail with "Error resolving address for binding").
 */
async function freePort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const ok = await new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new ExecutorFailedError('no free loopback port for the Debian package cache between 20000 and 32000');
}

function onPath(tool: string): boolean {
  return (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').some((d) => d !== '' && existsSync(join(d, tool)));
}

/** `dir` (made if absent) as a real directory of `owner` with `mode`; a symbolic link or anything else is refused. */
function ownedDir(dir: string, owner: { uid: number; gid: number }, mode: number): void {
  try {
    mkdirSync(dir, { mode });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  if (!lstatSync(dir).isDirectory()) throw new ExecutorFailedError(`${dir} is not a directory (a symbolic link?): the package proxies' state must be plain directories`);
  lchownSync(dir, owner.uid, owner.gid);
  chmodSync(dir, mode);
}

/** The proxies run as another user: every directory above theirs must let others pass (x). */
function untraversable(dir: string): void {
  for (let d = dir; ; d = dirname(d)) {
    if ((statSync(d).mode & 0o001) === 0) throw new ExecutorFailedError(`the package proxies' user cannot reach ${dir}: ${d} is not searchable by others (chmod o+x ${d}, or use another state directory)`);
    if (d === dirname(d)) return;
  }
}

/** uid and gid of a local user, from /etc/passwd. */
function userIds(user: string): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${user}:`));
  const [, , uid, gid] = line?.split(':') ?? [];
  if (uid === undefined || gid === undefined) throw new ExecutorFailedError(`the package proxies run as the user ${user}, which does not exist on this host (run npm run bootstrap)`);
  return { uid: Number(uid), gid: Number(gid) };
}
