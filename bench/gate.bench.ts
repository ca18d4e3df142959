/**
 * `npm run bench:gate`: how long the gate takes to merge a batch of approved changes, against
 * the time one job takes. Real parts: a real upstream repository, the real service (SQLite,
 * merger, scheduler, executor, CAS submit) and real containers whose only job sleeps T seconds.
 *
 * Baseline (measured in the same run): one raw container lifecycle of the same job (dockerode
 * create → start → wait → remove, `sleep T`), i.e. what a single job costs with no CI around it.
 * - all pass: 10 changes approved at once; time from the first approval to the 10th merge, as a
 *   ratio to the baseline (target ≤ 1.3; testing them one by one would be ≈ 10);
 * - 3rd fails: the same with the 3rd change failing its job (target ≤ 2.5): the 7 behind it are
 *   re-tested without it once its failure is known.
 * Slots: the executor runs up to N containers at once (BENCH_SLOTS, default 10, the batch size).
 * The last line is JSON.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDocker } from '../shared/docker/client.js';
import { createLogger } from '../shared/logging.js';
import { loadJobPolicy } from '../shared/policy/job-policy.js';
import { buildCiConfig } from '../untrusted-ci/config.js';
import { startCiService } from '../untrusted-ci/service.js';
import { createRepo } from '../test/support/git-repo.js';
import { createRawLifecycle } from './raw-lifecycle.js';

const IMAGE = 'airlock/base:busybox';
const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const T = Number(process.env.BENCH_JOB_SECONDS ?? 10);
const N = Number(process.env.BENCH_CHANGES ?? 10);
const SLOTS = Number(process.env.BENCH_SLOTS ?? N);

const logger = createLogger({ level: process.env.AIRLOCK_BENCH_LOG ?? 'silent' });
const docker = createDocker();
const policy = loadJobPolicy();
const dataDir = mkdtempSync(join(tmpdir(), 'airlock-bench-gate-'));
const CONFIG = `version: 1
environment: { image: ${IMAGE} }
jobs:
  test:
    command: [sh, -c, "sleep ${T}; if [ -f broken ]; then exit 1; fi"]
    pipelines: [gate]
    timeout: ${Math.max(60, T * 4)}s
`;
const up = createRepo({ '.airlock.yaml': CONFIG, 'README.md': 'bench\n' });
const ci = await startCiService(
  buildCiConfig({ version: 1, dataDir, runnerStateDir: STATE_DIR, slots: SLOTS, imageGcEveryMs: 0, projects: [{ name: 'bench', url: up.dir }] }, 'bench'),
  { logger, workspacePool: SLOTS },
);
const raw = await createRawLifecycle({ docker, policy, runner: ci.runner, stateDir: STATE_DIR, image: IMAGE, slots: 1 });

let changeNo = 0;
/** Approve a batch of N changes (made beforehand, not timed) and time until every one is reported. */
async function batch(failing: number | null): Promise<{ seconds: number; merged: number; failed: number }> {
  const changes = Array.from({ length: N }, (_, i) => {
    const n = ++changeNo;
    const files: Record<string, string> = { [`f${n}.txt`]: `${n}\n` };
    if (i === failing) files.broken = 'yes\n';
    return { ref: up.change(n, 1, files).ref, change: String(n) };
  });
  const after = ci.gateStore.events({ kind: 'report', limit: 1000 }).at(-1)?.id ?? 0;
  const start = performance.now();
  for (const c of changes) {
    const r = await ci.app.inject({ method: 'POST', url: '/api/changes', payload: { project: 'bench', ref: c.ref, change: c.change, pipeline: 'gate' } });
    if (r.statusCode !== 202) throw new Error(`approve: ${r.statusCode} ${r.body}`);
  }
  for (;;) {
    const reports = ci.gateStore.events({ kind: 'report', after, limit: 1000 });
    if (reports.length >= N) {
      const seconds = (performance.now() - start) / 1000;
      if (process.env.BENCH_TRACE === '1') trace(after, Date.now() - (performance.now() - start));
      const ok = reports.filter((e) => e.result === 'SUCCESS').length;
      const wantOk = failing === null ? N : N - 1;
      if (ok !== wantOk) throw new Error(`expected ${wantOk} merges, got ${ok}: ${JSON.stringify(reports.map((e) => [e.change, e.result]))}`);
      return { seconds, merged: ok, failed: N - ok };
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** BENCH_TRACE=1: where the time of a batch went (ms after the first approval). */
function trace(afterEvent: number, t0: number): void {
  const rel = (t: number | undefined) => (t === undefined ? '-' : String(Math.round(t - t0)));
  const builds = ci.store.builds({ limit: 500 }).filter((b) => b.pipeline === 'gate' && (b.startedAt ?? 0) >= t0 - 1000).reverse();
  for (const b of builds) {
    const j = b.jobs[0];
    console.log(`  build ${b.id} change ${b.change.change}: queued ${rel(b.enqueuedAt)} started ${rel(b.startedAt)} job ${rel(j?.startedAt)}..${rel(j?.finishedAt)} finished ${rel(b.finishedAt)} ${b.result}`);
  }
  for (const e of ci.gateStore.events({ after: afterEvent, limit: 1000 })) console.log(`  ${e.kind} ${e.change} ${e.result ?? ''} at ${rel(e.createdAt)}`);
}

// Warm up: the environment image and the mirror exist before anything is timed.
await raw.run('runc', 0, true, ['true']);
const t0 = performance.now();
await raw.run('runc', 0, true, ['sleep', String(T)]);
const rawSeconds = (performance.now() - t0) / 1000;
console.log(`baseline: one raw job (sleep ${T}) takes ${rawSeconds.toFixed(2)} s`);

const warm = await batch(null); // first batch also warms the mirror and the per-project paths
console.log(`warm-up batch: ${N} changes merged in ${warm.seconds.toFixed(1)} s`);
const allPass = await batch(null);
const allPassRatio = allPass.seconds / rawSeconds;
console.log(`all pass: ${N} changes merged in ${allPass.seconds.toFixed(1)} s = ${allPassRatio.toFixed(2)}× one job (target ≤ 1.3×; serial ≈ ${N}×)`);
const thirdFails = await batch(2);
const thirdFailsRatio = thirdFails.seconds / rawSeconds;
console.log(`3rd fails: ${thirdFails.merged} merged, ${thirdFails.failed} failed in ${thirdFails.seconds.toFixed(1)} s = ${thirdFailsRatio.toFixed(2)}× one job (target ≤ 2.5×)`);

await raw.close();
await ci.close();
up.dispose();
rmSync(dataDir, { recursive: true, force: true });
const r2 = (v: number): number => Math.round(v * 100) / 100;
console.log(
  JSON.stringify({
    bench: 'gate',
    jobSeconds: T,
    changes: N,
    slots: SLOTS,
    rawJobSeconds: r2(rawSeconds),
    allPass: { seconds: r2(allPass.seconds), ratio: r2(allPassRatio), target: 1.3 },
    thirdFails: { seconds: r2(thirdFails.seconds), ratio: r2(thirdFailsRatio), target: 2.5 },
    serialRatio: N,
    met: { allPass: allPassRatio <= 1.3, thirdFails: thirdFailsRatio <= 2.5 },
  }),
);
