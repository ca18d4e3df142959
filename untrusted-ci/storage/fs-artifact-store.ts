/**
 * `ArtifactStore` on a local directory (the one-machine default). Layout:
 *
 *   <root>/
 *     .airlock-tmp/<uuid>        a write in progress; renamed into place when complete
 *     builds/42/logs/unit.log    the object with key `builds/42/logs/unit.log`
 *
 * Writes go to a temp file (flushed to disk) in the same file system, then `rename` over the
 * target, so readers see a whole object or none. Confinement: every path is built from a
 * validated key, and each existing folder on the way down is `lstat`ed: a symbolic link there
 * (say, one a compromised process planted) is refused, never followed, and the final file is
 * opened with O_NOFOLLOW. This defends against links that exist; it assumes nothing else renames
 * folders under root while a call runs (root belongs to airlock alone).
 */
import { randomUUID } from 'node:crypto';
import { constants, createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { InvalidInputError, NotFoundError, StorageFailedError, isAirlockError } from '#shared/errors.js';
import { retry } from '#shared/retry.js';
import {
  RESERVED_SEGMENT_PREFIX,
  compareKeys,
  keyProblems,
  readCapped,
  validateKey,
  validatePrefix,
  type ArtifactStore,
  type StoredObject,
} from './artifact-store.js';
import { putDirectoryWith } from './local-tree.js';

const TMP_DIR = `${RESERVED_SEGMENT_PREFIX}tmp`;
const UPLOAD_CONCURRENCY = 4;

const code = (e: unknown): string | undefined => (e as NodeJS.ErrnoException | undefined)?.code;

function storageError(op: string, what: string, e: unknown): Error {
  if (isAirlockError(e)) return e;
  return new StorageFailedError(`fs store: ${op} ${JSON.stringify(what)}: ${(e as Error).message}`, { cause: e });
}

const symlinkRefused = (path: string): StorageFailedError =>
  new StorageFailedError(`fs store: ${path} is a symbolic link; the store never follows one`);

const folderConflict = (key: string): InvalidInputError =>
  new InvalidInputError([{ file: 'key', path: JSON.stringify(key), message: 'collides with an object or folder of another key', severity: 'error' }]);

export class FsArtifactStore implements ArtifactStore {
  readonly kind = 'fs' as const;
  private rootReady: Promise<void> | undefined;

  /** `root` should be absolute; it is created on first write. */
  constructor(readonly root: string) {}

  /**
   * The folder that holds `segments` (a key's folders), checked link by link. `create`: make
   * missing folders; otherwise a missing one means "absent" (undefined).
   */
  private async folder(segments: readonly string[], create: boolean): Promise<string | undefined> {
    let dir = this.root;
    if (create) {
      this.rootReady ??= mkdir(this.root, { recursive: true }).then(
        () => undefined,
        (e: unknown) => {
          this.rootReady = undefined; // try again on the next write
          throw e;
        },
      );
      await this.rootReady;
    }
    for (const segment of segments) {
      dir = join(dir, segment);
      let st = await lstat(dir).catch((e: unknown) => (code(e) === 'ENOENT' ? undefined : Promise.reject(e)));
      if (!st && !create) return undefined;
      if (!st) {
        await mkdir(dir).catch((e: unknown) => (code(e) === 'EEXIST' ? undefined : Promise.reject(e)));
        st = await lstat(dir);
      }
      if (st.isSymbolicLink()) throw symlinkRefused(dir);
      if (!st.isDirectory()) {
        if (create) throw folderConflict(segments.join('/'));
        return undefined;
      }
    }
    return dir;
  }

  /** The absolute path of `key`, with its folders checked (and made, when `create`); undefined: absent. */
  private async pathOf(key: string, create: boolean): Promise<string | undefined> {
    const segments = validateKey(key).split('/');
    const name = segments.pop() as string;
    const dir = await this.folder(segments, create);
    return dir === undefined ? undefined : join(dir, name);
  }

  async put(key: string, body: Buffer | string | Readable): Promise<void> {
    validateKey(key);
    try {
      const tmpDir = await this.folder([TMP_DIR], true);
      const tmp = join(tmpDir as string, randomUUID());
      try {
        if (body instanceof Readable) await pipeline(body, createWriteStream(tmp, { flags: 'wx', flush: true }));
        else await writeFile(tmp, body, { flag: 'wx', flush: true });
        // A concurrent deletePrefix may remove the folder between mkdir and rename: make it again
        // (4 renames at most, no wait: the race is with one delete, not with a slow service).
        let renameFailure: unknown;
        await retry(
          async () => {
            const target = (await this.pathOf(key, true)) as string;
            try {
              await rename(tmp, target);
            } catch (e) {
              if (code(e) === 'EISDIR' || code(e) === 'ENOTEMPTY' || code(e) === 'EEXIST') throw folderConflict(key);
              renameFailure = e;
              throw e;
            }
          },
          { attempts: 4, baseDelayMs: 0, retryable: (e) => e === renameFailure && code(e) === 'ENOENT' },
        );
      } finally {
        await unlink(tmp).catch(() => undefined); // gone after a successful rename
      }
    } catch (e) {
      throw storageError('put', key, e);
    }
  }

  async putFile(key: string, path: string): Promise<void> {
    validateKey(key);
    await this.put(key, createReadStream(path));
  }

  putDirectory(prefix: string, dir: string): Promise<number> {
    return putDirectoryWith(prefix, dir, (key, path) => this.putFile(key, path), UPLOAD_CONCURRENCY);
  }

  async get(key: string): Promise<Readable> {
    const notFound = (): NotFoundError => new NotFoundError(`no object ${JSON.stringify(key)}`);
    try {
      const path = await this.pathOf(key, false);
      if (path === undefined) throw notFound();
      const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch((e: unknown) => {
        if (code(e) === 'ENOENT') throw notFound();
        if (code(e) === 'ELOOP') throw symlinkRefused(path);
        throw e;
      });
      if (!(await fh.stat()).isFile()) {
        await fh.close();
        throw notFound(); // a folder is not an object
      }
      return fh.createReadStream();
    } catch (e) {
      throw storageError('get', key, e);
    }
  }

  async getBuffer(key: string, maxBytes: number): Promise<Buffer> {
    const st = await this.stat(key);
    if (st === undefined) throw new NotFoundError(`no object ${JSON.stringify(key)}`);
    // Checked again while reading: the object may be replaced in between.
    return readCapped(await this.get(key), maxBytes, key);
  }

  async stat(key: string): Promise<{ bytes: number; modifiedAt: Date } | undefined> {
    try {
      const path = await this.pathOf(key, false);
      if (path === undefined) return undefined;
      const st = await lstat(path).catch((e: unknown) => (code(e) === 'ENOENT' ? undefined : Promise.reject(e)));
      if (st?.isSymbolicLink()) throw symlinkRefused(path);
      return st?.isFile() ? { bytes: st.size, modifiedAt: st.mtime } : undefined;
    } catch (e) {
      throw storageError('stat', key, e);
    }
  }

  async *list(prefix: string): AsyncIterable<StoredObject> {
    validatePrefix(prefix);
    let dir: string | undefined;
    try {
      dir = await this.folder(prefix ? prefix.slice(0, -1).split('/') : [], false);
    } catch (e) {
      throw storageError('list', prefix, e);
    }
    if (dir !== undefined) yield* this.walk(dir, prefix);
  }

  /** Depth first, entries sorted with a '/' after folder names: that is exactly the keys' byte order. */
  private async *walk(dir: string, prefix: string): AsyncGenerator<StoredObject> {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (e) {
      if (code(e) === 'ENOENT') return; // deleted while listing
      throw storageError('list', prefix, e);
    }
    const named = entries
      .filter((e) => (e.isFile() || e.isDirectory()) && !e.name.startsWith(RESERVED_SEGMENT_PREFIX))
      .map((e) => ({ entry: e, sortKey: e.isDirectory() ? `${e.name}/` : e.name }))
      .sort((a, b) => compareKeys(a.sortKey, b.sortKey));
    for (const { entry } of named) {
      const key = prefix + entry.name;
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        yield* this.walk(path, `${key}/`);
        continue;
      }
      if (keyProblems(key).length > 0) continue; // not put through this store
      const st = await lstat(path).catch((e: unknown) => (code(e) === 'ENOENT' ? undefined : Promise.reject(storageError('list', key, e))));
      if (st?.isFile()) yield { key, bytes: st.size, modifiedAt: st.mtime };
    }
  }

  async delete(keys: string[]): Promise<void> {
    keys.forEach(validateKey);
    for (const key of keys) {
      try {
        const path = await this.pathOf(key, false);
        // unlink never follows a link; a folder (EISDIR) is no object, so there is nothing to delete.
        if (path !== undefined) await unlink(path).catch((e: unknown) => (['ENOENT', 'EISDIR'].includes(code(e) ?? '') ? undefined : Promise.reject(e)));
      } catch (e) {
        throw storageError('delete', key, e);
      }
    }
  }

  async deletePrefix(prefix: string): Promise<number> {
    let count = 0;
    for await (const o of this.list(prefix)) {
      await this.delete([o.key]);
      count++;
    }
    // Then the empty folders (and any junk that was never an object): rm never follows links.
    try {
      if (prefix) {
        const dir = await this.folder(prefix.slice(0, -1).split('/'), false);
        if (dir !== undefined) await rm(dir, { recursive: true, force: true });
      } else {
        const entries = await readdir(this.root).catch((e: unknown) => (code(e) === 'ENOENT' ? [] : Promise.reject(e)));
        for (const name of entries) if (name !== TMP_DIR) await rm(join(this.root, name), { recursive: true, force: true });
      }
    } catch (e) {
      throw storageError('deletePrefix', prefix, e);
    }
    return count;
  }
}
