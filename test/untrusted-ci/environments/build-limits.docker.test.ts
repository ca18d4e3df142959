/**
 * Environment builds under a job's envelope (real engine): a RUN step is bounded in processes,
 * disk, memory and capabilities, each limit ending the build with a plain reason while the host
 * stays fine; builds hold executor slots; and nothing of a build is left behind, also after the
 * process running it was killed.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { EnvironmentBuildFailedError, RuntimeUnavailableError } from '#shared/errors.js';
import { BuildSandboxes, CGROUP_PREFIX } from '../../../untrusted-ci/environments/build-sandbox.js';
import { Slots } from '../../../untrusted-ci/scheduler/slots.js';
import { STATE_DIR } from '../../support/docker.js';
import { cleanup, input, makeRig, testPolicy, type Rig } from './env-support.js';

const PREFIX = `envl-${process.pid}`;
const MiB = 1024 ** 2;
const rigs: Rig[] = [];
afterAll(async () => {
  for (const r of rigs) await cleanup(r, PREFIX);
});

/**
 * A rig whose builder's sandboxes are recorded (by directory, to check that each is gone
 * afterwards; with the size of their filesystem: what the build can take of the host's disk).
 */
function rigWith(build: NonNullable<Parameters<typeof testPolicy>[0]>['build'], builderOpts: Parameters<typeof makeRig>[2] = {}): Rig & { dirs: string[]; fsBytes: number[] } {
  const rig = makeRig(testPolicy({ build }), {}, builderOpts);
  rigs.push(rig);
  const dirs: string[] = [];
  const fsBytes: number[] = [];
  const sandboxes = (rig.builder as { sandboxes?: BuildSandboxes }).sandboxes; // absent before sandboxes existed
  if (sandboxes) {
    const start = sandboxes.start.bind(sandboxes);
    vi.spyOn(sandboxes, 'start').mockImplementation(async (...a) => {
      const sb = await start(...a);
      dirs.push(sb.dir);
      const s = statfsSync(sb.mountpoint);
      fsBytes.push(Number(s.blocks) * Number(s.bsize));
      return sb;
    });
  }
  return Object.assign(rig, { dirs, fsBytes });
}

/** Nothing of the sandbox in `dir` is left: directory, processes, mounts, loop device, cgroup. */
function expectGone(dir: string): void {
  const id = dir.slice(dir.lastIndexOf('/') + 1);
  expect(existsSync(dir), dir).toBe(false);
  const procs = readdirSync('/proc').filter((p) => /^\d+$/.test(p) && (read(`/proc/${p}/cmdline`) ?? '').includes(dir));
  expect(procs, 'processes of the sandbox').toEqual([]);
  expect((read('/proc/self/mountinfo') ?? '').includes(dir), 'mounts under the sandbox').toBe(false);
  const loops = readdirSync('/sys/block').filter((n) => (read(`/sys/block/${n}/loop/backing_file`) ?? '').includes(dir));
  expect(loops, 'loop devices of the sandbox').toEqual([]);
  const cgroups = (read('/proc/self/mounts') ?? '')
    .split('\n')
    .filter((l) => / cgroup2? /.test(l))
    .map((l) => join(l.split(' ')[1] as string, `${CGROUP_PREFIX}${id}`))
    .filter((p) => existsSync(p));
  expect(cgroups, 'cgroups of the sandbox').toEqual([]);
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** Free bytes of the filesystems the host's engine and state live on. */
function hostFree(): number {
  const paths = [STATE_DIR, '/var/lib/docker'].filter((p) => existsSync(p));
  const seen = new Map<string, number>();
  for (const p of paths) {
    const s = statfsSync(p);
    seen.set(`${s.type}:${s.blocks}:${s.files}`, Number(s.bavail) * Number(s.bsize));
  }
  return Math.min(...seen.values());
}

/** The host still forks: 50 processes at once, each exiting 0. */
async function expectHostForks(): Promise<void> {
  const codes = await Promise.all(
    Array.from({ length: 50 }, () => new Promise<number | null>((resolve) => spawn('true').on('exit', resolve).on('error', () => resolve(-1)))),
  );
  expect(codes.every((c) => c === 0)).toBe(true);
}

const fail = async (rig: Rig, project: string, dockerfile: string): Promise<Error> => {
  const e = await rig.builder.ensure(await input(rig, project, dockerfile)).catch((x: unknown) => x);
  expect(e).toBeInstanceOf(EnvironmentBuildFailedError);
  return e as Error;
};
const firstLine = (e: Error): string => e.message.split('\n')[0] as string;

describe('environment builds are bounded like jobs', () => {
  it('a fork bomb in a RUN step ends the build at the process limit, at once, and the host still forks', async () => {
    const rig = rigWith({ pids: 64 });
    const t = Date.now();
    // Keeps forking (each refused fork is ignored) and would then sleep for a minute.
    const e = await fail(rig, `${PREFIX}-fork`, 'FROM airlock/base:busybox\nRUN for i in $(seq 1 3000); do (sleep 60 &) 2>/dev/null; done; sleep 60\n');
    expect(firstLine(e)).toBe('the environment build failed: a RUN step exceeded the process limit of 64');
    expect(Date.now() - t).toBeLessThan(15_000);
    await expectHostForks();
    // A step that gives up by itself at the limit (busybox sh exits when it cannot fork) says the same.
    const e2 = await fail(rig, `${PREFIX}-fork`, 'FROM airlock/base:busybox\nRUN i=0; while [ $i -lt 3000 ]; do sleep 60 & i=$((i+1)); done\n');
    expect(firstLine(e2)).toBe('the environment build failed: a RUN step exceeded the process limit of 64');
    await expectHostForks();
    expect(rig.dirs).toHaveLength(2);
    for (const d of rig.dirs) expectGone(d);
  });

  it('a RUN step writing far past the disk limit ends the build, and the host disk is as before', async () => {
    const rig = rigWith({ disk: 256 * MiB });
    const before = hostFree();
    // 500 GiB at once, 3 GiB at once, then 2 GiB written to /tmp: each stops at the build's filesystem.
    const e = await fail(rig, `${PREFIX}-disk`, 'FROM airlock/base:busybox\nRUN fallocate -l 500G /huge; fallocate -l 3G /big; dd if=/dev/zero of=/tmp/fill bs=1M count=2048\n');
    expect(firstLine(e)).toBe('the environment build failed: the build wrote more than 256 MiB (its disk limit)');
    expect(e.message).toMatch(/No space left on device/);
    // While it ran, the build could take at most its filesystem of the host's disk (256 MiB + the
    // 2 MB base + 64 MiB and 3% of slack); afterwards, nothing.
    expect(rig.fsBytes).toHaveLength(1);
    expect(rig.fsBytes[0]).toBeLessThan(350 * MiB);
    expect(before - hostFree()).toBeLessThan(256 * MiB);
    for (const d of rig.dirs) expectGone(d);
  });

  it('many small files stop at the build filesystem too (its inodes)', async () => {
    const rig = rigWith({ disk: 64 * MiB });
    const e = await fail(rig, `${PREFIX}-files`, 'FROM airlock/base:busybox\nRUN mkdir /many && cd /many && i=0; while [ $i -lt 200000 ]; do echo > f$i || exit 1; i=$((i+1)); done\n');
    expect(firstLine(e)).toBe('the environment build failed: the build wrote more than 64 MiB (its disk limit)');
    for (const d of rig.dirs) expectGone(d);
  });

  it('a memory hog in a RUN step is killed at the memory limit and the build says so', async () => {
    const rig = rigWith({ memory: 64 * MiB });
    const e = await fail(rig, `${PREFIX}-mem`, 'FROM airlock/base:busybox\nRUN dd if=/dev/zero of=/dev/null bs=200M count=1\n');
    expect(firstLine(e)).toBe('the environment build failed: a RUN step exceeded the memory limit of 64 MiB');
    for (const d of rig.dirs) expectGone(d);
  });

  it('RUN steps run without the capabilities they do without, with no-new-privileges and no core dumps', async () => {
    const rig = rigWith({});
    const lines: string[] = [];
    const r = await rig.builder.ensure(
      await input(rig, `${PREFIX}-caps`, 'FROM airlock/base:busybox\nRUN grep -E "^(CapEff|NoNewPrivs):" /proc/self/status; echo "core=$(ulimit -c)"\n', {}, { onLog: (l) => lines.push(l) }),
    );
    r.release();
    const capEff = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(lines.join('\n'))?.[1] ?? '0'}`);
    const has = (bit: number): boolean => ((capEff >> BigInt(bit)) & 1n) === 1n;
    // Dropped: NET_BIND_SERVICE 10, NET_RAW 13, MKNOD 27, AUDIT_WRITE 29. Kept: CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, SETGID 6, SETUID 7.
    expect([10, 13, 27, 29].map(has)).toEqual([false, false, false, false]);
    expect([0, 1, 3, 6, 7].map(has)).toEqual([true, true, true, true, true]);
    expect(lines).toContain('NoNewPrivs:\t1');
    expect(lines).toContain('core=0');
    for (const d of rig.dirs) expectGone(d);
  });

  it('under policy runtime runsc, RUN steps run in gVisor, and only on base images that passed the self-test', async () => {
    const rig = rigWith({ runtime: 'runsc' });
    const lines: string[] = [];
    const r = await rig.builder.ensure(await input(rig, `${PREFIX}-gvisor`, 'FROM airlock/base:busybox\nRUN dmesg | grep -q gVisor && echo under-gvisor\n', {}, { onLog: (l) => lines.push(l) }));
    r.release();
    expect(lines).toContain('under-gvisor');
    const compat = JSON.parse(read(join(STATE_DIR, 'runsc-compat.json')) ?? '{}') as Record<string, boolean>;
    const bookworm = (await rig.docker.getImage('airlock/base:bookworm').inspect()).Id;
    if (compat[bookworm] !== true) {
      const e = await rig.builder.ensure(await input(rig, `${PREFIX}-gvisor`, 'FROM airlock/base:bookworm\nRUN true\n')).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(RuntimeUnavailableError);
    }
    for (const d of rig.dirs) expectGone(d);
  });
});

describe('environment builds and executor slots', () => {
  it('a build holds a slot from before its sandbox until it is gone: with one slot, a job and a build never run at once', async () => {
    const slots = new Slots(1);
    const rig = rigWith({}, { slots });
    const job = await slots.acquire(); // a job is running
    const lines: string[] = [];
    const marker = `slot-step-${process.pid}`;
    const building = rig.builder.ensure(await input(rig, `${PREFIX}-slot`, `FROM airlock/base:busybox\nRUN echo ${marker}; sleep 1\n`, {}, { onLog: (l) => lines.push(l) }));
    await new Promise((r) => setTimeout(r, 1000));
    expect(rig.dirs).toEqual([]); // nothing of the build exists while the job holds the slot
    expect(lines).not.toContain(marker);
    job(); // the job ends
    await vi.waitFor(() => expect(lines).toContain(marker), { timeout: 10_000, interval: 20 });
    // Now the build holds it: the next job waits until the build and its sandbox are gone.
    let sandboxesAtGrant = -1;
    const next = slots.acquire().then((release) => {
      sandboxesAtGrant = rig.builder.sandboxes.list().length;
      return release;
    });
    await new Promise((r) => setTimeout(r, 300));
    expect(sandboxesAtGrant).toBe(-1);
    (await building).release();
    (await next)();
    expect(sandboxesAtGrant).toBe(0);
    for (const d of rig.dirs) expectGone(d);
  });
});

describe('a process killed mid-build', () => {
  it('leaves a running sandbox that the next reaper removes entirely', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/env-build-child.ts', `${PREFIX}-crash`], { stdio: ['ignore', 'pipe', 'inherit'] });
    const dir = await new Promise<string>((resolve, reject) => {
      const give = (e: Error): void => {
        child.kill('SIGKILL');
        reject(e);
      };
      let out = '';
      const timer = setTimeout(() => give(new Error(`the child did not start its build: ${out}`)), 25_000);
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /^SANDBOX (\S+)$/m.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1] as string);
        }
      });
      child.on('exit', () => give(new Error(`the child exited: ${out}`)));
    });
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    // Still there: the engine runs the step on, its filesystem is mounted.
    expect(existsSync(dir)).toBe(true);
    expect((read('/proc/self/mountinfo') ?? '').includes(dir)).toBe(true);
    const report = await new BuildSandboxes({ stateDir: STATE_DIR }).reap();
    expect(report.sandboxes).toContain(dir.slice(dir.lastIndexOf('/') + 1));
    expectGone(dir);
  });
});
