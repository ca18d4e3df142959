/**
 * RunOptions.beforeStart against the real engine: the CI takes its executor slot there, so a job's
 * container is made ready (workspace filled, container created) while it waits, and only then
 * starts. A rejected wait removes everything; a container that waited past the runner's limit is
 * made again before it starts, so none outlives what the reaper allows a job.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CancelledError } from '#shared/errors.js';
import { createDocker } from '#shared/docker/client.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import { LABEL_OWNER } from '#shared/runner/labels.js';
import { tarOf } from '../../support/tar.js';
import { BUSYBOX, expectNothingLeft, spec, STATE_DIR, tempDir } from '../../support/docker.js';

let docker: Docker;
let runner: JobRunner;
let source = '';
beforeAll(async () => {
  docker = createDocker();
  runner = await JobRunner.create({ docker, policy: loadJobPolicy(), stateDir: STATE_DIR, workspacePool: 0, recreateAfterMs: 400 });
  source = join(tempDir(), 'src.tar');
  writeFileSync(source, await tarOf([{ name: 'hello.txt', body: 'from the source\n' }]));
});
afterEach(async () => {
  await expectNothingLeft(docker, runner.owner, runner);
});
afterAll(async () => {
  await runner?.close();
});

/** The runner's containers now: id and state. */
async function containers(): Promise<{ id: string; state: string }[]> {
  return (await docker.listContainers({ all: true, filters: { label: [`${LABEL_OWNER}=${runner.owner}`] } })).map((c) => ({ id: c.Id, state: c.State }));
}

describe('beforeStart', () => {
  it('is awaited once the container is made and its source written, before it starts', async () => {
    let seen: { id: string; state: string }[] = [];
    const r = await runner.run(spec({ image: BUSYBOX, command: ['cat', 'hello.txt'], limits: { timeout: '20s' } }), {
      source: { tar: source },
      beforeStart: async () => {
        seen = await containers();
      },
    });
    expect(seen.map((c) => c.state)).toEqual(['created']);
    expect([r.passed, r.log]).toEqual([true, 'from the source\n']);
  });

  it('rejecting ends the job before it started, and removes what was made for it', async () => {
    await expect(
      runner.run(spec({ image: BUSYBOX, command: ['true'] }), { source: { tar: source }, beforeStart: () => Promise.reject(new CancelledError('cancelled while waiting for an executor slot')) }),
    ).rejects.toThrow(/cancelled while waiting/);
  });

  it('a signal aborted during the wait ends the job before it started', async () => {
    const ac = new AbortController();
    await expect(
      runner.run(spec({ image: BUSYBOX, command: ['true'] }), {
        signal: ac.signal,
        beforeStart: async () => ac.abort(),
      }),
    ).rejects.toBeInstanceOf(CancelledError);
  });

  it('a container that waited past the limit is made again: the job runs in a new one, with its source', async () => {
    let waitedIn = '';
    // The job names the container it runs in: its cgroup path ends with the container's id.
    const r = await runner.run(spec({ image: BUSYBOX, command: ['sh', '-c', 'cat hello.txt; grep -o "[0-9a-f]\\{64\\}" /proc/self/cgroup | head -n 1'], limits: { timeout: '20s' } }), {
      source: { tar: source },
      beforeStart: async () => {
        waitedIn = (await containers())[0]?.id ?? '';
        await new Promise((res) => setTimeout(res, 600));
      },
    });
    const [text, ranIn] = (r.log ?? '').split('\n');
    expect([r.passed, text]).toEqual([true, 'from the source']);
    expect(waitedIn).toMatch(/^[0-9a-f]{64}$/);
    expect(ranIn).toMatch(/^[0-9a-f]{64}$/);
    expect(ranIn).not.toBe(waitedIn);
    await expect(docker.getContainer(waitedIn).inspect()).rejects.toMatchObject({ statusCode: 404 });
  });
});
