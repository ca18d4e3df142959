/**
 * `scaling` of `npm run bench:scale`: how the CI's throughput grows from one executor host to two.
 *
 * Two executor hosts, each a network namespace with its own Docker engine (test/support/hosts.ts),
 * each running `airlock executor serve` as a process of its own with SLOTS_PER_HOST slots, claim
 * from one CI service (SQLite, the CI's engine only builds nothing here: the environment is the
 * busybox base image). Work: BUILDS check builds of JOBS independent jobs each, every job a
 * `sleep SLEEP_S`, all submitted at once; time from the first submit to the last result.
 * Rounds: warm-up on both hosts; then one host (the other stopped), two hosts, one, two. The ratio
 * is the one-host time over the two-host time, summed over the rounds (goal ≥ 1.8).
 *
 * The raw baseline, measured in the same rounds: the same number of `sleep` containers as raw
 * lifecycles (raw-lifecycle.ts: create, start, wait, remove through the engine's API, the runner's
 * create options, a ready workspace), SLOTS_PER_HOST at a time on each engine, on one host's
 * engine and then on both. Both "hosts" share this machine's cores, so the engines' own work at
 * each wave of starts contends as the executor hosts' does: `rawScaling` is what the machine
 * allows, and `scalingVsRaw` is airlock's ratio over it.
 * BENCH_TRACE=1 prints where each round's time went.
 */
import { type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDocker } from '#shared/docker/client.js';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import type { BuildView } from '#shared/schemas/api/builds.js';
import { buildCiConfig } from '../untrusted-ci/config.js';
import { startCiService } from '../untrusted-ci/service.js';
import { createRepo } from '../test/support/git-repo.js';
import { startHost, type TestHost } from '../test/support/hosts.js';
import { createRawLifecycle, type RawLifecycle } from './raw-lifecycle.js';

const IMAGE = 'airlock/base:busybox';
const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const BIN = new URL('../bin/airlock.js', import.meta.url).pathname;

export interface ScalingFigures {
  builds: number;
  jobsPerBuild: number;
  sleepSeconds: number;
  slotsPerHost: number;
  oneHostSeconds: number[];
  twoHostsSeconds: number[];
  oneHostJobsPerSecond: number;
  twoHostsJobsPerSecond: number;
  scaling: number;
  rawOneHostSeconds: number[];
  rawTwoHostsSeconds: number[];
  /** The raw lifecycles' one-engine time over their two-engine time. */
  rawScaling: number;
  /** scaling / rawScaling. */
  scalingVsRaw: number;
}

/** `total` raw `sleep` lifecycles, `slots` at a time on each engine; seconds from the first create to the last removal. */
async function rawWave(raws: RawLifecycle[], slots: number, total: number, sleepS: number): Promise<number> {
  let left = total;
  const t = performance.now();
  await Promise.all(
    raws.flatMap((raw) =>
      Array.from({ length: slots }, async (_, slot) => {
        while (left > 0) {
          left -= 1;
          await raw.run('runc', slot, true, ['sleep', String(sleepS)]);
        }
      }),
    ),
  );
  return (performance.now() - t) / 1000;
}

/**
 * BENCH_TRACE=1: where a round's time went, in ms after the first submit: builds started, jobs
 * started and ended (first, median, last), the gaps between a slot's jobs, builds finished.
 */
function trace(builds: BuildView[], t0: number, seconds: number): void {
  const at = (x: number | undefined): number => (x === undefined ? NaN : x - t0);
  const spread = (xs: number[]): string => {
    const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
    return s.length ? `${s[0]}/${s[Math.floor(s.length / 2)]}/${s.at(-1)}` : '-';
  };
  const jobs = builds.flatMap((b) => b.jobs);
  const started = jobs.map((j) => at(j.startedAt));
  const ended = jobs.map((j) => at(j.finishedAt));
  const runMs = jobs.map((j) => (j.finishedAt ?? NaN) - (j.startedAt ?? NaN));
  console.log(
    `  trace (${seconds.toFixed(2)} s; first/median/last ms): builds started ${spread(builds.map((b) => at(b.startedAt)))}; jobs started ${spread(started)}; ended ${spread(ended)}; a job's time ${spread(runMs)}; builds finished ${spread(builds.map((b) => at(b.finishedAt)))}`,
  );
}

export async function measureScaling(o: { builds: number; jobs: number; sleepS: number; slotsPerHost: number; rounds: number }): Promise<ScalingFigures> {
  const logger = createLogger({ level: process.env.AIRLOCK_BENCH_LOG ?? 'silent' });
  const dataDir = mkdtempSync(join(tmpdir(), 'airlock-bench-scaling-'));
  const jobs = Array.from({ length: o.jobs }, (_, i) => `  j${i}:\n    command: [sleep, "${o.sleepS}"]\n`).join('');
  // BENCH_SCALING_SOURCE_MB: a source of that many MiB more (random bytes: no compression helps),
  // which each job's host fetches and writes into its workspace.
  const sourceMb = Number(process.env.BENCH_SCALING_SOURCE_MB ?? 0);
  const up = createRepo({
    '.airlock.yaml': `version: 1\nenvironment: { image: ${IMAGE} }\njobs:\n${jobs}`,
    'README.md': 'bench\n',
    ...(sourceMb > 0 ? { 'data.bin': randomBytes(sourceMb * 1024 * 1024) } : {}),
  });
  const hosts: TestHost[] = [];
  const procs = new Map<TestHost, ChildProcess>();
  const raws: RawLifecycle[] = [];
  const closers: (() => Promise<void>)[] = [];
  try {
    hosts.push(...(await Promise.all([startHost(), startHost()])));
    const tokens = hosts.map((h, i) => {
      const file = join(h.dir, 'executor.token');
      writeFileSync(file, `bench-executor-${i}-${process.pid}-0123456789`, { mode: 0o600 });
      return file;
    });
    writeFileSync(join(dataDir, 'api.token'), `bench-api-${process.pid}-0123456789`, { mode: 0o600 });
    writeFileSync(join(dataDir, 'cancel.token'), `bench-cancel-${process.pid}-0123456789`, { mode: 0o600 });
    const ci = await startCiService(
      buildCiConfig(
        {
          version: 1,
          dataDir,
          runnerStateDir: STATE_DIR,
          slots: o.builds,
          imageGcEveryMs: 0,
          listen: { host: '0.0.0.0', port: 0 },
          api: { tokenFile: join(dataDir, 'api.token'), cancelTokenFile: join(dataDir, 'cancel.token') },
          projects: [{ name: 'bench', url: up.dir }],
          executors: { hosts: hosts.map((_, i) => ({ name: `exec-${i + 1}`, tokenFile: tokens[i]! })) },
        },
        'bench',
      ),
      { logger, workspacePool: 0 },
    );
    const stop = async (h: TestHost): Promise<void> => {
      const p = procs.get(h);
      procs.delete(h);
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      await exited;
    };
    try {
      const port = new URL(await ci.listen()).port;
      const start = (h: TestHost, i: number): void => {
        const file = join(h.dir, 'executor.yaml');
        writeFileSync(
          file,
          JSON.stringify({
            name: `exec-${i + 1}`,
            ci: { url: `http://${h.ciAddress}:${port}`, tokenFile: tokens[i] },
            docker: `unix://${h.dockerSocket}`,
            slots: o.slotsPerHost,
            ...(process.env.BENCH_SCALING_AHEAD ? { claimAhead: Number(process.env.BENCH_SCALING_AHEAD) } : {}),
            capacity: { cpus: 64, memory: '64GiB' },
            stateDir: h.stateDir,
            workDir: join(h.dir, 'work'),
          }),
        );
        procs.set(h, h.spawn(process.execPath, [BIN, 'executor', 'serve', '--config', file], { logFile: join(process.env.BENCH_EXLOGS ?? h.dir, `executor-${i}-${Date.now()}.log`) }));
      };
      const registered = async (n: number): Promise<void> => {
        const end = Date.now() + 60_000;
        for (;;) {
          // The hosts' list takes the operators' token (the cancel token).
          const r = (await ci.app.inject({ method: 'GET', url: '/api/executors', headers: { authorization: `Bearer bench-cancel-${process.pid}-0123456789` } })).json() as { executors: { name: string; idleMs: number }[] };
          // Only hosts heard from in the last moment count (a stopped one lingers in the list for three leases).
          if (r.executors.filter((e) => e.idleMs < 2_000).length === n) return;
          if (Date.now() > end) throw new Error(`${n} executor hosts did not register: ${JSON.stringify(r)}`);
          await new Promise((res) => setTimeout(res, 100));
        }
      };
      let changeNo = 0;
      const round = async (): Promise<number> => {
        const refs = Array.from({ length: o.builds }, () => {
          const n = ++changeNo;
          return { ref: up.change(n, 1, { [`f${n}.txt`]: `${n}\n` }).ref, change: String(n) };
        });
        const t = performance.now();
        const t0 = Date.now();
        const ids: number[] = [];
        for (const c of refs) {
          const r = await ci.app.inject({ method: 'POST', url: '/api/changes', headers: { authorization: `Bearer bench-api-${process.pid}-0123456789` }, payload: { project: 'bench', ref: c.ref, change: c.change } });
          if (r.statusCode !== 202) throw new Error(`submit: ${r.statusCode} ${r.body}`);
          ids.push((r.json() as { builds: number[] }).builds[0]!);
        }
        await ci.scheduler.idle();
        const s = (performance.now() - t) / 1000;
        const builds = await Promise.all(ids.map((id) => ci.store.build(id)));
        for (const b of builds) if (b.result !== 'passed') throw new Error(`bench build ${b.id} ${b.result}: ${b.reason}`);
        if (process.env.BENCH_TRACE) trace(builds, t0, s);
        return s;
      };
      hosts.forEach((h, i) => start(h, i));
      await registered(2);
      await round(); // warm-up: the image loaded on both hosts, workspaces, JIT
      // The raw baseline on the hosts' engines, as the bench's own runner: the executor hosts'
      // reapers leave a live owner's containers alone.
      const policy = loadJobPolicy();
      const imageId = (await ci.docker.getImage(IMAGE).inspect()).Id;
      for (const h of hosts) {
        const docker = createDocker(`unix://${h.dockerSocket}`);
        const runner = await JobRunner.create({ docker, policy, stateDir: h.stateDir, reapEveryMs: 0 });
        closers.push(() => runner.close());
        const raw = await createRawLifecycle({ docker, policy, runner, stateDir: h.stateDir, image: imageId, slots: o.slotsPerHost });
        closers.push(() => raw.close());
        raws.push(raw);
      }
      const total = o.builds * o.jobs;
      await rawWave(raws, o.slotsPerHost, 2 * o.slotsPerHost, o.sleepS); // warm-up
      const one: number[] = [];
      const two: number[] = [];
      const rawOne: number[] = [];
      const rawTwo: number[] = [];
      for (let r = 0; r < o.rounds; r++) {
        await stop(hosts[1]!);
        rawOne.push(await rawWave(raws.slice(0, 1), o.slotsPerHost, total, o.sleepS));
        await new Promise((res) => setTimeout(res, 2_500));
        await registered(1);
        one.push(await round());
        start(hosts[1]!, 1);
        await registered(2);
        two.push(await round());
        rawTwo.push(await rawWave(raws, o.slotsPerHost, total, o.sleepS));
      }
      if (process.env.BENCH_TRACE) console.log(`  raw: one engine ${rawOne.map((x) => x.toFixed(2)).join(', ')} s; two engines ${rawTwo.map((x) => x.toFixed(2)).join(', ')} s`);
      const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
      const r2 = (x: number): number => Math.round(x * 100) / 100;
      return {
        builds: o.builds,
        jobsPerBuild: o.jobs,
        sleepSeconds: o.sleepS,
        slotsPerHost: o.slotsPerHost,
        oneHostSeconds: one.map(r2),
        twoHostsSeconds: two.map(r2),
        oneHostJobsPerSecond: r2((total * one.length) / sum(one)),
        twoHostsJobsPerSecond: r2((total * two.length) / sum(two)),
        scaling: r2(sum(one) / sum(two)),
        rawOneHostSeconds: rawOne.map(r2),
        rawTwoHostsSeconds: rawTwo.map(r2),
        rawScaling: r2(sum(rawOne) / sum(rawTwo)),
        scalingVsRaw: r2(sum(one) / sum(two) / (sum(rawOne) / sum(rawTwo))),
      };
    } finally {
      for (const c of closers.reverse()) await c().catch(() => undefined);
      for (const h of hosts) await stop(h).catch(() => undefined);
      await ci.close();
    }
  } finally {
    for (const p of procs.values()) p.kill('SIGKILL');
    await Promise.all(hosts.map((h) => h.stop()));
    up.dispose();
    rmSync(dataDir, { recursive: true, force: true });
  }
}
