/**
 * The reaper removes what a crashed runner left behind: containers and workspace volumes whose
 * `airlock.owner` is a runner process that no longer exists, and loop devices whose backing file
 * sits in the workspaces directory but belongs to no volume. It runs at runner start and then
 * periodically. It never touches anything of a live owner, so several runners on one engine
 * (and the periodic pass during a job) are safe.
 */
import { readdirSync, readFileSync } from 'node:fs';
import type Docker from 'dockerode';
import type { Logger } from '../logging.js';
import { LABEL_LOOP, LABEL_OWNER } from './labels.js';
import { isOwnerAlive } from './owner.js';
import { detachLoop, removeVolumeQuietly, WORKSPACE_VOLUME_PREFIX } from './workspace.js';

export interface ReapReport {
  containers: string[];
  volumes: string[];
  loopDevices: string[];
}

export interface ReaperOptions {
  docker: Docker;
  workspacesDir: string;
  logger?: Logger;
  /** Injected for tests; defaults to /proc-based liveness. */
  isOwnerAlive?: (owner: string) => boolean;
}

export async function reap(opts: ReaperOptions): Promise<ReapReport> {
  const alive = opts.isOwnerAlive ?? isOwnerAlive;
  const report: ReapReport = { containers: [], volumes: [], loopDevices: [] };
  const containers = await opts.docker.listContainers({ all: true, filters: { label: [LABEL_OWNER] } });
  for (const c of containers) {
    const owner = c.Labels[LABEL_OWNER] ?? '';
    if (alive(owner)) continue;
    try {
      await opts.docker.getContainer(c.Id).remove({ force: true, v: true });
      report.containers.push(c.Id);
    } catch (e) {
      if ((e as { statusCode?: number }).statusCode !== 404) opts.logger?.warn({ err: e, container: c.Id }, 'reaper: cannot remove container');
    }
  }
  const { Volumes } = await opts.docker.listVolumes({ filters: { label: [LABEL_OWNER] } });
  for (const v of Volumes ?? []) {
    const owner = v.Labels?.[LABEL_OWNER] ?? '';
    if (alive(owner)) continue;
    try {
      await removeVolumeQuietly(opts.docker, v.Name);
      report.volumes.push(v.Name);
      const loop = v.Labels?.[LABEL_LOOP];
      if (loop) await detachLoop(loop, v.Name);
    } catch (e) {
      opts.logger?.warn({ err: e, volume: v.Name }, 'reaper: cannot remove volume');
    }
  }
  // Loop devices whose workspace volume is gone (a crash between losetup and volume create, or
  // after the volume was removed): backing file in our directory, no volume of that name left.
  const live = new Set(((await opts.docker.listVolumes()).Volumes ?? []).map((v) => v.Name));
  for (const dev of listLoopDevices()) {
    if (!dev.backingFile.startsWith(opts.workspacesDir + '/')) continue;
    const m = new RegExp(`/(${WORKSPACE_VOLUME_PREFIX}[0-9a-f]+)\\.img`).exec(dev.backingFile);
    if (!m || live.has(m[1] as string)) continue;
    await detachLoop(dev.device, m[1] as string).catch((e: unknown) => opts.logger?.warn({ err: e, device: dev.device }, 'reaper: cannot detach loop device'));
    report.loopDevices.push(dev.device);
  }
  if (report.containers.length + report.volumes.length + report.loopDevices.length > 0) {
    opts.logger?.info(report, 'reaper: removed leftovers of dead runners');
  }
  return report;
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
