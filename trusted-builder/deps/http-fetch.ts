/**
 * The one way the dependency fetchers reach the network: a GET of an URL they built themselves
 * (never one from a lockfile), no redirects followed, a timeout, a cap on the bytes of this file
 * and on the bytes of the whole fetch (`Budget`), the file streamed to disk while its digests are
 * computed. Nothing is kept that was not checked: the caller verifies the digests, then keeps the
 * file (`rename`) or deletes it.
 *
 * 404 and 410 are refusals (the locked file is not there: unpublished, removed from the index);
 * any other answer, a reset connection or a timeout is a failure (worth retrying later).
 */
import { createHash, type Hash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DependencyFailed, DependencyRefused } from './errors.js';

/** The bytes the whole fetch may still take (shared by all its downloads). */
export class Budget {
  constructor(public left: number, readonly total: number) {}
  take(n: number, what: string): void {
    this.left -= n;
    if (this.left < 0) throw new DependencyRefused(`${what}: the dependencies exceed ${this.total} bytes in all`);
  }
}

export interface DownloadOptions {
  maxBytes: number;
  timeoutMs: number;
  budget: Budget;
  /** Hash algorithms computed over the body (e.g. ['sha512'], ['sha256']). */
  algorithms: readonly string[];
  /** How messages name what is fetched (`is-number@7.0.0`, `jq 1.6-2.1 amd64`). */
  what: string;
  signal?: AbortSignal;
}

export interface Downloaded {
  bytes: number;
  /** Hex digest per algorithm asked for. */
  digests: Record<string, string>;
}

async function get(url: string, o: Pick<DownloadOptions, 'timeoutMs' | 'what' | 'signal'>): Promise<Response> {
  const signal = o.signal ? AbortSignal.any([o.signal, AbortSignal.timeout(o.timeoutMs)]) : AbortSignal.timeout(o.timeoutMs);
  let res: Response;
  try {
    res = await fetch(url, { redirect: 'error', signal, headers: { 'user-agent': 'airlock-trusted-builder', accept: '*/*' } });
  } catch (e) {
    throw new DependencyFailed(`${o.what}: cannot fetch ${url}: ${describe(e)}`);
  }
  if (res.status === 404 || res.status === 410) {
    await res.body?.cancel().catch(() => undefined);
    throw new DependencyRefused(`${o.what}: not found at ${url} (HTTP ${res.status})`);
  }
  if (res.status !== 200) {
    await res.body?.cancel().catch(() => undefined);
    throw new DependencyFailed(`${o.what}: ${url} answered HTTP ${res.status}`);
  }
  return res;
}

function describe(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const cause = (e as { cause?: unknown }).cause;
  if (e.name === 'TimeoutError') return 'timed out';
  return cause instanceof Error ? `${e.message} (${cause.message})` : e.message;
}

function counter(o: DownloadOptions, url: string, hashes: Hash[]): Transform {
  let n = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      n += chunk.length;
      if (n > o.maxBytes) return done(new DependencyRefused(`${o.what}: ${url} is larger than ${o.maxBytes} bytes`));
      try {
        o.budget.take(chunk.length, o.what);
      } catch (e) {
        return done(e as Error);
      }
      for (const h of hashes) h.update(chunk);
      done(null, chunk);
    },
  });
}

function tooLong(res: Response, o: DownloadOptions, url: string): void {
  const len = Number(res.headers.get('content-length') ?? NaN);
  if (Number.isFinite(len) && len > o.maxBytes) throw new DependencyRefused(`${o.what}: ${url} is ${len} bytes, more than ${o.maxBytes}`);
}

/** GET `url` into `dest` (a new file); its size and digests. On any error `dest` is removed. */
export async function download(url: string, dest: string, o: DownloadOptions): Promise<Downloaded> {
  const res = await get(url, o);
  const hashes = o.algorithms.map((a) => createHash(a));
  try {
    tooLong(res, o, url);
    if (!res.body) throw new DependencyFailed(`${o.what}: ${url} sent no body`);
    const c = counter(o, url, hashes);
    let bytes = 0;
    c.on('data', (b: Buffer) => (bytes += b.length));
    await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>), c, createWriteStream(dest, { flags: 'wx', mode: 0o600 }));
    return { bytes, digests: Object.fromEntries(o.algorithms.map((a, i) => [a, hashes[i]!.digest('hex')])) };
  } catch (e) {
    await rm(dest, { force: true });
    await res.body?.cancel().catch(() => undefined);
    if (e instanceof DependencyRefused || e instanceof DependencyFailed) throw e;
    throw new DependencyFailed(`${o.what}: fetching ${url}: ${describe(e)}`);
  }
}

/** GET `url` into memory (small files: an InRelease), capped. */
export async function fetchBytes(url: string, o: Omit<DownloadOptions, 'algorithms'>): Promise<Buffer> {
  const res = await get(url, o);
  try {
    tooLong(res, { ...o, algorithms: [] }, url);
    if (!res.body) throw new DependencyFailed(`${o.what}: ${url} sent no body`);
    const chunks: Buffer[] = [];
    const c = counter({ ...o, algorithms: [] }, url, []);
    c.on('data', (b: Buffer) => chunks.push(b));
    await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>), c);
    return Buffer.concat(chunks);
  } catch (e) {
    await res.body?.cancel().catch(() => undefined);
    if (e instanceof DependencyRefused || e instanceof DependencyFailed) throw e;
    throw new DependencyFailed(`${o.what}: fetching ${url}: ${describe(e)}`);
  }
}

/**
 * `fn` over `items`, at most `limit` at once, in order of start. After the first error nothing new
 * starts; the ones running finish, then that error is thrown.
 */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  let failed: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i);
      } catch (e) {
        failed ??= { error: e };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failed) throw failed.error;
  return out;
}
