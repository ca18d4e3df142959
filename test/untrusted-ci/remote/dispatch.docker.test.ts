/**
 * RemoteJobs (untrusted-ci/remote/dispatch.ts), the leader's queue for executor hosts, driven
 * directly as the routes would, with a fake clock for the leases (the sweeper's timer is real; a
 * lease runs out when the clock is moved past it). The real engine answers the image inspect and
 * `docker save` (the busybox base image). Every host here is hostile in one way or another.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import tar from 'tar-stream';
import { afterEach, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { ArtifactRejectedError, ArtifactTooLargeError, CancelledError, ConflictError, ExecutorFailedError, InvalidInputError, NoLeaderError, NotFoundError, PolicyViolationError, RuntimeUnavailableError } from '#shared/errors.js';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import type { JobResult } from '#shared/runner/result.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import { RemoteJobs, type RemoteRunRequest } from '../../../untrusted-ci/remote/dispatch.js';
import type { Assignment, Capacity } from '../../../untrusted-ci/remote/protocol.js';
import { BUSYBOX, STATE_DIR, spec } from '../../support/docker.js';
import { until } from '../../support/until.js';

const docker = createDocker();
const policy = loadJobPolicy();
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const LEASE = 1000;
const HOST: Capacity = { slots: 4, memory: 4 * GiB, cpus: 4, runtimes: ['runc'] };
const ROOMY = { slots: 4, memory: 4 * GiB, cpus: 4 };

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

/** By default the bootstrap's own runsc verdicts (scripts/base-images.sh): busybox passes there. */
function setup(o: { maxClaims?: number; overtakes?: number; holds?: () => boolean; policy?: JobPolicy; runnerStateDir?: string } = {}) {
  const clock = { t: 1_000_000 };
  const jobs = new RemoteJobs({ docker, policy, runnerStateDir: STATE_DIR, leaseMs: LEASE, logger: createLogger({ level: 'silent' }), now: () => clock.t, ...o });
  cleanups.push(() => jobs.close());
  const dir = mkdtempSync(join(tmpdir(), 'airlock-dispatch-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return { jobs, clock, dir };
}

interface Started {
  done: Promise<JobResult>;
  settled: () => 'pending' | 'resolved' | 'rejected';
  logs: string[];
  claimedBy: string[];
  abort: AbortController;
  /** The job's id. */
  spec: string;
}

/** `run` in the background, with its log and claims recorded. */
function start(jobs: RemoteJobs, input: Parameters<typeof spec>[0], extra: Partial<RemoteRunRequest> = {}): Started {
  const logs: string[] = [];
  const claimedBy: string[] = [];
  const abort = new AbortController();
  let state: 'pending' | 'resolved' | 'rejected' = 'pending';
  const s = spec(input);
  const done = jobs.run({
    build: 1,
    job: s.id,
    spec: s,
    signal: abort.signal,
    onLog: (d) => void logs.push(d.toString('utf8')),
    onClaimed: (h, ahead) => void claimedBy.push(ahead ? `${h} ahead` : h),
    onStarted: (h) => void claimedBy.push(`${h} started`),
    ...extra,
  });
  done.then(
    () => (state = 'resolved'),
    () => (state = 'rejected'),
  );
  return { done, settled: () => state, logs, claimedBy, abort, spec: s.id };
}

/** Claims until one comes (the job is queued after an image inspect). */
async function claim(jobs: RemoteJobs, host: string, free = ROOMY): Promise<Assignment> {
  return until(`a claim by ${host}`, () => jobs.claim(host, { free, waitMs: 0 }), 20_000, 10);
}

async function queued(jobs: RemoteJobs, n: number): Promise<void> {
  await until(`${n} queued`, () => (jobs.counts.queued === n ? true : undefined), 20_000, 10);
}

function result(a: Assignment, over: Partial<JobResult> = {}): JobResult {
  return {
    version: 1,
    jobId: a.spec.id,
    image: a.spec.image,
    imageId: a.imageId,
    runtime: 'runc',
    passed: true,
    exitCode: 0,
    oomKilled: false,
    timedOut: false,
    cancelled: false,
    logTruncated: false,
    logBytes: 0,
    limits: policy.limits,
    durations: { setupMs: 1, runMs: 1, teardownMs: 1, totalMs: 3 },
    reason: 'succeeded',
    artifacts: [],
    ...over,
  };
}

/** A tar as an executor host sends it: every name under one top directory. */
function tarOf(entries: { name: string; body?: string; type?: 'file' | 'symlink' | 'directory'; linkname?: string; size?: number }[], end = true): Readable {
  const pack = tar.pack();
  for (const e of entries) {
    if (e.type === 'symlink') pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname ?? '' });
    else if (e.type === 'directory') pack.entry({ name: e.name, type: 'directory' });
    else pack.entry({ name: e.name, ...(e.size !== undefined ? { size: e.size } : {}) }, e.body ?? '');
  }
  if (end) pack.finalize();
  return pack as unknown as Readable;
}

const leaseRunsOut = async (jobs: RemoteJobs, clock: { t: number }, queuedAfter: number): Promise<void> => {
  clock.t += LEASE + 1;
  await queued(jobs, queuedAfter);
};

describe('RemoteJobs: placement', () => {
  it('gives a host the first queued job that fits what it has free, as the spec names the image by id', async () => {
    const { jobs } = setup();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '512m', cpus: 1 } });
    await queued(jobs, 1);
    expect(await jobs.claim('a', { free: { slots: 1, memory: 256 * MiB, cpus: 4 }, waitMs: 0 })).toBeUndefined();
    expect(await jobs.claim('a', { free: { slots: 1, memory: 4 * GiB, cpus: 0.5 }, waitMs: 0 })).toBeUndefined();
    expect(await jobs.claim('a', { free: { slots: 0, memory: 4 * GiB, cpus: 4 }, waitMs: 0 })).toBeUndefined();
    const a = await claim(jobs, 'a', { slots: 1, memory: 512 * MiB, cpus: 1 });
    expect(a.run).toMatch(/^[a-f0-9]{32}$/);
    expect(a.imageId).toMatch(/^sha256:/);
    expect(a.spec.image).toBe(a.imageId);
    expect(a.leaseMs).toBe(LEASE);
    expect(j.claimedBy).toEqual(['a']);
    expect(jobs.counts).toEqual({ queued: 0, running: 1, waiting: 0 });
  });

  it('a host without the job\'s runtime never gets it, and does not wait for it', async () => {
    const { jobs } = setup({ overtakes: 0 });
    jobs.register('gvisor-only', { ...HOST, runtimes: ['runsc'] });
    jobs.register('runc-host', HOST);
    start(jobs, { image: BUSYBOX, command: ['true'], runtime: 'runc' });
    const second = start(jobs, { image: BUSYBOX, command: ['true'], runtime: 'runsc' });
    await queued(jobs, 2);
    // The runc job is first and never fits this host: passed over without counting, the runsc one comes.
    const a = await claim(jobs, 'gvisor-only');
    expect(second.claimedBy).toEqual(['gvisor-only']);
    expect(a.spec.runtime).toBe('runsc');
    const b = await claim(jobs, 'runc-host');
    expect(b.spec.runtime ?? 'runc').toBe('runc');
  });

  it('the runtime is decided here and sent: the policy\'s default filled in, runsc only on an image this host\'s self-test passed, and the host told it passed', async () => {
    const busybox = (await docker.getImage(BUSYBOX).inspect()).Id;
    const verdicts = (passed: boolean): string => {
      const d = mkdtempSync(join(tmpdir(), 'airlock-verdicts-'));
      cleanups.push(() => rmSync(d, { recursive: true, force: true }));
      writeFileSync(join(d, 'runsc-compat.json'), JSON.stringify({ [busybox]: passed }));
      return d;
    };
    const gvisor = { ...HOST, runtimes: ['runc', 'runsc'] } satisfies Capacity;
    // A policy whose default is runsc: a job that names no runtime runs under runsc, and the host
    // is told so (with its own policy's default of runc it would otherwise run it under runc).
    const strict = setup({ policy: { ...policy, runtime: { default: 'runsc', allowed: ['runc', 'runsc'] } }, runnerStateDir: verdicts(true) });
    strict.jobs.register('a', gvisor);
    start(strict.jobs, { image: BUSYBOX, command: ['true'] });
    const a = await claim(strict.jobs, 'a');
    expect(a.spec.runtime).toBe('runsc');
    expect(a.runscPassed).toBe(true);
    // Under the shipped policy (runc by default): runc named, no word on runsc.
    const plain = setup({ runnerStateDir: verdicts(true) });
    plain.jobs.register('a', gvisor);
    start(plain.jobs, { image: BUSYBOX, command: ['true'] });
    const b = await claim(plain.jobs, 'a');
    expect(b.spec.runtime).toBe('runc');
    expect(b.runscPassed).toBeUndefined();
    // An image this host's self-test failed (or never tested): the job fails at once, as it would
    // on this host's runner, and no host ever gets it.
    for (const dir of [verdicts(false), mkdtempSync(join(tmpdir(), 'airlock-verdicts-'))]) {
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      const failed = setup({ runnerStateDir: dir });
      failed.jobs.register('a', gvisor);
      const j = start(failed.jobs, { image: BUSYBOX, command: ['true'], runtime: 'runsc' });
      await expect(j.done).rejects.toBeInstanceOf(RuntimeUnavailableError);
      expect(failed.jobs.counts).toEqual({ queued: 0, running: 0, waiting: 0 });
    }
  });

  it('a job that does not fit now is passed over at most `overtakes` times, then the host waits for it', async () => {
    const { jobs } = setup({ overtakes: 2 });
    jobs.register('a', HOST);
    const big = start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '1g' } });
    await queued(jobs, 1);
    for (let i = 0; i < 3; i++) start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '256m' } });
    await queued(jobs, 4);
    const small = { slots: 4, memory: 512 * MiB, cpus: 4 };
    expect((await jobs.claim('a', { free: small, waitMs: 0 }))?.spec.limits.memory).toBe(256 * MiB);
    expect((await jobs.claim('a', { free: small, waitMs: 0 }))?.spec.limits.memory).toBe(256 * MiB);
    // Twice overtaken: the third small job fits, and still waits behind the big one.
    expect(await jobs.claim('a', { free: small, waitMs: 0 })).toBeUndefined();
    const a = await claim(jobs, 'a');
    expect(big.claimedBy).toEqual(['a']);
    expect(a.spec.limits.memory).toBe(GiB);
  });

  it('only a job actually passed over counts as overtaken: a host that claims with no room, again and again, does not stop other hosts', async () => {
    const { jobs } = setup({ overtakes: 2 });
    jobs.register('full', HOST);
    jobs.register('b', HOST);
    start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '1g' } });
    await queued(jobs, 1);
    const small = start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '256m' } });
    await queued(jobs, 2);
    for (let i = 0; i < 10; i++) expect(await jobs.claim('full', { free: { slots: 1, memory: 0, cpus: 4 }, waitMs: 0 })).toBeUndefined();
    expect((await jobs.claim('b', { free: { slots: 1, memory: 512 * MiB, cpus: 4 }, waitMs: 0 }))?.spec.limits.memory).toBe(256 * MiB);
    expect(small.claimedBy).toEqual(['b']);
  });

  it('a job that fits no registered host fails at once, naming its figures and the hosts\'', async () => {
    const { jobs } = setup();
    jobs.register('small', { ...HOST, memory: 512 * MiB, cpus: 2 });
    const j = start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '1g' } });
    const e = await j.done.catch((x: unknown) => x);
    expect(e).toBeInstanceOf(PolicyViolationError);
    expect((e as Error).message).toContain('1 GiB');
    expect((e as Error).message).toContain('small: 512 MiB, 2 CPUs, runc');
    expect(jobs.counts.queued).toBe(0);
  });

  it('a network: packages job is refused (executor hosts serve no package sources)', async () => {
    const { jobs } = setup();
    await expect(jobs.run({ build: 1, job: 'x', spec: spec({ image: BUSYBOX, command: ['true'], network: 'packages' }) })).rejects.toBeInstanceOf(PolicyViolationError);
  });

  it('a claim of a host that never registered is a 409 (a new leader: register again)', async () => {
    const { jobs } = setup();
    await expect(jobs.claim('stranger', { free: ROOMY, waitMs: 0 })).rejects.toBeInstanceOf(ConflictError);
  });

  it('one waiting claim per host: a new claim of the same host ends the one before (a host cannot hold the leader with thousands)', async () => {
    const { jobs } = setup();
    jobs.register('a', HOST);
    jobs.register('b', HOST);
    const first = jobs.claim('a', { free: ROOMY, waitMs: 20_000 });
    const other = jobs.claim('b', { free: ROOMY, waitMs: 20_000 });
    const second = jobs.claim('a', { free: ROOMY, waitMs: 0 });
    expect(await first).toBeUndefined();
    expect(await second).toBeUndefined();
    // Another host's waiting claim is not ended by it.
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    expect((await other)?.spec.id).toBeDefined();
    expect(j.claimedBy).toEqual(['b']);
  }, 20_000);
});

describe('RemoteJobs: claims ahead (a host whose slots are busy makes a job ready)', () => {
  const claimAhead = (jobs: RemoteJobs, host: string, waitMs = 0) => jobs.claim(host, { free: ROOMY, waitMs, ahead: true });

  it('an ahead claim is served only with a job no other host waits for with a free slot', async () => {
    const { jobs } = setup();
    jobs.register('a', HOST);
    jobs.register('b', HOST);
    // a's claim waits first: it is the first one woken when the job comes.
    const aAhead = claimAhead(jobs, 'a', 20_000);
    const bFree = jobs.claim('b', { free: ROOMY, waitMs: 20_000 });
    const one = start(jobs, { image: BUSYBOX, command: ['true'] });
    expect((await bFree)?.spec.id).toBe(one.spec);
    expect(one.claimedBy).toEqual(['b']);
    // b is not waiting now (its host would claim again): the next job may go ahead to a.
    const two = start(jobs, { image: BUSYBOX, command: ['true'] });
    const got = await aAhead;
    expect(got?.spec.id).toBe(two.spec);
    expect(two.claimedBy).toEqual(['a ahead']);
    expect(jobs.executors().find((e) => e.name === 'a')).toMatchObject({ running: 0, waiting: 1 });
    expect(jobs.executors().find((e) => e.name === 'b')).toMatchObject({ running: 1, waiting: 0 });
    // Started on the host's word: running from then on, and the host's from then on.
    expect(jobs.start('a', got!.run)).toEqual({ cancel: false });
    expect(two.claimedBy).toEqual(['a ahead', 'a started']);
    expect(jobs.executors().find((e) => e.name === 'a')).toMatchObject({ running: 1, waiting: 0 });
    expect(await jobs.claim('b', { free: ROOMY, waitMs: 0 })).toBeUndefined();
    jobs.result('a', got!.run, result(got!));
    expect((await two.done).passed).toBe(true);
  }, 20_000);

  it('a job claimed ahead and not started moves to a host that claims with a free slot and finds the queue empty; the first host\'s run is refused from then on', async () => {
    const { jobs, clock } = setup({ maxClaims: 2 });
    jobs.register('a', HOST);
    jobs.register('b', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    await queued(jobs, 1);
    const ahead = (await claimAhead(jobs, 'a'))!;
    expect(ahead.spec.id).toBe(j.spec);
    // Another ahead claim takes nothing from it; a claim with a free slot does.
    expect(await claimAhead(jobs, 'b')).toBeUndefined();
    const moved = (await jobs.claim('b', { free: ROOMY, waitMs: 0 }))!;
    expect(moved.spec.id).toBe(j.spec);
    expect(moved.run).not.toBe(ahead.run);
    expect(j.claimedBy).toEqual(['a ahead', 'b']);
    expect(j.logs.join('')).toContain('moved to another executor host: a had not started it');
    expect(() => jobs.start('a', ahead.run)).toThrow(ConflictError);
    expect(() => jobs.heartbeat('a', ahead.run)).toThrow(ConflictError);
    await expect(jobs.artifacts('a', ahead.run, tarOf([]))).rejects.toBeInstanceOf(ConflictError);
    expect(() => jobs.result('a', ahead.run, result(ahead))).toThrow(ConflictError);
    // The move is no claim: with maxClaims 2, b's lost lease still queues it again, and c runs it.
    await leaseRunsOut(jobs, clock, 1);
    jobs.register('c', HOST);
    const last = await claim(jobs, 'c');
    jobs.result('c', last.run, result(last));
    expect((await j.done).passed).toBe(true);
  }, 20_000);

  it('a run claimed ahead sends no artifacts before its start, and a move gives the job no new log cap', async () => {
    const { jobs, dir } = setup();
    jobs.register('a', HOST);
    jobs.register('b', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'], artifacts: ['out/**'], limits: { logCap: '1k' } }, { artifactsDir: join(dir, 'art') });
    await queued(jobs, 1);
    const a = (await claimAhead(jobs, 'a'))!;
    await expect(jobs.artifacts('a', a.run, tarOf([{ name: 'top/out/planted', body: 'x' }]))).rejects.toBeInstanceOf(ConflictError);
    // a fills the job's whole log cap before it is moved.
    jobs.log('a', a.run, 0, Buffer.alloc(200 * 1024, 0x61));
    const b = (await jobs.claim('b', { free: ROOMY, waitMs: 0 }))!;
    const before = j.logs.join('').length;
    jobs.log('b', b.run, 0, Buffer.from('more from b'));
    expect(j.logs.join('').length).toBe(before);
    expect(readdirSync(dir)).not.toContain('art');
  }, 20_000);

  it('a started job, a job claimed with a free slot, and a job that does not fit stay where they are', async () => {
    const { jobs } = setup();
    jobs.register('a', HOST);
    jobs.register('b', HOST);
    jobs.register('small', { ...HOST, memory: 512 * MiB });
    // Queued one after another (each is queued after an image inspect).
    start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '256m' } });
    await queued(jobs, 1);
    start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '1g' } });
    await queued(jobs, 2);
    start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '256m' } });
    await queued(jobs, 3);
    const started = (await claimAhead(jobs, 'a'))!;
    jobs.start('a', started.run);
    const big = (await claimAhead(jobs, 'a'))!;
    expect(big.spec.limits.memory).toBe(GiB);
    await jobs.claim('b', { free: ROOMY, waitMs: 0 });
    expect(jobs.counts.queued).toBe(0);
    // The big one is a's, unstarted: too large for `small`, and a free claim of b with too little free memory takes nothing.
    expect(await jobs.claim('small', { free: { slots: 1, memory: 512 * MiB, cpus: 4 }, waitMs: 0 })).toBeUndefined();
    expect(await jobs.claim('b', { free: { slots: 1, memory: 512 * MiB, cpus: 4 }, waitMs: 0 })).toBeUndefined();
    expect(jobs.heartbeat('a', big.run)).toEqual({ cancel: false });
    expect(jobs.heartbeat('a', started.run)).toEqual({ cancel: false });
    // With room, b takes it.
    expect((await jobs.claim('b', { free: ROOMY, waitMs: 0 }))?.spec.id).toBe(big.spec.id);
  }, 20_000);

  it('a host waiting with a free slot holds back an ahead claim only for a job that fits what it has free', async () => {
    const { jobs } = setup();
    jobs.register('a', HOST);
    jobs.register('b', HOST);
    // b waits with 512 MiB free: a job of 1 GiB is no job for it now, and goes ahead to a.
    const aAhead = claimAhead(jobs, 'a', 20_000);
    const bFree = jobs.claim('b', { free: { slots: 1, memory: 512 * MiB, cpus: 4 }, waitMs: 20_000 });
    const big = start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '1g' } });
    expect((await aAhead)?.spec.id).toBe(big.spec);
    const small = start(jobs, { image: BUSYBOX, command: ['true'], limits: { memory: '256m' } });
    expect((await bFree)?.spec.id).toBe(small.spec);
  }, 20_000);

  it('a cancelled job claimed ahead: the host is told at its start', async () => {
    const { jobs } = setup();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    await queued(jobs, 1);
    const a = (await claimAhead(jobs, 'a'))!;
    j.abort.abort();
    await expect(j.done).rejects.toBeInstanceOf(CancelledError);
    expect(jobs.start('a', a.run)).toEqual({ cancel: true, reason: 'the build was cancelled' });
    expect(j.claimedBy).toEqual(['a ahead']); // not marked running
    // Nobody else gets it.
    jobs.register('b', HOST);
    expect(await jobs.claim('b', { free: ROOMY, waitMs: 0 })).toBeUndefined();
  }, 20_000);
});

describe('RemoteJobs: leases', () => {
  it('a lease not renewed is taken back: the job is queued again first, a new host gets a new run id, the old id is refused', async () => {
    const { jobs, clock } = setup();
    jobs.register('a', HOST);
    jobs.register('b', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    const first = await claim(jobs, 'a');
    clock.t += LEASE - 10;
    expect(jobs.heartbeat('a', first.run)).toEqual({ cancel: false }); // renewed
    clock.t += LEASE - 10;
    const later = start(jobs, { image: BUSYBOX, command: ['true'] });
    await queued(jobs, 1);
    expect(jobs.counts.running).toBe(1); // still held: renewed above
    await leaseRunsOut(jobs, clock, 2);
    const again = await claim(jobs, 'b');
    expect(again.spec.id).toBe(first.spec.id); // first in line, before `later`
    expect(again.run).not.toBe(first.run);
    expect(j.claimedBy).toEqual(['a', 'b']);
    expect(j.logs.join('')).toContain('executor host a stopped answering');
    expect(() => jobs.heartbeat('a', first.run)).toThrow(ConflictError);
    expect(() => jobs.log('a', first.run, 0, Buffer.from('x'))).toThrow(ConflictError);
    expect(() => jobs.result('a', first.run, result(first))).toThrow(ConflictError);
    jobs.result('b', again.run, result(again));
    expect((await j.done).passed).toBe(true);
    expect(later.settled()).toBe('pending');
  });

  it('a lease that ran out is over at once, before the sweeper has taken the job back: a late heartbeat does not revive it', async () => {
    const { jobs, clock } = setup();
    jobs.register('a', HOST);
    start(jobs, { image: BUSYBOX, command: ['true'] });
    const a = await claim(jobs, 'a');
    clock.t += LEASE + 1;
    expect(() => jobs.heartbeat('a', a.run)).toThrow(ConflictError);
    expect(() => jobs.log('a', a.run, 0, Buffer.from('late'))).toThrow(ConflictError);
    await queued(jobs, 1);
  });

  it('a job taken back maxClaims times fails with a retryable ExecutorFailedError', async () => {
    const { jobs, clock } = setup({ maxClaims: 2 });
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    await claim(jobs, 'a');
    await leaseRunsOut(jobs, clock, 1);
    await claim(jobs, 'a');
    clock.t += LEASE + 1;
    const e = await j.done.catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecutorFailedError);
    expect((e as ExecutorFailedError).retryable).toBe(true);
    expect((e as Error).message).toContain('claimed 2 times');
    expect(jobs.counts).toEqual({ queued: 0, running: 0, waiting: 0 });
  });

  it('cancel of a queued job: CancelledError at once, and it leaves the queue', async () => {
    const { jobs } = setup();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    await queued(jobs, 1);
    j.abort.abort();
    await expect(j.done).rejects.toBeInstanceOf(CancelledError);
    expect(jobs.counts.queued).toBe(0);
    expect(await jobs.claim('a', { free: ROOMY, waitMs: 0 })).toBeUndefined();
  });

  it('cancel of a claimed job: CancelledError at once, the host is told, its late log and result are dropped, and its heartbeats do not keep the run', async () => {
    const { jobs, clock } = setup();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    const a = await claim(jobs, 'a');
    j.abort.abort();
    await expect(j.done).rejects.toBeInstanceOf(CancelledError);
    expect(jobs.heartbeat('a', a.run).cancel).toBe(true);
    expect(jobs.log('a', a.run, 0, Buffer.from('after the cancel')).cancel).toBe(true);
    expect(j.logs.join('')).not.toContain('after the cancel'); // the job's log is closed by now
    // A host that keeps heartbeating and never reports does not hold the run (and its memory) forever.
    clock.t += LEASE / 2;
    expect(jobs.heartbeat('a', a.run).cancel).toBe(true);
    clock.t += LEASE / 2 + 1;
    expect(() => jobs.heartbeat('a', a.run)).toThrow(ConflictError); // the one before did not renew it
    await until('the cancelled run dropped', () => (jobs.counts.running === 0 ? true : undefined), 20_000, 10);
  });

  it('cancelled while the job\'s image is looked up: CancelledError, and it is never queued', async () => {
    const abort = new AbortController();
    const slow = { getImage: (name: string) => ({ inspect: async () => {
      abort.abort(); // the build is cancelled while the engine answers
      return docker.getImage(name).inspect();
    } }) } as unknown as typeof docker;
    const jobs = new RemoteJobs({ docker: slow, policy, leaseMs: LEASE, logger: createLogger({ level: 'silent' }) });
    cleanups.push(() => jobs.close());
    jobs.register('a', HOST);
    const s = spec({ image: BUSYBOX, command: ['true'] });
    const settled = jobs.run({ build: 1, job: s.id, spec: s, signal: abort.signal }).then(
      () => 'resolved',
      (e: unknown) => (e instanceof CancelledError ? 'cancelled' : String(e)),
    );
    expect(await Promise.race([settled, until('queued', () => (jobs.counts.queued > 0 ? 'queued' : undefined), 20_000, 10)])).toBe('cancelled');
    expect(jobs.counts.queued).toBe(0);
  });

  it('a result after a cancel is taken and dropped', async () => {
    const { jobs } = setup();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    const a = await claim(jobs, 'a');
    j.abort.abort();
    await expect(j.done).rejects.toBeInstanceOf(CancelledError);
    jobs.result('a', a.run, result(a));
    expect(jobs.counts.running).toBe(0);
  });

  it('closed (the replica stopped leading) and opened again (it leads again): jobs are taken again, after a lease', async () => {
    const { jobs, clock } = setup();
    jobs.register('a', HOST);
    const old = start(jobs, { image: BUSYBOX, command: ['true'] });
    await queued(jobs, 1);
    jobs.close();
    await expect(old.done).rejects.toBeInstanceOf(CancelledError);
    jobs.open();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    await queued(jobs, 1);
    // The hosts of the leader before may still run its jobs until their leases end: nothing handed out for a lease.
    expect(await jobs.claim('a', { free: ROOMY, waitMs: 0 })).toBeUndefined();
    clock.t += LEASE + 1;
    const a = await claim(jobs, 'a');
    expect(j.claimedBy).toEqual(['a']);
    jobs.result('a', a.run, result(a));
    expect((await j.done).passed).toBe(true);
  });
});

describe('RemoteJobs on a leader that cannot tell it still leads (holds false: paused past its lease and woken)', () => {
  it('hands out no job and renews no lease (503) while it cannot tell; goes on once it can', async () => {
    let holds = true;
    const { jobs } = setup({ holds: () => holds });
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    await queued(jobs, 1);
    holds = false;
    await expect(jobs.claim('a', { free: ROOMY, waitMs: 0 })).rejects.toBeInstanceOf(NoLeaderError);
    expect(jobs.counts).toEqual({ queued: 1, running: 0, waiting: 0 });
    holds = true;
    const a = await claim(jobs, 'a');
    holds = false;
    // Every call on the run: the host's fence counts none of them as a renewal.
    expect(() => jobs.heartbeat('a', a.run)).toThrow(NoLeaderError);
    expect(() => jobs.log('a', a.run, 0, Buffer.from('x'))).toThrow(NoLeaderError);
    expect(() => jobs.result('a', a.run, result(a))).toThrow(NoLeaderError);
    expect(j.settled()).toBe('pending');
    holds = true;
    jobs.result('a', a.run, result(a));
    expect((await j.done).passed).toBe(true);
  });
});

describe('RemoteJobs: what a host sends', () => {
  it('log pieces in order: one sent again is ignored, a gap is a 409, past the cap the rest is dropped with a note', async () => {
    const { jobs } = setup();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'], limits: { logCap: '1k' } });
    const a = await claim(jobs, 'a');
    jobs.log('a', a.run, 0, Buffer.from('piece-0;'));
    jobs.log('a', a.run, 0, Buffer.from('piece-0-again;'));
    expect(() => jobs.log('a', a.run, 2, Buffer.from('piece-2;'))).toThrow(ConflictError);
    jobs.log('a', a.run, 1, Buffer.from('piece-1;'));
    expect(j.logs).toEqual(['piece-0;', 'piece-1;']);
    // The cap: 1 KiB plus 64 KiB for the runner's own lines.
    const big = Buffer.alloc(40 * 1024, 0x61);
    for (let seq = 2; seq < 6; seq++) jobs.log('a', a.run, seq, big);
    const text = j.logs.join('');
    expect(text).toContain('more log than the job\'s cap of 1 KiB');
    const kept = j.logs.filter((l) => l.startsWith('a')).reduce((n, l) => n + l.length, 0);
    expect(kept).toBe(1024 + 64 * 1024 - 'piece-0;piece-1;'.length);
    const before = j.logs.length;
    jobs.log('a', a.run, 6, big);
    expect(j.logs.length).toBe(before);
  });

  it('a run taken back keeps its log with a note, and the next run gets the job\'s cap anew: at most maxClaims caps in all', async () => {
    const { jobs, clock } = setup({ maxClaims: 2 });
    jobs.register('a', HOST);
    jobs.register('b', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'], limits: { logCap: '1k' } });
    const cap = 1024 + 64 * 1024; // the job's cap and the runner's margin
    const big = (c: string): Buffer => Buffer.alloc(40 * 1024, c);
    const first = await claim(jobs, 'a');
    for (let seq = 0; seq < 4; seq++) jobs.log('a', first.run, seq, big('a'));
    await leaseRunsOut(jobs, clock, 1);
    const second = await claim(jobs, 'b');
    for (let seq = 0; seq < 4; seq++) jobs.log('b', second.run, seq, big('b'));
    const text = j.logs.join('');
    const kept = (c: string): number => j.logs.filter((l) => /^(.)\1*$/.test(l) && l[0] === c).reduce((n, l) => n + l.length, 0);
    expect(kept('a')).toBe(cap); // the first run's, to its cap
    expect(kept('b')).toBe(cap); // the second run's: a cap of its own, not what the first left of it
    expect(text.indexOf('run 1 of this job was taken back')).toBeGreaterThan(text.lastIndexOf('aaaa'));
    expect(text.indexOf('run 1 of this job was taken back')).toBeLessThan(text.indexOf('bbbb'));
    expect(text.split('more log than the job\'s cap of 1 KiB').length - 1).toBe(2);
    // The second lease runs out: maxClaims reached, the build fails, and nothing more is kept.
    clock.t += LEASE + 1;
    await expect(j.done).rejects.toBeInstanceOf(ExecutorFailedError);
    expect(Buffer.byteLength(text)).toBeLessThan(2 * cap + 4096);
  });

  it('artifacts: only the globs\' files are taken, within the caps; links out of the root are refused; sent once', async () => {
    const { jobs, dir } = setup();
    jobs.register('a', HOST);
    const out = join(dir, 'art');
    const j = start(jobs, { image: BUSYBOX, command: ['true'], artifacts: ['out/*.txt'] }, { artifactsDir: out });
    const a = await claim(jobs, 'a');
    const files = await jobs.artifacts(
      'a',
      a.run,
      tarOf([
        { name: 'artifacts/out/a.txt', body: 'made' },
        { name: 'artifacts/out/b.bin', body: 'not taken' },
        { name: 'artifacts/secret.txt', body: 'not taken' },
      ]),
    );
    expect(files).toEqual([{ path: 'out/a.txt', bytes: 4, kind: 'file' }]);
    expect(readdirSync(join(out, 'out'))).toEqual(['a.txt']);
    await expect(jobs.artifacts('a', a.run, tarOf([{ name: 'artifacts/out/c.txt', body: 'again' }]))).rejects.toBeInstanceOf(ConflictError);
    jobs.result('a', a.run, result(a, { artifacts: [{ path: 'out/forged.txt', bytes: 1, kind: 'file' }] }));
    const r = await j.done;
    expect(r.artifacts).toEqual(files); // what the CI extracted, not what the host says
    expect(r.passed).toBe(true);
  });

  it('artifacts: a link out of the root, or more bytes than the cap, fail the job', async () => {
    const { jobs, dir } = setup();
    jobs.register('a', HOST);
    const link = start(jobs, { image: BUSYBOX, command: ['true'], artifacts: ['out/**'] }, { artifactsDir: join(dir, 'l') });
    const a = await claim(jobs, 'a');
    await expect(jobs.artifacts('a', a.run, tarOf([{ name: 'artifacts/out/x', type: 'symlink', linkname: '/etc/passwd' }]))).rejects.toBeInstanceOf(ArtifactRejectedError);
    jobs.result('a', a.run, result(a, { artifacts: [{ path: 'out/x', bytes: 0, kind: 'symlink' }] }));
    const r = await link.done;
    expect(r.passed).toBe(false);
    expect(r.artifactError?.message).toContain('outside the artifact root');

    const big = start(jobs, { image: BUSYBOX, command: ['true'], artifacts: ['out/**'], limits: { artifacts: '1k' } }, { artifactsDir: join(dir, 'b') });
    const b = await claim(jobs, 'a');
    await expect(jobs.artifacts('a', b.run, tarOf([{ name: 'artifacts/out/big', body: 'x'.repeat(2048) }]))).rejects.toBeInstanceOf(ArtifactTooLargeError);
    jobs.result('a', b.run, result(b));
    expect((await big.done).passed).toBe(false);
    expect(readdirSync(join(dir, 'b'))).toEqual([]);
  });

  it('artifacts: a body that is no tar is the host\'s fault (ArtifactRejectedError, a 422), not a failure of the CI\'s', async () => {
    const { jobs, dir } = setup();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'], artifacts: ['out/*'] }, { artifactsDir: join(dir, 'art') });
    const a = await claim(jobs, 'a');
    const garbage = new PassThrough();
    garbage.end(Buffer.alloc(4096, 0x61));
    const err = await jobs.artifacts('a', a.run, garbage).catch((x: unknown) => x);
    expect(err).toBeInstanceOf(ArtifactRejectedError);
    expect((err as ArtifactRejectedError).httpStatus).toBe(422);
    jobs.result('a', a.run, result(a, { artifacts: [{ path: 'out/x', bytes: 1, kind: 'file' }] }));
    const r = await j.done;
    expect(r.passed).toBe(false);
    expect(r.artifactError?.message).toContain('cannot be read');
  });

  it('artifacts: a tar much larger than the caps can hold is cut, even of entries no glob takes (no endless stream)', async () => {
    const { jobs, dir } = setup();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'], artifacts: ['out/**'], limits: { artifacts: '1k', artifactFiles: 2 } }, { artifactsDir: join(dir, 'x') });
    const a = await claim(jobs, 'a');
    const junk = Array.from({ length: 64 }, (_, i) => ({ name: `artifacts/junk/${i}`, body: 'j'.repeat(64 * 1024) }));
    await expect(jobs.artifacts('a', a.run, tarOf(junk))).rejects.toBeInstanceOf(ArtifactTooLargeError);
    jobs.result('a', a.run, result(a));
    expect((await j.done).passed).toBe(false);
  });

  it('artifacts a host says it took and never sent fail the job; a job without globs takes none', async () => {
    const { jobs, dir } = setup();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'], artifacts: ['out/**'] }, { artifactsDir: join(dir, 'x') });
    const a = await claim(jobs, 'a');
    jobs.result('a', a.run, result(a, { artifacts: [{ path: 'out/a', bytes: 1, kind: 'file' }] }));
    const r = await j.done;
    expect(r.passed).toBe(false);
    expect(r.artifactError?.message).toContain('did not send them');

    start(jobs, { image: BUSYBOX, command: ['true'] });
    const b = await claim(jobs, 'a');
    await expect(jobs.artifacts('a', b.run, tarOf([{ name: 'artifacts/a', body: 'x' }]))).rejects.toBeInstanceOf(InvalidInputError);
  });

  it('artifacts: a second upload while the first is still coming is refused at once (no two extractions of one run)', async () => {
    const { jobs, dir } = setup();
    jobs.register('a', HOST);
    start(jobs, { image: BUSYBOX, command: ['true'], artifacts: ['out/**'] }, { artifactsDir: join(dir, 'x') });
    const a = await claim(jobs, 'a');
    const slow = new PassThrough();
    const first = jobs.artifacts('a', a.run, slow);
    first.catch(() => undefined);
    await expect(jobs.artifacts('a', a.run, tarOf([{ name: 'artifacts/out/b', body: 'b' }]))).rejects.toBeInstanceOf(ConflictError);
    slow.destroy(new Error('gone'));
    await expect(first).rejects.toThrow();
  });

  it('artifacts of a run taken back are not the next run\'s: the next host sends its own, and only those are kept', async () => {
    const { jobs, clock, dir } = setup();
    jobs.register('a', HOST);
    jobs.register('b', HOST);
    const out = join(dir, 'x');
    const j = start(jobs, { image: BUSYBOX, command: ['true'], artifacts: ['out/**'] }, { artifactsDir: out });
    const first = await claim(jobs, 'a');
    await jobs.artifacts('a', first.run, tarOf([{ name: 'artifacts/out/planted', body: 'by a' }]));
    await leaseRunsOut(jobs, clock, 1);
    const again = await claim(jobs, 'b');
    const files = await jobs.artifacts('b', again.run, tarOf([{ name: 'artifacts/out/real', body: 'by b' }]));
    expect(files.map((f) => f.path)).toEqual(['out/real']);
    jobs.result('b', again.run, result(again, { artifacts: files }));
    const r = await j.done;
    expect(r.artifacts.map((f) => f.path)).toEqual(['out/real']);
    expect(r.passed).toBe(true);
    expect(readdirSync(join(out, 'out'))).toEqual(['real']);
  });

  it('results are validated: not a JobResult, another job\'s id, a reason of a megabyte', async () => {
    const { jobs } = setup();
    jobs.register('a', HOST);
    const j = start(jobs, { image: BUSYBOX, command: ['true'] });
    const a = await claim(jobs, 'a');
    expect(() => jobs.result('a', a.run, { passed: true })).toThrow(InvalidInputError);
    expect(() => jobs.result('a', a.run, result(a, { jobId: 'someone-else' }))).toThrow(/jobId/);
    jobs.result('a', a.run, result(a, { passed: false, exitCode: 1, reason: 'r'.repeat(1024 * 1024), log: 'not taken' }));
    const r = await j.done;
    expect(r.passed).toBe(false);
    expect(r.reason.length).toBeLessThanOrEqual(2000);
    expect(r.log).toBeUndefined();
  });

  it('downloads: a second one of the same run ends the first (one `docker save` per run), and they all end with the run', async () => {
    const { jobs, dir } = setup();
    jobs.register('a', HOST);
    const src = join(dir, 'source.tar');
    writeFileSync(src, 'a source');
    const j = start(jobs, { image: BUSYBOX, command: ['true'] }, { source: src });
    const a = await claim(jobs, 'a');
    const images = [await jobs.image('a', a.run), await jobs.image('a', a.run), await jobs.image('a', a.run)];
    const sources = [jobs.source('a', a.run), jobs.source('a', a.run)];
    for (const s of [...images, ...sources]) s.on('error', () => undefined);
    expect(images.map((s) => s.destroyed)).toEqual([true, true, false]);
    expect(sources.map((s) => s.destroyed)).toEqual([true, false]);
    jobs.result('a', a.run, result(a));
    await j.done;
    expect([...images, ...sources].every((s) => s.destroyed)).toBe(true);
  });

  it('a host reaches only its own runs: another host\'s run is a 409 on every call', async () => {
    const { jobs, dir } = setup();
    jobs.register('a', HOST);
    jobs.register('b', HOST);
    const src = join(dir, 'source.tar');
    writeFileSync(src, 'a source');
    start(jobs, { image: BUSYBOX, command: ['true'], artifacts: ['out/**'] }, { artifactsDir: join(dir, 'x'), source: src });
    const a = await claim(jobs, 'a');
    expect(a.sourceBytes).toBe(8);
    expect(() => jobs.heartbeat('b', a.run)).toThrow(ConflictError);
    expect(() => jobs.log('b', a.run, 0, Buffer.from('x'))).toThrow(ConflictError);
    expect(() => jobs.source('b', a.run)).toThrow(ConflictError);
    await expect(jobs.image('b', a.run)).rejects.toBeInstanceOf(ConflictError);
    await expect(jobs.artifacts('b', a.run, tarOf([]))).rejects.toBeInstanceOf(ConflictError);
    expect(() => jobs.result('b', a.run, result(a))).toThrow(ConflictError);
    // Its own: the source, and the image as `docker save` writes it.
    const chunks: Buffer[] = [];
    for await (const c of jobs.source('a', a.run)) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('a source');
    const image = await jobs.image('a', a.run);
    const first = await new Promise<Buffer>((res, rej) => {
      image.once('data', (c: Buffer) => res(c));
      image.once('error', rej);
    });
    image.destroy();
    expect(first.length).toBeGreaterThan(0);
    start(jobs, { image: BUSYBOX, command: ['true'] });
    const noSource = await claim(jobs, 'a');
    expect(() => jobs.source('a', noSource.run)).toThrow(NotFoundError);
  });
});
