/**
 * Shared setup for tests against the real Docker engine: a runner per test file, and the check
 * that a test left nothing behind.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { expect } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import { LABEL_OWNER } from '#shared/runner/labels.js';
import { JobSpec, type JobSpecInput } from '#shared/schemas/job-spec.js';

export const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
export const BUSYBOX = 'airlock/base:busybox';
export const BOOKWORM = 'airlock/base:bookworm';

export async function makeRunner(opts: { workspacePool?: number } = {}): Promise<{ docker: Docker; runner: JobRunner }> {
  const docker = createDocker();
  const runner = await JobRunner.create({ docker, policy: loadJobPolicy(), stateDir: STATE_DIR, workspacePool: opts.workspacePool ?? 0 });
  return { docker, runner };
}

let seq = 0;
export function spec(input: Omit<JobSpecInput, 'id'> & { id?: string }): JobSpec {
  return JobSpec.parse({ id: `t${process.pid}-${++seq}`, ...input });
}

export function tempDir(prefix = 'airlock-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Nothing labelled with this runner's owner may remain (once its cleanups are done): no container, no volume. */
export async function expectNothingLeft(docker: Docker, owner: string, runner?: JobRunner): Promise<void> {
  await runner?.drain();
  const filters = { label: [`${LABEL_OWNER}=${owner}`] };
  const containers = await docker.listContainers({ all: true, filters });
  const volumes = (await docker.listVolumes({ filters })).Volumes ?? [];
  expect(containers.map((c) => c.Names)).toEqual([]);
  expect(volumes.map((v) => v.Name)).toEqual([]);
  // airlock makes no unlabelled volume (an image VOLUME would otherwise leave an anonymous one).
  const anonymous = ((await docker.listVolumes({ filters: { dangling: ['true'] } })).Volumes ?? []).filter((v) => !v.Labels?.[LABEL_OWNER]);
  expect(anonymous.map((v) => v.Name)).toEqual([]);
}
