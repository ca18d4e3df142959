/**
 * `npm run bench:gate`: how long the gate takes to merge a batch of approved changes, against
 * the time one job takes. Real parts: the Gerrit stand-in as the review system (test/support/
 * gerrit-rig.ts: its webhooks, REST API, submit rules and its own merges into its own bare
 * repository; in a process of its own, bench/gerrit-process.ts, as a real Gerrit is another
 * server), the real service (SQLite, merger, scheduler, executor, review outbox) and real
 * containers whose only gate job sleeps T seconds.
 *
 * Baseline (measured in the same run): one raw container lifecycle of the same job (dockerode
 * create → start → wait → remove, `sleep T`), i.e. what a single job costs with no CI around it;
 * and, printed beside it, the batch's N × JOBS raw lifecycles at once (`rawBatchSeconds`): what
 * this machine's engine and cores make of that many containers with no CI around them.
 * Each batch: N changes are uploaded to Gerrit on the branch tip and checked (a trivial check job,
 * voted Verified +1 in Gerrit), not timed. Then a core reviewer approves them in Gerrit (Code-Review
 * +2) in a fixed order, each once the CI has taken the webhook of the one before (the webhooks
 * plugin does not keep order; the gate keeps the order in which the CI took the approvals, which
 * the batch checks against the order of the merges); the gate tests them speculatively and, for
 * each that passes, votes Verified +2 and asks Gerrit to submit (Gerrit merges: a fast-forward,
 * then merge commits).
 * - all pass: time from the first approval to the N-th change reported (merged by Gerrit), as a
 *   ratio to the baseline (target ≤ 1.3; testing them one by one would be ≈ N);
 * - 3rd fails: the same with the 3rd change failing its job (target ≤ 2.5): the changes behind it
 *   are re-tested without it once its failure is known.
 * The approvals' own time (first approval until the CI took the last one) is inside the measured
 * interval and printed apart (`approveSeconds`).
 * Slots: the executor runs up to N containers at once (BENCH_SLOTS, default 10, the batch size).
 * The last line is JSON.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDocker } from '#shared/docker/client.js';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { buildCiConfig } from '../untrusted-ci/config.js';
import { startCiService } from '../untrusted-ci/service.js';
import { CI_ACCOUNT } from '../test/support/gerrit-rig.js';
import { until } from '../test/support/until.js';
import { startGerritProcess } from './gerrit-process.js';
import { createRawLifecycle } from './raw-lifecycle.js';

const IMAGE = 'airlock/base:busybox';
const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const T = Number(process.env.BENCH_JOB_SECONDS ?? 10);
const N = Number(process.env.BENCH_CHANGES ?? 10);
/** Gate jobs of each change, independent of each other (BENCH_GATE_JOBS; `npm run bench:scale` asks for 3). */
const JOBS = Number(process.env.BENCH_GATE_JOBS ?? 1);
const SLOTS = Number(process.env.BENCH_SLOTS ?? N * JOBS);
/** BENCH_ONLY_ALL_PASS=1: the all-pass batch only (bench:scale). */
const ONLY_ALL_PASS = process.env.BENCH_ONLY_ALL_PASS === '1';
const PROJECT = 'bench';

const logger = createLogger({ level: process.env.AIRLOCK_BENCH_LOG ?? 'silent' });
const docker = createDocker();
const policy = loadJobPolicy();
const dataDir = mkdtempSync(join(tmpdir(), 'airlock-bench-gate-'));
const CONFIG = `version: 1
environment: { image: ${IMAGE} }
jobs:
  # With several gate jobs, each asks for little CPU (they sleep): the host's capacity places every job of the batch at once.
  lint:
    command: ["true"]
    pipelines: [check]
${Array.from({ length: JOBS }, (_, i) => `  test${JOBS === 1 ? '' : i}:
    command: [sh, -c, "sleep ${T}; if [ -f broken ]; then exit 1; fi"]
    pipelines: [gate]
    timeout: ${Math.max(60, T * 4)}s
${JOBS === 1 ? '' : '    resources: { cpus: 0.05, memory: 128m }\n'}`).join('')}`;

// The review system, and the CI wired to it as a deployment would be: its Gerrit account's HTTP
// password and the webhook secret in files, listening where Gerrit's webhooks reach it.
const g = await startGerritProcess();
await g.createProject(PROJECT, { '.airlock.yaml': CONFIG, 'README.md': 'bench\n' });
const credentialsFile = join(dataDir, 'gerrit.json');
const secretFile = join(dataDir, 'hook.secret');
writeFileSync(credentialsFile, JSON.stringify({ username: CI_ACCOUNT, password: g.passwords[CI_ACCOUNT] }), { mode: 0o600 });
writeFileSync(secretFile, g.hookSecret, { mode: 0o600 });
const ci = await startCiService(
  buildCiConfig(
    {
      version: 1,
      dataDir,
      runnerStateDir: STATE_DIR,
      slots: SLOTS,
      imageGcEveryMs: 0,
      listen: { host: '127.0.0.1', port: 0 },
      projects: [{ name: PROJECT, url: await g.gitUrl(PROJECT) }],
      review: { kind: 'gerrit', url: g.url, credentialsFile },
      webhooks: { gerritSecretFile: secretFile },
    },
    'bench',
  ),
  { logger, workspacePool: SLOTS },
);
const ciUrl = await ci.listen();
await g.addWebhook({ url: `${ciUrl}/hooks/gerrit/${encodeURIComponent(g.hookSecret)}`, retryIntervalMs: 100, maxTries: 3 });
const raw = await createRawLifecycle({ docker, policy, runner: ci.runner, stateDir: STATE_DIR, image: IMAGE, slots: N * JOBS });

let fileNo = 0;
/**
 * Upload N changes to Gerrit and have them checked (not timed), then approve them in Gerrit one
 * after the other, and time from the first approval until every one is reported.
 */
async function batch(failing: number | null): Promise<{ seconds: number; approveSeconds: number; merged: number; failed: number }> {
  const changes: Awaited<ReturnType<typeof g.upload>>[] = [];
  for (let i = 0; i < N; i++) {
    const n = ++fileNo;
    const files: Record<string, string> = { [`f${n}.txt`]: `${n}\n` };
    if (i === failing) files.broken = 'yes\n';
    changes.push(await g.upload({ project: PROJECT, owner: 'ada', subject: `change ${n}`, files }));
  }
  // Checked and voted in Gerrit, and everything the CI owes Gerrit posted, before the clock starts.
  const verified = async () => (await Promise.all(changes.map((c) => g.changeState(c.number)))).every((s) => s.votes.Verified?.[CI_ACCOUNT] === 1);
  await until('the checks voted in Gerrit', async () => ((await verified()) ? true : undefined), 120_000);
  await until('the review outbox empty', async () => ((await ci.review!.outbox.rows({ state: 'pending' })).length === 0 ? true : undefined));
  await g.settle();
  const after = (await ci.gateStore.events({ limit: 100_000 })).at(-1)?.id ?? 0;

  const start = performance.now();
  for (const c of changes) {
    await g.review(c.number, 'grace', { labels: { 'Code-Review': 2 } });
    // The CI answered its webhook: the gate has the approval, behind the ones before it.
    await until(`the CI to take the approval of change ${c.number}`, async () => ((await g.commentDelivered(c.number, 'grace')) ? true : undefined), 60_000, 1);
  }
  const approveSeconds = (performance.now() - start) / 1000;
  for (;;) {
    const reports = await ci.gateStore.events({ kind: 'report', after, limit: 1000 });
    if (reports.length >= N) {
      const seconds = (performance.now() - start) / 1000;
      if (process.env.BENCH_TRACE === '1') await trace(after, Date.now() - (performance.now() - start));
      const ok = reports.filter((e) => e.result === 'SUCCESS').length;
      const wantOk = failing === null ? N : N - 1;
      if (ok !== wantOk) throw new Error(`expected ${wantOk} merges, got ${ok}: ${JSON.stringify(reports.map((e) => [e.change, e.result]))}`);
      // Merged in the order approved (the gate queue's order): the 3rd was the 3rd.
      const mergedOrder = (await ci.gateStore.events({ kind: 'merged', after, limit: 1000 })).map((e) => e.change);
      const approvedOrder = changes.filter((_, i) => i !== failing).map((c) => String(c.number));
      if (JSON.stringify(mergedOrder) !== JSON.stringify(approvedOrder)) throw new Error(`merged in the order ${mergedOrder.join(' ')}, approved in the order ${approvedOrder.join(' ')}`);
      // Merged by Gerrit (submitted by the CI's account), the failing one left open.
      const states = await Promise.all(changes.map((c) => g.changeState(c.number)));
      const mergedInGerrit = states.filter((s) => s.status === 'MERGED' && s.submitter === CI_ACCOUNT).length;
      if (mergedInGerrit !== wantOk) throw new Error(`expected ${wantOk} changes merged in Gerrit, found ${mergedInGerrit}: ${JSON.stringify(states.map((s) => s.status))}`);
      return { seconds, approveSeconds, merged: ok, failed: N - ok };
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** BENCH_TRACE=1: where the time of a batch went (ms after the first approval). */
async function trace(afterEvent: number, t0: number): Promise<void> {
  const rel = (t: number | undefined) => (t === undefined ? '-' : String(Math.round(t - t0)));
  const builds = (await ci.store.builds({ limit: 500 })).filter((b) => b.pipeline === 'gate' && (b.startedAt ?? 0) >= t0 - 1000).reverse();
  for (const b of builds) {
    const j = b.jobs[0];
    console.log(`  build ${b.id} change ${b.change.change}: queued ${rel(b.enqueuedAt)} started ${rel(b.startedAt)} job ${rel(j?.startedAt)}..${rel(j?.finishedAt)} finished ${rel(b.finishedAt)} ${b.result}`);
  }
  for (const e of await ci.gateStore.events({ after: afterEvent, limit: 1000 })) console.log(`  ${e.kind} ${e.change} ${e.result ?? ''} at ${rel(e.createdAt)}`);
}

// Warm up: the environment image and the mirror exist before anything is timed.
await raw.run('runc', 0, true, ['true']);
const t0 = performance.now();
await raw.run('runc', 0, true, ['sleep', String(T)]);
const rawSeconds = (performance.now() - t0) / 1000;
console.log(`baseline: one raw job (sleep ${T}) takes ${rawSeconds.toFixed(2)} s`);
// The batch's containers with no CI around them: N × JOBS raw lifecycles of the job at once, each
// with a workspace of its own. What the engine and this machine's cores make of that many
// containers starting and ending together is in every gate batch too.
const tb = performance.now();
await Promise.all(Array.from({ length: N * JOBS }, (_, slot) => raw.run('runc', slot, true, ['sleep', String(T)])));
const rawBatchSeconds = (performance.now() - tb) / 1000;
console.log(`baseline: ${N * JOBS} raw jobs (sleep ${T}) at once take ${rawBatchSeconds.toFixed(2)} s`);

const warm = await batch(null); // first batch also warms the mirror and the per-project paths
console.log(`warm-up batch: ${N} changes merged in ${warm.seconds.toFixed(1)} s`);
const allPass = await batch(null);
const allPassRatio = allPass.seconds / rawSeconds;
console.log(
  `all pass: ${N} changes merged in ${allPass.seconds.toFixed(1)} s = ${allPassRatio.toFixed(2)}× one job (target ≤ 1.3×; serial ≈ ${N}×), ${(allPass.seconds / rawBatchSeconds).toFixed(2)}× the batch's jobs run raw at once; approving them took ${allPass.approveSeconds.toFixed(2)} s of it`,
);
const thirdFails = ONLY_ALL_PASS ? allPass : await batch(2);
const thirdFailsRatio = thirdFails.seconds / rawSeconds;
if (!ONLY_ALL_PASS) console.log(`3rd fails: ${thirdFails.merged} merged, ${thirdFails.failed} failed in ${thirdFails.seconds.toFixed(1)} s = ${thirdFailsRatio.toFixed(2)}× one job (target ≤ 2.5×); approving them took ${thirdFails.approveSeconds.toFixed(2)} s of it`);

await raw.close();
await ci.close();
await g.close();
rmSync(dataDir, { recursive: true, force: true });
const r2 = (v: number): number => Math.round(v * 100) / 100;
console.log(
  JSON.stringify({
    bench: 'gate',
    review: 'gerrit-stand-in',
    jobSeconds: T,
    changes: N,
    jobsPerChange: JOBS,
    slots: SLOTS,
    rawJobSeconds: r2(rawSeconds),
    rawBatchSeconds: r2(rawBatchSeconds),
    allPass: { seconds: r2(allPass.seconds), ratio: r2(allPassRatio), target: 1.3, approveSeconds: r2(allPass.approveSeconds), overRawBatch: r2(allPass.seconds / rawBatchSeconds) },
    ...(ONLY_ALL_PASS ? {} : { thirdFails: { seconds: r2(thirdFails.seconds), ratio: r2(thirdFailsRatio), target: 2.5, approveSeconds: r2(thirdFails.approveSeconds) } }),
    serialRatio: N,
    met: { allPass: allPassRatio <= 1.3, ...(ONLY_ALL_PASS ? {} : { thirdFails: thirdFailsRatio <= 2.5 }) },
  }),
);
