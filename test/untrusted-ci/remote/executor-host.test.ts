/**
 * ExecutorHost (untrusted-ci/remote/executor-host.ts) against a CI played by a small HTTP server
 * in the test, with a runner that runs nothing (no Docker): what the host does when the CI's
 * answers are not what an honest, well-configured CI would send.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import type { JobRunnerPort } from '#shared/runner/job-plan.js';
import type { RunOptions } from '#shared/runner/job-runner.js';
import type { JobResult } from '#shared/runner/result.js';
import { JobSpec } from '#shared/schemas/job-spec.js';
import type { Runtime } from '#shared/schemas/limits.js';
import { ExecutorHost, offeredRuntimes, type ExecutorHostOptions } from '../../../untrusted-ci/remote/executor-host.js';
import { Assignment, RegisterAnswer } from '../../../untrusted-ci/remote/protocol.js';
import { until } from '../../support/until.js';

const policy = loadJobPolicy();
const GiB = 1024 ** 3;
const IMAGE = `sha256:${'1'.repeat(64)}`;
const LEASE = 600;

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function assignment(run: string, id: string, limits: Record<string, unknown> = {}): Assignment {
  return { run: run.repeat(32).slice(0, 32), build: 1, job: id, spec: JobSpec.parse({ id, image: IMAGE, command: ['true'], limits }), imageId: IMAGE, leaseMs: LEASE };
}

/**
 * A runner whose jobs run until the test lets them end; what it was asked to run is kept. A job
 * is "ready" at once and awaits its beforeStart, as the real runner does with its container made;
 * `ran` lists the jobs that then started.
 */
class HeldRunner implements JobRunnerPort {
  readonly ran: string[] = [];
  /** What each job was run with: its spec and options. */
  readonly asked = new Map<string, { spec: JobSpec; opts: RunOptions }>();
  private readonly releases = new Map<string, () => void>();
  async run(spec: JobSpec, opts: RunOptions): Promise<JobResult> {
    this.asked.set(spec.id, { spec, opts });
    await opts.beforeStart?.();
    this.ran.push(spec.id);
    opts.onStarted?.();
    await new Promise<void>((res) => {
      this.releases.set(spec.id, res);
      opts.signal?.addEventListener('abort', () => res(), { once: true });
    });
    return { version: 1, jobId: spec.id, image: spec.image, imageId: spec.image, runtime: 'runc', passed: true, exitCode: 0, oomKilled: false, timedOut: false, cancelled: false, logTruncated: false, logBytes: 0, limits: policy.limits, durations: { setupMs: 0, runMs: 0, teardownMs: 0, totalMs: 0 }, reason: 'succeeded', artifacts: [] };
  }
  release(id: string): void {
    this.releases.get(id)?.();
  }
}

async function fakeCi(handle: (req: IncomingMessage, body: string, res: ServerResponse) => void): Promise<string> {
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => handle(req, body, res));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise((r) => server.close(r)));
  cleanups.push(() => server.closeAllConnections());
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const json = (res: ServerResponse, status: number, v?: unknown): void => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(v === undefined ? undefined : JSON.stringify(v));
};

/** A CI that registers the host with a 60 s lease and hands out `queue` one claim at a time; every other request goes to `rest`. */
function queueCi(queue: Assignment[], rest: (req: IncomingMessage, body: string, res: ServerResponse) => void): Promise<string> {
  return fakeCi((req, body, res) => {
    const url = req.url ?? '';
    if (url === '/api/executor/register') return json(res, 200, { leaseMs: 60_000 });
    if (url === '/api/executor/claim') {
      const a = queue.shift();
      return a ? json(res, 200, a) : json(res, 204);
    }
    rest(req, body, res);
  });
}

function host(ciUrl: string, runner: JobRunnerPort, runtimes: Runtime[] = ['runc'], extra: Partial<ExecutorHostOptions> = {}): ExecutorHost {
  const workDir = mkdtempSync(join(tmpdir(), 'airlock-exec-host-'));
  cleanups.push(() => rmSync(workDir, { recursive: true, force: true }));
  const docker = { getImage: () => ({ inspect: async () => ({ Id: IMAGE }), remove: async () => undefined }) } as unknown as Docker;
  const h = new ExecutorHost({ name: 'h', ciUrl, token: 't'.repeat(32), docker, runner, policy, capacity: { slots: 2, memory: GiB, cpus: 2 }, runtimes, workDir, logger: createLogger({ level: 'silent' }), claimWaitMs: 200, ...extra });
  cleanups.push(() => h.close());
  return h;
}

describe('ExecutorHost against a CI that is not what it should be', () => {
  it('refuses a lease longer than ci.yaml allows (its timers would overflow into a heartbeat every millisecond)', () => {
    expect(Assignment.safeParse(assignment('3', 'x')).success).toBe(true);
    expect(Assignment.safeParse({ ...assignment('3', 'x'), leaseMs: 2 ** 31 }).success).toBe(false);
    expect(RegisterAnswer.safeParse({ leaseMs: 600_000 }).success).toBe(true);
    expect(RegisterAnswer.safeParse({ leaseMs: 600_001 }).success).toBe(false);
  });

  it('a job given beyond the free room waits for it, and is not started once its lease ran out meanwhile (the CI gave it to another host)', async () => {
    const first = assignment('1', 'first', { memory: '1g' });
    // This host's policy gives a job without limits its default of 1 GiB: more than is free while `first` runs.
    const second = assignment('2', 'second');
    const queue = [first, second];
    const beats: Record<string, number> = {};
    let secondSentAt = -1;
    const results: string[] = [];
    const ci = await fakeCi((req, body, res) => {
      const url = req.url ?? '';
      if (url === '/api/executor/register') return json(res, 200, { leaseMs: LEASE });
      if (url === '/api/executor/claim') {
        const a = queue.shift();
        if (!a) return json(res, 204);
        if (a === second) secondSentAt = beats[first.run] ?? 0;
        return json(res, 200, a);
      }
      const m = /^\/api\/executor\/runs\/([a-f0-9]{32})\/(\w+)/.exec(url);
      if (!m) return json(res, 404, {});
      const [, run, what] = m as unknown as [string, string, string];
      if (what === 'heartbeat') {
        beats[run] = (beats[run] ?? 0) + 1;
        // `second` was taken back: its lease ran out while the host held it without a heartbeat.
        return run === second.run ? json(res, 409, { message: 'not held' }) : json(res, 200, { cancel: false });
      }
      if (what === 'log') return json(res, 200, { cancel: false });
      if (what === 'result') {
        results.push((JSON.parse(body) as JobResult).jobId);
        return json(res, 200, { ok: true });
      }
      return json(res, 404, {});
    });
    const runner = new HeldRunner();
    const h = host(ci, runner);
    await h.start();
    await until('first running', () => (runner.ran.includes('first') ? true : undefined), 20_000, 10);
    await until('second given', () => (secondSentAt >= 0 ? true : undefined), 20_000, 10);
    // Heartbeats come a third of a lease apart: four more of `first` is more than a lease since `second` was given.
    await until('a lease gone by', () => ((beats[first.run] ?? 0) >= secondSentAt + 4 ? true : undefined), 20_000, 10);
    runner.release('first');
    await until('first reported', () => (results.includes('first') ? true : undefined), 20_000, 10);
    await until('second over', () => (h.runningRuns.length === 0 ? true : undefined), 20_000, 10);
    expect(runner.ran).toEqual(['first']);
    expect(results).toEqual(['first']);
  }, 60_000);

  it('with every slot busy it claims ahead (saying so), makes the job ready, and starts it on a free slot only after the CI\'s word', async () => {
    const queue = [assignment('1', 'first'), assignment('2', 'second'), assignment('3', 'third')];
    const claims: { ahead?: boolean; free: { slots: number } }[] = [];
    const calls: string[] = [];
    const results: string[] = [];
    const ci = await fakeCi((req, body, res) => {
      const url = req.url ?? '';
      if (url === '/api/executor/register') return json(res, 200, { leaseMs: 60_000 });
      if (url === '/api/executor/claim') {
        const c = JSON.parse(body) as { ahead?: boolean; free: { slots: number } };
        claims.push(c);
        const a = queue.shift();
        return a ? json(res, 200, a) : json(res, 204);
      }
      const m = /^\/api\/executor\/runs\/([a-f0-9]{32})\/(\w+)/.exec(url);
      const what = m?.[2] ?? '';
      calls.push(`${m?.[1]?.[0]} ${what}`);
      if (what !== 'result') return json(res, 200, { cancel: false });
      results.push((JSON.parse(body) as JobResult).jobId);
      return json(res, 200, { ok: true });
    });
    const runner = new HeldRunner();
    const h = host(ci, runner, ['runc'], { capacity: { slots: 1, memory: 4 * GiB, cpus: 2 }, claimAhead: 1 });
    await h.start();
    await until('second made ready', () => (runner.asked.has('second') ? true : undefined), 20_000, 10);
    expect(runner.ran).toEqual(['first']);
    expect(claims.slice(0, 2)).toEqual([
      { free: { slots: 1, memory: 4 * GiB, cpus: 2 }, waitMs: 200 },
      { free: { slots: 1, memory: 4 * GiB, cpus: 2 }, waitMs: 200, ahead: true },
    ]);
    // One ahead, one running: no more claims until a slot frees.
    await new Promise((r) => setTimeout(r, 300));
    expect(claims.length).toBe(2);
    expect(calls).not.toContain('2 start');
    runner.release('first');
    await until('second running', () => (runner.ran.includes('second') ? true : undefined), 20_000, 10);
    expect(calls.indexOf('2 start')).toBeGreaterThan(-1);
    expect(calls.filter((c) => c.endsWith(' start'))).toEqual(['2 start']); // a job claimed with a free slot starts without asking
    await until('third made ready', () => (runner.asked.has('third') ? true : undefined), 20_000, 10);
    expect(runner.ran).toEqual(['first', 'second']);
    runner.release('second');
    await until('third running', () => (runner.ran.includes('third') ? true : undefined), 20_000, 10);
    runner.release('third');
    await until('all reported', () => (results.length === 3 ? true : undefined), 20_000, 10);
    expect(results.sort()).toEqual(['first', 'second', 'third']);
  }, 60_000);

  it('a job claimed ahead that the CI moved to another host (409 at its start) is dropped unstarted and unreported', async () => {
    const queue = [assignment('1', 'first'), assignment('2', 'moved'), assignment('3', 'next')];
    const results: string[] = [];
    const ci = await fakeCi((req, body, res) => {
      const url = req.url ?? '';
      if (url === '/api/executor/register') return json(res, 200, { leaseMs: 60_000 });
      if (url === '/api/executor/claim') {
        const a = queue.shift();
        return a ? json(res, 200, a) : json(res, 204);
      }
      if (url.startsWith(`/api/executor/runs/${'2'.repeat(32)}/start`)) return json(res, 409, { message: 'moved' });
      if (!url.endsWith('/result')) return json(res, 200, { cancel: false });
      results.push((JSON.parse(body) as JobResult).jobId);
      return json(res, 200, { ok: true });
    });
    const runner = new HeldRunner();
    const h = host(ci, runner, ['runc'], { capacity: { slots: 1, memory: 4 * GiB, cpus: 2 }, claimAhead: 1 });
    await h.start();
    await until('moved made ready', () => (runner.asked.has('moved') ? true : undefined), 20_000, 10);
    runner.release('first');
    // The freed slot goes to `next`, claimed anew: `moved` never ran here.
    await until('next running', () => (runner.ran.includes('next') ? true : undefined), 20_000, 10);
    expect(runner.ran).toEqual(['first', 'next']);
    expect(runner.asked.get('moved')?.opts.signal?.aborted).toBe(true);
    runner.release('next');
    await until('reported', () => (results.length === 2 ? true : undefined), 20_000, 10);
    expect(results.sort()).toEqual(['first', 'next']);
  }, 60_000);

  it('runs a job under the runtime the CI decided, with the CI\'s runsc verdict on the image, or refuses it: never under another runtime', async () => {
    const withRuntime = (run: string, id: string, runtime: Runtime | undefined, runscPassed?: true): Assignment => ({
      ...assignment(run, id),
      spec: JobSpec.parse({ id, image: IMAGE, command: ['true'], limits: { memory: '256m' }, ...(runtime ? { runtime } : {}) }),
      ...(runscPassed ? { runscPassed } : {}),
    });
    const serve = async (queue: Assignment[], runtimes: Runtime[]) => {
      const results = new Map<string, JobResult>();
      const ci = await queueCi(queue, (req, body, res) => {
        const url = req.url ?? '';
        if (url.endsWith('/result')) {
          const r = JSON.parse(body) as JobResult;
          results.set(r.jobId, r);
        }
        return json(res, 200, { cancel: false, ok: true });
      });
      const runner = new HeldRunner();
      const h = host(ci, runner, runtimes);
      await h.start();
      return { runner, results, h };
    };
    // A host with runsc: the CI's verdict goes to the runner, for this image only.
    const gv = await serve([withRuntime('1', 'gv', 'runsc', true), withRuntime('2', 'rc', 'runc')], ['runc', 'runsc']);
    await until('both running', () => (gv.runner.ran.length === 2 ? true : undefined), 20_000, 10);
    expect(gv.runner.asked.get('gv')?.spec.runtime).toBe('runsc');
    expect(gv.runner.asked.get('gv')?.opts.runscPassed).toBe(IMAGE);
    expect(gv.runner.asked.get('rc')?.opts.runscPassed).toBeUndefined();
    gv.runner.release('gv');
    gv.runner.release('rc');
    // A host without runsc (or a CI that placed a runsc job there anyway): refused, not run under runc.
    const plain = await serve([withRuntime('3', 'no-gvisor', 'runsc', true)], ['runc']);
    await until('refused', () => (plain.results.has('no-gvisor') ? true : undefined), 20_000, 10);
    expect(plain.runner.ran).toEqual([]);
    expect(plain.results.get('no-gvisor')?.passed).toBe(false);
    expect(plain.results.get('no-gvisor')?.reason).toMatch(/refused by the executor host: .*runtime runsc is not one this host offers/);
  }, 60_000);

  it('offers runsc only where the engine has it and it passed this host\'s own self-test on some image', () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-exec-verdicts-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    expect(offeredRuntimes(policy, ['runc', 'runsc'], dir)).toEqual(['runc']); // no table: not tested here
    writeFileSync(join(dir, 'runsc-compat.json'), JSON.stringify({ [IMAGE]: false }));
    expect(offeredRuntimes(policy, ['runc', 'runsc'], dir)).toEqual(['runc']); // tested, and failed
    writeFileSync(join(dir, 'runsc-compat.json'), '[true]');
    expect(offeredRuntimes(policy, ['runc', 'runsc'], dir)).toEqual(['runc']); // not a table
    writeFileSync(join(dir, 'runsc-compat.json'), JSON.stringify({ [IMAGE]: false, other: true }));
    expect(offeredRuntimes(policy, ['runc', 'runsc'], dir)).toEqual(['runc', 'runsc']);
    expect(offeredRuntimes(policy, ['runc'], dir)).toEqual(['runc']); // the engine has no runsc
    expect(offeredRuntimes({ ...policy, runtime: { default: 'runc', allowed: ['runc'] } }, ['runc', 'runsc'], dir)).toEqual(['runc']); // the policy forbids it
  });

  it('keeps the images of its running jobs through its image GC (imagesKept), removing only older ones it loaded', async () => {
    const A = `sha256:${'a'.repeat(64)}`;
    const B = `sha256:${'b'.repeat(64)}`;
    const C = `sha256:${'c'.repeat(64)}`;
    const withImage = (run: string, id: string, image: string): Assignment => ({ ...assignment(run, id), spec: JobSpec.parse({ id, image, command: ['true'] }), imageId: image });
    const queue = [withImage('1', 'on-a', A), withImage('2', 'on-b', B)];
    const ci = await queueCi(queue, (_req, _body, res) => json(res, 200, { cancel: false, ok: true }));
    const workDir = mkdtempSync(join(tmpdir(), 'airlock-exec-host-'));
    cleanups.push(() => rmSync(workDir, { recursive: true, force: true }));
    // Loaded by this host before: C long ago, A and B since (the engine has all three).
    writeFileSync(join(workDir, 'images.json'), JSON.stringify({ [C]: 1, [A]: 2, [B]: 3 }));
    const removed: string[] = [];
    const docker = { getImage: (id: string) => ({ inspect: async () => ({ Id: id }), remove: async () => void removed.push(id) }) } as unknown as Docker;
    const runner = new HeldRunner();
    const h = new ExecutorHost({ name: 'h', ciUrl: ci, token: 't'.repeat(32), docker, runner, policy, capacity: { slots: 2, memory: 4 * GiB, cpus: 2 }, runtimes: ['runc'], workDir, imagesKept: 1, logger: createLogger({ level: 'silent' }), claimWaitMs: 200 });
    cleanups.push(() => h.close());
    await h.start();
    await until('both jobs running', () => (runner.ran.length === 2 ? true : undefined), 20_000, 10);
    // One image kept: C went; A and B are in use by the running jobs, though over the count.
    expect(removed).toEqual([C]);
    runner.release('on-a');
    runner.release('on-b');
    await until('both over', () => (h.runningRuns.length === 0 ? true : undefined), 20_000, 10);
  }, 60_000);

  it("a claim answered 503 with Retry-After waits as long as asked before it claims again (a follower with no leader says 2 s)", async () => {
    const claims: number[] = [];
    const ci = await fakeCi((req, _body, res) => {
      const url = req.url ?? '';
      if (url === '/api/executor/register') return json(res, 200, { leaseMs: 60_000 });
      if (url === '/api/executor/claim') {
        claims.push(performance.now());
        if (claims.length === 1) {
          res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '3' });
          return res.end(JSON.stringify({ code: 'AIRLOCK_E_UNAVAILABLE', message: 'no replica leads at the moment' }));
        }
        return json(res, 204);
      }
      json(res, 404, {});
    });
    const h = host(ci, new HeldRunner());
    await h.start();
    await until('the first claim', () => (claims.length >= 1 ? true : undefined), 20_000, 10);
    // Without the Retry-After, the loop's own backoff (250 ms, then doubling) claims again four times in 2 s.
    await new Promise((r) => setTimeout(r, 2_000));
    expect(claims).toHaveLength(1);
    await until('the claim after the wait', () => (claims.length >= 2 ? true : undefined), 20_000, 10);
    expect(claims[1]! - claims[0]!).toBeGreaterThanOrEqual(2_900);
  });

  it('the CI answering 503 (a follower replica with no leader) fails no job: the result and the artifacts are sent again and taken, a download that fails gives the job back unreported', async () => {
    // Job `art` leaves an artifact; `src` has a source to download; `res` only a result.
    // A lease long enough for the tries (each call is sent again for at most one lease).
    const art: Assignment = { ...assignment('a', 'art'), spec: JobSpec.parse({ id: 'art', image: IMAGE, command: ['true'], artifacts: ['out.txt'] }), leaseMs: 60_000 };
    const src: Assignment = { ...assignment('b', 'src'), sourceBytes: 10, leaseMs: 60_000 };
    const res0: Assignment = { ...assignment('c', 'res'), leaseMs: 60_000 };
    const queue = [art, src, res0];
    const tries: Record<string, number> = {};
    const results: JobResult[] = [];
    let uploaded = '';
    const ci = await queueCi(queue, (req, body, res) => {
      const url = req.url ?? '';
      const m = /^\/api\/executor\/runs\/([a-f0-9]{32})\/(\w+)/.exec(url);
      if (!m) return json(res, 404, {});
      const key = `${m[1]!.slice(0, 1)}:${m[2]!}`;
      tries[key] = (tries[key] ?? 0) + 1;
      const unavailable = (): void => json(res, 503, { code: 'AIRLOCK_E_UNAVAILABLE', message: 'no replica leads at the moment' });
      // Twice 503 for each result and artifacts upload, then taken; the source never comes.
      if (m[2] === 'source') return unavailable();
      if ((m[2] === 'result' || m[2] === 'artifacts') && tries[key]! <= 2) return unavailable();
      if (m[2] === 'artifacts') uploaded += body;
      if (m[2] === 'result') results.push(JSON.parse(body) as JobResult);
      return json(res, 200, { cancel: false, ok: true });
    });
    // A runner whose job leaves `out.txt` where the host collects artifacts.
    const ran: string[] = [];
    const runner: JobRunnerPort = {
      async run(spec: JobSpec, opts: RunOptions): Promise<JobResult> {
        ran.push(spec.id);
        const files = spec.artifacts.length > 0 && opts.artifactsDir ? [{ path: 'out.txt', bytes: 5, kind: 'file' as const }] : [];
        if (files.length > 0) {
          mkdirSync(opts.artifactsDir!, { recursive: true });
          writeFileSync(join(opts.artifactsDir!, 'out.txt'), 'made\n');
        }
        return { version: 1, jobId: spec.id, image: spec.image, imageId: spec.image, runtime: 'runc', passed: true, exitCode: 0, oomKilled: false, timedOut: false, cancelled: false, logTruncated: false, logBytes: 0, limits: policy.limits, durations: { setupMs: 0, runMs: 0, teardownMs: 0, totalMs: 0 }, reason: 'succeeded', artifacts: files };
      },
    };
    const h = host(ci, runner);
    await h.start();
    const state = (): string => JSON.stringify({ tries, results: results.map((r) => r.jobId), ran });
    await until('two results taken', () => (results.length >= 2 ? true : undefined), 30_000, 10).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}: ${state()}`);
    });
    await until('the source asked for', () => ((tries['b:source'] ?? 0) >= 1 ? true : undefined), 30_000, 10);
    await until('every run over', () => (queue.length === 0 && h.runningRuns.length === 0 ? true : undefined), 30_000, 10);
    // Each sent until taken, once taken: passed, the artifact with it.
    expect(results.map((r) => [r.jobId, r.passed]).sort()).toEqual([['art', true], ['res', true]]);
    expect(tries['a:result']).toBe(3);
    expect(tries['c:result']).toBe(3);
    expect(tries['a:artifacts']).toBe(3);
    expect(uploaded).toContain('made');
    // The source never came: the job is given back (its lease left to run out), not reported failed.
    expect(ran.sort()).toEqual(['art', 'res']);
    expect(results.some((r) => r.jobId === 'src')).toBe(false);
  }, 60_000);

  it('a run waiting on an image another run loads, whose load fails for that run (moved, taken back), loads it under its own run', async () => {
    // Leases long enough that no heartbeat comes into it: x fails on its image alone.
    const x = { ...assignment('5', 'x'), leaseMs: 60_000 };
    const y = { ...assignment('6', 'y'), leaseMs: 60_000 };
    const queue = [x, y];
    const results: string[] = [];
    const imageAsks: string[] = [];
    const ci = await queueCi(queue, (req, body, res) => {
      const url = req.url ?? '';
      const run = /runs\/([a-f0-9])/.exec(url)?.[1] ?? '';
      if (url.endsWith('/image')) {
        imageAsks.push(run);
        res.writeHead(200, { 'content-type': 'application/x-tar' });
        res.write(Buffer.alloc(4096, 0x41));
        // x's download is ended by the CI (x was moved to another host); y's comes whole.
        if (run === '5') setTimeout(() => res.socket?.destroy(), 300);
        else res.end();
        return;
      }
      if (run === '5') return json(res, 409, { message: 'moved' });
      if (!url.endsWith('/result')) return json(res, 200, { cancel: false });
      results.push((JSON.parse(body) as JobResult).jobId);
      return json(res, 200, { ok: true });
    });
    let loaded = false;
    const docker = {
      getImage: () => ({ inspect: async () => (loaded ? { Id: IMAGE } : Promise.reject(Object.assign(new Error('no such image'), { statusCode: 404 }))), remove: async () => undefined }),
      loadImage: async (tar: NodeJS.ReadableStream) => {
        for await (const _ of tar as AsyncIterable<Buffer>);
        loaded = true;
        return Readable.from([]);
      },
    } as unknown as Docker;
    const workDir = mkdtempSync(join(tmpdir(), 'airlock-exec-host-'));
    cleanups.push(() => rmSync(workDir, { recursive: true, force: true }));
    const runner = new HeldRunner();
    const h = new ExecutorHost({ name: 'h', ciUrl: ci, token: 't'.repeat(32), docker, runner, policy, capacity: { slots: 2, memory: 4 * GiB, cpus: 2 }, runtimes: ['runc'], workDir, logger: createLogger({ level: 'silent' }), claimWaitMs: 200 });
    cleanups.push(() => h.close());
    await h.start();
    await until('y running', () => (runner.ran.includes('y') ? true : undefined), 20_000, 10);
    expect(imageAsks).toEqual(['5', '6']); // y joined x's load, then loaded it itself
    expect(runner.ran).toEqual(['y']);
    runner.release('y');
    await until('y reported', () => (results.includes('y') ? true : undefined), 20_000, 10);
    expect(results).toEqual(['y']);
  }, 60_000);

  it('an image whose body breaks off while it loads gives the job back unreported, not failed', async () => {
    const a: Assignment = { ...assignment('d', 'img'), leaseMs: 60_000 };
    const queue = [a];
    const results: string[] = [];
    let asked = 0;
    const ci = await queueCi(queue, (req, body, res) => {
      const url = req.url ?? '';
      if (url.endsWith('/image')) {
        asked++;
        // Part of a tar, then the connection drops.
        res.writeHead(200, { 'content-type': 'application/x-tar' });
        res.write(Buffer.alloc(4096, 0x41));
        setTimeout(() => res.socket?.destroy(), 50);
        return;
      }
      if (url.endsWith('/result')) results.push(body);
      return json(res, 200, { cancel: false, ok: true });
    });
    // An engine without the image, whose load reads the stream as the engine's API client does
    // (a stream that fails fails the load with the stream's error).
    const docker = {
      getImage: () => ({ inspect: async () => Promise.reject(Object.assign(new Error('no such image'), { statusCode: 404 })), remove: async () => undefined }),
      loadImage: async (tar: NodeJS.ReadableStream) => {
        for await (const _ of tar as AsyncIterable<Buffer>);
        throw new Error('the test engine never loads');
      },
    } as unknown as Docker;
    const workDir = mkdtempSync(join(tmpdir(), 'airlock-exec-host-'));
    cleanups.push(() => rmSync(workDir, { recursive: true, force: true }));
    const runner = new HeldRunner();
    const h = new ExecutorHost({ name: 'h', ciUrl: ci, token: 't'.repeat(32), docker, runner, policy, capacity: { slots: 2, memory: GiB, cpus: 2 }, runtimes: ['runc'], workDir, logger: createLogger({ level: 'silent' }), claimWaitMs: 200 });
    cleanups.push(() => h.close());
    await h.start();
    await until('the image asked for', () => (asked >= 1 ? true : undefined), 20_000, 10);
    await until('the run over', () => (h.runningRuns.length === 0 ? true : undefined), 20_000, 10);
    expect(runner.ran).toEqual([]);
    expect(results).toEqual([]); // given back: its lease left to run out, no failing result
  }, 60_000);
});
