/**
 * The job cgroups' bookkeeping (shared/runner/oom-cgroups.ts) with a temp directory standing in for
 * cgroupfs: what is made where, what the engine's own directories block, and what the reaper takes.
 * The kernel side (the eventfd, the limits) is test/shared/runner/oom.docker.test.ts.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CHILD_HEADROOM, engineRulesOut, JOBS_CGROUP, OomCgroups, parseCgroupMounts, reapJobCgroups, type OomWatch } from '#shared/runner/oom-cgroups.js';
import { ownerToken } from '#shared/runner/owner.js';
import { tempDir } from '../../support/docker.js';

const MiB = 1024 * 1024;

/** cgroupfs's rmdir: a cgroup's files go with it, a cgroup with a child cgroup is busy. */
async function cgroupRmdir(path: string): Promise<void> {
  if (!existsSync(path)) throw Object.assign(new Error(`ENOENT ${path}`), { code: 'ENOENT' });
  if (readdirSync(path, { withFileTypes: true }).some((d) => d.isDirectory())) throw Object.assign(new Error(`EBUSY ${path}`), { code: 'EBUSY' });
  rmSync(path, { recursive: true });
}

let root: string;
let mounts: { memory: string; all: string[] };
let records: string;
let watched: string[];
let counts: number[];
const startWatch = async (dir: string): Promise<OomWatch> => {
  watched.push(dir);
  const n = counts.shift() ?? 0;
  return { count: async () => n, stop: () => undefined };
};
const make = (owner: string) => OomCgroups.create({ mounts, recordsDir: records, owner, startWatch, rmdir: cgroupRmdir });
/** The directories (cgroups) under a directory. */
const dirs = (path: string) => (existsSync(path) ? readdirSync(path, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort() : []);

beforeEach(() => {
  root = tempDir('airlock-cgroupfs-');
  mounts = { memory: join(root, 'memory'), all: ['memory', 'cpu', 'pids', 'unified'].map((h) => join(root, h)) };
  for (const h of mounts.all) mkdirSync(h);
  records = join(root, 'state', 'cgroups');
  watched = [];
  counts = [];
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

describe('where the watch can work', () => {
  it('finds the v1 memory hierarchy and every hierarchy in /proc/self/mounts, none on a v2-only host', () => {
    const hybrid = [
      'tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0',
      'cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0',
      'cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0',
      'cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0',
      'cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0',
      '/dev/vda / ext4 rw 0 0',
    ].join('\n');
    expect(parseCgroupMounts(hybrid)).toEqual({
      memory: '/sys/fs/cgroup/memory',
      all: ['/sys/fs/cgroup/cpu', '/sys/fs/cgroup/memory', '/sys/fs/cgroup/systemd', '/sys/fs/cgroup/unified'],
    });
    expect(parseCgroupMounts('cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate,memory_recursiveprot 0 0\n')).toEqual({ all: ['/sys/fs/cgroup'] });
  });

  it('the engine rules it out unless it runs cgroup v1 with the cgroupfs driver', () => {
    expect(engineRulesOut({ CgroupDriver: 'cgroupfs', CgroupVersion: '1' })).toBeUndefined();
    expect(engineRulesOut({ CgroupDriver: 'cgroupfs', CgroupVersion: '2' })).toBe('the engine uses cgroup v2');
    expect(engineRulesOut({ CgroupDriver: 'systemd', CgroupVersion: '1' })).toBe("the engine's cgroup driver is systemd");
    expect(engineRulesOut({})).toBe("the engine's cgroup driver is not reported");
  });
});

describe('a runner and its jobs', () => {
  it('records its directory, makes it, and watches it once to prove it can', async () => {
    const cg = await make('owner-a');
    expect(cg.runnerName).toMatch(/^[0-9a-f]{16}$/);
    expect(readFileSync(join(records, ownerToken('owner-a')), 'utf8')).toBe(`${cg.runnerName}\n`);
    expect(dirs(join(mounts.memory, JOBS_CGROUP))).toEqual([cg.runnerName]);
    expect(watched).toEqual([join(mounts.memory, JOBS_CGROUP, cg.runnerName)]);
  });

  it('a job gets a directory of random hex with its limit, the container a limit above it; remove() takes it from every hierarchy', async () => {
    const cg = await make('owner-a');
    const job = await cg.open(64 * MiB);
    expect(job.parent).toMatch(new RegExp(`^/${JOBS_CGROUP}/${cg.runnerName}/[0-9a-f]{16}$`));
    expect(job.containerMemory).toBe(64 * MiB + CHILD_HEADROOM);
    const dir = join(root, 'memory', job.parent);
    expect(readFileSync(join(dir, 'memory.limit_in_bytes'), 'utf8')).toBe(String(64 * MiB));
    expect(readFileSync(join(dir, 'memory.swappiness'), 'utf8')).toBe('0');
    expect(watched.at(-1)).toBe(dir);
    expect([...cg.heldNames()]).toEqual([job.parent.split('/').at(-1)]);
    // The engine makes the job's path in every hierarchy, and the container's cgroup inside.
    for (const h of mounts.all) mkdirSync(join(h, job.parent, 'container-id'), { recursive: true });
    await job.remove(); // the container is still there: its directories stay
    expect(mounts.all.filter((h) => existsSync(join(h, job.parent)))).toEqual(mounts.all);
    for (const h of mounts.all) rmSync(join(h, job.parent, 'container-id'), { recursive: true });
    await job.remove();
    expect(mounts.all.filter((h) => existsSync(join(h, job.parent)))).toEqual([]);
    expect(cg.heldNames().size).toBe(0);
    await cg.close();
    expect(mounts.all.flatMap((h) => dirs(join(h, JOBS_CGROUP)))).toEqual([]);
    expect(existsSync(join(records, ownerToken('owner-a')))).toBe(false);
  });

  it("finish() gives the watch's count, and whether the job was charged to the directory at all", async () => {
    const cg = await make('owner-a');
    counts = [2, 0];
    const oomed = await cg.open(64 * MiB);
    writeFileSync(join(root, 'memory', oomed.parent, 'memory.max_usage_in_bytes'), `${64 * MiB}\n`);
    expect(await oomed.finish()).toEqual({ oomEvents: 2, charged: true });
    const elsewhere = await cg.open(64 * MiB); // the engine put the container somewhere else: nothing charged here
    writeFileSync(join(root, 'memory', elsewhere.parent, 'memory.max_usage_in_bytes'), '0\n');
    expect(await elsewhere.finish()).toEqual({ oomEvents: 0, charged: false });
  });

  it('a runner whose watch cannot start leaves neither directory nor record', async () => {
    await expect(
      OomCgroups.create({ mounts, recordsDir: records, owner: 'owner-a', startWatch: () => Promise.reject(new Error('no perl')), rmdir: cgroupRmdir }),
    ).rejects.toThrow('no perl');
    expect(dirs(join(mounts.memory, JOBS_CGROUP))).toEqual([]);
    expect(readdirSync(records)).toEqual([]);
  });

  it("close() keeps the runner's directory and record while a job's is still there", async () => {
    const cg = await make('owner-a');
    const job = await cg.open(64 * MiB);
    await expect(cg.close()).rejects.toThrow(/cannot remove/);
    expect(existsSync(join(records, ownerToken('owner-a')))).toBe(true);
    await job.remove();
    await cg.close();
    expect(readdirSync(records)).toEqual([]);
  });
});

describe('the reaper', () => {
  it("removes a dead runner's job directories in every hierarchy, then its own and its record; a live runner's stay", async () => {
    const dead = await make('dead-owner');
    const live = await make('live-owner');
    const deadJobs = [await dead.open(64 * MiB), await dead.open(64 * MiB)];
    const liveJob = await live.open(64 * MiB);
    for (const j of [...deadJobs, liveJob]) for (const h of mounts.all) mkdirSync(join(h, j.parent), { recursive: true });
    // One of the dead runner's containers is still being removed by the engine.
    mkdirSync(join(root, 'cpu', deadJobs[1]!.parent, 'container-id'));
    const state = (o: string) => (o === 'dead-owner' ? 'dead' : 'alive');
    const first = await reapJobCgroups({ mounts, recordsDir: records, ownerState: state, rmdir: cgroupRmdir });
    expect(first).toEqual([deadJobs[0]!.parent.split('/').slice(2).join('/')]);
    expect(existsSync(join(records, ownerToken('dead-owner')))).toBe(true); // the busy one is left for the next pass
    rmSync(join(root, 'cpu', deadJobs[1]!.parent, 'container-id'), { recursive: true });
    const second = await reapJobCgroups({ mounts, recordsDir: records, ownerState: state, rmdir: cgroupRmdir });
    expect(second).toEqual([deadJobs[1]!.parent.split('/').slice(2).join('/'), dead.runnerName]);
    expect(mounts.all.flatMap((h) => dirs(join(h, JOBS_CGROUP)))).toEqual(mounts.all.map(() => live.runnerName));
    expect(mounts.all.every((h) => existsSync(join(h, liveJob.parent)))).toBe(true);
    expect(readdirSync(records)).toEqual([ownerToken('live-owner')]);
  });

  it("takes the calling runner's job directories it no longer holds, never the ones it holds or its own", async () => {
    const self = await make('self-owner');
    const held = await self.open(64 * MiB);
    const leaked = await self.open(64 * MiB);
    const leakedName = leaked.parent.split('/').at(-1)!;
    const heldNames = new Set([held.parent.split('/').at(-1)!]);
    const removed = await reapJobCgroups({ mounts, recordsDir: records, ownerState: () => 'alive', self: { owner: 'self-owner', held: () => heldNames }, rmdir: cgroupRmdir });
    expect(removed).toEqual([`${self.runnerName}/${leakedName}`]);
    expect(existsSync(join(root, 'memory', held.parent))).toBe(true);
    expect(existsSync(join(records, ownerToken('self-owner')))).toBe(true);
    // With no job left, its own directory still stays: the runner is alive and makes more.
    await held.remove();
    expect(await reapJobCgroups({ mounts, recordsDir: records, ownerState: () => 'alive', self: { owner: 'self-owner', held: () => new Set() }, rmdir: cgroupRmdir })).toEqual([]);
    expect(existsSync(join(root, 'memory', JOBS_CGROUP, self.runnerName))).toBe(true);
  });

  it('touches only names of its own making: a record naming anything but 16 hex digits is dropped, other directories stay', async () => {
    mkdirSync(records, { recursive: true });
    writeFileSync(join(records, ownerToken('dead-1')), '../../etc\n');
    mkdirSync(join(root, 'memory', JOBS_CGROUP, '0123456789abcdef', 'not-a-job'), { recursive: true });
    mkdirSync(join(root, 'etc')); // where memory/airlock-jobs/../../etc leads
    writeFileSync(join(records, ownerToken('dead-2')), '0123456789abcdef\n');
    const removed = await reapJobCgroups({ mounts, recordsDir: records, ownerState: () => 'dead', rmdir: cgroupRmdir });
    expect(removed).toEqual([]); // 'not-a-job' blocks the runner's directory, and is not a job's
    expect(existsSync(join(root, 'etc'))).toBe(true);
    expect(existsSync(join(root, 'memory', JOBS_CGROUP, '0123456789abcdef', 'not-a-job'))).toBe(true);
    expect(readdirSync(records)).toEqual([ownerToken('dead-2')]);
  });
});
