import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { zodIssues } from '#shared/schemas/issues.js';
import { ArtifactStoreConfig, createArtifactStore, loadS3Credentials } from '../../../untrusted-ci/storage/config.js';
import { FsArtifactStore } from '../../../untrusted-ci/storage/fs-artifact-store.js';
import { S3ArtifactStore } from '../../../untrusted-ci/storage/s3-artifact-store.js';

const issuePaths = (input: unknown): string[] => {
  const r = ArtifactStoreConfig.safeParse(input);
  return r.success ? [] : zodIssues(r.error, 'ci.yaml').map((i) => i.path);
};

describe('ArtifactStoreConfig', () => {
  it('fills the S3 defaults', () => {
    expect(ArtifactStoreConfig.parse({ kind: 's3', bucket: 'airlock-logs' })).toEqual({ kind: 's3', bucket: 'airlock-logs', region: 'us-east-1', forcePathStyle: true });
  });

  it.each([
    [{ kind: 'fs' }, ['root']],
    [{ kind: 'fs', root: '/x', bucket: 'b' }, ['']],
    [{ kind: 'gcs', root: '/x' }, ['kind']],
    [{ kind: 's3', bucket: 'Bad_Bucket' }, ['bucket']],
    [{ kind: 's3', bucket: 'ok-bucket', endpoint: 'ftp://host' }, ['endpoint']],
    [{ kind: 's3', bucket: 'ok-bucket', prefix: '../x/' }, ['prefix']],
    [{ kind: 's3', bucket: 'ok-bucket', accessKeyId: 'AKIA…' }, ['']], // keys belong in credentialsFile
  ])('refuses %j at %j', (input, paths) => expect(issuePaths(input)).toEqual(paths));
});

describe('createArtifactStore', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'airlock-store-config-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('makes an fs store at the resolved root', () => {
    const store = createArtifactStore(ArtifactStoreConfig.parse({ kind: 'fs', root: dir }));
    expect(store).toBeInstanceOf(FsArtifactStore);
    expect((store as FsArtifactStore).root).toBe(dir);
  });

  it('makes an s3 store, reading credentials from JSON or YAML', async () => {
    await writeFile(join(dir, 'c.json'), JSON.stringify({ accessKeyId: 'id', secretAccessKey: 'secret' }));
    expect(loadS3Credentials(join(dir, 'c.json'))).toEqual({ accessKeyId: 'id', secretAccessKey: 'secret' });
    const store = createArtifactStore(ArtifactStoreConfig.parse({ kind: 's3', bucket: 'b-1', prefix: 'ci', credentialsFile: join(dir, 'c.json') }));
    expect(store).toBeInstanceOf(S3ArtifactStore);
    expect((store as S3ArtifactStore).prefix).toBe('ci/');
    (store as S3ArtifactStore).destroy();
  });

  it('names the credentials file and field, never the secret', async () => {
    await writeFile(join(dir, 'c.yaml'), 'accessKeyId: id\nsecretAccessKey: 12345\nextra: hunter2\n');
    const e = (() => {
      try {
        loadS3Credentials(join(dir, 'c.yaml'));
      } catch (err) {
        return err as Error & { issues: { file: string; path: string }[] };
      }
    })();
    expect(e).toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
    expect(e?.issues.map((i) => i.path).sort()).toEqual(['', 'secretAccessKey']);
    expect(e?.message).not.toMatch(/12345|hunter2/);
    expect(() => loadS3Credentials(join(dir, 'missing.yaml'))).toThrow(expect.objectContaining({ code: 'AIRLOCK_E_INVALID_INPUT' }));
  });
});
