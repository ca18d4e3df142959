import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { networkInterfaces } from 'node:os';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { CancelledError, EnvironmentBuildFailedError, ImageNotFoundError, PolicyViolationError } from '#shared/errors.js';
import { resolveImageEnvironment } from '../../../untrusted-ci/environments/environment-builder.js';
import { cleanup, envImages, exists, input, makeRig, testPolicy } from './env-support.js';

const PREFIX = `envb-${process.pid}`;
const rig = makeRig();
/** Image ids a failed build printed (` ---> id`): its dangling leftovers, removed in afterAll. */
const leftovers = new Set<string>();
const collect = (lines: string[]) => (line: string) => {
  lines.push(line);
  const m = /^ ---> ([0-9a-f]{12})$/.exec(line);
  if (m?.[1]) leftovers.add(m[1]);
};

afterAll(async () => {
  await cleanup(rig, PREFIX, [...leftovers].reverse());
});

describe('EnvironmentBuilder (real Docker)', () => {
  it('builds once, then reuses the unchanged environment without building', async () => {
    const spy = vi.spyOn(rig.builder.sandboxes, 'start');
    const lines: string[] = [];
    const i = await input(rig, `${PREFIX}-a`, 'FROM airlock/base:busybox\nRUN echo hi > /hi\n', {}, { onLog: (l) => lines.push(l) });
    const first = await rig.builder.ensure(i);
    expect(first.cached).toBe(false);
    expect(first.image).toMatch(new RegExp(`^airlock-env/${PREFIX}-a:[0-9a-f]{32}$`));
    expect(lines.join('\n')).toContain('RUN echo hi');
    const created = (await rig.docker.getImage(first.image).inspect()).Created;

    const second = await rig.builder.ensure(await input(rig, `${PREFIX}-a`, 'FROM airlock/base:busybox\nRUN echo hi > /hi\n'));
    expect(second).toMatchObject({ image: first.image, imageId: first.imageId, cached: true });
    expect(spy).toHaveBeenCalledTimes(1);
    expect((await rig.docker.getImage(first.image).inspect()).Created).toBe(created);
    expect(rig.cache.pinHolders(first.image)).toHaveLength(2);
    first.release();
    second.release();
    second.release(); // idempotent
    expect(rig.cache.pinHolders(first.image)).toHaveLength(0);
    console.log(`environment timings: cold build ${first.buildMs} ms, cached ensure ${second.buildMs} ms`);
    spy.mockRestore();
  });

  it('a changed context is a new tag; the built file comes from the context', async () => {
    const df = 'FROM airlock/base:busybox\nCOPY f /f\n';
    const a = await rig.builder.ensure(await input(rig, `${PREFIX}-b`, df, { f: 'one' }));
    const b = await rig.builder.ensure(await input(rig, `${PREFIX}-b`, df, { f: 'two' }));
    expect(b.image).not.toBe(a.image);
    expect(b.cached).toBe(false);
    a.release();
    b.release();
  });

  it('refuses a FROM outside the allowlist without building or reading the context', async () => {
    const spy = vi.spyOn(rig.builder.sandboxes, 'start');
    const openContext = vi.fn(() => Readable.from([]));
    const i = { ...(await input(rig, `${PREFIX}-c`, 'FROM debian:bookworm\n')), openContext };
    const e = await rig.builder.ensure(i).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(PolicyViolationError);
    expect((e as PolicyViolationError).issues[0]).toMatchObject({ path: 'Dockerfile:1' });
    expect(spy).not.toHaveBeenCalled();
    expect(openContext).not.toHaveBeenCalled();
    spy.mockRestore();
  });

  it('builds what was checked, not the Dockerfile the context holds', async () => {
    const i = await input(rig, `${PREFIX}-d`, 'FROM airlock/base:busybox\nRUN echo checked > /which\n');
    const sneaky = await input(rig, `${PREFIX}-d`, 'FROM debian:bookworm\n', {}, { dockerfileText: i.dockerfileText });
    const lines: string[] = [];
    const r = await rig.builder.ensure({ ...sneaky, onLog: (l) => lines.push(l) });
    expect(lines.join('\n')).toContain('echo checked');
    r.release();
  });

  it('a failing RUN is an EnvironmentBuildFailedError carrying its output', async () => {
    const lines: string[] = [];
    const i = await input(rig, `${PREFIX}-e`, 'FROM airlock/base:busybox\nRUN echo first-step > /x\nRUN echo boom-output-42; exit 3\n', {}, { onLog: collect(lines) });
    const e = await rig.builder.ensure(i).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(EnvironmentBuildFailedError);
    expect((e as Error).message).toContain('returned a non-zero code: 3');
    expect((e as Error).message).toContain('boom-output-42');
    expect(await envImages(rig.docker, `${PREFIX}-e`)).toEqual([]);
  });

  it('builds have no network: only loopback, and the host is unreachable', async () => {
    const server: Server = createServer((s) => s.end('reached\n'));
    await new Promise<void>((r) => server.listen(0, '0.0.0.0', r));
    const port = (server.address() as { port: number }).port;
    const hostIp = Object.values(networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address ?? '127.0.0.1';
    try {
      const ok = await rig.builder.ensure(await input(rig, `${PREFIX}-f`, 'FROM airlock/base:busybox\nRUN test "$(ls /sys/class/net)" = lo\n'));
      ok.release();
      const lines: string[] = [];
      const i = await input(rig, `${PREFIX}-f`, `FROM airlock/base:busybox\nRUN nc -w 3 ${hostIp} ${port} </dev/null > /got && cat /got\n`, {}, { onLog: collect(lines) });
      const e = await rig.builder.ensure(i).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(EnvironmentBuildFailedError);
      expect((e as Error).message).toMatch(/unreachable|can't connect/i);
      expect(lines.join('\n')).not.toContain('reached');
    } finally {
      server.close();
    }
  });

  it('concurrent ensures of one environment share one build', async () => {
    const spy = vi.spyOn(rig.builder.sandboxes, 'start');
    const i = await input(rig, `${PREFIX}-g`, 'FROM airlock/base:busybox\nRUN echo shared > /s\n');
    const [a, b, c] = await Promise.all([rig.builder.ensure(i), rig.builder.ensure(i), rig.builder.ensure(i)]);
    expect(spy).toHaveBeenCalledTimes(1);
    expect(new Set([a.imageId, b.imageId, c.imageId]).size).toBe(1);
    for (const r of [a, b, c]) r.release();
    spy.mockRestore();
  });

  it('one waiter leaving does not cancel the shared build; the last one leaving does, promptly', async () => {
    const marker = `sleep-${process.pid}-${Date.now()}`;
    const df = `FROM airlock/base:busybox\nRUN echo ${marker}; sleep 30\n`;
    const lines: string[] = [];
    const i = await input(rig, `${PREFIX}-h`, df, {}, { onLog: collect(lines) });
    const c1 = new AbortController();
    const c2 = new AbortController();
    const p1 = rig.builder.ensure({ ...i, signal: c1.signal }).catch((x: unknown) => x);
    const p2 = rig.builder.ensure({ ...i, signal: c2.signal }).catch((x: unknown) => x);
    // The step's own output (not the `Step 2/2 : RUN …` line that names it): its container runs.
    await vi.waitFor(() => expect(lines).toContain(marker), { timeout: 10_000 });
    c1.abort();
    expect(await p1).toBeInstanceOf(CancelledError);
    await new Promise((r) => setTimeout(r, 300));
    // The step runs in the build's own engine (its sandbox).
    const [sandbox] = rig.builder.sandboxes.list();
    expect(sandbox).toBeDefined();
    const still = await sandbox!.docker.listContainers({ filters: { status: ['running'] } });
    expect(still.filter((c) => c.Command.includes(marker))).toHaveLength(1);
    const t = Date.now();
    c2.abort();
    expect(await p2).toBeInstanceOf(CancelledError);
    // The step is stopped and the whole sandbox (engine, filesystem, cgroup) goes.
    await vi.waitFor(() => expect(rig.builder.sandboxes.list()).toEqual([]), { timeout: 15_000, interval: 100 });
    expect(existsSync(sandbox!.dir)).toBe(false);
    expect(Date.now() - t).toBeLessThan(15_000);
  });

  it('a build past its timeout fails with the log so far', async () => {
    // The clock runs from the slot: the sandbox's start and the base image copy count (about 0.5 s
    // here, several seconds on a loaded machine: a 3 s budget once ran out before the RUN step had
    // printed anything). 10 s leaves the step time to start; its sleep 30 still outlasts it.
    const slow = makeRig(testPolicy({ build: { timeout: 10_000 } }));
    const lines: string[] = [];
    const e = await slow.builder.ensure(await input(slow, `${PREFIX}-i`, 'FROM airlock/base:busybox\nRUN echo waiting-here; sleep 30\n', {}, { onLog: collect(lines) })).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(EnvironmentBuildFailedError);
    expect((e as Error).message).toContain('took longer than 10 s');
    expect((e as Error).message).toContain('waiting-here');
    await cleanup(slow, `${PREFIX}-i`);
  });

  it('refuses a context larger than the policy allows', async () => {
    const small = makeRig(testPolicy({ build: { contextMax: 4096 } }));
    const e = await small.builder.ensure(await input(small, `${PREFIX}-j`, 'FROM airlock/base:busybox\nCOPY big /big\n', { big: 'x'.repeat(64 * 1024) })).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(PolicyViolationError);
    expect((e as Error).message).toContain('build context is larger than 4 KiB');
    await cleanup(small, `${PREFIX}-j`);
  });

  it('resolves an {image} environment: allowlisted and present', async () => {
    const r = await resolveImageEnvironment(rig.docker, 'airlock/base:busybox', rig.policy);
    expect(r.imageId).toMatch(/^sha256:/);
    await expect(resolveImageEnvironment(rig.docker, 'debian:bookworm', rig.policy)).rejects.toBeInstanceOf(PolicyViolationError);
    const p = { ...rig.policy, baseImages: [...rig.policy.baseImages, 'airlock/base:absent'] };
    await expect(resolveImageEnvironment(rig.docker, 'airlock/base:absent', p)).rejects.toBeInstanceOf(ImageNotFoundError);
  });
});
