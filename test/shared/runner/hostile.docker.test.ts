/**
 * The hostile-job suite: jobs that try to hurt the host, other jobs or the runner, against the real
 * engine, under both runtimes where gVisor works. Each case asserts that the host is unaffected,
 * that the result says in plain words what happened, and that no labelled container or volume
 * remains.
 */
import { execFileSync } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { PassThrough, Readable } from 'node:stream';
import tar from 'tar-stream';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { JobRunner } from '#shared/runner/job-runner.js';
import { sanitizeForTerminal } from '#shared/runner/log-capture.js';
import { BUSYBOX, expectNothingLeft, makeRunner, spec, tempDir } from '../../support/docker.js';

let docker: Docker;
let runner: JobRunner;

beforeAll(async () => {
  ({ docker, runner } = await makeRunner());
});
afterEach(async () => {
  await expectNothingLeft(docker, runner.owner, runner);
  expectHostHealthy();
  expect(String(await docker.ping())).toBe('OK');
});
afterAll(async () => {
  await runner?.close();
});

/** The host can still fork and run things after a job. */
function expectHostHealthy(): void {
  expect(execFileSync('sh', ['-c', 'for i in 1 2 3 4 5; do true & done; wait; echo ok']).toString().trim()).toBe('ok');
}

const sh = (script: string) => ['sh', '-c', script];

describe.each(['runc', 'runsc'] as const)('hostile jobs under %s', (runtime) => {
  const run = (script: string, limits: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) =>
    runner.run(spec({ image: BUSYBOX, command: sh(script), runtime, limits: { timeout: '20s', ...limits }, ...extra }));

  it('a fork bomb stops at the pids limit and the host keeps forking', async () => {
    // The main shell stays for 2 s while the bomb runs into the limit (if it left at once, the
    // bomb would die with it before hitting anything). Under gVisor, what is checked is that the
    // host and the engine are fine (afterEach).
    const r = await run('b() { b | b & }; b; sleep 2', { pids: 64, timeout: '10s', memory: '256m' });
    // runc: the pids limit is what stops it, and the shell says so.
    if (runtime === 'runc') expect(r.log).toMatch(/can't fork/);
    expectHostHealthy();
    // And the limit itself: of 200 background sleeps, most cannot be forked.
    if (runtime === 'runc') {
      // Of 200 background sleeps, most cannot be forked; count live processes with shell builtins only.
      const c = await run('(for i in $(seq 200); do sleep 30 & done) 2>/dev/null; set -- /proc/[0-9]*; echo "live=$#"', { pids: 32 });
      const live = Number(/live=(\d+)/.exec(c.log ?? '')?.[1]);
      expect(live).toBeGreaterThan(10);
      expect(live).toBeLessThanOrEqual(32);
    }
  });

  it('a memory hog is killed and reported as exceeding its memory limit', async () => {
    const r = await run('dd if=/dev/zero of=/dev/null bs=200M count=1; echo "dd=$?"', { memory: '64m' });
    expect(r.passed).toBe(false);
    if (runtime === 'runc') {
      expect(r.log).toContain('dd=137'); // the kernel killed dd; the shell went on and said so
      expect(r.oomKilled).toBe(true);
      expect(r.reason).toBe('killed: exceeded memory limit of 64 MiB');
    } else {
      // Under gVisor the whole sandbox is the cgroup's biggest process: it is killed as one.
      expect(r.exitCode).toBe(137);
      expect(r.reason).toMatch(/^killed/);
    }
    expectHostHealthy();
  });

  it('an infinite loop is stopped at the timeout', async () => {
    const r = await run('while :; do :; done', { timeout: '2s' });
    expect(r.timedOut).toBe(true);
    expect(r.passed).toBe(false);
    expect(r.reason).toBe('timed out after 2 s');
  });

  it('a process that ignores SIGTERM is killed after the grace period', async () => {
    const r = await run('trap "" TERM; echo trapped; while :; do sleep 1; done', { timeout: '2s' });
    expect(r.log).toContain('trapped');
    expect(r.timedOut).toBe(true);
    expect(r.exitCode).toBe(137);
    expect(r.reason).toBe('timed out after 2 s');
  });

  it('children that outlive the main process do not keep the job alive', async () => {
    const r = await run('sleep 1000 & (sleep 1000 &) ; echo started', { timeout: '30s' });
    expect(r.passed).toBe(true);
    expect(r.timedOut).toBe(false);
    expect(r.log).toBe('started\n');
  });

  it('binary garbage on stdout is counted, kept as text and cannot drive a terminal', async () => {
    const r = await run('head -c 1048576 /dev/urandom; printf "\\033[2J\\033]0;pwned\\007"', { logCap: '4m' });
    expect(r.passed).toBe(true);
    expect(r.logBytes).toBe(1048576 + 14);
    expect(() => JSON.parse(JSON.stringify(r))).not.toThrow();
    expect(sanitizeForTerminal(r.log ?? '')).not.toMatch(/\u001b/);
  });

  it('the root filesystem is read-only', async () => {
    // /home/airlock belongs to the job user: only a read-only mount can refuse the write.
    const r = await run('touch /home/airlock/x 2>&1; echo "rc=$?"; touch /workspace/ok && echo workspace-writable');
    expect(r.log).toMatch(/Read-only file system/);
    expect(r.log).toMatch(/rc=1/);
    expect(r.log).toContain('workspace-writable');
  });

  it('filling the workspace stops at its quota with ENOSPC', async () => {
    const r = await run('dd if=/dev/zero of=/workspace/big bs=1M count=100 2>&1; echo "rc=$?"; df -k /workspace | tail -1', { workspace: '32m' });
    expect(r.log).toMatch(/No space left on device/);
    expect(r.log).toMatch(/rc=1/);
    const size = Number(r.log?.trim().split('\n').pop()?.trim().split(/\s+/)[1]);
    expect(size).toBeLessThanOrEqual(32 * 1024);
  });

  it('runs as a non-root user with no capabilities and no way to gain them', async () => {
    const r = await run('id -u; grep -E "^(CapEff|CapPrm|NoNewPrivs)" /proc/self/status; su -c id root 2>&1 </dev/null; echo "su=$?"; grep " /workspace " /proc/mounts');
    const lines = r.log?.split('\n') ?? [];
    expect(lines[0]).toBe('1000');
    expect(r.log).toMatch(/CapEff:\s+0000000000000000/);
    expect(r.log).toMatch(/CapPrm:\s+0000000000000000/);
    if (runtime === 'runc') expect(r.log).toMatch(/NoNewPrivs:\s+1/);
    expect(r.log).not.toMatch(/uid=0/);
    expect(r.log).toMatch(/su=[1-9]/);
    if (runtime === 'runc') expect(r.log).toMatch(/ \/workspace ext4 \S*nosuid,nodev/); // a setuid file there would not count
  });

  it('has only a loopback interface and cannot reach the host', async () => {
    const server: Server = createServer((_req, res) => res.end('host-secret'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    // busybox nc makes a real connect(2); its wget is no probe (the static build crashes in name lookup).
    const probe = `printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc 127.0.0.1 ${port}; echo "nc=$?"`;
    try {
      // Positive control: the same probe with the host's network (loopback only) does reach the server.
      const out = new PassThrough();
      const seen: Buffer[] = [];
      out.on('data', (d: Buffer) => seen.push(d));
      await docker.run(BUSYBOX, ['sh', '-c', probe], out, { Tty: true, HostConfig: { NetworkMode: 'host', UsernsMode: 'host', AutoRemove: true } });
      expect(Buffer.concat(seen).toString()).toContain('host-secret');
      const r = await run(`ls /sys/class/net 2>/dev/null || cat /proc/net/dev; ${probe} 2>&1`);
      expect(r.log).not.toContain('host-secret');
      expect(r.log).toMatch(/Connection refused/);
      expect(r.log).toMatch(/nc=1/);
      if (runtime === 'runc') expect(readdirSafe(r.log)).toEqual(['lo']);
      expect(r.log).not.toMatch(/eth0/);
    } finally {
      server.close();
    }
  });

  it('has no Docker socket', async () => {
    const r = await run('ls -la /var/run/docker.sock /run/docker.sock 2>&1; find / -name "docker.sock" 2>/dev/null | grep . && echo FOUND; true');
    expect(r.log).not.toContain('FOUND');
    expect(r.log).toMatch(/No such file/);
  });
});

/** Loop devices whose backing file is this workspace volume's image. */
function loopDevicesBacking(volume: string): string[] {
  return readdirSync('/sys/block')
    .filter((n) => n.startsWith('loop'))
    .filter((n) => {
      try {
        return readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').includes(`/${volume}.img`);
      } catch {
        return false;
      }
    });
}

/** `ls /sys/class/net` output as a list (runc: sysfs shows the netns's interfaces). */
function readdirSafe(log: string | undefined): string[] {
  return (log ?? '').split('\n').filter((l) => /^[a-z0-9]+$/.test(l));
}

describe('hostile jobs (runc only)', () => {
  it('a CPU hog stays within its CPU quota while a normal job runs beside it', async () => {
    const hog = runner.run(spec({ image: BUSYBOX, command: sh('cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us; while :; do :; done'), limits: { cpus: 0.5, timeout: '4s' } }));
    const normal = await runner.run(spec({ image: BUSYBOX, command: sh('echo normal-job-ran'), limits: { timeout: '20s' } }));
    expect(normal.passed).toBe(true);
    expect(normal.log).toBe('normal-job-ran\n');
    const h = await hog;
    expect(h.timedOut).toBe(true);
    const [quota, period] = (h.log ?? '').trim().split('\n').map(Number);
    expect(quota! / period!).toBeCloseTo(0.5, 5);
    expectHostHealthy();
  });

  it('a log flood of gigabytes is capped and the runner stays small', async () => {
    const before = process.memoryUsage().rss;
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 50);
    const r = await runner.run(
      spec({ image: BUSYBOX, command: sh('yes AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA | head -c 2147483648'), limits: { logCap: '1m', timeout: '120s' } }),
    );
    clearInterval(sampler);
    expect(r.passed).toBe(true);
    expect(r.logTruncated).toBe(true);
    expect(r.logBytes).toBe(2 * 1024 ** 3);
    expect(Buffer.byteLength(r.log ?? '')).toBe(1024 * 1024);
    expect(r.reason).toBe('succeeded; log truncated at 1 MiB of 2 GiB written');
    expect(peak - before).toBeLessThan(256 * 1024 * 1024);
  });

  it('one job cannot see another job\'s files or processes', async () => {
    const a = runner.run(spec({ image: BUSYBOX, command: sh('echo secret > /workspace/marker-a-7f3; sleep 4; cat /workspace/marker-a-7f3'), limits: { timeout: '20s' } }));
    try {
      await new Promise((r) => setTimeout(r, 1500));
      const b = await runner.run(spec({ image: BUSYBOX, command: sh('find / -name "marker-a-*" 2>/dev/null; ps -o args | grep -c "sleep [4]"; ls -A /workspace'), limits: { timeout: '20s' } }));
      expect(b.log).not.toContain('marker-a-7f3');
      expect(b.log?.split('\n')[0]).toBe('0'); // A's sleep is invisible to B
    } finally {
      expect((await a).log).toBe('secret\n');
    }
  });

  it('artifact path traversal and symlink escapes are refused and nothing lands outside', async () => {
    const root = tempDir();
    const dest = join(root, 'artifacts');
    const outside = join(root, 'outside');
    mkdirSync(outside);
    const r = await runner.run(
      spec({
        image: BUSYBOX,
        command: sh('mkdir -p out && echo fine > out/ok.txt && ln -s /etc/passwd out/passwd && ln -s ../../../outside out/up'),
        artifacts: ['out/**'],
        limits: { timeout: '20s' },
      }),
      { artifactsDir: dest },
    );
    expect(r.exitCode).toBe(0);
    expect(r.passed).toBe(false);
    expect(r.artifactError?.code).toBe('AIRLOCK_E_ARTIFACT_REJECTED');
    expect(r.reason).toMatch(/^succeeded; artifacts refused: .*symlink/);
    // Nothing anywhere under the test's root but the two directories it made, both empty.
    expect(readdirSync(root).sort()).toEqual(['artifacts', 'outside']);
    expect(readdirSync(outside)).toEqual([]);
    expect(readdirSync(dest)).toEqual([]);
  });

  it('artifacts within the caps come out; over the cap they are refused', async () => {
    const dest = join(tempDir(), 'artifacts');
    const ok = await runner.run(
      spec({ image: BUSYBOX, command: sh('mkdir -p dist/sub && echo a > dist/a.txt && echo b > dist/sub/b.txt && echo c > other.txt'), artifacts: ['dist/**/*.txt'], limits: { timeout: '20s' } }),
      { artifactsDir: dest },
    );
    expect(ok.passed).toBe(true);
    expect(ok.artifacts.map((a) => a.path).sort()).toEqual(['dist/a.txt', 'dist/sub/b.txt']);
    const big = await runner.run(
      spec({ image: BUSYBOX, command: sh('head -c 2097152 /dev/zero > big.bin'), artifacts: ['*.bin'], limits: { timeout: '20s', artifacts: '1m' } }),
      { artifactsDir: join(tempDir(), 'a2') },
    );
    expect(big.artifactError?.code).toBe('AIRLOCK_E_ARTIFACT_TOO_LARGE');
  });

  it('the source goes in as a tar owned by the job user, without setuid bits', async () => {
    const src = tempDir();
    writeFileSync(join(src, 'run.sh'), '#!/bin/sh\necho from-source\n', { mode: 0o4755 });
    const r = await runner.run(spec({ image: BUSYBOX, command: sh('./run.sh; stat -c "%u %a" run.sh'), limits: { timeout: '20s' } }), { source: { dir: src } });
    expect(r.log).toBe('from-source\n1000 755\n');
  });
});

describe('the runner\'s own controls', () => {
  it('reports peak memory for a job that runs long enough to be sampled', async () => {
    const r = await runner.run(spec({ image: BUSYBOX, command: sh('x=$(head -c 40000000 /dev/zero | tr "\\0" a); sleep 2; echo ${#x}'), limits: { memory: '256m', timeout: '20s' } }));
    expect(r.log).toBe('40000000\n');
    expect(r.peakMemoryBytes).toBeGreaterThan(40_000_000);
    expect(r.peakMemoryBytes).toBeLessThan(256 * 1024 * 1024);
  });

  it('cancels a running job when its signal aborts, and says so', async () => {
    const ac = new AbortController();
    const started = runner.run(spec({ image: BUSYBOX, command: sh('echo begun; sleep 60'), limits: { timeout: '60s' } }), {
      signal: ac.signal,
      onLog: (c) => c.data.toString().includes('begun') && ac.abort(),
    });
    const r = await started;
    expect(r.cancelled).toBe(true);
    expect(r.timedOut).toBe(false);
    expect(r.passed).toBe(false);
    expect(r.reason).toMatch(/^cancelled after /);
  });

  it('does not lose an abort that arrives while the job is being set up', async () => {
    for (const delay of [0, 20, 60]) {
      const ac = new AbortController();
      const t0 = performance.now();
      const p = runner.run(spec({ image: BUSYBOX, command: sh('sleep 8; echo finished'), limits: { timeout: '30s' } }), { signal: ac.signal });
      setTimeout(() => ac.abort(), delay);
      const outcome = await p.then(
        (r) => ({ cancelled: r.cancelled, log: r.log }),
        (e: { code?: string }) => ({ cancelled: e.code === 'AIRLOCK_E_CANCELLED', log: '' }),
      );
      expect(outcome.cancelled).toBe(true);
      expect(outcome.log).not.toContain('finished');
      expect(performance.now() - t0).toBeLessThan(8000); // it did not run to its end
    }
  });

  it('refuses a job whose signal is already aborted, before creating anything', async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(runner.run(spec({ image: BUSYBOX, command: ['true'] }), { signal: ac.signal })).rejects.toMatchObject({ code: 'AIRLOCK_E_CANCELLED' });
  });
});

describe('images and pools', () => {
  it('covers an image VOLUME with a small tmpfs: no unbounded anonymous volume, nothing left behind', async () => {
    const tag = 'airlock-test/with-volume:1';
    const context = tar.pack();
    context.entry({ name: 'Dockerfile' }, `FROM ${BUSYBOX}\nVOLUME /data\n`);
    context.finalize();
    const build = await docker.buildImage(Readable.from(context, { objectMode: false }) as unknown as NodeJS.ReadableStream, { t: tag, networkmode: 'none' });
    await new Promise((resolve, reject) => docker.modem.followProgress(build, (err) => (err ? reject(err) : resolve(undefined))));
    // Anonymous volumes (64-hex names) only: other suites' runners create and remove named workspace volumes meanwhile.
    const anonymous = async () => ((await docker.listVolumes()).Volumes ?? []).map((v) => v.Name).filter((n) => /^[0-9a-f]{64}$/.test(n));
    const before = new Set(await anonymous());
    const r = await runner.run(spec({ image: tag, command: sh('dd if=/dev/zero of=/data/big bs=1M count=100 2>&1; grep " /data " /proc/mounts'), limits: { tmp: '8m', timeout: '20s' } }));
    expect(r.log).toMatch(/No space left on device/);
    expect(r.log).toMatch(/ \/data tmpfs /);
    await runner.drain();
    expect((await anonymous()).filter((n) => !before.has(n))).toEqual([]);
    await docker.getImage(tag).remove({ force: true });
  });

  it('recycled workspaces start empty, while the reaper runs beside a busy pool and another runner in the process', async () => {
    const pooled = await makeRunner({ workspacePool: 2 });
    try {
      let reaping = true;
      const reaper = (async () => {
        while (reaping) await pooled.runner.reap();
      })();
      // A second runner in this same process, mid-job: the first one's reaper must leave it alone.
      const neighbour = runner.run(spec({ image: BUSYBOX, command: sh('echo mine > /workspace/f; sleep 3; cat /workspace/f'), limits: { timeout: '30s' } }));
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          pooled.runner.run(spec({ image: BUSYBOX, command: sh(`ls -A /workspace | grep -v lost+found; echo secret-${i} > /workspace/left-behind; echo done`), limits: { timeout: '30s' } })),
        ),
      );
      const n = await neighbour;
      reaping = false;
      await reaper;
      expect(n.log).toBe('mine\n');
      expect(n.passed).toBe(true);
      for (const r of results) {
        expect(r.passed).toBe(true);
        expect(r.log).toBe('done\n'); // nothing of an earlier job was there
      }
    } finally {
      await pooled.runner.close();
    }
    await expectNothingLeft(pooled.docker, pooled.runner.owner);
  });
});

describe('a runner killed mid-job', () => {
  it('leaves a container that the next runner start reaps', async () => {
    const { spawn } = await import('node:child_process');
    const id = `killed-${process.pid}`;
    const child = spawn(process.execPath, ['bin/airlock.js', 'job', 'run', '--id', id, '--image', BUSYBOX, '--timeout', '300s', '--', 'sleep', '300'], { stdio: 'ignore' });
    let found: Docker.ContainerInfo[] = [];
    for (let i = 0; i < 200 && found.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      found = (await docker.listContainers({ filters: { label: [`airlock.job=${id}`] } })).filter((c) => c.State === 'running');
    }
    expect(found).toHaveLength(1);
    const owner = found[0]!.Labels['airlock.owner']!;
    const volume = (await docker.getContainer(found[0]!.Id).inspect()).Mounts.find((m) => m.Destination === '/workspace')?.Name;
    expect(volume).toMatch(/^airlock-ws-/);
    expect(loopDevicesBacking(volume!)).toHaveLength(1);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    // Still there: nobody cleaned up after the crash...
    expect(await docker.listContainers({ filters: { label: [`airlock.job=${id}`] } })).toHaveLength(1);
    // ...until a new runner starts.
    const fresh = await makeRunner();
    await expectNothingLeft(docker, owner);
    expect(loopDevicesBacking(volume!)).toEqual([]);
    await fresh.runner.close();
  });
});
