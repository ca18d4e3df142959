/**
 * Workspaces: each job's writable /workspace is its own small ext4 filesystem, so a job that fills
 * it gets ENOSPC at exactly its quota and cannot touch the host's disk or another job's files.
 *
 * Life of one workspace:
 *   sparse file in <stateDir>/workspaces → mkfs.ext4 (no journal; root owned by the job user's
 *   host uid) → loop device → the file is unlinked (the loop device holds it) → a Docker volume of
 *   the local driver mounts that device (nosuid,nodev) into the job container.
 * Release: remove the volume, detach the loop device; the kernel frees the blocks.
 * After a crash, the reaper finds volumes by label and loop devices by backing-file path.
 *
 * Making one costs a volume create in the engine plus two tool runs, so a small pool of formatted
 * workspaces per size is kept ready off the job's critical path, and a released workspace is
 * formatted afresh in place and goes back to the pool (the volume and loop device are kept);
 * `take` falls back to making one on demand when the pool is empty.
 */
import { mkdirSync, readFileSync, openSync, ftruncateSync, closeSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type Docker from 'dockerode';
import { run } from './exec.js';
import { ToolShell } from './tool-shell.js';
import { LABEL_CREATED, LABEL_JOB, LABEL_KIND, LABEL_LOOP, LABEL_OWNER } from './labels.js';

export interface Workspace {
  volume: string;
  loopDevice: string;
  bytes: number;
}

export interface WorkspaceManagerOptions {
  docker: Docker;
  stateDir: string;
  owner: string;
  /** Host uid/gid that owns the filesystem root: the job user as the engine maps it. */
  hostUid: number;
  hostGid: number;
  /** Formatted workspaces kept ready per size; 0 turns the pool off. */
  poolSize?: number;
}

export const WORKSPACE_VOLUME_PREFIX = 'airlock-ws-';
export const WORKSPACE_POOL_JOB = 'workspace-pool';

export class WorkspaceManager {
  private readonly dir: string;
  private readonly pools = new Map<number, Promise<Workspace>[]>();
  /** Workspaces taken and not yet released, per size: they are expected back through release(). */
  private readonly outstanding = new Map<number, number>();
  private readonly poolSize: number;
  private closed = false;
  private readonly tools = new ToolShell();

  constructor(private readonly opts: WorkspaceManagerOptions) {
    this.poolSize = opts.poolSize ?? 0;
    this.dir = join(opts.stateDir, 'workspaces');
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
  }

  /** A formatted, empty workspace of `bytes`, from the pool when one is ready. */
  async take(bytes: number): Promise<Workspace> {
    const pool = this.poolFor(bytes);
    const ready = pool.shift();
    this.outstanding.set(bytes, (this.outstanding.get(bytes) ?? 0) + 1);
    this.refill(bytes);
    if (ready) {
      try {
        return await ready;
      } catch {
        // a pooled one failed to format: make one now, and let that error surface if it recurs
      }
    }
    return this.create(bytes);
  }

  private poolFor(bytes: number): Promise<Workspace>[] {
    let pool = this.pools.get(bytes);
    if (!pool) this.pools.set(bytes, (pool = []));
    return pool;
  }

  /** Top the pool up, counting workspaces in use as ones that will come back through recycle. */
  private refill(bytes: number): void {
    const pool = this.poolFor(bytes);
    while (!this.closed && pool.length + (this.outstanding.get(bytes) ?? 0) < this.poolSize) {
      const p = this.create(bytes);
      p.catch(() => undefined); // surfaced to whoever takes it
      pool.push(p);
    }
  }

  /**
   * Give a workspace back after its container is gone. While the pool has room it is formatted
   * afresh in place (mkfs discards every block first, so nothing of the last job survives, and
   * mkfs refuses a device that is still mounted); otherwise it is destroyed.
   */
  async release(ws: Workspace): Promise<void> {
    const pool = this.poolFor(ws.bytes);
    this.outstanding.set(ws.bytes, Math.max(0, (this.outstanding.get(ws.bytes) ?? 0) - 1));
    if (this.closed || pool.length >= this.poolSize) return this.destroy(ws);
    const again = this.format(ws.loopDevice, true).then(
      () => ws,
      async (e: unknown) => {
        await this.destroy(ws).catch(() => undefined);
        throw e;
      },
    );
    again.catch(() => undefined);
    pool.push(again);
  }

  private format(target: string, discard: boolean): Promise<string> {
    return this.tools.run('mkfs.ext4', [
      '-q', '-F', '-m', '0', '-O', '^has_journal',
      '-E', `lazy_itable_init=1,${discard ? 'discard' : 'nodiscard'},root_owner=${this.opts.hostUid}:${this.opts.hostGid}`,
      target,
    ]);
  }

  async create(bytes: number): Promise<Workspace> {
    const name = `${WORKSPACE_VOLUME_PREFIX}${randomBytes(8).toString('hex')}`;
    const file = join(this.dir, `${name}.img`);
    const fd = openSync(file, 'wx', 0o600);
    let loopDevice: string | undefined;
    try {
      ftruncateSync(fd, bytes);
      closeSync(fd);
      await this.format(file, false); // a new sparse file reads as zeros: nothing to discard
      loopDevice = (await this.tools.run('losetup', ['--find', '--show', file])).trim();
      unlinkSync(file); // the loop device keeps the inode; nothing is left behind on disk after detach
      await this.opts.docker.createVolume({
        Name: name,
        Driver: 'local',
        DriverOpts: { type: 'ext4', device: loopDevice, o: 'nosuid,nodev,noinit_itable' },
        Labels: {
          // Workspaces are recycled from job to job, so the job label names the pool, not a job.
          [LABEL_JOB]: WORKSPACE_POOL_JOB,
          [LABEL_OWNER]: this.opts.owner,
          [LABEL_KIND]: 'workspace',
          [LABEL_LOOP]: loopDevice,
          [LABEL_CREATED]: String(Date.now()),
        },
      });
      return { volume: name, loopDevice, bytes };
    } catch (e) {
      try { closeSync(fd); } catch { /* already closed */ }
      try { unlinkSync(file); } catch { /* already gone */ }
      if (loopDevice) await this.tools.run('losetup', ['-d', loopDevice]).catch(() => undefined);
      throw e;
    }
  }

  /** Remove the volume and free the loop device. Idempotent. */
  async destroy(ws: Workspace): Promise<void> {
    await removeVolumeQuietly(this.opts.docker, ws.volume);
    await detachLoop(ws.loopDevice, ws.volume, this.tools);
  }

  /** Release every pooled workspace. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.pools.values()].flat();
    this.pools.clear();
    await Promise.all(all.map(async (p) => this.destroy(await p).catch(() => undefined)));
    this.tools.close();
  }

  get workspacesDir(): string {
    return this.dir;
  }
}

export async function removeVolumeQuietly(docker: Docker, name: string): Promise<void> {
  try {
    await docker.getVolume(name).remove({ force: true });
  } catch (e) {
    if ((e as { statusCode?: number }).statusCode !== 404) throw e;
  }
}

/** The file behind a loop device ("" when the device is free), from sysfs. */
export function loopBackingFile(device: string): string {
  const m = /^\/dev\/loop(\d+)$/.exec(device);
  if (!m) return '';
  try {
    return readFileSync(`/sys/block/loop${m[1]}/loop/backing_file`, 'utf8').trim();
  } catch {
    return '';
  }
}

/**
 * Detach a loop device, but only while it still holds this volume's file: device numbers are
 * reused, and a late or repeated release must never free another job's workspace.
 */
export async function detachLoop(device: string, volume: string, tools?: ToolShell): Promise<void> {
  if (!loopBackingFile(device).includes(`/${volume}.img`)) return;
  await (tools ? tools.run('losetup', ['-d', device]) : run('losetup', ['-d', device])).catch((e: Error) => {
    if (!/No such device|not a block device|No such device or address/i.test(e.message)) throw e;
  });
}
