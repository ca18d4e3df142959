/**
 * The reaper removes what runners left behind: containers and workspace volumes whose
 * `airlock.owner` is a runner process that no longer exists, and loop devices whose backing file
 * sits in a dead owner's workspaces directory. It runs at runner start and then periodically, so
 * several runners on one engine are safe: nothing of a live owner is touched, except
 * - a container older than `maxAgeMs` (no job may run that long: its runner failed to remove it);
 * - the calling runner's own volumes and loop devices that its workspace manager no longer holds.
 * An owner on another host or in another pid namespace cannot be judged from here: only the age
 * rule applies to it.
 *
 * A runner that dies while it writes a job's source into a workspace (WorkspaceManager.withMounted)
 * leaves that workspace mounted at <workspacesDir>/<owner token>/<volume>.mnt. Such mounts are
 * unmounted (lazily if a plain unmount is refused) and their directories removed first, before the
 * volume and its loop device, which the mount would otherwise keep busy. Only mounts visible in
 * this process's mount namespace can be seen: runners sharing a workspaces directory must share
 * their mount namespace too (they do when they run on the host, as the engine's loop devices need).
 *
 * Job cgroups (oom-cgroups.ts): a dead runner's directories under `airlock-jobs/` in every
 * hierarchy, and the calling runner's own that it no longer holds, are removed last, after the
 * containers that were in them.
 */
import { readdirSync, readFileSync, realpathSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import type Docker from 'dockerode';
import type { Logger } from '../logging.js';
import { run } from './exec.js';
import { LABEL_CREATED, LABEL_LOOP, LABEL_OWNER } from './labels.js';
import { localCgroupMounts, reapJobCgroups } from './oom-cgroups.js';
import { ownerFromToken, ownerState, ownerToken } from './owner.js';
import { detachLoop, removeVolumeQuietly, WORKSPACE_MOUNT_SUFFIX, WORKSPACE_VOLUME_PREFIX } from './workspace.js';
import { isNotFound } from '../docker/client.js';

export interface ReapReport {
  containers: string[];
  /** Workspace mountpoints of a dead runner's source writing, unmounted. */
  mounts: string[];
  volumes: string[];
  loopDevices: string[];
  /** Job cgroups removed, as `<runner>/<job>` and `<runner>` (oom-cgroups.ts). */
  cgroups: string[];
}

export interface ReaperOptions {
  docker: Docker;
  workspacesDir: string;
  logger?: Logger;
  /** The calling runner's owner id and the volumes it holds: its other volumes are leaks. */
  self?: { owner: string; held: () => ReadonlySet<string>; heldCgroups?: () => ReadonlySet<string> };
  /** `<stateDir>/cgroups`, where runners record their job cgroups; absent: none are reaped. */
  cgroupRecordsDir?: string;
  /** A container older than this is removed whoever owns it. */
  maxAgeMs?: number;
  now?: () => number;
  /** Injected for tests; defaults to /proc-based liveness. */
  ownerState?: (owner: string) => 'alive' | 'dead' | 'unknown';
}

export async function reap(opts: ReaperOptions): Promise<ReapReport> {
  const state = opts.ownerState ?? ownerState;
  const now = (opts.now ?? Date.now)();
  const report: ReapReport = { containers: [], mounts: [], volumes: [], loopDevices: [], cgroups: [] };
  const isSelf = (owner: string) => opts.self?.owner === owner;

  const containers = await opts.docker.listContainers({ all: true, filters: { label: [LABEL_OWNER] } });
  for (const c of containers) {
    const owner = c.Labels[LABEL_OWNER] ?? '';
    const created = Number(c.Labels[LABEL_CREATED] ?? (c.Created ?? 0) * 1000);
    const tooOld = opts.maxAgeMs !== undefined && Number.isFinite(created) && now - created > opts.maxAgeMs;
    if (!tooOld && state(owner) !== 'dead') continue;
    try {
      await opts.docker.getContainer(c.Id).remove({ force: true, v: true });
      report.containers.push(c.Id);
    } catch (e) {
      if (!isNotFound(e)) opts.logger?.warn({ err: e, container: c.Id }, 'reaper: cannot remove container');
    }
  }

  const held = opts.self?.held() ?? new Set<string>();
  const selfToken = opts.self ? ownerToken(opts.self.owner) : undefined;
  /** Is the workspace `volume` of the owner behind `token` a leftover? */
  const leakedWorkspace = (token: string | undefined, volume: string): boolean => {
    if (token !== undefined && token === selfToken) return !held.has(volume);
    const owner = token ? ownerFromToken(token) : undefined; // no token: an older layout, owner long gone
    return owner === undefined || state(owner) === 'dead';
  };

  // mountinfo shows the path with symlinks resolved, as the kernel sees it.
  const mountPattern = new RegExp(`^${escapeRe(realPathOr(opts.workspacesDir))}/([A-Za-z0-9_-]+)/(${WORKSPACE_VOLUME_PREFIX}[0-9a-f]+)${escapeRe(WORKSPACE_MOUNT_SUFFIX)}$`);
  for (const mountpoint of listMountpoints()) {
    const m = mountPattern.exec(mountpoint);
    if (!m || !leakedWorkspace(m[1], m[2] as string)) continue;
    try {
      await run('umount', [mountpoint]).catch(() => run('umount', ['-l', mountpoint]));
      report.mounts.push(mountpoint);
      rmdirSync(mountpoint);
    } catch (e) {
      opts.logger?.warn({ err: e, mountpoint }, 'reaper: cannot unmount a workspace');
    }
  }

  const { Volumes } = await opts.docker.listVolumes({ filters: { label: [LABEL_OWNER] } });
  for (const v of Volumes ?? []) {
    const owner = v.Labels?.[LABEL_OWNER] ?? '';
    const leaked = isSelf(owner) ? !held.has(v.Name) : state(owner) === 'dead';
    if (!leaked) continue;
    try {
      await removeVolumeQuietly(opts.docker, v.Name);
      report.volumes.push(v.Name);
      const loop = v.Labels?.[LABEL_LOOP];
      if (loop) await detachLoop(loop, v.Name);
    } catch (e) {
      // in use by a container that is still being removed: the next pass takes it
      opts.logger?.warn({ err: e, volume: v.Name }, 'reaper: cannot remove volume');
    }
  }

  // Loop devices behind workspaces: <workspacesDir>/<owner token>/<volume>.img, usually "(deleted)".
  const pattern = new RegExp(`^${escapeRe(opts.workspacesDir)}/(?:([A-Za-z0-9_-]+)/)?(${WORKSPACE_VOLUME_PREFIX}[0-9a-f]+)\\.img`);
  for (const dev of listLoopDevices()) {
    const m = pattern.exec(dev.backingFile);
    if (!m) continue;
    const [, token, volume] = m as unknown as [string, string | undefined, string];
    if (!leakedWorkspace(token, volume)) continue;
    try {
      await detachLoop(dev.device, volume);
      report.loopDevices.push(dev.device);
    } catch (e) {
      opts.logger?.warn({ err: e, device: dev.device }, 'reaper: cannot detach loop device');
    }
  }
  removeEmptyOwnerDirs(opts.workspacesDir, (token) => token !== selfToken && (ownerFromToken(token) === undefined || state(ownerFromToken(token) as string) === 'dead'));

  const cgroupMounts = opts.cgroupRecordsDir ? localCgroupMounts() : undefined;
  if (opts.cgroupRecordsDir && cgroupMounts) {
    report.cgroups = await reapJobCgroups({
      mounts: cgroupMounts,
      recordsDir: opts.cgroupRecordsDir,
      ownerState: state,
      ...(opts.self ? { self: { owner: opts.self.owner, held: opts.self.heldCgroups ?? (() => new Set<string>()) } } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
    });
  }

  if (report.containers.length + report.mounts.length + report.volumes.length + report.loopDevices.length + report.cgroups.length > 0) {
    opts.logger?.info(report, 'reaper: removed leftovers');
  }
  return report;
}

function realPathOr(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function removeEmptyOwnerDirs(dir: string, dead: (token: string) => boolean): void {
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    if (!/^[A-Za-z0-9_-]+$/.test(n) || !dead(n)) continue;
    try {
      rmdirSync(join(dir, n)); // only succeeds when empty: files are unlinked once their loop device holds them
    } catch {
      // not empty or not a directory
    }
  }
}

/** Mountpoints in this process's mount namespace, from /proc/self/mountinfo (octal escapes decoded). */
function listMountpoints(): string[] {
  let text = '';
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => !!p)
    .map((p) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
}

function listLoopDevices(): { device: string; backingFile: string }[] {
  const out: { device: string; backingFile: string }[] = [];
  let names: string[] = [];
  try {
    names = readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n));
  } catch {
    return out;
  }
  for (const n of names) {
    try {
      out.push({ device: `/dev/${n}`, backingFile: readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim() });
    } catch {
      // not attached
    }
  }
  return out;
}
