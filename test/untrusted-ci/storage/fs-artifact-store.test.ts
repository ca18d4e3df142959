/**
 * FsArtifactStore: the contract, plus what only a file system can get wrong: links planted inside
 * the root must never be followed out of it, writes are atomic, and temp files stay invisible.
 */
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsArtifactStore } from '../../../untrusted-ci/storage/fs-artifact-store.js';
import { collect, describeArtifactStoreContract } from '../../contract/artifact-store.contract.js';

const temp = (): Promise<string> => mkdtemp(join(tmpdir(), 'airlock-fs-store-'));

describeArtifactStoreContract('fs', async () => {
  const base = await temp();
  // A root that does not exist yet: the store makes it on first write.
  return { store: new FsArtifactStore(join(base, 'root')), cleanup: () => rm(base, { recursive: true, force: true }) };
});

describe('FsArtifactStore confinement', () => {
  let base: string;
  let root: string;
  let outside: string;
  let store: FsArtifactStore;

  beforeEach(async () => {
    base = await temp();
    root = join(base, 'root');
    outside = join(base, 'outside');
    await mkdir(root);
    await mkdir(outside);
    await writeFile(join(outside, 'secret'), 'outside data');
    store = new FsArtifactStore(root);
  });
  afterEach(() => rm(base, { recursive: true, force: true }));

  const refused = { code: 'AIRLOCK_E_STORAGE_FAILED' };

  it('never writes through a symlinked folder', async () => {
    await mkdir(join(root, 'builds'));
    await symlink(outside, join(root, 'builds', '1'));
    await expect(store.put('builds/1/secret', 'overwritten')).rejects.toMatchObject(refused);
    await expect(store.put('builds/1/new', 'planted')).rejects.toMatchObject(refused);
    expect(await readFile(join(outside, 'secret'), 'utf8')).toBe('outside data');
    expect(await readdir(outside)).toEqual(['secret']);
  });

  it('never reads, stats or lists through a symlinked folder or file', async () => {
    await symlink(outside, join(root, 'dirlink'));
    await mkdir(join(root, 'logs'));
    await symlink(join(outside, 'secret'), join(root, 'logs', 'a.log'));
    await expect(store.get('dirlink/secret')).rejects.toMatchObject(refused);
    await expect(store.getBuffer('dirlink/secret', 100)).rejects.toMatchObject(refused);
    await expect(store.stat('dirlink/secret')).rejects.toMatchObject(refused);
    await expect(store.get('logs/a.log')).rejects.toMatchObject(refused);
    await expect(store.stat('logs/a.log')).rejects.toMatchObject(refused);
    await expect(collect(store.list('dirlink/'))).rejects.toMatchObject(refused);
    expect(await collect(store.list(''))).toEqual([]); // links are not objects
  });

  it('a put over a planted file link replaces the link, not its target', async () => {
    await mkdir(join(root, 'logs'));
    await symlink(join(outside, 'secret'), join(root, 'logs', 'a.log'));
    await store.put('logs/a.log', 'mine');
    expect(await readFile(join(outside, 'secret'), 'utf8')).toBe('outside data');
    expect((await lstat(join(root, 'logs', 'a.log'))).isFile()).toBe(true);
    expect((await store.getBuffer('logs/a.log', 10)).toString()).toBe('mine');
  });

  it('delete and deletePrefix remove links without touching their targets', async () => {
    await mkdir(join(root, 'p'));
    await symlink(join(outside, 'secret'), join(root, 'p', 'file-link'));
    await symlink(outside, join(root, 'p', 'dir-link'));
    await store.delete(['p/file-link']);
    expect(await store.deletePrefix('p/')).toBe(0);
    expect(await readdir(outside)).toEqual(['secret']);
    expect(await readdir(root)).toEqual([]);
    await symlink(outside, join(root, 'q'));
    await expect(store.deletePrefix('q/')).rejects.toMatchObject(refused);
    expect(await readdir(outside)).toEqual(['secret']);
  });

  it('refuses a key that would turn an object into a folder, or a folder into an object', async () => {
    await store.put('a/b', 'x');
    await expect(store.put('a/b/c', 'x')).rejects.toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
    await expect(store.put('a', 'x')).rejects.toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
    expect((await store.getBuffer('a/b', 10)).toString()).toBe('x');
  });

  it('lists in the keys\' byte order, as AWS S3 does', async () => {
    const keys = ['b/1/z', 'b/1-x/c', 'b/10/a', 'b/1/a', 'b/1/logs/b.log', 'b/é', 'b/z'];
    for (const k of keys) await store.put(k, k);
    expect((await collect(store.list(''))).map((o) => o.key)).toEqual(['b/1-x/c', 'b/1/a', 'b/1/logs/b.log', 'b/1/z', 'b/10/a', 'b/z', 'b/é']);
  });

  it('writes atomically: a failed stream leaves the old object and no temp file behind', async () => {
    await store.put('k', 'old');
    const failing = new Readable({
      read() {
        this.push('partial');
        this.destroy(new Error('boom'));
      },
    });
    await expect(store.put('k', failing)).rejects.toMatchObject({ code: 'AIRLOCK_E_STORAGE_FAILED' });
    expect((await store.getBuffer('k', 10)).toString()).toBe('old');
    expect(await readdir(join(root, '.airlock-tmp'))).toEqual([]);
    expect((await collect(store.list(''))).map((o) => o.key)).toEqual(['k']);
  });
});
