/**
 * S3ArtifactStore against a real S3 server (s3rver on 127.0.0.1): the contract, with each test in
 * its own key prefix of one bucket, plus the store prefix and the config factory.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArtifactStoreConfig, createArtifactStore } from '../../../untrusted-ci/storage/config.js';
import { S3ArtifactStore } from '../../../untrusted-ci/storage/s3-artifact-store.js';
import { collect, describeArtifactStoreContract } from '../../contract/artifact-store.contract.js';
import { startS3, type TestS3 } from '../../support/s3.js';

let s3: TestS3;
beforeAll(async () => {
  s3 = await startS3();
});
afterAll(async () => {
  await s3?.stop();
});

let seq = 0;
function makeStore(prefix: string): S3ArtifactStore {
  return new S3ArtifactStore({ ...s3, prefix, forcePathStyle: true });
}

describeArtifactStoreContract('s3', async () => {
  const store = makeStore(`t${++seq}/`);
  return {
    store,
    cleanup: async () => {
      await store.deletePrefix('');
      store.destroy();
    },
  };
});

describe('S3ArtifactStore', () => {
  it('keeps installations that share a bucket apart by prefix', async () => {
    const a = makeStore('inst-a');
    const b = makeStore('inst-b/');
    const whole = makeStore('');
    try {
      await a.put('k', 'from a');
      await b.put('k', 'from b');
      expect((await a.getBuffer('k', 10)).toString()).toBe('from a');
      expect((await collect(b.list(''))).map((o) => o.key)).toEqual(['k']);
      expect((await collect(whole.list('inst-a/'))).map((o) => o.key)).toEqual(['inst-a/k']);
      expect(await a.deletePrefix('')).toBe(1);
      expect(await b.stat('k')).toBeDefined();
      await b.deletePrefix('');
    } finally {
      a.destroy();
      b.destroy();
      whole.destroy();
    }
  });

  it('is made by createArtifactStore from a config with a credentials file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'airlock-s3-creds-'));
    try {
      const credentialsFile = join(dir, 's3.yaml');
      await writeFile(credentialsFile, `accessKeyId: ${s3.accessKeyId}\nsecretAccessKey: ${s3.secretAccessKey}\n`, { mode: 0o600 });
      const config = ArtifactStoreConfig.parse({ kind: 's3', endpoint: s3.endpoint, bucket: s3.bucket, prefix: 'cfg', credentialsFile });
      const store = createArtifactStore(config);
      expect(store.kind).toBe('s3');
      await store.put('x', 'y');
      expect((await store.getBuffer('x', 10)).toString()).toBe('y');
      await store.deletePrefix('');
      (store as S3ArtifactStore).destroy();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('turns a refused credential into StorageFailedError with the cause', async () => {
    // s3rver does not verify SigV4 signatures, but it does know its access key ids.
    const store = new S3ArtifactStore({ ...s3, accessKeyId: 'NOT-A-KEY', forcePathStyle: true });
    try {
      const e = await store.put('x', 'y').catch((err: unknown) => err);
      expect(e).toMatchObject({ code: 'AIRLOCK_E_STORAGE_FAILED', retryable: true });
      expect((e as Error).cause).toBeDefined();
    } finally {
      store.destroy();
    }
  });
});
