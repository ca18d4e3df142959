/**
 * Workspaces: each job's writable /workspace is its own small ext4 filesystem, so a job that fills
 * it gets ENOSPC at exactly its quota and cannot touch the host's disk or another job's files.
 *
 * Life of one workspace:
 *   sparse file in <stateDir>/workspaces/<owner token>/ → mkfs.ext4 (no journal; root owned by the
 *   job user's host uid) → loop device → the file is unlinked (the loop device holds it) → a Docker
 *   volume of the local driver mounts that device (nosuid,nodev) into the job container.
 * The owner token in the backing file's path lets a reaper tell whose loop device it is.
 *
 * Making one costs a volume create in the engine plus two tool runs, so a small pool of formatted
 * workspaces of the policy's default size is kept ready off the job's critical path, and a released
 * one is formatted afresh in place and goes back to the pool (mkfs discards every block first, so
 * nothing of the last job survives, and refuses a device that is still mounted). Other sizes are
 * made on demand and destroyed after use, so odd sizes cannot grow the pool.
 *
 * Before its job's container starts, a workspace can be mounted on the host for a moment to put
 * the job's source into it (withMounted): <owner dir>/<volume>.mnt, nosuid,nodev,noexec,nosymfollow,
 * unmounted and removed again before anything else happens to the workspace. A runner that dies
 * in between leaves that mount behind; the reaper unmounts it (see reaper.ts).
 */
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, unlinkSync } from 'node:fs';
import { mkdir, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type Docker from 'dockerode';
import { run } from './exec.js';
import { LABEL_CREATED, LABEL_JOB, LABEL_KIND, LABEL_LOOP, LABEL_OWNER } from './labels.js';
import { ownerToken } from './owner.js';
import { ToolShell } from './tool-shell.js';
import { isNotFound } from '../docker/client.js';
import { ExecutorFailedError } from '../errors.js';

/** withMounted could not mount the workspace: `fn` did not run and nothing was written. */
export class MountFailedError extends ExecutorFailedError {}

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
  /** Formatted workspaces of `poolBytes` kept ready; 0 turns the pool off. */
  poolSize?: number;
  /** The one size that is pooled (the policy's default workspace size). */
  poolBytes?: number;
}

export const WORKSPACE_VOLUME_PREFIX = 'airlock-ws-';
export const WORKSPACE_POOL_JOB = 'workspace-pool';
/** Suffix of a workspace's host mountpoint while its source is written: <owner dir>/<volume>.mnt. */
export const WORKSPACE_MOUNT_SUFFIX = '.mnt';
/**
 * Options of the host mount used to fill a workspace. nosymfollow: the kernel follows no symlink
 * on it, so nothing the source creates can redirect a later write; nobarrier: unmounting does not
 * flush the loop device's backing file to disk (the workspace does not outlive a crash anyway).
 */
const FILL_MOUNT_OPTIONS = 'nosuid,nodev,noexec,nosymfollow,noatime,nobarrier,noinit_itable';

export class WorkspaceManager {
  /** The workspaces directory; each owner's backing files live in a subdirectory named by its token. */
  readonly workspacesDir: string;
  private readonly ownDir: string;
  private readonly pool: Promise<Workspace>[] = [];
  /** Pooled workspaces taken and not yet released: they are expected back through release(). */
  private outstanding = 0;
  /** Every volume this manager holds (pooled, in use, being recycled): the reaper leaves these alone. */
  private readonly held = new Set<string>();
  private readonly poolSize: number;
  private closed = false;
  private readonly tools = new ToolShell();
  /** mount/umount for withMounted, apart from mkfs runs so that a job never queues behind a format. */
  private readonly mountTools = new ToolShell();
  /** Volumes whose filesystem may still be mounted somewhere (an unmount failed): never pooled again. */
  private readonly spoiled = new Set<string>();

  constructor(private readonly opts: WorkspaceManagerOptions) {
    this.poolSize = opts.poolBytes ? (opts.poolSize ?? 0) : 0;
    this.workspacesDir = join(opts.stateDir, 'workspaces');
    this.ownDir = join(this.workspacesDir, ownerToken(opts.owner));
    mkdirSync(this.ownDir, { recursive: true, mode: 0o700 });
  }

  /** Names of the volumes this manager holds right now. */
  heldVolumes(): ReadonlySet<string> {
    return this.held;
  }

  /** A formatted, empty workspace of `bytes`, from the pool when one is ready. */
  async take(bytes: number): Promise<Workspace> {
    if (bytes !== this.opts.poolBytes || this.poolSize === 0) return this.create(bytes);
    const ready = this.pool.shift();
    this.outstanding++;
    this.refill();
    try {
      if (ready) {
        try {
          return await ready;
        } catch {
          // a pooled one failed to format: make one now, and let that error surface if it recurs
        }
      }
      return await this.create(bytes);
    } catch (e) {
      this.outstanding--;
      throw e;
    }
  }

  /** Top the pool up, counting workspaces in use as ones that will come back through release(). */
  private refill(): void {
    while (!this.closed && this.pool.length + this.outstanding < this.poolSize) {
      const p = this.create(this.opts.poolBytes as number);
      p.catch(() => undefined); // surfaced to whoever takes it
      this.pool.push(p);
    }
  }

  /**
   * Give a workspace back after its container is gone. A pooled-size one is formatted afresh in
   * place while the pool has room; anything else is destroyed.
   */
  async release(ws: Workspace): Promise<void> {
    const pooled = ws.bytes === this.opts.poolBytes && this.poolSize > 0;
    if (pooled) this.outstanding = Math.max(0, this.outstanding - 1);
    if (!pooled || this.closed || this.pool.length >= this.poolSize || this.spoiled.has(ws.volume) || !this.backs(ws)) return this.destroy(ws);
    const again = this.format(ws.loopDevice, true).then(
      () => ws,
      async (e: unknown) => {
        await this.destroy(ws).catch(() => undefined);
        throw e;
      },
    );
    again.catch(() => undefined);
    this.pool.push(again);
  }

  /**
   * Run `fn` with the workspace's filesystem mounted at a private host directory, then unmount it.
   * Only while the workspace is held by the caller and no container using it has started (the
   * engine mounts the volume at container start, not at create). The mountpoint (0700, under the
   * 0700 owner directory) is removed in every case. If unmounting fails, the mount is detached
   * lazily, the workspace is never pooled again, and this throws.
   */
  async withMounted<T>(ws: Workspace, fn: (root: string) => Promise<T>): Promise<T> {
    // The device must still be this workspace's: a reused loop number would be another job's disk.
    if (!this.backs(ws)) throw new ExecutorFailedError(`workspace ${ws.volume}: ${ws.loopDevice} no longer backs it`);
    const dir = join(this.ownDir, `${ws.volume}${WORKSPACE_MOUNT_SUFFIX}`);
    await mkdir(dir, { mode: 0o700 });
    try {
      await this.mountTools.run('mount', ['-t', 'ext4', '-o', FILL_MOUNT_OPTIONS, ws.loopDevice, dir]).catch(async (e: Error) => {
        // A mount that timed out may still land: never pool this workspace again, and try to undo it.
        this.spoiled.add(ws.volume);
        await this.mountTools.run('umount', ['-l', dir]).catch(() => undefined);
        throw new MountFailedError(`workspace ${ws.volume}: cannot mount it to write the source: ${e.message}`, { cause: e });
      });
      let result: T;
      try {
        result = await fn(dir);
      } catch (e) {
        await this.unmount(ws, dir).catch(() => undefined); // fn's error is the one to report
        throw e;
      }
      await this.unmount(ws, dir);
      return result;
    } finally {
      await rmdir(dir).catch(() => undefined); // still mounted only if even the lazy unmount failed: the reaper retries
    }
  }

  private async unmount(ws: Workspace, dir: string): Promise<void> {
    try {
      await this.mountTools.run('umount', [dir]);
    } catch (e) {
      this.spoiled.add(ws.volume);
      await this.mountTools.run('umount', ['-l', dir]).catch(() => undefined);
      throw new ExecutorFailedError(`workspace ${ws.volume}: cannot unmount it after writing the source: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Still this workspace's device? Device numbers are reused once detached. */
  private backs(ws: Workspace): boolean {
    return loopBackingFile(ws.loopDevice).startsWith(join(this.ownDir, `${ws.volume}.img`));
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
    const file = join(this.ownDir, `${name}.img`);
    this.held.add(name);
    let loopDevice: string | undefined;
    try {
      const fd = openSync(file, 'wx', 0o600);
      try {
        ftruncateSync(fd, bytes);
      } finally {
        closeSync(fd);
      }
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
      try {
        unlinkSync(file);
      } catch {
        /* already gone */
      }
      if (loopDevice) await detachLoop(loopDevice, name, this.tools).catch(() => undefined);
      this.held.delete(name);
      throw e;
    }
  }

  /** Remove the volume and free the loop device. Idempotent. */
  async destroy(ws: Workspace): Promise<void> {
    await removeVolumeQuietly(this.opts.docker, ws.volume);
    await detachLoop(ws.loopDevice, ws.volume, this.tools);
    this.held.delete(ws.volume);
    this.spoiled.delete(ws.volume);
  }

  /** Destroy every pooled workspace and stop the tool shell. */
  async close(): Promise<void> {
    this.closed = true;
    const all = this.pool.splice(0);
    await Promise.all(all.map((p) => p.then((ws) => this.destroy(ws)).catch(() => undefined)));
    this.tools.close();
    this.mountTools.close();
  }
}

export async function removeVolumeQuietly(docker: Docker, name: string): Promise<void> {
  try {
    await docker.getVolume(name).remove({ force: true });
  } catch (e) {
    if (!isNotFound(e)) throw e;
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
