/**
 * An OOM kill is reported as one every time, also when the job's only process is the one killed
 * and the container ends at once: the engine's own OOM event can be lost then (oom-cgroups.ts), so
 * the runner watches the job's parent cgroup itself. Several hogs run at once, for load, as the two
 * demo tests do.
 */
import { existsSync, mkdirSync, readdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import { CHILD_HEADROOM, JOBS_CGROUP, localCgroupMounts, OomCgroups, PerlWatcher } from '#shared/runner/oom-cgroups.js';
import { BUSYBOX, expectNothingLeft, makeRunner, spec, STATE_DIR } from '../../support/docker.js';

let docker: Docker;
let runner: JobRunner;
/** This machine: cgroup v1 with a memory hierarchy, the engine on the cgroupfs driver (docs/runner.md). */
const V1 = existsSync('/sys/fs/cgroup/memory/memory.oom_control');

beforeAll(async () => {
  ({ docker, runner } = await makeRunner());
});
afterEach(async () => {
  await expectNothingLeft(docker, runner.owner, runner);
});
afterAll(async () => {
  await runner?.close();
});

const AT_ONCE = 12;
const ROUNDS = 5;
const HOG = ['dd', 'if=/dev/zero', 'of=/dev/null', 'bs=256M', 'count=1'];

describe('OOM kills', () => {
  it(`a hog that is the job's only process is reported OOM-killed every time (${AT_ONCE} at once, ${ROUNDS} rounds)`, async () => {
    if (V1) expect(runner.oomWatch).toBe('cgroup');
    const seen: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const results = await Promise.all(
        Array.from({ length: AT_ONCE }, () => runner.run(spec({ image: BUSYBOX, command: HOG, limits: { memory: '64m', timeout: '60s' } }))),
      );
      seen.push(...results.map((r) => `${r.exitCode} ${r.reason}`));
    }
    expect(seen).toEqual(Array.from({ length: AT_ONCE * ROUNDS }, () => '137 killed: exceeded memory limit of 64 MiB'));
    await runner.drain();
    // Each job's cgroup went with its container, in every hierarchy. Only this runner's: other test
    // files' runners run jobs under the same parent meanwhile.
    for (const root of localCgroupMounts()?.all ?? []) {
      const dir = join(root, JOBS_CGROUP);
      for (const r of existsSync(dir) ? readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory() && d.name === runner.oomCgroupsName) : []) {
        expect(readdirSync(join(dir, r.name), { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name)).toEqual([]);
      }
    }
  });

  it('where the watch is off, jobs run as before: the engine\'s limit and parent cgroup, nothing of the runner\'s in cgroupfs', async () => {
    const off = await JobRunner.create({ docker: createDocker(), policy: loadJobPolicy(), stateDir: STATE_DIR, workspacePool: 0, oomCgroups: false, reapEveryMs: 0 });
    try {
      expect(off.oomWatch).toBe('engine');
      const r = await off.run(spec({ image: BUSYBOX, command: ['sh', '-c', 'grep memory /proc/self/cgroup; cat /sys/fs/cgroup/memory/memory.limit_in_bytes'], limits: { memory: '64m', timeout: '60s' } }));
      expect(r.passed).toBe(true);
      if (V1) expect(r.log).toMatch(new RegExp(`^\\d+:memory:/docker/[0-9a-f]{64}\n${64 * 1024 * 1024}\n$`));
      // And with it on, the job is in a parent of the runner's, with the container's limit above the job's.
      const on = await runner.run(spec({ image: BUSYBOX, command: ['sh', '-c', 'grep memory /proc/self/cgroup; cat /sys/fs/cgroup/memory/memory.limit_in_bytes'], limits: { memory: '64m', timeout: '60s' } }));
      if (V1) expect(on.log).toMatch(new RegExp(`^\\d+:memory:/${JOBS_CGROUP}/[0-9a-f]{16}/[0-9a-f]{16}/[0-9a-f]{64}\n${64 * 1024 * 1024 + CHILD_HEADROOM}\n$`));
    } finally {
      await off.close();
    }
    await expectNothingLeft(docker, off.owner, off);
  });

  it('a job that stays under its limit is not reported OOM-killed', async () => {
    const r = await runner.run(spec({ image: BUSYBOX, command: ['dd', 'if=/dev/zero', 'of=/dev/null', 'bs=16M', 'count=1'], limits: { memory: '64m', timeout: '60s' } }));
    expect([r.exitCode, r.oomKilled, r.reason]).toEqual([0, false, 'succeeded']);
  });
});

describe.runIf(V1)('the parent cgroup watch, without the engine', () => {
  it("counts the kernel's OOM in a container under it, and none where there was none", async () => {
    const mounts = localCgroupMounts()!;
    const cgroups = await OomCgroups.create({ mounts, recordsDir: join(STATE_DIR, 'cgroups'), owner: `${runner.owner}-watch` });
    const runIn = async (cmd: string[]) => {
      const cg = await cgroups.open(64 * 1024 * 1024);
      const c = await docker.createContainer({
        Image: BUSYBOX, Cmd: cmd, NetworkDisabled: true,
        HostConfig: { NetworkMode: 'none', CgroupParent: cg.parent, Memory: cg.containerMemory, MemorySwap: cg.containerMemory, LogConfig: { Type: 'none', Config: {} } },
      });
      try {
        await c.start();
        const { StatusCode } = (await c.wait()) as { StatusCode: number };
        return { StatusCode, ...(await cg.finish()) };
      } finally {
        await c.remove({ force: true });
        await cg.remove();
      }
    };
    const hog = await runIn(HOG);
    expect([hog.StatusCode, hog.charged, hog.oomEvents > 0]).toEqual([137, true, true]);
    expect(await runIn(['dd', 'if=/dev/zero', 'of=/dev/null', 'bs=16M', 'count=1'])).toEqual({ StatusCode: 0, charged: true, oomEvents: 0 });
    await cgroups.close();
    for (const root of mounts.all) expect(existsSync(join(root, JOBS_CGROUP, cgroups.runnerName))).toBe(false);
  });

  it('one holder serves every watch; a dir that is no cgroup fails alone; its death fails the watches it held, and the next watch starts a new holder', async () => {
    const base = join(localCgroupMounts()!.memory, JOBS_CGROUP, `test-watcher-${process.pid}`);
    const dirs = [0, 1, 2, 3].map((i) => join(base, `c${i}`));
    for (const d of dirs) mkdirSync(d, { recursive: true });
    const w = new PerlWatcher();
    try {
      const [a, b, c] = await Promise.all(dirs.slice(0, 3).map((d) => w.start(d)));
      const holder = w.pid;
      await expect(w.start(join(base, 'not-a-cgroup-dir'))).rejects.toThrow(/memory\.oom_control: No such file/);
      expect(w.pid).toBe(holder);
      expect(await a!.count()).toBe(0);
      await expect(a!.count()).rejects.toThrow(/already counted/);
      process.kill(holder!, 'SIGKILL');
      await expect(b!.count()).rejects.toThrow(/OOM watch ended/);
      c!.stop();
      const d = await w.start(dirs[3]!);
      expect(w.pid).not.toBe(holder);
      expect(await d.count()).toBe(0);
    } finally {
      w.close();
      for (const d of [...dirs, base]) rmdirSync(d);
    }
  });
});
