/**
 * `ArtifactStore` on an S3 bucket (AWS S3, MinIO, Ceph; s3rver in tests). Object key =
 * `prefix + key`, so several installations can share a bucket.
 *
 * Uploads are single PutObject requests (at most 5 GiB, S3's limit; artifacts are capped far
 * below). A body of known length (a Buffer, a string, a local file) is sent as it is. A stream of
 * unknown length is read into memory up to SPOOL_THRESHOLD, and spooled to a temp file past that,
 * because PutObject needs a Content-Length and a job's log or artifact can be large.
 *
 * Checksums: the SDK's default (since 3.729) adds CRC32 trailers to every upload and validates
 * them on download; S3-compatible servers (s3rver, older MinIO) reject or lack them. We ask for
 * them only where an operation requires one (DeleteObjects' Content-MD5/CRC).
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, stat as fsStat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type PutObjectCommandInput,
} from '@aws-sdk/client-s3';
import { NotFoundError, PayloadTooLargeError, StorageFailedError, isAirlockError } from '#shared/errors.js';
import { keyProblems, readCapped, validateKey, validatePrefix, type ArtifactStore, type StoredObject } from './artifact-store.js';
import { putDirectoryWith } from './local-tree.js';

/** Streams up to this size are uploaded from memory; larger ones go through a temp file. */
export const SPOOL_THRESHOLD = 8 * 1024 * 1024; // 8 MiB
/** DeleteObjects takes at most this many keys per request (S3's limit). */
export const DELETE_BATCH = 1000;
const UPLOAD_CONCURRENCY = 8;

/** How to reach the bucket. Credentials, when absent, come from the SDK's default chain (env, profile, instance role). */
export interface S3ArtifactStoreOptions {
  /** e.g. `http://127.0.0.1:9000` for MinIO or s3rver; absent: AWS itself. */
  endpoint?: string;
  region: string;
  bucket: string;
  /** Prepended to every key: `''` or a valid key prefix such as `airlock/` (a trailing '/' is added if missing). */
  prefix?: string;
  /** `http://host/bucket/key` rather than `http://bucket.host/key`: what MinIO and s3rver need. */
  forcePathStyle: boolean;
  accessKeyId?: string;
  secretAccessKey?: string;
}

interface AwsError {
  name?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}
const isNotFound = (e: unknown): boolean => {
  const err = e as AwsError | undefined;
  return err?.name === 'NoSuchKey' || err?.name === 'NotFound' || err?.$metadata?.httpStatusCode === 404;
};

function storageError(op: string, what: string, e: unknown): Error {
  if (isAirlockError(e)) return e;
  const err = e as AwsError;
  return new StorageFailedError(`s3 store: ${op} ${JSON.stringify(what)}: ${err.name ?? 'Error'}: ${err.message ?? String(e)}`, { cause: e });
}

export class S3ArtifactStore implements ArtifactStore {
  readonly kind = 's3' as const;
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;

  constructor(options: S3ArtifactStoreOptions) {
    this.bucket = options.bucket;
    const p = options.prefix ?? '';
    this.prefix = validatePrefix(p === '' || p.endsWith('/') ? p : `${p}/`);
    this.client = new S3Client({
      region: options.region,
      forcePathStyle: options.forcePathStyle,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
      ...(options.accessKeyId !== undefined && options.secretAccessKey !== undefined
        ? { credentials: { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey } }
        : {}),
    });
  }

  /** Close the client's sockets. The store must not be used afterwards. */
  destroy(): void {
    this.client.destroy();
  }

  private async send(key: string, body: PutObjectCommandInput['Body'], length: number, contentType?: string): Promise<void> {
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: this.prefix + key,
        Body: body,
        ContentLength: length,
        ...(contentType !== undefined ? { ContentType: contentType } : {}),
      }),
    );
  }

  async put(key: string, body: Buffer | string | Readable, opts: { contentType?: string } = {}): Promise<void> {
    validateKey(key);
    try {
      if (!(body instanceof Readable)) {
        const buf = typeof body === 'string' ? Buffer.from(body) : body;
        return await this.send(key, buf, buf.length, opts.contentType);
      }
      const it = body[Symbol.asyncIterator]() as AsyncIterator<Buffer | string>;
      const head: Buffer[] = [];
      let size = 0;
      for (let r = await it.next(); ; r = await it.next()) {
        if (r.done) return await this.send(key, Buffer.concat(head, size), size, opts.contentType);
        const chunk = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
        head.push(chunk);
        size += chunk.length;
        if (size > SPOOL_THRESHOLD) break;
      }
      const dir = await mkdtemp(join(tmpdir(), 'airlock-s3-'));
      try {
        const file = join(dir, 'body');
        async function* rest(): AsyncGenerator<Buffer | string> {
          yield* head;
          for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
        }
        await pipeline(Readable.from(rest()), createWriteStream(file));
        await this.sendFile(key, file, opts.contentType);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    } catch (e) {
      if (body instanceof Readable) body.destroy(); // an upload that failed early leaves the rest unread
      throw storageError('put', key, e);
    }
  }

  private async sendFile(key: string, path: string, contentType?: string): Promise<void> {
    const { size } = await fsStat(path);
    if (size <= SPOOL_THRESHOLD) return this.send(key, await readFile(path), size, contentType);
    const stream = createReadStream(path);
    try {
      await this.send(key, stream, size, contentType);
    } finally {
      stream.destroy();
    }
  }

  async putFile(key: string, path: string): Promise<void> {
    validateKey(key);
    try {
      await this.sendFile(key, path);
    } catch (e) {
      throw storageError('putFile', key, e);
    }
  }

  putDirectory(prefix: string, dir: string): Promise<number> {
    return putDirectoryWith(prefix, dir, (key, path) => this.putFile(key, path), UPLOAD_CONCURRENCY);
  }

  /** The object's body stream and length; NotFoundError when absent. */
  private async open(key: string): Promise<{ body: Readable; length: number | undefined }> {
    validateKey(key);
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }));
      if (!(out.Body instanceof Readable)) throw new StorageFailedError(`s3 store: get ${JSON.stringify(key)}: the response has no body stream`);
      return { body: out.Body, length: out.ContentLength };
    } catch (e) {
      if (isNotFound(e)) throw new NotFoundError(`no object ${JSON.stringify(key)}`);
      throw storageError('get', key, e);
    }
  }

  async get(key: string): Promise<Readable> {
    return (await this.open(key)).body;
  }

  async getBuffer(key: string, maxBytes: number): Promise<Buffer> {
    const { body, length } = await this.open(key);
    if (length !== undefined && length > maxBytes) {
      body.destroy();
      throw new PayloadTooLargeError(`object ${JSON.stringify(key)} is larger than ${maxBytes} bytes`);
    }
    try {
      return await readCapped(body, maxBytes, key);
    } catch (e) {
      throw storageError('get', key, e);
    }
  }

  async stat(key: string): Promise<{ bytes: number; modifiedAt: Date } | undefined> {
    validateKey(key);
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }));
      return { bytes: out.ContentLength ?? 0, modifiedAt: out.LastModified ?? new Date(0) };
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw storageError('stat', key, e);
    }
  }

  /** Every object under `prefix` one page at a time, keys relative to the store's prefix, valid or not. */
  private async *pages(prefix: string): AsyncGenerator<StoredObject[]> {
    let token: string | undefined;
    do {
      let out;
      try {
        out = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + prefix, ...(token !== undefined ? { ContinuationToken: token } : {}) }),
        );
      } catch (e) {
        throw storageError('list', prefix, e);
      }
      const page: StoredObject[] = [];
      for (const o of out.Contents ?? []) {
        if (o.Key === undefined) continue;
        page.push({ key: o.Key.slice(this.prefix.length), bytes: o.Size ?? 0, modifiedAt: o.LastModified ?? new Date(0) });
      }
      yield page;
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  async *list(prefix: string): AsyncIterable<StoredObject> {
    validatePrefix(prefix);
    for await (const page of this.pages(prefix)) {
      for (const o of page) if (keyProblems(o.key).length === 0) yield o;
    }
  }

  /** DeleteObjects in batches; keys are relative to the store's prefix and not validated here. */
  private async deleteRaw(keys: readonly string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const batch = keys.slice(i, i + DELETE_BATCH);
      let out;
      try {
        out = await this.client.send(
          new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((k) => ({ Key: this.prefix + k })), Quiet: true } }),
        );
      } catch (e) {
        throw storageError('delete', batch[0] ?? '', e);
      }
      const errors = out.Errors ?? [];
      if (errors.length > 0) {
        const first = errors[0];
        throw new StorageFailedError(`s3 store: delete: ${errors.length} of ${batch.length} failed, e.g. ${JSON.stringify(first?.Key)}: ${first?.Code} ${first?.Message}`);
      }
    }
  }

  async delete(keys: string[]): Promise<void> {
    keys.forEach(validateKey);
    await this.deleteRaw(keys);
  }

  async deletePrefix(prefix: string): Promise<number> {
    validatePrefix(prefix);
    let count = 0;
    // Each page is deleted before the next is asked for: the continuation token points past it.
    for await (const page of this.pages(prefix)) {
      await this.deleteRaw(page.map((o) => o.key));
      count += page.length;
    }
    return count;
  }
}
