/**
 * Act 1: the hardened job runner both tiers run untrusted code in, used directly. The sample
 * project's test suite in a locked-down container (source in as a tar, log streamed, artifact out),
 * then two jobs that misbehave. Limits come from policies/untrusted-job.yaml.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createDocker } from '#shared/docker/client.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import { sanitizeForTerminal } from '#shared/runner/log-capture.js';
import type { JobResult } from '#shared/runner/result.js';
import { JobSpec, type JobSpecInput } from '#shared/schemas/job-spec.js';
import type { Story } from './story.js';

const SAMPLE = fileURLToPath(new URL('./sample-project', import.meta.url));
const IMAGE = 'airlock/base:busybox';

export async function runnerAct(story: Story, o: { stateDir: string; scratch: string }): Promise<void> {
  story.begin('the hardened job runner', 'non-root, no capabilities, no network, read-only root, its own size-limited /workspace, memory/CPU/pids limits, a timeout');
  const artifactsDir = mkdtempSync(join(o.scratch, 'runner-'));
  const runner = await JobRunner.create({ docker: createDocker(), policy: loadJobPolicy(), stateDir: o.stateDir, workspacePool: 0 });
  let n = 0;
  const run = async (title: string, input: Omit<JobSpecInput, 'id'>, expect: (r: JobResult) => boolean, opts: { stream?: boolean; source?: string } = {}): Promise<JobResult> => {
    const r = await runner.run(JobSpec.parse({ id: `demo-runner-${process.pid}-${++n}`, ...input }), {
      artifactsDir,
      ...(opts.source ? { source: { dir: opts.source } } : {}),
      ...(opts.stream ? { onLog: (c) => story.info(`│ ${sanitizeForTerminal(c.data.toString('utf8')).replace(/\n(?=.)/g, '\n│ ')}`) } : {}),
    });
    story.check(title, expect(r), `${r.reason} [${(r.durations.totalMs / 1000).toFixed(1)} s]`);
    return r;
  };
  try {
    const tests = await run('the sample project\'s tests in a hardened container', { image: IMAGE, command: ['sh', 'test.sh'], artifacts: ['report.txt'], limits: { timeout: '30s' } }, (r) => r.passed && r.artifacts.length === 1, {
      stream: true,
      source: SAMPLE,
    });
    for (const a of tests.artifacts) story.info(`artifact ${a.path} (${a.bytes} B): ${readFileSync(join(artifactsDir, a.path), 'utf8').trim()}`);
    await run('a memory hog is killed at its 64 MiB limit', { image: IMAGE, command: ['dd', 'if=/dev/zero', 'of=/dev/null', 'bs=256M', 'count=1'], limits: { memory: '64m', timeout: '30s' } }, (r) => r.oomKilled);
    await run(
      'the network, the Docker socket and the root filesystem are out of reach',
      { image: IMAGE, command: ['sh', '-c', 'echo GET | nc 127.0.0.1 2375 2>&1; ls /var/run/docker.sock 2>&1; touch /home/x 2>&1; ls /sys/class/net'], limits: { timeout: '30s' } },
      (r) => r.passed && /Read-only/.test(r.log ?? '') && /No such file/.test(r.log ?? ''),
      { stream: true },
    );
  } finally {
    await runner.close();
    rmSync(artifactsDir, { recursive: true, force: true });
  }
}
