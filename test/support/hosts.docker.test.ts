/**
 * The executor-host harness (test/support/hosts.ts): two hosts, each in its own network namespace
 * with its own Docker engine; the job runner runs a job on each host's engine and on no other; a
 * process in a host's namespace reaches the CI's address and neither the root namespace's loopback
 * nor another host's link; after stop() nothing of a host is left; and what a killed test process
 * left of its host is removed by the next startHost().
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import { LABEL_OWNER } from '#shared/runner/labels.js';
import { BUSYBOX, spec } from './docker.js';
import { alive, mountsUnder, processesMentioning, startHost, type TestHost } from './hosts.js';
import { until } from './until.js';

const main = createDocker();
let hosts: TestHost[] = [];

beforeAll(async () => {
  hosts = await Promise.all([startHost(), startHost()]);
});
afterAll(async () => {
  await Promise.all(hosts.map((h) => h.stop()));
});

const netnsNames = (): string[] => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((l) => l.split(' ')[0] ?? '').filter(Boolean);
/** Links of the root namespace that carry `address`. */
const linksWith = (address: string): string => execFileSync('ip', ['-o', '-4', 'addr', 'show', 'to', `${address}/32`], { encoding: 'utf8' }).trim();

/** Container events of the engine between two times (seconds), for containers labelled with `owner`. */
async function containerEvents(docker: Docker, owner: string, since: number, untilS: number): Promise<{ action: string; id: string }[]> {
  const stream = (await docker.getEvents({ since, until: untilS, filters: { type: ['container'], label: [`${LABEL_OWNER}=${owner}`] } })) as unknown as Readable;
  let text = '';
  for await (const chunk of stream) text += String(chunk);
  return text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as { Action: string; id?: string; Actor?: { ID?: string } })
    .map((e) => ({ action: e.Action, id: e.id ?? e.Actor?.ID ?? '' }));
}

describe('executor hosts', () => {
  it('two hosts: each its own namespace, link and engine, with the base image', async () => {
    const [a, b] = hosts as [TestHost, TestHost];
    expect(a.name).not.toBe(b.name);
    expect(a.ciAddress).not.toBe(b.ciAddress);
    expect(netnsNames()).toEqual(expect.arrayContaining([a.name, b.name]));
    const mainInfo = (await main.info()) as { ID: string };
    const mainImage = await main.getImage(BUSYBOX).inspect();
    const ids = new Set<string>([mainInfo.ID]);
    for (const h of hosts) {
      expect(h.dockerSocket.startsWith(`${h.dir}/`)).toBe(true);
      expect(linksWith(h.ciAddress)).toMatch(/^\d+: ahost\d+r /);
      // The engine runs in the host's namespace: the same namespace inode as /var/run/netns/NAME.
      expect(statSync(`/proc/${h.enginePid}/ns/net`).ino).toBe(statSync(`/var/run/netns/${h.name}`).ino);
      const info = (await h.docker.info()) as { ID: string; SecurityOptions?: string[]; DockerRootDir: string };
      expect(info.SecurityOptions?.some((o) => o.includes('name=userns'))).toBe(true);
      expect(info.DockerRootDir.startsWith(`${h.dir}/data/`)).toBe(true);
      ids.add(info.ID);
      expect((await h.docker.getImage(BUSYBOX).inspect()).Id).toBe(mainImage.Id);
    }
    expect(ids.size).toBe(3); // three engines, not one seen three times
  });

  it("the job runner runs a job on each host's engine, and on no other engine", async () => {
    for (const h of hosts) {
      const runner = await JobRunner.create({ docker: h.docker, policy: loadJobPolicy(), stateDir: h.stateDir, workspacePool: 0, reapEveryMs: 0 });
      try {
        const since = Math.floor(Date.now() / 1000) - 1;
        const r = await runner.run(spec({ image: BUSYBOX, command: ['echo', 'hi'], limits: { timeout: '60s' } }));
        await runner.drain();
        const untilS = Math.floor(Date.now() / 1000) + 1;
        expect([r.passed, r.log]).toEqual([true, 'hi\n']);
        // One container of this runner's came and went on this engine.
        const here = await containerEvents(h.docker, runner.owner, since, untilS);
        expect(new Set(here.map((e) => e.id)).size).toBe(1);
        expect(here.map((e) => e.action)).toEqual(expect.arrayContaining(['create', 'start', 'die', 'destroy']));
        for (const other of [main, ...hosts.filter((o) => o !== h).map((o) => o.docker)]) {
          expect(await containerEvents(other, runner.owner, since, untilS)).toEqual([]);
        }
        expect(await h.docker.listContainers({ all: true, filters: { label: [`${LABEL_OWNER}=${runner.owner}`] } })).toEqual([]);
        // gVisor too: the host's engine has the main one's runtimes, and its stateDir the base image's runsc verdict.
        const g = await runner.run(spec({ image: BUSYBOX, command: ['sh', '-c', 'dmesg | head -1'], runtime: 'runsc', limits: { timeout: '60s' } }));
        expect([g.passed, g.runtime, g.log]).toEqual([true, 'runsc', expect.stringContaining('gVisor')]);
      } finally {
        await runner.close();
      }
    }
  });

  describe('the network', () => {
    const servers: Server[] = [];
    const listen = (host: string, body: string): Promise<string> =>
      new Promise((resolve, reject) => {
        const s = createServer((_req, res) => res.end(body));
        servers.push(s);
        s.once('error', reject);
        s.listen(0, host, () => resolve(`http://${host}:${(s.address() as AddressInfo).port}/`));
      });
    afterAll(async () => {
      await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    });

    /** Each URL fetched from inside the host's namespace: the body, or the error's code. */
    async function fetchFrom(h: TestHost, urls: string[]): Promise<string[]> {
      const script = `
        const out = [];
        for (const u of process.argv.slice(1)) {
          try { out.push('body ' + await (await fetch(u, { signal: AbortSignal.timeout(10000) })).text()); }
          catch (e) { out.push('error ' + (e.cause?.code ?? e.name)); }
        }
        console.log(JSON.stringify(out));`;
      const logFile = `${h.dir}/fetch-${Date.now()}.log`;
      const child = h.spawn(process.execPath, ['--input-type=module', '-e', script, ...urls], { logFile });
      const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
      const text = readFileSync(logFile, 'utf8');
      expect(code, text).toBe(0);
      return JSON.parse(text.trim().split('\n').pop() as string) as string[];
    }

    it("a process in a host's namespace reaches its CI address, and not the root namespace's loopback or another host's link", async () => {
      const [a, b] = hosts as [TestHost, TestHost];
      const ciA = await listen(a.ciAddress, 'ci of a');
      const ciB = await listen(b.ciAddress, 'ci of b');
      const loopback = await listen('127.0.0.1', 'root loopback');
      // From the root namespace all three answer, so a refusal below is the namespace's doing.
      for (const [u, body] of [[ciA, 'ci of a'], [ciB, 'ci of b'], [loopback, 'root loopback']] as const) expect(await (await fetch(u)).text()).toBe(body);
      const fromA = await fetchFrom(a, [ciA, loopback, ciB]);
      expect(fromA).toEqual(['body ci of a', 'error ECONNREFUSED', expect.stringMatching(/^error (ENETUNREACH|EHOSTUNREACH)$/)]);
      const fromB = await fetchFrom(b, [ciB, loopback, ciA]);
      expect(fromB).toEqual(['body ci of b', 'error ECONNREFUSED', expect.stringMatching(/^error (ENETUNREACH|EHOSTUNREACH)$/)]);
    });
  });

  it('stop(): the namespace, the veth, the engine and its containerd, the mounts and the directory are gone', async () => {
    const h = hosts.pop() as TestHost;
    const before = processesMentioning(h.dir);
    expect(before).toContain(h.enginePid);
    expect(before.length).toBeGreaterThanOrEqual(2); // dockerd and its containerd
    await h.stop();
    expect(netnsNames()).not.toContain(h.name);
    expect(existsSync(`/var/run/netns/${h.name}`)).toBe(false);
    expect(linksWith(h.ciAddress)).toBe('');
    expect(before.filter(alive)).toEqual([]);
    expect(processesMentioning(h.dir)).toEqual([]);
    expect(mountsUnder(h.dir)).toEqual([]);
    expect(existsSync(h.dir)).toBe(false);
    await expect(h.docker.ping()).rejects.toThrow();
  });

  it('a host whose owner was killed (SIGKILL) is removed by the next startHost()', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/hosts-child.ts'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    const line = await until('the child to start its host', () => (out.includes('\n') ? out.split('\n')[0] : child.exitCode !== null ? 'exited' : undefined), 90_000);
    expect(line).not.toBe('exited');
    const left = JSON.parse(line) as { name: string; dir: string; ciAddress: string; enginePid: number };
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    // Its engine ends by itself (pdeathsig); the namespace, the veth and the directory stay until a reaper runs.
    await until('the dead owner\'s engine to end', () => (alive(left.enginePid) ? undefined : true), 30_000);
    expect(netnsNames()).toContain(left.name);
    expect(existsSync(left.dir)).toBe(true);
    const next = await startHost();
    hosts.push(next);
    expect(netnsNames()).not.toContain(left.name);
    expect(linksWith(left.ciAddress)).toBe('');
    expect(processesMentioning(left.dir)).toEqual([]);
    expect(mountsUnder(left.dir)).toEqual([]);
    expect(existsSync(left.dir)).toBe(false);
  });
});
