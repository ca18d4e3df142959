/**
 * Repo-defined build environments end to end: a Dockerfile environment is built once and reused by
 * later changes that leave it alone, rebuilt when it changes, and the image GC never evicts an
 * image a running build needs.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { ImageCache } from '../../../untrusted-ci/environments/image-cache.js';
import { loadEnvironmentPolicy } from '../../../untrusted-ci/environments/policy.js';
import { tempDir } from '../../support/docker.js';
import { createRepo, type TestRepo } from '../../support/git-repo.js';
import { startTestCi, type TestCi } from '../../support/ci.js';

const PROJECT = `e2e-env-${process.pid}`;
const CONFIG = `version: 1
environment: { dockerfile: ci/Dockerfile }
jobs:
  test:
    command: cat /tool.txt && if [ -f slow ]; then sleep 30; fi
`;

describe('Dockerfile environments', () => {
  let up: TestRepo;
  let ci: TestCi;
  let policyFile: string;
  beforeAll(async () => {
    policyFile = join(tempDir(), 'environments.yaml');
    // The shipped policy, with every image evictable at once so the GC's own protections are what is tested.
    writeFileSync(
      policyFile,
      `version: 1
baseImages: [airlock/base:busybox, airlock/base:bookworm]
build: { memory: 1g, cpus: 1, timeout: 5m, contextMax: 10m, logCap: 1m }
cache: { budget: 20g, keepRecent: 0, minIdle: 0 }
`,
    );
    up = createRepo({ '.airlock.yaml': CONFIG, 'ci/Dockerfile': 'FROM airlock/base:busybox\nRUN echo tool-v1 > /tool.txt\n', 'src.txt': 'x\n' });
    ci = await startTestCi({ projects: [{ name: PROJECT, url: up.dir }], policies: { environments: policyFile } });
  });
  afterAll(async () => {
    await ci?.close();
    up?.dispose();
  });

  const cache = (): ImageCache =>
    new ImageCache({
      docker: ci.service.docker,
      policy: loadEnvironmentPolicy(policyFile),
      logger: createLogger({ level: 'silent' }),
      usageFile: join(ci.dataDir, 'image-usage.json'),
      externalPins: async () => ci.service.store.pinnedImages(),
      projects: (p) => p === PROJECT,
    });

  it('builds the environment once and reuses it; a changed Dockerfile builds anew', async () => {
    const a = await ci.waitFor(await ci.submit({ project: PROJECT, ref: up.change(1, 1, { 'src.txt': 'a\n' }).ref, change: '1' }));
    expect(a.result, JSON.stringify(a)).toBe('passed');
    expect(a.environment).toMatchObject({ cached: false });
    const b = await ci.waitFor(await ci.submit({ project: PROJECT, ref: up.change(2, 1, { 'src.txt': 'b\n' }).ref, change: '2' }));
    expect(b.result).toBe('passed');
    expect(b.environment).toEqual({ image: a.environment!.image, cached: true });
    const c = await ci.waitFor(
      await ci.submit({ project: PROJECT, ref: up.change(3, 1, { 'ci/Dockerfile': 'FROM airlock/base:busybox\nRUN echo tool-v2 > /tool.txt\n' }).ref, change: '3' }),
    );
    expect(c.result).toBe('passed');
    expect(c.environment?.cached).toBe(false);
    expect(c.environment?.image).not.toBe(a.environment!.image);
    const log = await ci.service.app.inject({ method: 'GET', url: `/api/builds/${c.id}/logs/test` });
    expect(log.body).toContain('tool-v2');
  });

  it('refuses a Dockerfile FROM outside the allowlist as a config error, without building', async () => {
    const b = await ci.waitFor(await ci.submit({ project: PROJECT, ref: up.change(4, 1, { 'ci/Dockerfile': 'FROM debian:latest\n' }).ref, change: '4' }));
    expect(b.result).toBe('config-error');
    expect(b.issues[0]).toMatchObject({ path: expect.stringContaining('Dockerfile') });
  });

  it('GC never evicts the image a running build needs', async () => {
    const id = await ci.submit({ project: PROJECT, ref: up.change(5, 1, { slow: '1', 'ci/Dockerfile': 'FROM airlock/base:busybox\nRUN echo tool-v3 > /tool.txt\n' }).ref, change: '5' });
    // Wait until its job runs (the environment is built and the build holds it).
    for (let i = 0; i < 600; i++) {
      const b = await ci.service.store.build(id);
      if (b.jobs.some((j) => j.state === 'running')) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const running = await ci.service.store.build(id);
    const image = running.environment!.image;
    const report = await cache().gc({ budgetBytes: 0 });
    expect(report.removed).not.toContain(image);
    expect(report.removed.length).toBeGreaterThan(0); // the idle images of the earlier builds went
    await expect(ci.service.docker.getImage(image).inspect()).resolves.toBeTruthy();
    await ci.service.scheduler.cancel(id);
    expect((await ci.waitFor(id)).result).toBe('cancelled');
    // Nothing holds it now: the next GC may take it.
    const after = await cache().gc({ budgetBytes: 0 });
    expect(after.removed).toContain(image);
  });
});

