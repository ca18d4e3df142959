/**
 * The ArtifactStore contract as a suite (docs/testing.md "Contract tier", after BullMQ's adapter conformance tests): every
 * implementation's test file calls `describeArtifactStoreContract`, so the fs store and the S3
 * store cannot drift apart. `make` returns a fresh, empty store per test and its cleanup.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ArtifactTooLargeError } from '#shared/errors.js';
import { compareKeys, type ArtifactStore, type StoredObject } from '../../untrusted-ci/storage/artifact-store.js';

export interface StoreFixture {
  store: ArtifactStore;
  cleanup: () => Promise<void>;
}

export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(chunks);
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
/** The keys, sorted: listing order is not part of the contract. */
const keysOf = (objects: StoredObject[]): string[] => objects.map((o) => o.key).sort(compareKeys);

/** A stream of `total` bytes in chunks of 64 KiB, and the digest of what it produces. */
function streamOf(total: number): { stream: Readable; digest: string } {
  const data = randomBytes(total);
  let at = 0;
  const stream = new Readable({
    read() {
      const end = Math.min(at + 64 * 1024, total);
      this.push(end > at ? data.subarray(at, end) : null);
      at = end;
    },
  });
  return { stream, digest: sha(data) };
}

/** Run `fn` over `items`, `n` at a time. */
async function eachLimited<T>(items: T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) await fn(items[next++] as T);
  }));
}

export const BAD_KEYS = ['', 'a/' + 'y'.repeat(256), '/abs', 'a//b', 'a/./b', '../up', 'a/..', 'a/', 'nul\0byte', 'tab\there', 'back\\slash', 'abc/'.repeat(256) + 'x', 'a/.airlock-tmp/x'];
const BAD_PREFIXES = ['no-slash', '/abs/', 'a//', '../', 'a/../'];

export function describeArtifactStoreContract(name: string, make: () => Promise<StoreFixture>): void {
  describe(`ArtifactStore contract: ${name}`, () => {
    let store: ArtifactStore;
    let cleanup: () => Promise<void>;
    let dirs: string[] = [];
    const tempDir = async (): Promise<string> => {
      const d = await mkdtemp(join(tmpdir(), 'airlock-contract-'));
      dirs.push(d);
      return d;
    };

    beforeEach(async () => {
      ({ store, cleanup } = await make());
    });
    afterEach(async () => {
      await cleanup();
      await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
      dirs = [];
    });

    it('round-trips a Buffer, a string and a stream, and a put replaces', async () => {
      const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      await store.put('b/binary', binary, { contentType: 'application/octet-stream' });
      await store.put('b/text', 'héllo ✓\n');
      await store.put('b/stream', Readable.from([Buffer.from('one '), Buffer.from('two')]));
      expect(await readAll(await store.get('b/binary'))).toEqual(binary);
      expect((await store.getBuffer('b/text', 100)).toString('utf8')).toBe('héllo ✓\n');
      expect((await store.getBuffer('b/stream', 100)).toString()).toBe('one two');
      await store.put('b/text', 'replaced');
      expect((await store.getBuffer('b/text', 100)).toString()).toBe('replaced');
      await store.put('b/empty', '');
      expect(await store.getBuffer('b/empty', 0)).toEqual(Buffer.alloc(0));
    });

    it('stores a 5 MiB buffer and a 9 MiB stream intact', async () => {
      const five = randomBytes(5 * 1024 * 1024);
      await store.put('big/five', five);
      expect(sha(await readAll(await store.get('big/five')))).toBe(sha(five));
      const { stream, digest } = streamOf(9 * 1024 * 1024);
      await store.put('big/nine', stream);
      expect(sha(await store.getBuffer('big/nine', 9 * 1024 * 1024))).toBe(digest);
      expect((await store.stat('big/nine'))?.bytes).toBe(9 * 1024 * 1024);
    });

    it('puts a local file', async () => {
      const dir = await tempDir();
      const data = randomBytes(100_000);
      await writeFile(join(dir, 'f.bin'), data);
      await store.putFile('files/f.bin', join(dir, 'f.bin'));
      expect(await store.getBuffer('files/f.bin', data.length)).toEqual(data);
    });

    it('stores nothing when the body stream fails, and passes an AirlockError through', async () => {
      const failing = (err: Error): Readable =>
        new Readable({
          read() {
            this.push(Buffer.alloc(1024));
            this.destroy(err);
          },
        });
      await expect(store.put('s/broken', failing(new Error('boom')))).rejects.toMatchObject({ code: 'AIRLOCK_E_STORAGE_FAILED' });
      await expect(store.put('s/capped', failing(new ArtifactTooLargeError('too big')))).rejects.toMatchObject({ code: 'AIRLOCK_E_ARTIFACT_TOO_LARGE' });
      expect(await store.stat('s/broken')).toBeUndefined();
      expect(await store.stat('s/capped')).toBeUndefined();
      expect(await collect(store.list(''))).toEqual([]);
    });

    it('reports absence: NotFound from get and getBuffer, undefined from stat', async () => {
      await expect(store.get('nope/x')).rejects.toMatchObject({ code: 'AIRLOCK_E_NOT_FOUND' });
      await expect(store.getBuffer('nope/x', 10)).rejects.toMatchObject({ code: 'AIRLOCK_E_NOT_FOUND' });
      expect(await store.stat('nope/x')).toBeUndefined();
      await store.put('dir/file', 'x');
      await expect(store.get('dir')).rejects.toMatchObject({ code: 'AIRLOCK_E_NOT_FOUND' }); // a folder is no object
      expect(await store.stat('dir')).toBeUndefined();
    });

    it('getBuffer refuses an object larger than its cap', async () => {
      await store.put('cap/ten', Buffer.alloc(10, 1));
      expect((await store.getBuffer('cap/ten', 10)).length).toBe(10);
      await expect(store.getBuffer('cap/ten', 9)).rejects.toMatchObject({ code: 'AIRLOCK_E_PAYLOAD_TOO_LARGE' });
    });

    it('stat gives the size and a recent modification time', async () => {
      const before = Date.now();
      await store.put('st/x', Buffer.alloc(1234));
      const st = await store.stat('st/x');
      expect(st?.bytes).toBe(1234);
      // Servers keep whole seconds (S3's Last-Modified): allow for it.
      expect(st?.modifiedAt.getTime()).toBeGreaterThanOrEqual(before - 2000);
      expect(st?.modifiedAt.getTime()).toBeLessThanOrEqual(Date.now() + 2000);
    });

    it('lists by folder prefix, with sizes', async () => {
      for (const k of ['builds/10/a', 'builds/1/z', 'builds/1/logs/b.log', 'builds/1-x/c', 'builds/1/a', 'other/x']) await store.put(k, k);
      const one = (await collect(store.list('builds/1/'))).sort((a, b) => compareKeys(a.key, b.key));
      expect(keysOf(one)).toEqual(['builds/1/a', 'builds/1/logs/b.log', 'builds/1/z']);
      expect(one.map((o) => o.bytes)).toEqual([10, 19, 10]);
      expect(one.every((o) => o.modifiedAt instanceof Date)).toBe(true);
      expect(keysOf(await collect(store.list('builds/')))).toEqual(['builds/1-x/c', 'builds/1/a', 'builds/1/logs/b.log', 'builds/1/z', 'builds/10/a']);
      expect(await collect(store.list(''))).toHaveLength(6);
      expect(await collect(store.list('missing/'))).toEqual([]);
    });

    it('lists and deletes more than one page (1100 keys)', async () => {
      const keys = Array.from({ length: 1100 }, (_, i) => `many/${String(i).padStart(4, '0')}`);
      await eachLimited(keys, 16, (k) => store.put(k, 'x'));
      await store.put('many-not/x', 'x');
      expect(keysOf(await collect(store.list('many/')))).toEqual(keys);
      expect(await store.deletePrefix('many/')).toBe(1100);
      expect(await collect(store.list('many/'))).toEqual([]);
      expect(await store.stat('many-not/x')).toBeDefined();
    });

    it('delete removes the named objects; absent keys are fine', async () => {
      await store.put('d/a', 'a');
      await store.put('d/b', 'b');
      await store.delete(['d/a', 'd/absent', 'nowhere/x']);
      expect(keysOf(await collect(store.list('d/')))).toEqual(['d/b']);
      await store.delete([]);
      await expect(store.delete(['d/b', '../escape'])).rejects.toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
      expect(await store.stat('d/b')).toBeDefined(); // validated before anything is deleted
    });

    it('deletePrefix deletes one folder, counts, and leaves its neighbours', async () => {
      for (const k of ['p/1/a', 'p/1/deep/b', 'p/10/c', 'p/1x']) await store.put(k, 'x');
      expect(await store.deletePrefix('p/1/')).toBe(2);
      expect(await store.deletePrefix('p/1/')).toBe(0);
      expect(keysOf(await collect(store.list('p/')))).toEqual(['p/10/c', 'p/1x']);
      expect(await store.deletePrefix('')).toBe(2);
      expect(await collect(store.list(''))).toEqual([]);
      await store.put('p/1/a', 'again'); // the folder can be used again
      expect((await store.getBuffer('p/1/a', 10)).toString()).toBe('again');
    });

    it('putDirectory uploads regular files recursively and skips symlinks', async () => {
      const dir = await tempDir();
      const outside = await tempDir();
      await writeFile(join(outside, 'secret'), 'do not upload');
      await mkdir(join(dir, 'sub', 'deeper'), { recursive: true });
      await writeFile(join(dir, 'top.txt'), 'top');
      await writeFile(join(dir, 'sub', 'deeper', 'x.bin'), randomBytes(10));
      await symlink(join(outside, 'secret'), join(dir, 'link-to-file'));
      await symlink(outside, join(dir, 'sub', 'link-to-dir'));
      expect(await store.putDirectory('builds/1/artifacts/unit/', dir)).toBe(2);
      expect(keysOf(await collect(store.list('builds/')))).toEqual(['builds/1/artifacts/unit/sub/deeper/x.bin', 'builds/1/artifacts/unit/top.txt']);
      const empty = await tempDir();
      expect(await store.putDirectory('e/', empty)).toBe(0);
    });

    it('putDirectory refuses names that are not keys before uploading anything', async () => {
      const dir = await tempDir();
      await writeFile(join(dir, 'fine'), 'x');
      await writeFile(join(dir, 'back\\slash'), 'x');
      await expect(store.putDirectory('pd/', dir)).rejects.toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
      expect(await collect(store.list(''))).toEqual([]);
    });

    it.each(BAD_KEYS.map((k) => [JSON.stringify(k).slice(0, 40), k]))('refuses the key %s everywhere', async (_, key) => {
      const invalid = { code: 'AIRLOCK_E_INVALID_INPUT' };
      await expect(store.put(key, 'x')).rejects.toMatchObject(invalid);
      await expect(store.putFile(key, '/dev/null')).rejects.toMatchObject(invalid);
      await expect(store.get(key)).rejects.toMatchObject(invalid);
      await expect(store.getBuffer(key, 10)).rejects.toMatchObject(invalid);
      await expect(store.stat(key)).rejects.toMatchObject(invalid);
      await expect(store.delete([key])).rejects.toMatchObject(invalid);
    });

    it.each(BAD_PREFIXES)('refuses the prefix %j', async (prefix) => {
      const invalid = { code: 'AIRLOCK_E_INVALID_INPUT' };
      await expect(collect(store.list(prefix))).rejects.toMatchObject(invalid);
      await expect(store.deletePrefix(prefix)).rejects.toMatchObject(invalid);
      await expect(store.putDirectory(prefix, await tempDir())).rejects.toMatchObject(invalid);
    });

    it('accepts a key of exactly 1024 bytes and unicode names', async () => {
      const long = `${'x'.repeat(254)}/`.repeat(4) + 'abcd';
      expect(Buffer.byteLength(long)).toBe(1024);
      await store.put(long, 'x');
      await store.put('u/名前 with spaces.txt', 'x');
      expect(keysOf(await collect(store.list('')))).toEqual(['u/名前 with spaces.txt', long]);
    });
  });
}
