/**
 * Logs, artifacts and results in S3 (a real s3rver process), read back through the API, and
 * retention applied by `airlock ci gc`'s code path: a passing build's logs go after 7 days, a
 * failing one's are kept until 30.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { runCiGc } from '../../../untrusted-ci/gc.js';
import { tempDir } from '../../support/docker.js';
import { createRepo, type TestRepo } from '../../support/git-repo.js';
import { startTestCi, type TestCi } from '../../support/ci.js';
import { startS3, type TestS3 } from '../../support/s3.js';

const DAY = 24 * 3_600_000;
const CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  test:
    command: echo "log of $AIRLOCK_CHANGE" && mkdir -p out && echo data > out/r.txt && test ! -f fail
    artifacts: [out/**]
`;

describe('S3 artifact store and retention', () => {
  let s3: TestS3;
  let up: TestRepo;
  let ci: TestCi;
  beforeAll(async () => {
    s3 = await startS3('airlock-e2e');
    const creds = join(tempDir(), 's3.json');
    writeFileSync(creds, JSON.stringify({ accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey }));
    up = createRepo({ '.airlock.yaml': CONFIG });
    ci = await startTestCi({
      projects: [{ name: 'app', url: up.dir }],
      artifactStore: { kind: 's3', endpoint: s3.endpoint, bucket: s3.bucket, region: s3.region, prefix: 'ci/', credentialsFile: creds },
    });
  });
  afterAll(async () => {
    await ci?.close();
    await s3?.stop();
    up?.dispose();
  });

  it('round-trips logs, artifacts and results through S3, then expires them by result', async () => {
    const pass = await ci.waitFor(await ci.submit({ project: 'app', ref: up.change(1, 1, { a: '1' }).ref, change: '1' }));
    const fail = await ci.waitFor(await ci.submit({ project: 'app', ref: up.change(2, 1, { fail: '1' }).ref, change: '2' }));
    expect([pass.result, fail.result]).toEqual(['passed', 'failed']);

    const keys = async (): Promise<string[]> => {
      const out: string[] = [];
      for await (const o of ci.service.artifacts.list('builds/')) out.push(o.key);
      return out.sort();
    };
    expect(await keys()).toEqual(
      [
        `builds/${pass.id}/artifacts/test/out/r.txt`,
        `builds/${pass.id}/logs/test.log`,
        `builds/${pass.id}/result.json`,
        `builds/${fail.id}/artifacts/test/out/r.txt`,
        `builds/${fail.id}/logs/test.log`,
        `builds/${fail.id}/result.json`,
      ].sort(),
    );
    // Served from S3 once the build is over.
    const log = await ci.service.app.inject({ method: 'GET', url: `/api/builds/${pass.id}/logs/test` });
    expect(log.body).toBe('log of 1\n');

    const logger = createLogger({ level: 'silent' });
    const finished = Math.max(pass.finishedAt!, fail.finishedAt!);
    // Day 8: the passing build's logs and artifacts are gone, the failing build's stay.
    await runCiGc(ci.loaded, { logger, images: false, now: finished + 8 * DAY });
    expect(await keys()).toEqual([`builds/${pass.id}/result.json`, `builds/${fail.id}/artifacts/test/out/r.txt`, `builds/${fail.id}/logs/test.log`, `builds/${fail.id}/result.json`].sort());
    const gone = await ci.service.app.inject({ method: 'GET', url: `/api/builds/${pass.id}/logs/test` });
    expect(gone.statusCode).toBe(404);
    expect(gone.json()).toMatchObject({ code: 'AIRLOCK_E_NOT_FOUND' });
    // Day 31: the failure's go too; the results stay (they are the record).
    await runCiGc(ci.loaded, { logger, images: false, now: finished + 31 * DAY });
    expect(await keys()).toEqual([`builds/${pass.id}/result.json`, `builds/${fail.id}/result.json`].sort());
  });
});
