/**
 * `npm run bench:ci`: the check pipeline's cost over the raw container lifecycle, measured in one run.
 *
 * raw      = dockerode create → start → wait → remove of `true` with the runner's hardened options
 *            and a ready workspace volume (bench/raw-lifecycle.ts): the baseline
 * check    = a trivial check through the whole service: POST /api/changes (in-process inject) →
 *            durable enqueue → slot → git fetch + merge → .airlock.yaml → image → source tar →
 *            hardened job → log upload → result recorded and reported
 * Figures:
 * 1. latency: submit→result p50/p95 of `check` against raw p50/p95, sequential, interleaved;
 *    target: at most 300 ms added at p50
 * 2. throughput: 200 checks with N slots against 200 raw lifecycles N at a time, in 4 rounds
 *    (BENCH_ROUNDS) of raw lifecycles then checks queued at once, summed; target: check/raw ≥ 0.8
 * 3. environments: warm (unchanged Dockerfile, found by content hash) against cold (a fresh build)
 *    ensure of a Dockerfile environment; target: warm/cold ≤ 0.1
 * The last stdout line is one JSON object with the figures and the ratios.
 */
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDocker } from '#shared/docker/client.js';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { buildCiConfig } from '../untrusted-ci/config.js';
import { contextFromDirectory } from '#shared/docker/build-context.js';
import { EnvironmentBuilder } from '../untrusted-ci/environments/environment-builder.js';
import { ImageCache } from '../untrusted-ci/environments/image-cache.js';
import { loadEnvironmentPolicy } from '../untrusted-ci/environments/policy.js';
import { startCiService } from '../untrusted-ci/service.js';
import { createRepo } from '../test/support/git-repo.js';
import { createRawLifecycle } from './raw-lifecycle.js';
import { addSplit, cpuSplit, type CpuSplit } from './cpu-split.js';

const IMAGE = 'airlock/base:busybox';
const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const LATENCY_SAMPLES = Number(process.env.BENCH_SAMPLES ?? 20);
const QUEUED = Number(process.env.BENCH_QUEUED ?? 200);
const SLOTS = Number(process.env.BENCH_SLOTS ?? 2);
/** BENCH_CI_PARTS=throughput: the throughput figure only (what `npm run bench:scale` asks for). */
const PARTS = (process.env.BENCH_CI_PARTS ?? 'latency,throughput,environments').split(',');
const LATENCY_N = PARTS.includes('latency') ? LATENCY_SAMPLES : 0;
const ENV_SAMPLES = PARTS.includes('environments') ? Number(process.env.BENCH_ENV_SAMPLES ?? 5) : 0;

const logger = createLogger({ level: process.env.AIRLOCK_BENCH_LOG ?? 'silent' });
const docker = createDocker();
const policy = loadJobPolicy();
const dataDir = mkdtempSync(join(tmpdir(), 'airlock-bench-ci-'));
const up = createRepo({ '.airlock.yaml': `version: 1\nenvironment: { image: ${IMAGE} }\njobs:\n  check:\n    command: ["true"]\n`, 'README.md': 'bench\n' });
const ci = await startCiService(
  // The longest lease: making the 200 changes below runs git synchronously in this process, and an
  // event loop held that long would make the one replica step down (leadership.ts), as it should.
  buildCiConfig({ version: 1, dataDir, runnerStateDir: STATE_DIR, slots: SLOTS, imageGcEveryMs: 0, replicas: { leaseMs: 600_000 }, projects: [{ name: 'bench', url: up.dir }] }, 'bench'),
  { logger, workspacePool: SLOTS + 1 },
);
const raw = await createRawLifecycle({ docker, policy, runner: ci.runner, stateDir: STATE_DIR, image: IMAGE, slots: SLOTS });

let changeNo = 0;
/** A fresh change (not timed), ready to submit. */
function newChange(): { ref: string; change: string } {
  const n = ++changeNo;
  return { ref: up.change(n, 1, { [`f${n}.txt`]: `${n}\n` }).ref, change: String(n) };
}
async function submit(c: { ref: string; change: string }): Promise<number> {
  const r = await ci.app.inject({ method: 'POST', url: '/api/changes', payload: { project: 'bench', ref: c.ref, change: c.change } });
  if (r.statusCode !== 202) throw new Error(`submit: ${r.statusCode} ${r.body}`);
  return (r.json() as { builds: number[] }).builds[0]!;
}
/** Resolves when the build's result is recorded (polling the database in-process: microseconds a read). */
async function finished(id: number): Promise<void> {
  for (;;) {
    const b = await ci.store.build(id);
    if (b.state === 'finished') {
      if (b.result !== 'passed') throw new Error(`bench build ${id} ${b.result}: ${b.reason}`);
      return;
    }
    await new Promise((r) => setTimeout(r, 1));
  }
}

const pct = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
const r1 = (v: number): number => Math.round(v * 10) / 10;
const r2 = (v: number): number => Math.round(v * 100) / 100;

// Warm-up: mirror, image, workspace pool, JIT.
for (let i = 0; i < 3; i++) {
  await raw.run('runc');
  await finished(await submit(newChange()));
}

// 1. Latency, interleaved so drift on a noisy machine hits both alike.
const rawMs: number[] = [];
const checkMs: number[] = [];
for (let i = 0; i < LATENCY_N; i++) {
  let t = performance.now();
  await raw.run('runc');
  rawMs.push(performance.now() - t);
  const c = newChange();
  t = performance.now();
  await finished(await submit(c));
  checkMs.push(performance.now() - t);
}
rawMs.sort((a, b) => a - b);
checkMs.sort((a, b) => a - b);
const latency = {
  rawMs: { p50: r1(pct(rawMs, 50)), p95: r1(pct(rawMs, 95)) },
  checkMs: { p50: r1(pct(checkMs, 50)), p95: r1(pct(checkMs, 95)) },
  addedMs: { p50: r1(pct(checkMs, 50) - pct(rawMs, 50)), p95: r1(pct(checkMs, 95) - pct(rawMs, 95)) },
  ratio: { p50: r2(pct(checkMs, 50) / pct(rawMs, 50)) },
};
if (LATENCY_N > 0) console.log(`latency ms: raw p50 ${latency.rawMs.p50} p95 ${latency.rawMs.p95} | check p50 ${latency.checkMs.p50} p95 ${latency.checkMs.p95} | added p50 ${latency.addedMs.p50} ms`);

// 2. Throughput: everything queued at once, then drained by the slots; in ROUNDS rounds of raw then
// check, so that a change of the machine's load during the run hits both alike.
const ROUNDS = Math.max(1, Math.min(QUEUED, Number(process.env.BENCH_ROUNDS ?? 4)));
let rawSec = 0;
let checkSec = 0;
let cpuMicros = 0;
const zero: CpuSplit = { totalMs: 0, selfMs: 0, childrenMs: 0, engineMs: 0, otherMs: 0 };
let rawCpu = zero;
let checkCpu = zero;
const ids: number[] = [];
for (let round = 0; round < ROUNDS; round++) {
  const n = Math.floor(QUEUED / ROUNDS) + (round < QUEUED % ROUNDS ? 1 : 0);
  const changes = Array.from({ length: n }, () => newChange());
  let t = performance.now();
  let split = cpuSplit();
  let next = 0;
  await Promise.all(
    Array.from({ length: SLOTS }, async (_, slot) => {
      while (next++ < n) await raw.run('runc', slot);
    }),
  );
  rawSec += (performance.now() - t) / 1000;
  rawCpu = addSplit(rawCpu, split());
  t = performance.now();
  split = cpuSplit();
  const cpu0 = process.cpuUsage();
  for (const c of changes) ids.push(await submit(c));
  await ci.scheduler.idle();
  checkSec += (performance.now() - t) / 1000;
  checkCpu = addSplit(checkCpu, split());
  const cpu = process.cpuUsage(cpu0);
  cpuMicros += cpu.user + cpu.system;
}
const serviceCpuPerBuildMs = r1(cpuMicros / 1000 / QUEUED);
const perBuild = (s: CpuSplit) => Object.fromEntries(Object.entries(s).map(([k, v]) => [k, r1(v / QUEUED)]));
console.log(`machine CPU per lifecycle (ms): raw ${JSON.stringify(perBuild(rawCpu))} | check ${JSON.stringify(perBuild(checkCpu))}`);
const notPassed = (await Promise.all(ids.map((id) => ci.store.build(id)))).filter((b) => b.result !== 'passed');
if (notPassed.length > 0) throw new Error(`${notPassed.length} bench builds did not pass: ${notPassed[0]!.result} ${notPassed[0]!.reason}`);
const throughput = { queued: QUEUED, slots: SLOTS, rounds: ROUNDS, serviceCpuPerBuildMs, rawPerSec: r2(QUEUED / rawSec), checkPerSec: r2(QUEUED / checkSec), ratio: r2(rawSec / checkSec) };
console.log(`throughput (${QUEUED} queued in ${ROUNDS} rounds, ${SLOTS} slots): raw ${throughput.rawPerSec}/s | check ${throughput.checkPerSec}/s | check/raw ${throughput.ratio}× | service process CPU ${serviceCpuPerBuildMs} ms per build`);

// 3. Environments: cold builds (a RUN the layer cache has never seen) against warm lookups of the same input.
const envPolicy = loadEnvironmentPolicy();
const cache = new ImageCache({ docker, policy: envPolicy, logger, usageFile: join(dataDir, 'bench-usage.json'), projects: (p) => p === `bench-env-${process.pid}` });
const builder = new EnvironmentBuilder({ docker, policy: envPolicy, logger, cache, stateDir: STATE_DIR });
const cold: number[] = [];
const warm: number[] = [];
const tags: string[] = [];
for (let i = 0; i < ENV_SAMPLES; i++) {
  const dir = join(dataDir, `env-${i}`);
  mkdirSync(dir, { recursive: true });
  const dockerfile = `FROM ${IMAGE}\nRUN echo ${process.pid}-${i}-${Date.now()} > /stamp && mkdir -p /opt/tool && echo ok > /opt/tool/v\n`;
  writeFileSync(join(dir, 'Dockerfile'), dockerfile);
  writeFileSync(join(dir, 'tool.sh'), 'echo tool\n');
  const ctx = await contextFromDirectory(dir, envPolicy.build.contextMax);
  const input = { project: `bench-env-${process.pid}`, dockerfilePath: 'Dockerfile', dockerfileText: dockerfile, contextDigest: ctx.contextDigest, openContext: ctx.openContext };
  let s = performance.now();
  const a = await builder.ensure(input);
  cold.push(performance.now() - s);
  a.release();
  if (a.cached) throw new Error('cold build was cached');
  s = performance.now();
  const b = await builder.ensure(input);
  warm.push(performance.now() - s);
  b.release();
  if (!b.cached) throw new Error('warm build was not cached');
  tags.push(a.image);
}
cold.sort((a, b) => a - b);
warm.sort((a, b) => a - b);
const environments = { coldMs: r1(pct(cold, 50)), warmMs: r1(pct(warm, 50)), ratio: Math.round((pct(warm, 50) / pct(cold, 50)) * 1000) / 1000 };
if (ENV_SAMPLES > 0) console.log(`environment p50: cold build ${environments.coldMs} ms | warm ${environments.warmMs} ms | warm/cold ${environments.ratio}×`);
for (const tag of tags) await docker.getImage(tag).remove({ force: true }).catch(() => {});

await raw.close();
await ci.close();
up.dispose();
rmSync(dataDir, { recursive: true, force: true });
console.log(
  JSON.stringify({
    bench: 'ci',
    image: IMAGE,
    samples: LATENCY_SAMPLES,
    targets: { addedLatencyP50Ms: 300, throughputRatio: 0.8, warmColdRatio: 0.1 },
    latency: LATENCY_N > 0 ? latency : null,
    throughput,
    environments: ENV_SAMPLES > 0 ? environments : null,
    met: { ...(LATENCY_N > 0 ? { latency: latency.addedMs.p50 <= 300 } : {}), throughput: throughput.ratio >= 0.8, ...(ENV_SAMPLES > 0 ? { environments: environments.ratio <= 0.1 } : {}) },
  }),
);
