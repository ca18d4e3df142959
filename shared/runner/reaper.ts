/**
 * The reaper removes what runners left behind: containers and workspace volumes whose
 * `airlock.owner` is a runner process that no longer exists, and loop devices whose backing file
 * sits in a dead owner's workspaces directory. It runs at runner start and then periodically, so
 * several runners on one engine are safe: nothing of a live owner is touched, except
 * - a container older than `maxAgeMs` (no job may run that long: its runner failed to remove it);
 * - the calling runner's own volumes and loop devices that its workspace manager no longer holds.
 * An owner on another host or in another pid namespace cannot be judged from here: only the age
 * rule applies to it.
 */
import { readdirSync, readFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import type Docker from 'dockerode';
import type { Logger } from '../logging.js';
import { LABEL_CREATED, LABEL_LOOP, LABEL_OWNER } from './labels.js';
import { ownerFromToken, ownerState, ownerToken } from './owner.js';
import { detachLoop, removeVolumeQuietly, WORKSPACE_VOLUME_PREFIX } from './workspace.js';
import { isNotFound } from '../docker/client.js';

export interface ReapReport {
  containers: string[];
  volumes: string[];
  loopDevices: string[];
}

export interface ReaperOptions {
  docker: Docker;
  workspacesDir: string;
  logger?: Logger;
  /** The calling runner's owner id and the volumes it holds: its other volumes are leaks. */
  self?: { owner: string; held: () => ReadonlySet<string> };
  /** A container older than this is removed whoever owns it. */
  maxAgeMs?: number;
  now?: () => number;
  /** Injected for tests; defaults to /proc-based liveness. */
  ownerState?: (owner: string) => 'alive' | 'dead' | 'unknown';
}

export async function reap(opts: ReaperOptions): Promise<ReapReport> {
  const state = opts.ownerState ?? ownerState;
  const now = (opts.now ?? Date.now)();
  const report: ReapReport = { containers: [], volumes: [], loopDevices: [] };
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
  const selfToken = opts.self ? ownerToken(opts.self.owner) : undefined;
  const pattern = new RegExp(`^${escapeRe(opts.workspacesDir)}/(?:([A-Za-z0-9_-]+)/)?(${WORKSPACE_VOLUME_PREFIX}[0-9a-f]+)\\.img`);
  for (const dev of listLoopDevices()) {
    const m = pattern.exec(dev.backingFile);
    if (!m) continue;
    const [, token, volume] = m as unknown as [string, string | undefined, string];
    const owner = token ? ownerFromToken(token) : undefined; // no token: an older layout, owner long gone
    const leaked = token !== undefined && token === selfToken ? !held.has(volume) : owner === undefined || state(owner) === 'dead';
    if (!leaked) continue;
    try {
      await detachLoop(dev.device, volume);
      report.loopDevices.push(dev.device);
    } catch (e) {
      opts.logger?.warn({ err: e, device: dev.device }, 'reaper: cannot detach loop device');
    }
  }
  removeEmptyOwnerDirs(opts.workspacesDir, (token) => token !== selfToken && (ownerFromToken(token) === undefined || state(ownerFromToken(token) as string) === 'dead'));

  if (report.containers.length + report.volumes.length + report.loopDevices.length > 0) {
    opts.logger?.info(report, 'reaper: removed leftovers');
  }
  return report;
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
