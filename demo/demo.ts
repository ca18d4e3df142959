/**
 * `npm run demo`: airlock as it stands today. First the hardened job runner both tiers are built
 * on: a sample project's tests in a locked-down container, the log streamed, an artifact taken
 * out, and what happens to jobs that misbehave. Then the public CI's check pipeline
 * (check-demo.ts). Later issues grow this into the full two-tier story (gate, trusted rebuild, signing).
 * `--once` exits with status 0 only if every step did what it should (the default here too).
 */
import { fileURLToPath } from 'node:url';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDocker } from '../shared/docker/client.js';
import { loadJobPolicy } from '../shared/policy/job-policy.js';
import { JobRunner } from '../shared/runner/job-runner.js';
import { sanitizeForTerminal } from '../shared/runner/log-capture.js';
import type { JobResult } from '../shared/runner/result.js';
import { JobSpec, type JobSpecInput } from '../shared/schemas/job-spec.js';
import { checkDemo } from './check-demo.js';

const bold = (s: string) => (process.stdout.isTTY ? `\u001b[1m${s}\u001b[0m` : s);
const sample = fileURLToPath(new URL('./sample-project', import.meta.url));
const artifactsDir = mkdtempSync(join(tmpdir(), 'airlock-demo-'));
const runner = await JobRunner.create({ docker: createDocker(), policy: loadJobPolicy(), stateDir: process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock', workspacePool: 0 });

let failures = 0;
async function step(title: string, input: Omit<JobSpecInput, 'id'>, expect: (r: JobResult) => boolean, opts: { stream?: boolean; source?: string } = {}): Promise<void> {
  console.log(`\n${bold(`▶ ${title}`)}`);
  const r = await runner.run(JobSpec.parse({ id: `demo-${Date.now()}`, ...input }), {
    artifactsDir,
    ...(opts.source ? { source: { dir: opts.source } } : {}),
    ...(opts.stream ? { onLog: (c) => process.stdout.write(`  │ ${sanitizeForTerminal(c.data.toString('utf8')).replace(/\n(?=.)/g, '\n  │ ')}`) } : {}),
  });
  const ok = expect(r);
  if (!ok) failures++;
  console.log(`  ${ok ? '✔' : '✘ unexpected:'} ${r.reason}  [${r.runtime}, ${(r.durations.totalMs / 1000).toFixed(2)} s${r.peakMemoryBytes ? `, peak ${(r.peakMemoryBytes / 2 ** 20).toFixed(1)} MiB` : ''}]`);
  for (const a of r.artifacts) console.log(`  artifact ${a.path} (${a.bytes} B): ${readFileSync(join(artifactsDir, a.path), 'utf8').trim()}`);
}

console.log(bold('airlock demo: the hardened job runner'));
console.log('Every job: non-root, no capabilities, no network, read-only root, its own size-limited /workspace,');
console.log('memory/CPU/pids limits, a timeout and a log cap, all from policies/untrusted-job.yaml.');

await step('a project\'s tests, source copied in as a tar, log streamed, artifact taken out', {
  image: 'airlock/base:busybox', command: ['./test.sh'], artifacts: ['dist/*.txt'], limits: { timeout: '30s' },
}, (r) => r.passed && r.artifacts.length === 1, { stream: true, source: sample });
await step('the same tests in a real Debian userland (bookworm)', {
  image: 'airlock/base:bookworm', command: ['sh', '-c', './test.sh >/dev/null && . /etc/os-release && echo "$PRETTY_NAME"'], limits: { timeout: '30s' },
}, (r) => r.passed, { stream: true, source: sample });
await step('under gVisor (runsc)', {
  image: 'airlock/base:busybox', command: ['sh', '-c', 'dmesg 2>/dev/null | head -1 || uname -a'], runtime: 'runsc', limits: { timeout: '30s' },
}, (r) => r.passed, { stream: true });
await step('a memory hog (64 MiB limit)', {
  image: 'airlock/base:busybox', command: ['dd', 'if=/dev/zero', 'of=/dev/null', 'bs=256M', 'count=1'], limits: { memory: '64m', timeout: '30s' },
}, (r) => r.oomKilled);
await step('a job that never ends (2 s timeout) and ignores SIGTERM', {
  image: 'airlock/base:busybox', command: ['sh', '-c', 'trap "" TERM; while :; do sleep 1; done'], limits: { timeout: '2s' },
}, (r) => r.timedOut);
await step('a fork bomb (pids limit 64)', {
  image: 'airlock/base:busybox', command: ['sh', '-c', 'b() { b | b & }; b; sleep 30'], limits: { pids: 64, timeout: '3s' },
}, (r) => !r.passed);
await step('a job trying the network, the Docker socket and the root filesystem', {
  image: 'airlock/base:busybox', limits: { timeout: '30s' },
  command: ['sh', '-c', 'echo GET | nc 127.0.0.1 2375 2>&1; ls /var/run/docker.sock 2>&1; touch /home/airlock/x 2>&1; ls /sys/class/net'],
}, (r) => r.passed === true && /Read-only/.test(r.log ?? ''), { stream: true });
await step('an artifact that is a symlink to the host\'s /etc/passwd', {
  image: 'airlock/base:busybox', command: ['sh', '-c', 'mkdir out && ln -s /etc/passwd out/passwd'], artifacts: ['out/*'], limits: { timeout: '30s' },
}, (r) => r.artifactError?.code === 'AIRLOCK_E_ARTIFACT_REJECTED');

await runner.close();
failures += await checkDemo();
console.log(`\n${failures === 0 ? bold('demo: every step did what it should') : bold(`demo: ${failures} step(s) did not do what they should`)}`);
console.log('Run one job yourself:  npx airlock job run --image airlock/base:busybox --memory 128m --timeout 10s -- sh -c "id; df -h /workspace"');
process.exitCode = failures === 0 ? 0 : 1;
