/**
 * `npm run bench:runner`: the runner's cost over a raw container lifecycle, measured in one run.
 *
 * raw    = dockerode create → start → wait → remove, with the same image and the same hardened
 *          create options the runner uses, workspace volume included (raw mounts one of a few
 *          ready-made ext4 workspace volumes, so it pays the engine's volume mount but never makes,
 *          formats or frees one): the baseline the targets are measured against
 * bare   = the same, without the workspace volume: what a runner with no disk quota would cost
 * runner = JobRunner.run of the same trivial job (`true`): workspace, attach, stats, inspect,
 *          cleanup, everything a real job pays
 * Latency: sequential p50/p95. Throughput: jobs/s at 1, 2, 4, 8 concurrent. runc and runsc.
 * The last stdout line is one JSON object with the figures and the ratios runner/raw.
 * Targets (issue "Foundation"): p50 ≤ 1.3× raw; throughput ≥ 0.9× raw.
 */
import { createDocker } from '#shared/docker/client.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import { JobSpec } from '#shared/schemas/job-spec.js';
import type { Runtime } from '#shared/schemas/limits.js';
import { createRawLifecycle } from './raw-lifecycle.js';

const IMAGE = 'airlock/base:busybox';
const LATENCY_SAMPLES = Number(process.env.BENCH_SAMPLES ?? 30);
const THROUGHPUT_JOBS = Number(process.env.BENCH_JOBS ?? 24);
const CONCURRENCY = [1, 2, 4, 8];

const docker = createDocker();
const policy = loadJobPolicy();
const runner = await JobRunner.create({ docker, policy, stateDir: process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock', workspacePool: 8 });

const rawLifecycle = await createRawLifecycle({ docker, policy, runner, stateDir: process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock', image: IMAGE, slots: Math.max(...CONCURRENCY) });
const raw = (runtime: Runtime, slot = 0) => rawLifecycle.run(runtime, slot, true);
const bare = (runtime: Runtime, slot = 0) => rawLifecycle.run(runtime, slot, false);

let n = 0;
const jobSpec = (runtime: Runtime) => JobSpec.parse({ id: `bench-${process.pid}-${++n}`, image: IMAGE, command: ['true'], runtime });

async function viaRunner(runtime: Runtime): Promise<void> {
  const r = await runner.run(jobSpec(runtime), { includeLog: false });
  if (!r.passed) throw new Error(`bench job failed: ${r.reason}`);
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Interleave raw, bare and runner samples so drift on a noisy machine hits all alike. */
async function latency(runtime: Runtime) {
  const a: number[] = [];
  const b: number[] = [];
  const z: number[] = [];
  for (let i = 0; i < LATENCY_SAMPLES; i++) {
    let t = performance.now();
    await raw(runtime);
    a.push(performance.now() - t);
    t = performance.now();
    await bare(runtime);
    z.push(performance.now() - t);
    t = performance.now();
    await viaRunner(runtime);
    b.push(performance.now() - t);
  }
  for (const x of [a, b, z]) x.sort((p, q) => p - q);
  const r = (v: number) => Math.round(v * 10) / 10;
  const q = (x: number[]) => ({ p50: r(pct(x, 50)), p95: r(pct(x, 95)) });
  return {
    raw: q(a),
    bare: q(z),
    runner: q(b),
    ratio: { p50: r2(pct(b, 50) / pct(a, 50)), p95: r2(pct(b, 95) / pct(a, 95)) },
    ratioToBare: { p50: r2(pct(b, 50) / pct(z, 50)), p95: r2(pct(b, 95) / pct(z, 95)) },
  };
}

async function throughput(fn: (slot: number) => Promise<void>, concurrency: number): Promise<number> {
  let next = 0;
  const t = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async (_, slot) => {
      while (next++ < THROUGHPUT_JOBS) await fn(slot);
    }),
  );
  await runner.drain(); // the runner's deferred cleanup is part of its cost
  return THROUGHPUT_JOBS / ((performance.now() - t) / 1000);
}

const r2 = (v: number) => Math.round(v * 100) / 100;
const results: Record<string, unknown> = {};
for (const runtime of ['runc', 'runsc'] as const) {
  for (let i = 0; i < 3; i++) {
    await raw(runtime);
    await bare(runtime);
    await viaRunner(runtime); // warm caches, fill the workspace pool
  }
  const lat = await latency(runtime);
  console.log(`${runtime} latency ms: raw p50 ${lat.raw.p50} p95 ${lat.raw.p95} | bare p50 ${lat.bare.p50} | runner p50 ${lat.runner.p50} p95 ${lat.runner.p95} | runner/raw p50 ${lat.ratio.p50}× p95 ${lat.ratio.p95}× | runner/bare p50 ${lat.ratioToBare.p50}×`);
  const tp: Record<string, { raw: number; bare: number; runner: number; ratio: number; ratioToBare: number }> = {};
  for (const c of CONCURRENCY) {
    const a = await throughput((slot) => raw(runtime, slot), c);
    const z = await throughput((slot) => bare(runtime, slot), c);
    const b = await throughput(() => viaRunner(runtime), c);
    tp[c] = { raw: r2(a), bare: r2(z), runner: r2(b), ratio: r2(b / a), ratioToBare: r2(b / z) };
    console.log(`${runtime} throughput @${c}: raw ${r2(a)} | bare ${r2(z)} | runner ${r2(b)} jobs/s | runner/raw ${r2(b / a)}× | runner/bare ${r2(b / z)}×`);
  }
  results[runtime] = { latencyMs: lat, throughputJobsPerSec: tp };
}
await rawLifecycle.close();
await runner.close();
console.log(JSON.stringify({ bench: 'runner', image: IMAGE, samples: LATENCY_SAMPLES, jobsPerThroughputPoint: THROUGHPUT_JOBS, targets: { p50Ratio: 1.3, throughputRatio: 0.9 }, ...results }));
