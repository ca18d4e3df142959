/**
 * Executor hosts for end-to-end tests: each a network namespace of its own with its own Docker
 * engine, all on this one machine, so that `airlock executor serve` can be run as it would be on
 * separate Docker hosts, reaching the CI over a link of its own.
 *
 * One host, everything under `/var/lib/airlock-hosts/<id>/` (0711: the engine's remapped root must
 * reach its layers through it; short, because unix socket paths are limited to 108 bytes and
 * containerd's ttrpc socket lives under the exec-root):
 * - **network** the namespace `airlock-h-<id>` with `lo` up and a veth pair: `ahost<X>r` in the root
 *   namespace with 10.213.X.1/30 (`ciAddress`), `ahost<X>n` in the host's with 10.213.X.2/30
 *   (`hostAddress`). No default route: the host reaches the CI's address and nothing else (not the
 *   root namespace's 127.0.0.1, not another host's link). X is claimed by creating the root end's
 *   link, which fails if another host (of any test process) holds that X; then the next is tried.
 * - **engine** `dockerd --config-file daemon.json` started with `nsenter --net=` (not `ip netns
 *   exec`, which remounts /sys in a new mount namespace, where dockerd then fails with "Devices
 *   cgroup isn't mounted"); only its network namespace is the host's: it shares the machine's mount
 *   namespace, cgroups and loop devices, as the job runner needs (shared/runner/workspace.ts). It
 *   starts its own containerd (none is named in its config), with its state under `exec/`.
 *   Its settings follow the main engine's (scripts/bootstrap.sh writes /etc/docker/daemon.json):
 *   userns-remap default, no bridge, no iptables, the same `runtimes` (runsc); and like the build
 *   sandbox's (untrusted-ci/environments/build-sandbox.ts) no IP forwarding or masquerading and a
 *   one-second shutdown timeout. It runs under `setpriv --pdeathsig TERM`: when the process that
 *   started it dies, even by SIGKILL, the engine shuts down.
 * - **runner** `stateDir` (`runner/`) is the state directory for a JobRunner against this host's
 *   engine: each host's runner has its own, as each real host has its own disk.
 * - **owner** the id of the process that started it (shared/runner/owner.ts). `startHost` first
 *   removes every host whose owner is dead: its engine, containerd and their shims (by pid files,
 *   and by processes naming the host's directory), mounts under the directory, the veth, the
 *   namespace, the directory. Namespaces named `airlock-h-*` with no directory are removed too.
 *   At this process's exit each host it still holds gets a synchronous best effort (engine
 *   signalled, namespace deleted); the reaper finishes what is left.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { createDocker } from '#shared/docker/client.js';
import { run } from '#shared/runner/exec.js';
import { localCgroupMounts, reapJobCgroups } from '#shared/runner/oom-cgroups.js';
import { newOwnerId, ownerState } from '#shared/runner/owner.js';
import { alive, mentions, mountsUnder, processesMentioning, readText, safeReaddir } from '#shared/proc.js';
export { alive, mountsUnder, processesMentioning };

export const HOSTS_DIR = '/var/lib/airlock-hosts';
export const NETNS_PREFIX = 'airlock-h-';
const VETH_PREFIX = 'ahost';
const ENGINE_START_MS = 60_000;
const ENGINE_STOP_MS = 10_000;
/** A host directory without an owner file this old was left by a process that died while making it. */
const OWNERLESS_MS = 60_000;
const MAX_SOCKET_PATH = 107;
const MAIN_DAEMON_JSON = '/etc/docker/daemon.json';
/** The main engine's runner state (test/support/docker.ts's STATE_DIR). */
const MAIN_STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';

export interface TestHost {
  /** The network namespace's name (`airlock-h-<id>`). */
  name: string;
  /** The root namespace's end of the veth: the CI listens here, and this is the one address the host reaches. */
  ciAddress: string;
  /** The host namespace's end of the veth. */
  hostAddress: string;
  /** Absolute path of the host engine's unix socket. */
  dockerSocket: string;
  /** A client for the host's engine. */
  docker: Docker;
  /** The host's own directory (`/var/lib/airlock-hosts/<id>`); removed by stop(). */
  dir: string;
  /** A state directory for a JobRunner against this host's engine (inside `dir`), with the main one's runsc verdicts for the copied images. */
  stateDir: string;
  /** The engine's pid (dockerd). */
  enginePid: number;
  /**
   * Spawn a process in the host's network namespace (`nsenter --net=…`), stdout and stderr to
   * `logFile` (default: `spawn-<n>.log` in `dir`). stop() kills it if it is still running.
   */
  spawn(cmd: string, args: string[], opts?: { env?: NodeJS.ProcessEnv; logFile?: string }): ChildProcess;
  /** Stop the engine and containerd, kill spawned processes, unmount and remove the directory, delete the veth and the namespace. Idempotent. */
  stop(): Promise<void>;
}

export interface StartHostOptions {
  /** Images copied from the main engine (/var/run/docker.sock) into the host's; default the busybox base image. */
  images?: string[];
}

interface HostRecord {
  id: string;
  netns: string;
  veth: string;
  x: number;
}

const held = new Map<string, { record: HostRecord; dir: string; engine?: ChildProcess }>();
let exitHookInstalled = false;

/** A running host; throws (having removed whatever it made) when one cannot be started. */
export async function startHost(opts: StartHostOptions = {}): Promise<TestHost> {
  if (process.getuid?.() !== 0) throw new Error('executor hosts need root (network namespaces, a Docker engine)');
  await reapHosts();
  installExitHook();
  mkdirSync(HOSTS_DIR, { recursive: true, mode: 0o711 });
  chmodSync(HOSTS_DIR, 0o711);
  const id = randomBytes(4).toString('hex');
  const dir = join(HOSTS_DIR, id);
  const record: HostRecord = { id, netns: `${NETNS_PREFIX}${id}`, veth: '', x: 0 };
  const entry: { record: HostRecord; dir: string; engine?: ChildProcess } = { record, dir };
  // The directory and its owner come first: whatever is made after can be found by a reaper.
  mkdirSync(dir, { mode: 0o711 });
  writeFileSync(join(dir, 'owner'), `${newOwnerId()}\n`, { mode: 0o600 });
  held.set(id, entry);
  const children: ChildProcess[] = [];
  try {
    await makeNetwork(dir, record);
    const engine = await startEngine(dir, record);
    entry.engine = engine.child;
    const images = opts.images ?? ['airlock/base:busybox'];
    const main = createDocker('unix:///var/run/docker.sock');
    const ids: string[] = [];
    for (const ref of images) ids.push(await copyImage(main, engine.docker, ref));
    const stateDir = join(dir, 'runner');
    mkdirSync(stateDir, { mode: 0o700 });
    copyRunscVerdicts(stateDir, ids);
    let seq = 0;
    let stopping: Promise<void> | undefined;
    return {
      name: record.netns,
      ciAddress: `10.213.${record.x}.1`,
      hostAddress: `10.213.${record.x}.2`,
      dockerSocket: engine.socket,
      docker: engine.docker,
      dir,
      stateDir,
      enginePid: engine.child.pid as number,
      spawn(cmd, args, o = {}) {
        const logFile = o.logFile ?? join(dir, `spawn-${++seq}.log`);
        const fd = openSync(logFile, 'a', 0o600);
        try {
          const child = spawn('nsenter', [`--net=/var/run/netns/${record.netns}`, '--', cmd, ...args], { stdio: ['ignore', fd, fd], env: o.env ?? process.env });
          child.on('error', () => undefined); // seen by the caller as an exit
          children.push(child);
          return child;
        } finally {
          closeSync(fd);
        }
      },
      stop() {
        stopping ??= (async () => {
          for (const c of children) await stopChild(c);
          await teardown(dir, record, engine.child);
          held.delete(id);
        })();
        return stopping;
      },
    };
  } catch (e) {
    for (const c of children) await stopChild(c);
    await teardown(dir, record, entry.engine).catch(() => undefined);
    held.delete(id);
    throw e;
  }
}

/** Remove every host whose owner is dead (or that has no owner and is old); returns their ids. */
export async function reapHosts(): Promise<string[]> {
  const removed: string[] = [];
  for (const id of safeReaddir(HOSTS_DIR)) {
    if (!/^[0-9a-f]{8}$/.test(id) || held.has(id)) continue;
    const dir = join(HOSTS_DIR, id);
    const owner = readText(join(dir, 'owner'))?.trim() ?? '';
    const dead = owner === '' ? ageMs(dir) > OWNERLESS_MS : ownerState(owner) === 'dead';
    if (!dead) continue;
    const record = readRecord(dir) ?? { id, netns: `${NETNS_PREFIX}${id}`, veth: '', x: 0 };
    try {
      await teardown(dir, record, undefined);
      removed.push(id);
    } catch (e) {
      // another process's reaper at the same time, or something still mounted: the next pass retries
      process.stderr.write(`executor hosts: cannot remove the leftover ${dir} yet: ${(e as Error).message}\n`);
    }
  }
  // A namespace with no directory: the directory is made before the namespace and removed after it,
  // so nobody is still making this one.
  for (const ns of safeReaddir('/var/run/netns')) {
    const m = new RegExp(`^${NETNS_PREFIX}([0-9a-f]{8})$`).exec(ns);
    if (!m || held.has(m[1] as string) || existsSync(join(HOSTS_DIR, m[1] as string))) continue;
    await run('ip', ['netns', 'del', ns]).catch(() => undefined);
    removed.push(m[1] as string);
  }
  return removed;
}

// ---- network ------------------------------------------------------------------------------

async function makeNetwork(dir: string, record: HostRecord): Promise<void> {
  await run('ip', ['netns', 'add', record.netns]);
  const tried = new Set<number>();
  for (;;) {
    if (tried.size >= 250) throw new Error('no free 10.213.X.0/30 for an executor host (X 1..250 all taken)');
    const x = 1 + Math.floor(Math.random() * 250);
    if (tried.has(x)) continue;
    tried.add(x);
    const veth = `${VETH_PREFIX}${x}r`;
    // Creating the root end claims X: the name exists once on the machine, so a second host fails here.
    try {
      await run('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', `${VETH_PREFIX}${x}n`, 'netns', record.netns]);
    } catch (e) {
      if (/exists/i.test((e as Error).message)) continue;
      throw e;
    }
    record.veth = veth;
    record.x = x;
    writeFileSync(join(dir, 'host.json'), JSON.stringify(record), { mode: 0o600 });
    // The address must not be in use on some other link (made by hand or by something else).
    const other = (await run('ip', ['-o', '-4', 'addr', 'show', 'to', `10.213.${x}.0/30`])).trim();
    if (other) {
      await run('ip', ['link', 'del', veth]).catch(() => undefined);
      record.veth = '';
      continue;
    }
    break;
  }
  const x = record.x;
  await run('ip', ['addr', 'add', `10.213.${x}.1/30`, 'dev', record.veth]);
  await run('ip', ['link', 'set', record.veth, 'up']);
  await run('ip', ['-n', record.netns, 'addr', 'add', `10.213.${x}.2/30`, 'dev', `${VETH_PREFIX}${x}n`]);
  await run('ip', ['-n', record.netns, 'link', 'set', `${VETH_PREFIX}${x}n`, 'up']);
  await run('ip', ['-n', record.netns, 'link', 'set', 'lo', 'up']);
}

// ---- engine -------------------------------------------------------------------------------

async function startEngine(dir: string, record: HostRecord): Promise<{ child: ChildProcess; docker: Docker; socket: string }> {
  const exec = join(dir, 'exec');
  const socket = join(exec, 'docker.sock');
  if (join(exec, 'containerd', 'containerd.sock.ttrpc').length > MAX_SOCKET_PATH) throw new Error(`${dir} is too long for the engine's sockets`);
  for (const d of ['exec', 'data', 'tmp']) mkdirSync(join(dir, d), { mode: d === 'data' ? 0o711 : 0o700 });
  const config = {
    'data-root': join(dir, 'data'),
    'exec-root': exec,
    pidfile: join(exec, 'dockerd.pid'),
    hosts: [`unix://${socket}`],
    'userns-remap': 'default',
    bridge: 'none',
    iptables: false,
    ip6tables: false,
    'ip-forward': false,
    'ip-masq': false,
    'storage-driver': 'overlay2',
    'log-level': 'warn',
    'shutdown-timeout': 1,
    // The engine's ID comes from this key; with the default (/etc/docker/key.json) every engine on
    // the machine reports the main engine's ID.
    'deprecated-key-path': join(dir, 'key.json'),
    ...mainRuntimes(),
  };
  const configFile = join(dir, 'daemon.json');
  writeFileSync(configFile, JSON.stringify(config, null, 2), { mode: 0o600 });
  const log = openSync(join(dir, 'dockerd.log'), 'a', 0o600);
  let child: ChildProcess;
  try {
    child = spawn('setpriv', ['--pdeathsig', 'TERM', '--', 'nsenter', `--net=/var/run/netns/${record.netns}`, '--', 'dockerd', '--config-file', configFile], {
      stdio: ['ignore', log, log],
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', DOCKER_TMPDIR: join(dir, 'tmp') },
    });
  } finally {
    closeSync(log);
  }
  child.on('error', () => undefined); // seen as an early exit below
  child.unref();
  const docker = createDocker(`unix://${socket}`);
  const deadline = Date.now() + ENGINE_START_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) throw new Error(`the engine of ${record.netns} exited at start: ${logTail(dir)}`);
    if (await docker.ping().then(() => true, () => false)) break;
    if (Date.now() > deadline) throw new Error(`the engine of ${record.netns} did not answer within ${ENGINE_START_MS / 1000} s: ${logTail(dir)}`);
    await sleep(50);
  }
  return { child, docker, socket };
}

/** The main engine's `runtimes` (runsc), so that a job may ask for them here too; none when it has none. */
function mainRuntimes(): { runtimes?: Record<string, unknown> } {
  try {
    const main = JSON.parse(readFileSync(MAIN_DAEMON_JSON, 'utf8')) as { runtimes?: Record<string, unknown> };
    return main.runtimes && typeof main.runtimes === 'object' ? { runtimes: main.runtimes } : {};
  } catch {
    return {};
  }
}

/**
 * The runner runs a job under runsc only if its image id is marked compatible in
 * `<stateDir>/runsc-compat.json` (shared/runner/runsc-compat.ts; scripts/base-images.sh writes the
 * main one), or the CI vouches for it: the host's runner gets the main table's verdicts for the
 * images copied (same ids), which also make the host offer runsc (its runsc works).
 */
function copyRunscVerdicts(stateDir: string, ids: readonly string[]): void {
  let table: Record<string, unknown> = {};
  try {
    table = JSON.parse(readFileSync(join(MAIN_STATE_DIR, 'runsc-compat.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    return; // no verdicts: runsc jobs are refused here as on the main engine
  }
  const kept = Object.fromEntries(ids.filter((id) => table[id] === true).map((id) => [id, true]));
  writeFileSync(join(stateDir, 'runsc-compat.json'), `${JSON.stringify(kept)}\n`, { mode: 0o644 });
}

/** `docker save REF` from one engine into the other's load API; returns the image's id (the same in both). */
async function copyImage(from: Docker, to: Docker, ref: string): Promise<string> {
  const tar = (await from.getImage(ref).get()) as unknown as Readable;
  const res = (await to.loadImage(tar, { quiet: true })) as unknown as Readable;
  let text = '';
  for await (const chunk of res) text = (text + String(chunk)).slice(-65536);
  for (const line of text.split('\n')) {
    let msg: { error?: string; errorDetail?: { message?: string } } = {};
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      continue;
    }
    if (msg.error || msg.errorDetail) throw new Error(`loading ${ref} into an executor host failed: ${msg.errorDetail?.message ?? msg.error}`);
  }
  return (await to.getImage(ref).inspect()).Id; // throws if it did not arrive
}

// ---- teardown -----------------------------------------------------------------------------

/**
 * Everything of one host, in order: spawned processes are the caller's; the engine (SIGTERM: a
 * clean stop removes its containers and stops its containerd; once containerd is gone, SIGKILL,
 * since dockerd lingers about a second after that), whatever else still names the directory
 * (containerd, shims), mounts under it, the veth, the namespace, the directory.
 */
async function teardown(dir: string, record: HostRecord, child: ChildProcess | undefined): Promise<void> {
  const exec = join(dir, 'exec');
  const fromFile = (f: string): number | undefined => {
    const n = Number(readText(f)?.trim());
    return Number.isSafeInteger(n) && n > 0 ? n : undefined;
  };
  const dockerd = [fromFile(join(exec, 'dockerd.pid'))].filter((p): p is number => p !== undefined && mentions(p, dir));
  const containerd = [fromFile(join(exec, 'containerd', 'containerd.pid'))].filter((p): p is number => p !== undefined && mentions(p, dir));
  for (const p of dockerd) signal(p, 'SIGTERM');
  const deadline = Date.now() + ENGINE_STOP_MS;
  while (dockerd.some(alive) && containerd.some(alive) && Date.now() < deadline) await sleep(20);
  for (const p of [...dockerd, ...containerd]) await stopProcess(p, 0);
  for (const p of processesMentioning(dir)) await stopProcess(p, 2_000);
  // The setpriv/nsenter wrapper has exec'd into dockerd: the child is dockerd itself; reap it.
  if (child && child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
    await stopProcess(child.pid, 0);
    // Held while waited for (it was unref'd): else a process with nothing else to do (a benchmark
    // at its end) exits under this wait, with "unsettled top-level await".
    child.ref();
    await new Promise<void>((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
  }
  for (const mp of mountsUnder(dir)) await run('umount', [mp]).catch(() => run('umount', ['-l', mp]));
  // Its runner's workspaces' loop devices: a host killed (-9) never detached them, and a device
  // outlives its deleted file, one kernel device each for the rest of the machine's life.
  for (const dev of await loopsUnder(dir)) await run('losetup', ['-d', dev]).catch(() => undefined);
  // And its runners' job cgroups: their records are in the directory removed below, where no
  // later reaper would find them. Every process of the host is gone by now: all are dead owners'.
  const mounts = localCgroupMounts();
  if (mounts) await reapJobCgroups({ mounts, recordsDir: join(dir, 'runner', 'cgroups'), ownerState: () => 'dead' }).catch(() => undefined);
  if (record.veth && existsSync(`/sys/class/net/${record.veth}`)) await run('ip', ['link', 'del', record.veth]).catch(() => undefined);
  if (existsSync(`/var/run/netns/${record.netns}`)) {
    await run('ip', ['netns', 'del', record.netns]).catch((e: unknown) => {
      if (existsSync(`/var/run/netns/${record.netns}`)) throw e; // else another reaper took it first
    });
  }
  const left = mountsUnder(dir);
  if (left.length > 0) throw new Error(`executor host ${record.id}: still mounted: ${left.join(', ')}`);
  rmSync(dir, { recursive: true, force: true });
}

/** Loop devices whose backing file is under `dir` (deleted or not). */
async function loopsUnder(dir: string): Promise<string[]> {
  const out = await run('losetup', ['--list', '--noheadings', '--raw', '--output', 'NAME,BACK-FILE']).catch(() => '');
  return out
    .split('\n')
    .map((l) => /^(\/dev\/loop\d+) (.*)$/.exec(l.trim()))
    .filter((m): m is RegExpExecArray => m !== null && (m[2] ?? '').startsWith(`${dir}/`))
    .map((m) => m[1]!);
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const { record, engine } of held.values()) {
      try {
        if (engine?.pid !== undefined) process.kill(engine.pid, 'SIGTERM');
      } catch {
        // gone
      }
      try {
        execFileSync('ip', ['netns', 'del', record.netns], { stdio: 'ignore' });
      } catch {
        // gone, or the reaper's
      }
    }
  });
}

async function stopChild(c: ChildProcess): Promise<void> {
  if (c.pid === undefined || c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
  c.ref(); // held while waited for, as above
  signal(c.pid, 'SIGKILL');
  await exited;
}

async function stopProcess(pid: number, graceMs: number): Promise<void> {
  if (!signal(pid, 'SIGTERM')) return;
  const deadline = Date.now() + graceMs;
  while (alive(pid) && Date.now() < deadline) await sleep(25);
  if (!alive(pid) || !signal(pid, 'SIGKILL')) return;
  for (let i = 0; i < 200 && alive(pid); i++) await sleep(25);
}

function signal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}





function readRecord(dir: string): HostRecord | undefined {
  try {
    const r = JSON.parse(readFileSync(join(dir, 'host.json'), 'utf8')) as Partial<HostRecord>;
    if (typeof r.id !== 'string' || typeof r.netns !== 'string' || typeof r.veth !== 'string' || typeof r.x !== 'number') return undefined;
    if (!r.netns.startsWith(NETNS_PREFIX) || !(r.veth === '' || r.veth.startsWith(VETH_PREFIX))) return undefined;
    return { id: r.id, netns: r.netns, veth: r.veth, x: r.x };
  } catch {
    return undefined;
  }
}

function logTail(dir: string): string {
  return (readText(join(dir, 'dockerd.log')) ?? '').trim().split('\n').slice(-5).join('\n') || '(no log)';
}



function ageMs(path: string): number {
  try {
    return Date.now() - statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
