/**
 * The runner's runsc gate (shared/runner/runsc-compat.ts) against the real engine with runsc: a job
 * runs under runsc only on an image its state directory's self-test table passed, or on the one
 * image the caller vouches for (`runscPassed`: an executor host passes the CI host's verdict, sent
 * with the job). The bootstrap's table marks bookworm as failing (scripts/base-images.sh).
 */
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RuntimeUnavailableError } from '#shared/errors.js';
import type { JobRunner } from '#shared/runner/job-runner.js';
import { readRunscVerdicts } from '#shared/runner/runsc-compat.js';
import { BOOKWORM, BUSYBOX, expectNothingLeft, makeRunner, spec, STATE_DIR } from '../../support/docker.js';

let docker: Docker;
let runner: JobRunner;

beforeAll(async () => {
  ({ docker, runner } = await makeRunner());
});
afterAll(async () => {
  await runner?.close();
});

describe('runsc on an image the self-test here did not pass', () => {
  it('is refused, unless the caller vouches for that very image', async () => {
    const bookworm = (await docker.getImage(BOOKWORM).inspect()).Id;
    const busybox = (await docker.getImage(BUSYBOX).inspect()).Id;
    expect(readRunscVerdicts(STATE_DIR)[bookworm]).not.toBe(true); // the premise
    const job = () => spec({ image: BOOKWORM, command: ['true'], runtime: 'runsc', limits: { timeout: '60s' } });
    await expect(runner.run(job())).rejects.toBeInstanceOf(RuntimeUnavailableError);
    // A word on another image is not a word on this one.
    await expect(runner.run(job(), { runscPassed: busybox })).rejects.toBeInstanceOf(RuntimeUnavailableError);
    const r = await runner.run(job(), { runscPassed: bookworm });
    expect(r.runtime).toBe('runsc');
    expect(r.reason).toBe('succeeded');
    await expectNothingLeft(docker, runner.owner, runner);
  });
});
