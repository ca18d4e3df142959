/**
 * `npm run bench:runner`: the runner's cost over a raw container lifecycle, measured in one run.
 *
 * raw    = dockerode create → start → wait → remove, with the same image and the same hardened
 *          create options the runner uses (less the workspace volume, which raw has no way to make)
 * runner = JobRunner.run of the same trivial job (`true`): workspace, attach, stats, inspect,
 *          cleanup, everything a real job pays
 * Latency: sequential p50/p95. Throughput: jobs/s at 1, 2, 4, 8 concurrent. runc and runsc.
 * The last stdout line is one JSON object with the figures and the ratios runner/raw.
 * Targets (issue "Foundation"): p50 ≤ 1.3× raw; throughput ≥ 0.9× raw.
 */
import type Docker from 'dockerode';
import { createDocker } from '../shared/docker/client.js';
import { loadJobPolicy, resolveLimits } from '../shared/policy/job-policy.js';
import { toCreateOptions } from '../shared/runner/convert.js';
import { JobRunner } from '../shared/runner/job-runner.js';
import { JobSpec } from '../shared/schemas/job-spec.js';
import type { Runtime } from '../shared/schemas/limits.js';

const IMAGE = 'airlock/base:busybox';
const LATENCY_SAMPLES = Number(process.env.BENCH_SAMPLES ?? 30);
const THROUGHPUT_JOBS = Number(process.env.BENCH_JOBS ?? 24);
const CONCURRENCY = [1, 2, 4, 8];

const docker = createDocker();
const policy = loadJobPolicy();
const runner = await JobRunner.create({ docker, policy, stateDir: process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock', workspacePool: 8 });

let n = 0;
const jobSpec = (runtime: Runtime) => JobSpec.parse({ id: `bench-${process.pid}-${++n}`, image: IMAGE, command: ['true'], runtime });

async function raw(runtime: Runtime): Promise<void> {
  const spec = jobSpec(runtime);
  const { limits } = resolveLimits(spec.limits, runtime, policy);
  const opts = toCreateOptions({ spec, limits, runtime, user: policy.user, owner: runner.owner, name: `airlock-raw-${spec.id}`, workspaceVolume: '', createdAt: Date.now() });
  opts.HostConfig!.Mounts = [];
  const c: Docker.Container = await docker.createContainer(opts);
  await c.start();
  await c.wait();
  await c.remove({ force: true });
}

async function viaRunner(runtime: Runtime): Promise<void> {
  const r = await runner.run(jobSpec(runtime), { includeLog: false });
  if (!r.passed) throw new Error(`bench job failed: ${r.reason}`);
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Alternate raw and runner samples so drift on a noisy machine hits both alike. */
async function latency(runtime: Runtime) {
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < LATENCY_SAMPLES; i++) {
    let t = performance.now();
    await raw(runtime);
    a.push(performance.now() - t);
    t = performance.now();
    await viaRunner(runtime);
    b.push(performance.now() - t);
  }
  a.sort((x, y) => x - y);
  b.sort((x, y) => x - y);
  const r = (v: number) => Math.round(v * 10) / 10;
  return {
    raw: { p50: r(pct(a, 50)), p95: r(pct(a, 95)) },
    runner: { p50: r(pct(b, 50)), p95: r(pct(b, 95)) },
    ratio: { p50: r2(pct(b, 50) / pct(a, 50)), p95: r2(pct(b, 95) / pct(a, 95)) },
  };
}

async function throughput(fn: () => Promise<void>, concurrency: number): Promise<number> {
  let next = 0;
  const t = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next++ < THROUGHPUT_JOBS) await fn();
    }),
  );
  return THROUGHPUT_JOBS / ((performance.now() - t) / 1000);
}

const r2 = (v: number) => Math.round(v * 100) / 100;
const results: Record<string, unknown> = {};
for (const runtime of ['runc', 'runsc'] as const) {
  for (let i = 0; i < 3; i++) {
    await raw(runtime);
    await viaRunner(runtime); // warm caches, fill the workspace pool
  }
  const lat = await latency(runtime);
  console.log(`${runtime} latency ms: raw p50 ${lat.raw.p50} p95 ${lat.raw.p95} | runner p50 ${lat.runner.p50} p95 ${lat.runner.p95} | ratio p50 ${lat.ratio.p50}× p95 ${lat.ratio.p95}×`);
  const tp: Record<string, { raw: number; runner: number; ratio: number }> = {};
  for (const c of CONCURRENCY) {
    const a = await throughput(() => raw(runtime), c);
    const b = await throughput(() => viaRunner(runtime), c);
    tp[c] = { raw: r2(a), runner: r2(b), ratio: r2(b / a) };
    console.log(`${runtime} throughput @${c}: raw ${r2(a)} jobs/s | runner ${r2(b)} jobs/s | ratio ${r2(b / a)}×`);
  }
  results[runtime] = { latencyMs: lat, throughputJobsPerSec: tp };
}
await runner.close();
console.log(JSON.stringify({ bench: 'runner', image: IMAGE, samples: LATENCY_SAMPLES, jobsPerThroughputPoint: THROUGHPUT_JOBS, targets: { p50Ratio: 1.3, throughputRatio: 0.9 }, ...results }));
