/**
 * Build sandboxes: every environment build runs in a throwaway Docker engine of its own, inside
 * an envelope like a job's. A project's Dockerfile is contributor code, and its RUN steps run on
 * the CI host: without this, a RUN step could start processes until the host's pid table is full
 * or write until its disk is (both reproduced on the main engine: 3000 processes and 12 GiB passed).
 *
 * Why a separate engine: the build API of the main engine has no pids limit, no disk quota
 * (overlay2 on ext4 has no project quota), no capability drop and no runtime choice, and what it
 * has applies per RUN container. On this host (Debian's dockerd 20.10, cgroup v1 with the
 * cgroupfs driver, overlay2 on ext4): `cgroupparent` is honoured by the classic builder (tried: a
 * parent with pids.max stops a 3000-process RUN step), but it bounds processes, memory and CPU,
 * not disk; `ulimits` cannot stand in: nproc counts per host uid (every container is uid 100000
 * under userns-remap) and fsize bounds one file; watching a container's writable layer cannot
 * catch `fallocate` (tried: one `fallocate -l 500G` in a RUN step on the main engine took the
 * whole 76 GiB left on the disk in one syscall, before any poll could look), and blkio throttling
 * does not apply to allocations. A dockerd whose data-root is a loop-mounted ext4 image of a fixed
 * size bounds everything the build writes with ENOSPC, at once and without a race (tried:
 * `fallocate -l 500G`, `fallocate -l 3G`, `dd` to /tmp and 200000 small files all stop there), and
 * being its own engine it also takes a daemon-wide cgroup parent, no-new-privileges and default
 * runtime. Its cost, measured: the engine starts in about 0.2 s and stops in under 0.1 s; the base
 * image is copied into it by save/load, 0.2 s for busybox, 3.5 s for the 117 MB bookworm image
 * (the main engine's save is half of it; the load takes 1.3 s with `nobarrier`, 3.5 s without);
 * the built image is copied back the same way (0.1 s, 1.6 s).
 *
 * One sandbox, everything under `<stateDir>/envbuild/<id>/` (0711: the remapped root reaches its
 * layers through it; `owner` names the process that made it):
 * - **cgroup** `/airlock-envbuild-<id>`: `pids.max`, the memory limit (no swap) and the CPU quota;
 *   it is the engine's `cgroup-parent`, so every RUN container is created beneath it and the
 *   limits hold for all the build's processes together (hierarchically). A RUN step that is refused
 *   a fork ends the build at once ("exceeded the process limit").
 * - **disk** a sparse file of `disk + base images + slack`, formatted ext4 and attached to a loop
 *   device (then unlinked: the device holds it), mounted at `root/` (nosuid,nodev,noatime,nobarrier).
 *   The engine's data-root lives there: the base images, every layer, every RUN step's writable
 *   layer (its /tmp too), containerd's state and the engine's log. Past it is ENOSPC, of blocks or
 *   of inodes (many small files). A RUN step's new files are held twice while its layer is
 *   committed (the container's layer and the image layer), so one step can add about half of it.
 * - **engine** `dockerd --config-file exec/daemon.json`: its own containerd, exec-root `exec/`,
 *   socket `exec/docker.sock`, user-namespace remapping like the main engine, no bridge and no
 *   iptables (builds use network none), no-new-privileges, log driver none, core dumps off, and a
 *   default runtime `exec/airlock-runc` (or `-runsc`): a wrapper that drops from each container's
 *   OCI config the capabilities RUN steps do without (NET_RAW, NET_BIND_SERVICE, MKNOD,
 *   AUDIT_WRITE: there is no network, and device nodes and audit mean nothing in a user
 *   namespace) and then execs the real runtime.
 * - **tmp** `tmp/` (the engine's DOCKER_TMPDIR) on the host disk: the build context as the engine
 *   unpacks it (at most the policy's contextMax) and image exports (at most the image).
 *
 * So one build uses at most, on the host disk: its filesystem (`disk` + base images + 64 MiB + 3%,
 * a sparse file that grows only as the build writes; a write past it fails at once, with no
 * overshoot) + the context (contextMax); and only after a successful build, while the image is
 * copied back, the image twice more (the sandbox's export and the main engine's load, both
 * temporary, both at most what the filesystem held). Afterwards: nothing but the built image in
 * the main engine.
 *
 * Teardown (`destroy()`, and the reaper for a dead owner's sandboxes, by the same code): kill
 * every process in the cgroup (frozen first), stop the engine (SIGTERM; once its containerd has
 * stopped, or after 10 s, SIGKILL: dockerd lingers 1-2 s after its shutdown otherwise), kill what
 * is left of its containerd and shims (found by the sandbox's path in their command lines),
 * unmount everything under the directory, deepest first, detach the loop device, remove the cgroup
 * in every hierarchy, remove the directory. `reap()` runs that for sandboxes whose owner is dead
 * (or, for this process's own, that it no longer holds); an owner in another pid namespace or on
 * another host cannot be judged, and only age then applies.
 *
 * cgroup v1 (this host) and v2 are both handled; v2 (cgroup.kill, `memory.events`) is written to
 * the kernel's documentation but has not run here.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, ftruncateSync, mkdirSync, openSync, readdirSync, readFileSync, realpathSync, rmdirSync, rmSync, statfsSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { createDocker } from '#shared/docker/client.js';
import { ExecutorFailedError } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import { run } from '#shared/runner/exec.js';
import { newOwnerId, ownerState as defaultOwnerState } from '#shared/runner/owner.js';
import type { Runtime } from '#shared/schemas/limits.js';
import { alive, decodeMount, mentions, mountsUnder, processesMentioning, readText, safeReaddir } from '#shared/proc.js';

export const SANDBOX_DIR = 'envbuild';
export const CGROUP_PREFIX = 'airlock-envbuild-';
const MiB = 1024 ** 2;
/** Room on the build's filesystem beyond `disk` and the base images: ext4's own tables, the engine's state and log. */
const SLACK_BYTES = 64 * MiB;
const SLACK_RATIO = 0.03;
/** The filesystem counts as full below this much free space (or free inodes). */
const FULL_BYTES = 8 * MiB;
/** Capabilities no RUN step needs here: no network; device nodes and audit mean nothing in a user namespace. */
export const DROPPED_CAPABILITIES = ['CAP_NET_RAW', 'CAP_NET_BIND_SERVICE', 'CAP_MKNOD', 'CAP_AUDIT_WRITE'] as const;
const ENGINE_START_MS = 30_000;
const ENGINE_STOP_MS = 10_000;
/** How long teardown waits for the kernel to free a loop device something still held. */
const LOOP_RELEASE_MS = 5_000;
/** Longest unix socket path (sun_path is 108 bytes, with its NUL). */
const MAX_SOCKET_PATH = 107;

export interface SandboxLimits {
  memory: number;
  cpus: number;
  pids: number;
  /** Bytes the build may write beyond its base images. */
  disk: number;
  runtime: Runtime;
}

export interface SandboxSample {
  /** Forks refused at the pids limit so far (the counts of RUN containers already gone included). */
  pidsRefused: number;
  /** The cgroup's peak process count reached its limit (kernels that keep `pids.peak`). */
  pidsAtLimit: boolean;
  /** Processes the OOM killer ended in the build's cgroup so far (v1 counts them in the RUN container's own cgroup, gone with it: see memoryAtLimit). */
  oomKills: number;
  /** The cgroup's peak memory use came within 10% of its limit. */
  memoryAtLimit: boolean;
  /** The build's filesystem was (nearly) out of space or inodes at this or an earlier sample. */
  diskFull: boolean;
  /** The cgroup and its pids limit are still in place. */
  limitsIntact: boolean;
}

export interface BuildSandboxesOptions {
  /** `<stateDir>/envbuild` holds the sandboxes (the runner's state directory). */
  stateDir: string;
  logger?: Logger;
  /** The owner id written into each sandbox (default: a new one for this process). */
  owner?: string;
  /** Injected for tests; defaults to /proc-based liveness. */
  ownerState?: (owner: string) => 'alive' | 'dead' | 'unknown';
}

export interface SandboxReapReport {
  sandboxes: string[];
}

/** The sandboxes of one process: starts them, knows which it holds, reaps what others left. */
export class BuildSandboxes {
  readonly root: string;
  readonly owner: string;
  private readonly held = new Map<string, BuildSandbox>();

  constructor(private readonly opts: BuildSandboxesOptions) {
    this.root = join(opts.stateDir, SANDBOX_DIR);
    this.owner = opts.owner ?? newOwnerId();
  }

  /** The sandboxes this process holds now (for tests and status). */
  list(): BuildSandbox[] {
    return [...this.held.values()];
  }

  /**
   * A running engine bounded by `limits`, its filesystem sized for `disk` plus `baseBytes` (the
   * base images that will be loaded into it). On any failure, everything made so far is removed.
   */
  async start(limits: SandboxLimits, baseBytes: number, opts: { usernsRemap: boolean }): Promise<BuildSandbox> {
    // o+x (not o+r) on the way to the data-root: the engine's remapped root must reach its layers.
    mkdirSync(this.root, { recursive: true, mode: 0o711 });
    chmodSync(this.root, 0o711);
    const id = randomBytes(6).toString('hex');
    const sb = new BuildSandbox(id, join(realpathSync(this.root), id), limits, this.opts.logger, () => this.held.delete(id));
    this.held.set(id, sb); // before anything exists: this process's reaper must not take it
    try {
      await sb.setUp(this.owner, baseBytes, opts.usernsRemap);
      return sb;
    } catch (e) {
      await sb.destroy().catch((err: unknown) => this.opts.logger?.warn({ err, sandbox: id }, 'build sandbox: teardown after a failed start failed; the reaper retries'));
      throw e;
    }
  }

  /** Remove sandboxes whose owner is dead, this process's that it no longer holds, and any older than `maxAgeMs` whose owner cannot be judged. */
  async reap(maxAgeMs = 24 * 3_600_000): Promise<SandboxReapReport> {
    const state = this.opts.ownerState ?? defaultOwnerState;
    const report: SandboxReapReport = { sandboxes: [] };
    let names: string[] = [];
    try {
      names = readdirSync(this.root);
    } catch {
      return report;
    }
    for (const id of names) {
      if (!/^[0-9a-f]{12}$/.test(id) || this.held.has(id)) continue;
      const dir = join(realpathSync(this.root), id);
      let owner = '';
      try {
        owner = readFileSync(join(dir, 'owner'), 'utf8').trim();
      } catch {
        // no owner file: made by a process that died before writing it
      }
      let leaked: boolean;
      if (owner === this.owner) leaked = true; // ours, and not held
      else if (owner === '') leaked = ageMs(dir) > 60_000; // its owner died before writing this (or is writing it now)
      else {
        const s = state(owner);
        leaked = s === 'dead' || (s === 'unknown' && ageMs(dir) > maxAgeMs);
      }
      if (!leaked) continue;
      try {
        await teardown(id, dir, undefined, this.opts.logger);
        report.sandboxes.push(id);
      } catch (e) {
        this.opts.logger?.warn({ err: e, sandbox: id }, 'build sandbox reaper: cannot remove a leftover; next pass retries');
      }
    }
    if (report.sandboxes.length > 0) this.opts.logger?.info(report, 'build sandbox reaper: removed leftovers');
    return report;
  }
}

export class BuildSandbox {
  /** The sandbox's own engine; valid after start() until destroy(). */
  docker!: Docker;
  private child: ChildProcess | undefined;
  private destroying: Promise<void> | undefined;
  private cg!: Cgroup;
  private readonly seen = new Map<string, number>();
  private diskFull = false;

  constructor(
    readonly id: string,
    /** Absolute, symlinks resolved (as mountinfo shows it). */
    readonly dir: string,
    readonly limits: SandboxLimits,
    private readonly logger: Logger | undefined,
    private readonly forget: () => void,
  ) {}

  get mountpoint(): string {
    return join(this.dir, 'root');
  }
  get cgroupName(): string {
    return `${CGROUP_PREFIX}${this.id}`;
  }

  /** @internal (BuildSandboxes.start) */
  async setUp(owner: string, baseBytes: number, usernsRemap: boolean): Promise<void> {
    const { dir, limits } = this;
    const exec = join(dir, 'exec');
    const socket = join(exec, 'docker.sock');
    if (join(exec, 'containerd', 'containerd.sock.ttrpc').length > MAX_SOCKET_PATH) {
      throw new ExecutorFailedError(`the state directory ${dir} is too long for the build engine's sockets`);
    }
    const tools = {
      dockerd: findExecutable('dockerd'),
      runtime: findExecutable(limits.runtime),
      jq: findExecutable('jq'),
    };
    for (const [name, path] of Object.entries(tools)) {
      if (!path) throw new ExecutorFailedError(`environment builds need ${name} on this host (run npm run bootstrap)`);
    }
    mkdirSync(dir, { mode: 0o711 });
    writeFileSync(join(dir, 'owner'), `${owner}\n`, { mode: 0o600 });
    for (const d of ['exec', 'tmp']) mkdirSync(join(dir, d), { mode: 0o700 });
    mkdirSync(this.mountpoint, { mode: 0o711 });

    // 1. The cgroup, with its limits, before any process can be created beneath it.
    this.cg = createCgroup(this.cgroupName, limits);

    // 2. The build's own filesystem.
    const bytes = Math.ceil((limits.disk + baseBytes + SLACK_BYTES + SLACK_RATIO * (limits.disk + baseBytes)) / MiB) * MiB;
    const image = join(dir, 'disk.img');
    const fd = openSync(image, 'wx', 0o600);
    try {
      ftruncateSync(fd, bytes);
    } finally {
      closeSync(fd);
    }
    await run('mkfs.ext4', ['-q', '-F', '-m', '0', '-O', '^has_journal', '-E', 'lazy_itable_init=1,nodiscard', image]);
    const loop = (await run('losetup', ['--find', '--show', image])).trim();
    unlinkSync(image); // the loop device holds the inode: nothing stays on disk once it is detached
    await run('mount', ['-t', 'ext4', '-o', 'nosuid,nodev,noatime,nobarrier', loop, this.mountpoint]);

    // 3. The engine.
    const wrapper = join(exec, `airlock-${limits.runtime}`);
    writeFileSync(wrapper, runtimeWrapper(tools.jq as string, tools.runtime as string, limits.runtime), { mode: 0o700 });
    chmodSync(wrapper, 0o700);
    const config = {
      'data-root': join(this.mountpoint, 'data'),
      'exec-root': exec,
      pidfile: join(exec, 'dockerd.pid'),
      hosts: [`unix://${socket}`],
      ...(usernsRemap ? { 'userns-remap': 'default' } : {}),
      bridge: 'none',
      iptables: false,
      ip6tables: false,
      'ip-forward': false,
      'ip-masq': false,
      'storage-driver': 'overlay2',
      'exec-opts': ['native.cgroupdriver=cgroupfs'],
      'cgroup-parent': `/${this.cgroupName}`,
      'no-new-privileges': true,
      runtimes: { [`airlock-${limits.runtime}`]: { path: wrapper } },
      'default-runtime': `airlock-${limits.runtime}`,
      'default-ulimits': { core: { Name: 'core', Soft: 0, Hard: 0 } },
      'log-driver': 'none',
      'log-level': 'warn',
      features: { buildkit: false },
      'shutdown-timeout': 1,
    };
    const configFile = join(exec, 'daemon.json');
    writeFileSync(configFile, JSON.stringify(config, null, 2), { mode: 0o600 });
    const log = openSync(join(this.mountpoint, 'dockerd.log'), 'a', 0o600);
    try {
      this.child = spawn(tools.dockerd as string, ['--config-file', configFile], {
        stdio: ['ignore', log, log],
        env: { PATH: searchPath(), DOCKER_TMPDIR: join(dir, 'tmp') },
      });
    } finally {
      closeSync(log);
    }
    this.child.on('error', () => undefined); // seen as an early exit below
    this.child.unref();
    this.docker = createDocker(`unix://${socket}`);
    const deadline = Date.now() + ENGINE_START_MS;
    for (;;) {
      if (this.child.exitCode !== null || this.child.signalCode !== null || this.child.pid === undefined) {
        throw new ExecutorFailedError(`the build engine exited at start: ${this.logTail()}`);
      }
      const ok = await this.docker.ping().then(
        () => true,
        () => false,
      );
      if (ok) break;
      if (Date.now() > deadline) throw new ExecutorFailedError(`the build engine did not answer within ${ENGINE_START_MS / 1000} s: ${this.logTail()}`);
      await sleep(50);
    }
    this.logger?.debug({ sandbox: this.id, bytes, loop }, 'build sandbox started');
  }

  /** The last lines of the engine's own log (for errors). */
  logTail(): string {
    try {
      const text = readFileSync(join(this.mountpoint, 'dockerd.log'), 'utf8');
      return text.trim().split('\n').slice(-5).join('\n') || '(no log)';
    } catch {
      return '(no log)';
    }
  }

  /** What the limits saw so far; cheap (a few small files and one statfs). */
  sample(): SandboxSample {
    const { limits } = this;
    let pidsRefused = 0;
    for (const [file, n] of this.cg.counters('pids.events', 'max')) {
      const prev = this.seen.get(file) ?? 0;
      if (n > prev) this.seen.set(file, n);
    }
    for (const [file, n] of this.seen) if (file.endsWith('pids.events')) pidsRefused += n;
    let oomKills = 0;
    for (const [file, n] of this.cg.counters(this.cg.version === 1 ? 'memory.oom_control' : 'memory.events', 'oom_kill')) {
      const key = `${file}#oom`;
      if (n > (this.seen.get(key) ?? 0)) this.seen.set(key, n);
    }
    for (const [key, n] of this.seen) if (key.endsWith('#oom')) oomKills += n;
    const peak = this.cg.read('pids', 'pids.peak');
    const max = this.cg.read('pids', 'pids.max');
    const memPeak = Number(this.cg.read('memory', this.cg.version === 1 ? 'memory.max_usage_in_bytes' : 'memory.peak'));
    try {
      const s = statfsSync(this.mountpoint);
      const free = Number(s.bavail) * Number(s.bsize);
      if (free < Math.max(FULL_BYTES, Number(s.blocks) * Number(s.bsize) * 0.005) || Number(s.ffree) < Math.max(64, Number(s.files) * 0.005)) this.diskFull = true;
    } catch {
      // unmounted: torn down
    }
    return {
      pidsRefused,
      pidsAtLimit: peak !== undefined && Number(peak) >= limits.pids,
      oomKills,
      memoryAtLimit: memPeak >= 0.9 * limits.memory,
      diskFull: this.diskFull,
      limitsIntact: max === String(limits.pids),
    };
  }

  /** Stop the engine and remove everything the sandbox made. Idempotent; concurrent calls share one teardown. */
  destroy(): Promise<void> {
    this.destroying ??= teardown(this.id, this.dir, this.child, this.logger).finally(() => this.forget());
    return this.destroying;
  }
}

/**
 * Copy images by id from one engine to another (`docker save | docker load`), then give each the
 * references it is known by in `refs` (id → references). Returns when the target has them.
 */
export async function copyImages(from: Docker, to: Docker, refs: ReadonlyMap<string, readonly string[]>): Promise<void> {
  for (const [id, names] of refs) {
    await loadImage(to, (await from.getImage(id).get()) as unknown as Readable);
    for (const ref of names) {
      if (ref === id || ref.startsWith('sha256:')) continue;
      const at = ref.lastIndexOf(':');
      if (ref.includes('@') || at <= ref.lastIndexOf('/')) throw new ExecutorFailedError(`cannot name ${id} as ${ref} in the build engine: only name:tag references can be`);
      await to.getImage(id).tag({ repo: ref.slice(0, at), tag: ref.slice(at + 1) });
    }
  }
}

/** `docker save ref` from one engine into `docker load` of another; the tag comes along. */
export async function moveImage(from: Docker, to: Docker, ref: string): Promise<void> {
  const tar = (await from.getImage(ref).get()) as unknown as Readable;
  await loadImage(to, tar);
}

/** `docker load` of a tar stream into `to`; an error the engine reports in its progress throws. */
export async function loadImage(to: Docker, tar: Readable): Promise<void> {
  const res = (await to.loadImage(tar, { quiet: true })) as unknown as Readable;
  let text = '';
  for await (const chunk of res) {
    text += String(chunk);
    if (text.length > 1 << 20) text = text.slice(-4096);
  }
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    let msg: { error?: string; errorDetail?: { message?: string } } = {};
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      continue;
    }
    if (msg.error || msg.errorDetail) throw new ExecutorFailedError(`image load failed: ${msg.errorDetail?.message ?? msg.error}`);
  }
}

/** The OCI runtime wrapper: drops capabilities from the container's config, then execs the runtime. */
function runtimeWrapper(jq: string, runtime: string, kind: Runtime): string {
  const drop = DROPPED_CAPABILITIES.map((c) => `. != "${c}"`).join(' and ');
  const real = kind === 'runsc' ? `${runtime} --network=none` : runtime;
  return `#!/bin/sh
# Written by airlock for one environment build (untrusted-ci/environments/build-sandbox.ts): on
# create, drop the capabilities RUN steps do without from the container's OCI config; then run
# the real runtime. Any failure fails the container (set -e), never runs it unmodified.
set -eu
cmd= bundle= prev=
for a in "$@"; do
  case "$prev" in --bundle|-b) bundle=$a ;; esac
  case "$a" in --bundle=*) bundle=\${a#--bundle=} ;; esac
  if [ -z "$cmd" ]; then case "$a" in create|run) cmd=$a ;; esac; fi
  prev=$a
done
if [ -n "$cmd" ]; then
  cfg="\${bundle:-.}/config.json"
  ${jq} -c '.process.capabilities |= with_entries(.value |= map(select(${drop}))) | .process.noNewPrivileges = true' "$cfg" > "$cfg.airlock"
  mv -f "$cfg.airlock" "$cfg"
fi
exec ${real} "$@"
`;
}

// ---- cgroups ------------------------------------------------------------------------------

interface Cgroup {
  version: 1 | 2;
  /** The file's text, trimmed, in the cgroup of `controller` (undefined when absent). */
  read(controller: string, file: string): string | undefined;
  /** `key N` counters of `file` in the cgroup and every cgroup beneath it, by path. */
  counters(file: string, key: string): Map<string, number>;
}

interface CgroupMount {
  path: string;
  v2: boolean;
  controllers: string[];
}

function cgroupMounts(): CgroupMount[] {
  const out: CgroupMount[] = [];
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const [, mp, type, options] = line.split(' ');
    if (!mp || (type !== 'cgroup' && type !== 'cgroup2')) continue;
    const path = decodeMount(mp);
    const controllers = type === 'cgroup2' ? readText(join(path, 'cgroup.controllers'))?.split(/\s+/).filter(Boolean) ?? [] : (options ?? '').split(',');
    out.push({ path, v2: type === 'cgroup2', controllers });
  }
  return out;
}

/** Where each controller's hierarchy is: v1 when pids is mounted as a v1 controller, else the v2 tree. */
function hierarchies(): { version: 1 | 2; of: (controller: string) => string | undefined } {
  const mounts = cgroupMounts();
  const v1 = mounts.filter((m) => !m.v2);
  if (v1.some((m) => m.controllers.includes('pids'))) {
    return { version: 1, of: (c) => v1.find((m) => m.controllers.includes(c))?.path };
  }
  const v2 = mounts.find((m) => m.v2 && m.controllers.includes('pids'));
  if (!v2) throw new ExecutorFailedError('no cgroup hierarchy with the pids controller on this host: environment builds cannot be bounded');
  return { version: 2, of: (c) => (v2.controllers.includes(c) ? v2.path : undefined) };
}

/** Make the build's cgroup with its limits, and check they hold. Throws (fail closed) if one cannot be set. */
function createCgroup(name: string, limits: SandboxLimits): Cgroup {
  const h = hierarchies();
  const need = (c: string): string => {
    const root = h.of(c);
    if (!root) throw new ExecutorFailedError(`no cgroup controller ${c} on this host: environment builds cannot be bounded`);
    const dir = join(root, name);
    mkdirSync(dir, { recursive: true });
    return dir;
  };
  const set = (dir: string, file: string, value: string, check = true): void => {
    try {
      writeFileSync(join(dir, file), value);
    } catch (e) {
      if (check) throw new ExecutorFailedError(`cannot set ${file} of the build's cgroup: ${(e as Error).message}`, { cause: e });
    }
  };
  const quota = Math.max(1000, Math.round(limits.cpus * 100_000));
  if (h.version === 1) {
    set(need('pids'), 'pids.max', String(limits.pids));
    const mem = need('memory');
    set(mem, 'memory.limit_in_bytes', String(limits.memory));
    if (existsSync(join(mem, 'memory.memsw.limit_in_bytes'))) set(mem, 'memory.memsw.limit_in_bytes', String(limits.memory));
    const cpu = need('cpu');
    set(cpu, 'cpu.cfs_period_us', '100000');
    set(cpu, 'cpu.cfs_quota_us', String(quota));
  } else {
    const root = h.of('pids') as string;
    // The controllers must be enabled for the build's cgroup and, beneath it, for the containers.
    for (const c of ['pids', 'memory', 'cpu']) set(root, 'cgroup.subtree_control', `+${c}`, false);
    const dir = need('pids');
    set(dir, 'pids.max', String(limits.pids));
    set(dir, 'memory.max', String(limits.memory));
    if (existsSync(join(dir, 'memory.swap.max'))) set(dir, 'memory.swap.max', '0');
    set(dir, 'cpu.max', `${quota} 100000`);
    for (const c of ['pids', 'memory', 'cpu']) set(dir, 'cgroup.subtree_control', `+${c}`, false);
  }
  const cg: Cgroup = {
    version: h.version,
    read: (controller, file) => {
      const root = h.of(controller);
      return root ? readText(join(root, name, file))?.trim() : undefined;
    },
    counters: (file, key) => {
      const controller = file.split('.')[0] as string;
      const root = h.of(controller);
      const found = new Map<string, number>();
      if (!root) return found;
      for (const dir of cgroupTree(join(root, name))) {
        const text = readText(join(dir, file));
        const m = text ? new RegExp(`^${key} (\\d+)$`, 'm').exec(text) : null;
        if (m) found.set(join(dir, file), Number(m[1]));
      }
      return found;
    },
  };
  const pidsMax = cg.read('pids', 'pids.max');
  const memKey = h.version === 1 ? 'memory.limit_in_bytes' : 'memory.max';
  const mem = Number(cg.read('memory', memKey));
  if (pidsMax !== String(limits.pids) || !(mem > 0 && mem <= limits.memory)) {
    throw new ExecutorFailedError(`the build's cgroup limits did not hold (pids.max=${pidsMax}, ${memKey}=${mem})`);
  }
  return cg;
}

/** A cgroup directory and every one beneath it, deepest last. */
function cgroupTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, depth: number): void => {
    out.push(d);
    if (depth > 8) return;
    let entries: import('node:fs').Dirent[] = [];
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory()) walk(join(d, e.name), depth + 1);
  };
  if (existsSync(dir)) walk(dir, 0);
  return out;
}

/** Kill every process in the build's cgroup (every hierarchy that has it), freezing it first where it can. */
async function killCgroup(name: string): Promise<void> {
  const mounts = cgroupMounts();
  const dirs = mounts.map((m) => join(m.path, name)).filter((d) => existsSync(d));
  const v2kill = dirs.map((d) => join(d, 'cgroup.kill')).find((f) => existsSync(f));
  if (v2kill) {
    try {
      writeFileSync(v2kill, '1');
    } catch {
      // fall through to signals
    }
  }
  const freezer = mounts.find((m) => !m.v2 && m.controllers.includes('freezer'));
  const freezeFile = freezer ? join(freezer.path, name, 'freezer.state') : undefined;
  for (let round = 0; round < 100; round++) {
    const pids = new Set<number>();
    for (const d of dirs) for (const c of cgroupTree(d)) for (const p of (readText(join(c, 'cgroup.procs')) ?? '').split('\n')) if (p) pids.add(Number(p));
    if (pids.size === 0) return;
    // Frozen, nothing forks between the listing and the kill; SIGKILL lands when thawed.
    if (freezeFile && existsSync(freezeFile)) {
      try {
        writeFileSync(freezeFile, 'FROZEN');
        for (let i = 0; i < 20 && readText(freezeFile)?.trim() !== 'FROZEN'; i++) await sleep(10);
      } catch {
        // not freezable: plain signals
      }
    }
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    if (freezeFile && existsSync(freezeFile)) {
      try {
        writeFileSync(freezeFile, 'THAWED');
      } catch {
        // gone
      }
    }
    await sleep(round < 10 ? 20 : 100);
  }
  throw new ExecutorFailedError(`processes of ${name} survive SIGKILL`);
}

/** Remove the build's cgroup, deepest first, in every hierarchy. */
async function removeCgroup(name: string): Promise<void> {
  for (const m of cgroupMounts()) {
    const tree = cgroupTree(join(m.path, name)).reverse();
    for (const d of tree) {
      for (let i = 0; ; i++) {
        try {
          rmdirSync(d);
          break;
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if (code === 'ENOENT') break;
          if (code !== 'EBUSY' || i >= 50) throw new ExecutorFailedError(`cannot remove cgroup ${d}: ${(e as Error).message}`, { cause: e });
          await sleep(50);
        }
      }
    }
  }
}

// ---- teardown -----------------------------------------------------------------------------

async function teardown(id: string, dir: string, child: ChildProcess | undefined, logger: Logger | undefined): Promise<void> {
  const name = `${CGROUP_PREFIX}${id}`;
  // 1. The build's processes: nothing of the contributor's runs on while the engine stops.
  await killCgroup(name);
  // 2. The engine: a clean stop removes its containers' tasks, unmounts their layers and ends with
  // stopping its containerd. dockerd itself then lingers for a second or two doing nothing
  // useful (measured), so once its containerd is gone it is killed.
  const pidFromFile = Number(readText(join(dir, 'exec', 'dockerd.pid'))?.trim());
  const engine = child?.pid ?? (Number.isSafeInteger(pidFromFile) && pidFromFile > 0 ? pidFromFile : undefined);
  if (engine !== undefined && mentions(engine, dir)) {
    const containerd = processesMentioning(dir).filter((p) => p !== engine && /(^|\/)containerd$/.test(argv0(p)));
    try {
      process.kill(engine, 'SIGTERM');
    } catch {
      // gone
    }
    const deadline = Date.now() + ENGINE_STOP_MS;
    while (alive(engine) && containerd.some(alive) && Date.now() < deadline) await sleep(20);
    await stopProcess(engine, 0);
  }
  // 3. Whatever else runs from the sandbox (containerd, shims, runtime wrappers), by their command
  // lines; a shim killed leaves its socket in /run/containerd/s, removed here.
  for (const pid of processesMentioning(dir)) {
    const socket = shimSocket(pid);
    await stopProcess(pid, 2_000);
    if (socket) rmSync(socket, { force: true });
  }
  await killCgroup(name);
  // 4. Mounts under the directory, deepest first (layers, shm, netns, then the filesystem itself).
  for (const mp of mountsUnder(dir)) {
    await run('umount', [mp]).catch(() => run('umount', ['-l', mp]));
  }
  // 5. The loop device (its backing file was unlinked when it was attached). While anything still
  // holds the filesystem (a mount namespace of a process that is still exiting, a lazy unmount),
  // the kernel only marks the device to be freed when the last holder lets go: wait for that, a
  // few seconds at most (seen in CI under load), so the sandbox is gone when this returns.
  for (const dev of loopDevicesUnder(dir)) {
    await run('losetup', ['-d', dev]).catch((e: Error) => {
      if (!/No such device/i.test(e.message)) throw e;
    });
  }
  const loopDeadline = Date.now() + LOOP_RELEASE_MS;
  while (loopDevicesUnder(dir).length > 0 && Date.now() < loopDeadline) await sleep(50);
  const held = loopDevicesUnder(dir);
  if (held.length > 0) logger?.warn({ sandbox: id, devices: held }, 'build sandbox: loop device still held; the kernel frees it when its last holder exits');
  // 6. The cgroup, in every hierarchy the engine made it in.
  await removeCgroup(name);
  // 7. The directory, only once nothing is mounted beneath it.
  const left = mountsUnder(dir);
  if (left.length > 0) throw new ExecutorFailedError(`build sandbox ${id}: still mounted: ${left.join(', ')}`);
  rmSync(dir, { recursive: true, force: true });
}

async function stopProcess(pid: number, graceMs: number): Promise<void> {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (alive(pid) && Date.now() < deadline) await sleep(25);
  if (!alive(pid)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  for (let i = 0; i < 200 && alive(pid); i++) await sleep(25);
}


function argv0(pid: number): string {
  return readText(`/proc/${pid}/cmdline`)?.split('\0')[0] ?? '';
}

/**
 * The socket of a containerd shim (`containerd-shim-runc-v2 -namespace NS -id ID -address ADDR`):
 * containerd 1.6 puts it at /run/containerd/s/<sha256 of ADDR/NS/ID>.
 */
function shimSocket(pid: number): string | undefined {
  const args = readText(`/proc/${pid}/cmdline`)?.split('\0') ?? [];
  if (!/containerd-shim/.test(args[0] ?? '')) return undefined;
  const opt = (k: string): string | undefined => {
    const i = args.indexOf(k);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const [ns, id, address] = [opt('-namespace'), opt('-id'), opt('-address')];
  if (!ns || !id || !address) return undefined;
  return join('/run/containerd/s', createHash('sha256').update(join(address, ns, id)).digest('hex'));
}




function loopDevicesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const n of safeReaddir('/sys/block')) {
    if (!/^loop\d+$/.test(n)) continue;
    const backing = readText(`/sys/block/${n}/loop/backing_file`)?.trim();
    if (backing && backing.startsWith(`${dir}/`)) out.push(`/dev/${n}`);
  }
  return out;
}

// ---- small helpers ------------------------------------------------------------------------




function ageMs(dir: string): number {
  try {
    return Date.now() - statSync(dir).mtimeMs;
  } catch {
    return 0;
  }
}

function searchPath(): string {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  for (const d of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']) if (!dirs.includes(d)) dirs.push(d);
  return dirs.join(delimiter);
}

function findExecutable(name: string): string | undefined {
  for (const d of searchPath().split(delimiter)) {
    const p = join(d, name);
    try {
      if (statSync(p).isFile()) return p;
    } catch {
      // next
    }
  }
  return undefined;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
