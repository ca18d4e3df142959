/**
 * `npm run bench:scale`: the CI at a large deployment's size, in four parts (BENCH_PARTS: any of
 * check, gate, scaling, dispatch; default all), measured in one run; docs/testing.md says each.
 *
 * check     = bench/ci.bench.ts's throughput part, as a process of its own: checkThroughputRatio
 *             (goal ≥ 0.8), trivial checks through the service against raw container lifecycles
 * gate      = bench/gate.bench.ts's all-pass batch with three parallel gate jobs a change:
 *             gateMergeRatio (goal ≤ 1.3), 10 changes merged against one job's time
 * scaling   = bench/executors-scaling.ts: sleep jobs on two executor hosts against one (goal ≥ 1.8)
 * dispatch  = the control plane over real PostgreSQL (a private server of the test harness, durable
 *             settings). Load: 10,000 queued check builds (200 projects, 2,000 uploaders) and 8,000
 *             running builds with a running job each, seeded in bulk.
 *             raw = one claim as a bare statement: `UPDATE builds SET state = 'running' … WHERE
 *             id = $1 AND state = 'queued'` through node-postgres, with the build to claim known;
 *             dispatch = what the leader's scheduler does to hand the next build to a slot: choose
 *             fairly from the queue's group heads (fair-queue.ts pickNextFrom over the heads it
 *             keeps between picks, queue-heads.ts: the chosen project's and uploader's heads read
 *             again, every head every 2 s by a skip scan per pipeline and project) and claim it
 *             (BuildStore.start). The slowest dispatch and the full reads are printed too. Figures: dispatchP99Ms
 *             (goal < 10), claimsPerSecond, and the ratio of dispatch to raw at p50 and p99.
 * The last stdout line is one JSON object with the figures (null for a part not run).
 */
import { execFileSync } from 'node:child_process';
import pg from 'pg';
import { openPostgres } from '../untrusted-ci/store/database.js';
import { BuildStore } from '../untrusted-ci/store/build-store.js';
import { Served } from '../untrusted-ci/scheduler/fair-queue.js';
import { QueueHeadsCache } from '../untrusted-ci/scheduler/queue-heads.js';
import { startPostgres } from '../test/support/postgres.js';
import { measureScaling, type ScalingFigures } from './executors-scaling.js';

const QUEUED = Number(process.env.BENCH_QUEUED ?? 10_000);
const RUNNING = Number(process.env.BENCH_RUNNING ?? 8_000);
const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 1000);
const PROJECTS = 200;
const AUTHORS = 2_000;

/** The last line of a sibling benchmark's output, as JSON (it runs as a process of its own, as `npm run bench:…` would). */
function sibling(file: string, env: Record<string, string>): Record<string, unknown> {
  const out = execFileSync(process.execPath, [...process.execArgv, new URL(file, import.meta.url).pathname], { env: { ...process.env, ...env }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 * 1024 * 1024 });
  const lines = out.trim().split('\n');
  for (const l of lines.slice(0, -1)) console.log(`  ${l}`);
  return JSON.parse(lines.at(-1) ?? '{}') as Record<string, unknown>;
}

// BENCH_PARTS: any of scaling, check, gate, dispatch (default all).
const parts = (process.env.BENCH_PARTS ?? 'scaling,check,gate,dispatch').split(',');
let checkThroughputRatio: number | null = null;
let gateMergeRatio: number | null = null;
let checkRun: unknown = null;
let gateRun: unknown = null;
if (parts.includes('check')) {
  // bench:ci's throughput part: 200 trivial checks through the service against 200 raw lifecycles.
  checkRun = sibling('./ci.bench.ts', { BENCH_CI_PARTS: 'throughput' });
  checkThroughputRatio = (checkRun as { throughput: { ratio: number } }).throughput.ratio;
  console.log(`check throughput: ${checkThroughputRatio}× raw container lifecycles (goal ≥ 0.8)`);
}
if (parts.includes('gate')) {
  // bench:gate with three independent gate jobs a change: 10 changes approved in Gerrit's stand-in, merged by the gate.
  gateRun = sibling('./gate.bench.ts', { BENCH_GATE_JOBS: '3', BENCH_ONLY_ALL_PASS: '1' });
  const allPass = (gateRun as { allPass: { ratio: number; overRawBatch: number } }).allPass;
  gateMergeRatio = allPass.ratio;
  console.log(`gate: 10 changes of 3 parallel jobs merged in ${gateMergeRatio}× one job's time (goal ≤ 1.3); ${allPass.overRawBatch}× their 30 jobs run raw at once`);
}
let scaling: ScalingFigures | undefined;
if (parts.includes('scaling')) {
  scaling = await measureScaling({
    builds: Number(process.env.BENCH_SCALING_BUILDS ?? 8),
    jobs: Number(process.env.BENCH_SCALING_JOBS ?? 4),
    sleepS: Number(process.env.BENCH_SCALING_SLEEP ?? 2),
    slotsPerHost: Number(process.env.BENCH_SCALING_SLOTS ?? 4),
    rounds: Number(process.env.BENCH_SCALING_ROUNDS ?? 2),
  });
  console.log(`scaling: ${scaling.builds}×${scaling.jobsPerBuild} jobs of sleep ${scaling.sleepSeconds} s, ${scaling.slotsPerHost} slots a host: one host ${scaling.oneHostJobsPerSecond} jobs/s, two hosts ${scaling.twoHostsJobsPerSecond} jobs/s: ${scaling.scaling}× (raw lifecycles on one engine and on two: ${scaling.rawScaling}×; airlock's over raw: ${scaling.scalingVsRaw})`);
}
if (!parts.includes('dispatch')) {
  console.log(JSON.stringify({ goals: { scaling: '>= 1.8', checkThroughputRatio: '>= 0.8', gateMergeRatio: '<= 1.3' }, scaling: scaling?.scaling ?? null, checkThroughputRatio, gateMergeRatio, scalingRun: scaling ?? null, checkRun, gateRun }));
  process.exit(0);
}
const server = await startPostgres({ durable: true });
try {
  const url = await server.createDatabase('scale');
  const db = await openPostgres(url);
  const store = new BuildStore(db);
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  // Seed: one change per build; RUNNING running builds with a running job; QUEUED queued ones.
  const total = QUEUED + RUNNING;
  await c.query(
    `INSERT INTO changes (project, branch, change, patchset, ref, author, source, created_at)
     SELECT 'p' || (g % ${PROJECTS}), 'main', 'c' || g, 1, 'refs/changes/' || g || '/1', 'u' || (g % ${AUTHORS}), 'api', 0 FROM generate_series(1, $1) g`,
    [total],
  );
  await c.query(
    `INSERT INTO builds (change_id, project, branch, author, pipeline, state, enqueued_at, started_at, attempt)
     SELECT id, project, branch, author, 'check', CASE WHEN id <= $1 THEN 'running' ELSE 'queued' END, 0, CASE WHEN id <= $1 THEN 1 ELSE NULL END, CASE WHEN id <= $1 THEN 1 ELSE 0 END FROM changes ORDER BY id`,
    [RUNNING],
  );
  await c.query(`INSERT INTO jobs (build_id, name, seq, state, voting, started_at) SELECT id, 'test', 0, 'running', 1, 1 FROM builds WHERE state = 'running'`);
  await c.query('ANALYZE');
  const counts = await store.counts();
  if (counts.queued !== QUEUED || counts.running !== RUNNING) throw new Error(`seeded ${JSON.stringify(counts)}`);

  const served = new Served();
  // The scheduler's own picker: the projects' heads kept between picks, read again in full every 2 s.
  const heads = new QueueHeadsCache(store);
  const p = (xs: number[], q: number): number => {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  };
  const r2 = (x: number): number => Math.round(x * 100) / 100;

  // Interleaved: a raw claim of a known build, then a dispatch, SAMPLES times.
  const raw: number[] = [];
  const dispatch: number[] = [];
  const rawIds = (await c.query<{ id: string }>("SELECT id FROM builds WHERE state = 'queued' ORDER BY id DESC LIMIT $1", [SAMPLES])).rows.map((r) => Number(r.id));
  const t0 = performance.now();
  for (let i = 0; i < SAMPLES; i++) {
    let t = performance.now();
    const r = await c.query("UPDATE builds SET state = 'running', started_at = $1, attempt = attempt + 1 WHERE id = $2 AND state = 'queued'", [Date.now(), rawIds[i]]);
    raw.push(performance.now() - t);
    if (r.rowCount !== 1) throw new Error('raw claim missed');
    t = performance.now();
    const next = await heads.pick(served);
    if (!next || !(await store.start(next.id))) throw new Error('dispatch found nothing');
    served.mark(next);
    dispatch.push(performance.now() - t);
  }
  const both = performance.now() - t0;
  const dispatchTotal = dispatch.reduce((a, b) => a + b, 0);
  const out = {
    queued: QUEUED,
    running: RUNNING,
    samples: SAMPLES,
    rawClaimP50Ms: r2(p(raw, 0.5)),
    dispatchMaxMs: r2(Math.max(...dispatch)),
    fullReads: heads.reads.full,
    rawClaimP99Ms: r2(p(raw, 0.99)),
    dispatchP50Ms: r2(p(dispatch, 0.5)),
    dispatchP99Ms: r2(p(dispatch, 0.99)),
    claimsPerSecond: Math.round((SAMPLES / dispatchTotal) * 1000),
    dispatchRatioP50: r2(p(dispatch, 0.5) / p(raw, 0.5)),
    dispatchRatioP99: r2(p(dispatch, 0.99) / p(raw, 0.99)),
    goals: { dispatchP99Ms: '< 10', scaling: '>= 1.8', checkThroughputRatio: '>= 0.8', gateMergeRatio: '<= 1.3' },
    scaling: scaling?.scaling ?? null,
    ...(scaling ? { scalingRun: scaling } : { scalingWhy: 'not run (BENCH_PARTS)' }),
    checkThroughputRatio,
    gateMergeRatio,
    checkRun,
    gateRun,
    wallSeconds: r2(both / 1000),
  };
  console.log(`raw claim p50 ${out.rawClaimP50Ms} ms, p99 ${out.rawClaimP99Ms} ms; dispatch (read the queue, choose, claim) p50 ${out.dispatchP50Ms} ms, p99 ${out.dispatchP99Ms} ms (${out.dispatchRatioP99}× raw at p99), slowest ${out.dispatchMaxMs} ms, ${out.claimsPerSecond} claims/s, ${out.fullReads} full reads of the heads`);
  console.log(JSON.stringify(out));
  await c.end();
  await db.close();
} finally {
  await server.stop();
}
