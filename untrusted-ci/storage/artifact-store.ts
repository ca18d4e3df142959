/**
 * The `ArtifactStore` contract: where job logs, artifacts and results live once a job is done.
 * Two implementations, chosen only where a service is wired (`createArtifactStore` in config.ts):
 * - `FsArtifactStore` (fs-artifact-store.ts): a directory on local disk, the one-machine default;
 * - `S3ArtifactStore` (s3-artifact-store.ts): a bucket (AWS S3, MinIO, s3rver in tests).
 * Both are checked by one suite, test/contract/artifact-store.contract.ts, so they cannot drift.
 *
 * Model: a flat map from *key* to an immutable byte string, as in S3. There are no folders, only
 * keys that share a prefix; the layout airlock uses is in keys.ts.
 */
import type { Readable } from 'node:stream';
import { InvalidInputError, PayloadTooLargeError, type Issue } from '#shared/errors.js';

/** What `stat` and `list` tell about one stored object. */
export interface StoredObject {
  /** The object's key, exactly as it was put. */
  key: string;
  /** Size in bytes. */
  bytes: number;
  /** When the object was last written (the store's clock, not the caller's). */
  modifiedAt: Date;
}

/**
 * Keys: relative, '/'-separated paths (`builds/42/logs/unit.log`) of at most 1024 UTF-8 bytes,
 * each segment at most 255, with no empty, `.` or `..` segment, no control character or backslash,
 * and no segment starting with `.airlock-` (reserved). `validateKey` checks them before any I/O. Invalid keys are refused with `InvalidInputError`; no method ever touches a
 * location outside the store because of a key.
 *
 * Prefixes (`list`, `deletePrefix`, `putDirectory`) name a folder: `''` (the whole store) or a
 * valid key followed by '/'. So `builds/1/` never matches `builds/10/…`.
 *
 * A key must not also be a folder of another key (`a/b` and `a/b/c`): S3 allows it, a file
 * system cannot, and the fs store refuses the second write with `InvalidInputError`. keys.ts never
 * lays keys out that way.
 *
 * Errors:
 * - `InvalidInputError`: a bad key or prefix, a name in `putDirectory` that is not a valid key;
 * - `NotFoundError`: `get`/`getBuffer` of an absent key (nothing else reports absence as an error);
 * - `PayloadTooLargeError`: `getBuffer` of an object larger than its cap;
 * - `StorageFailedError` (retryable), with the underlying error as `cause`: every I/O failure of
 *   the store itself, and the fs store's refusal to follow a symbolic link;
 * - an `AirlockError` thrown by a caller's body stream (e.g. a size cap) passes through unchanged.
 *
 * Concurrency and atomicity: one instance may be used by many callers at once. A `put*` is atomic
 * per object: a reader sees the whole old object, the whole new one, or nothing, never a prefix.
 * Writes to the same key race; the last rename/PUT wins. There are no multi-object transactions:
 * `putDirectory` and `deletePrefix` may leave part of their work done when they fail, and may be
 * repeated (both are idempotent). `list` is not a snapshot: objects put or deleted while it runs
 * may or may not appear.
 */
export interface ArtifactStore {
  /** Which implementation this is, for logs and the status page. */
  readonly kind: 'fs' | 's3';

  /**
   * Store `body` under `key`, replacing any object there. A string is stored as UTF-8. A stream is
   * consumed to its end; if it errors, nothing is stored and the error is raised (an AirlockError
   * as is, anything else as StorageFailedError). `contentType` is kept where the store can
   * (S3), and ignored otherwise.
   */
  put(key: string, body: Buffer | string | Readable, opts?: { contentType?: string }): Promise<void>;

  /** Store the local file at `path` under `key`. `path` is read as is (a symlink there is followed: it is the caller's file). */
  putFile(key: string, path: string): Promise<void>;

  /**
   * Upload every regular file under the local directory `dir`, recursively, as `prefix + relative
   * path`. Symbolic links (to files or directories), sockets, devices and FIFOs are skipped, never
   * followed, so a job cannot make airlock upload a file outside its output. Every name is checked
   * before the first upload: one that is not a valid key fails the call with InvalidInputError
   * listing all of them. Returns the number of files uploaded (0 for an empty directory).
   */
  putDirectory(prefix: string, dir: string): Promise<number>;

  /**
   * A stream of the object's bytes. Absence is checked before returning (NotFoundError), so the
   * stream itself only fails on I/O errors mid-read, which it emits as an 'error' event. The caller
   * must consume or destroy the stream.
   */
  get(key: string): Promise<Readable>;

  /** The whole object in memory, if it is at most `maxBytes`; larger objects are refused with PayloadTooLargeError. */
  getBuffer(key: string, maxBytes: number): Promise<Buffer>;

  /** Size and time of the object, or `undefined` if there is none. */
  stat(key: string): Promise<Omit<StoredObject, 'key'> | undefined>;

  /**
   * Every object whose key starts with `prefix`, each once, fetched lazily page by page. The order
   * is not part of the contract: AWS S3 and the fs store give ascending UTF-8 byte order, but
   * S3-compatible servers differ (s3rver lists folder by folder), so a caller that needs an order
   * sorts (`compareKeys`). Only valid keys are listed: an object someone else put in the bucket
   * under a name that is not a valid key is not shown.
   */
  list(prefix: string): AsyncIterable<StoredObject>;

  /** Delete these objects. Absent keys are fine (delete is idempotent); all keys are validated first. */
  delete(keys: string[]): Promise<void>;

  /** Delete every object under `prefix` (`''`: everything). Returns how many objects were deleted. */
  deletePrefix(prefix: string): Promise<number>;
}

export const MAX_KEY_BYTES = 1024;
/** Per segment: the file-name limit of every common file system (NAME_MAX), so a key fits the fs store. */
export const MAX_SEGMENT_BYTES = 255;
/** Segments starting with this are reserved for a store's own bookkeeping (the fs store's temp files). */
export const RESERVED_SEGMENT_PREFIX = '.airlock-';

/** The problems with `key`, or none. Pure. */
export function keyProblems(key: string): string[] {
  const problems: string[] = [];
  if (key.length === 0) return ['must not be empty'];
  if (Buffer.byteLength(key) > MAX_KEY_BYTES) problems.push(`longer than ${MAX_KEY_BYTES} bytes`);
  if (/[\u0000-\u001f\u007f]/.test(key)) problems.push('contains a control character');
  if (key.includes('\\')) problems.push('contains a backslash');
  if (key.startsWith('/')) problems.push('must be relative (starts with /)');
  if (key.endsWith('/')) problems.push('must not end with /');
  const segments = key.split('/');
  if (!key.startsWith('/') && !key.endsWith('/') && segments.some((s) => s === '')) problems.push('has an empty segment (//)');
  if (segments.some((s) => s === '.' || s === '..')) problems.push('has a . or .. segment');
  if (segments.some((s) => Buffer.byteLength(s) > MAX_SEGMENT_BYTES)) problems.push(`has a segment longer than ${MAX_SEGMENT_BYTES} bytes`);
  if (segments.some((s) => s.startsWith(RESERVED_SEGMENT_PREFIX))) problems.push(`has a segment starting with ${RESERVED_SEGMENT_PREFIX} (reserved)`);
  return problems;
}

function refuse(what: string, value: string, problems: string[]): never {
  const issues: Issue[] = problems.map((message) => ({ file: what, path: JSON.stringify(value.slice(0, 200)), message, severity: 'error' }));
  throw new InvalidInputError(issues);
}

/** Throw InvalidInputError unless `key` is a valid key; returns it for chaining. */
export function validateKey(key: string): string {
  const problems = keyProblems(key);
  if (problems.length > 0) refuse('key', key, problems);
  return key;
}

/** Throw InvalidInputError unless `prefix` is `''` or a valid key followed by '/'. */
export function validatePrefix(prefix: string): string {
  if (prefix === '') return prefix;
  if (!prefix.endsWith('/')) refuse('prefix', prefix, ["must be '' or end with /"]);
  const problems = keyProblems(prefix.slice(0, -1));
  if (problems.length > 0) refuse('prefix', prefix, problems);
  return prefix;
}

/** S3's listing order: compare the keys' UTF-8 bytes (JS `<` compares UTF-16 units, which differs above U+FFFF). */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** Read `stream` to its end into one Buffer, refusing (and destroying the stream) once it passes `maxBytes`. */
export async function readCapped(stream: Readable, maxBytes: number, key: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of stream) {
      const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
      total += buf.length;
      if (total > maxBytes) throw new PayloadTooLargeError(`object ${JSON.stringify(key)} is larger than ${maxBytes} bytes`);
      chunks.push(buf);
    }
  } finally {
    stream.destroy();
  }
  return Buffer.concat(chunks, total);
}
