/**
 * Push an image from the local Docker engine to the private registry, and read back the manifest
 * digest the registry serves for it: the digest that the simple-signing signature names
 * (docs/signing.md), so it must be the `Docker-Content-Digest` of the schema-2 manifest we
 * pushed, never a schema-1 conversion.
 *
 * Mechanism: `skopeo copy --format v2s2 docker-daemon:<image id> docker://<registry>/<repo>:<tag>`,
 * with `--dest-authfile` and `--digestfile`; or, given `options.archive` (a `docker save` of that
 * image already on disk), `docker-archive:<file>` as the source: the bytes pushed are then the
 * very bytes the caller read (the promoter's leak check), and the engine is not asked to export
 * the image a second time. Why skopeo:
 *  - It reads the image by id. A dockerode `image.push` would need a `<registry>/<repo>:<tag>`
 *    tag on the shared engine first (state other builds and the reaper see, and a race between two
 *    builds pushing the same name), and the engine retries failed uploads itself with its own
 *    backoff, so our retry policy and the injected sleep would not govern a registry outage.
 *  - It is containers/image, the library consumers verify with (skopeo, podman): the manifest it
 *    writes is what they will read. Talking the distribution API ourselves from `docker save`
 *    would mean re-implementing blob uploads and layer compression for no gain.
 *  - `--retry-times` defaults to 0, so retries are ours; `--digestfile` gives the digest of the
 *    manifest bytes it PUT, which we then check against what the registry serves (`manifestDigest`).
 * Credentials never reach argv (`ps` shows argv): skopeo reads them from an auth file, mode 0600
 * in a 0700 temp dir that is removed when the push ends, however it ends. `manifestDigest` sends
 * them as a Basic header (htpasswd auth; token-auth registries are not supported).
 *
 * Failures: before each attempt `GET /v2/` with the credentials tells a registry that is down or
 * answers 5xx/429 (retried with exponential backoff, then `RegistryUnavailableError`) from one
 * that refuses the credentials (`RegistryAuthFailedError` at once: retrying cannot fix a password).
 * A failure inside skopeo is classified from its message the same way. Retrying is safe: skopeo
 * skips blobs the registry already has, compression of the same layer is deterministic, and a PUT
 * of identical manifest bytes changes nothing, so a retried push yields the same digest.
 * Plain HTTP (and no TLS verification in skopeo) is used for loopback registries only.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import {
  AirlockError,
  CancelledError,
  EngineUnavailableError,
  ImageNotFoundError,
  InternalError,
  InvalidInputError,
  NotFoundError,
  RegistryAuthFailedError,
  RegistryUnavailableError,
  type Issue,
} from '#shared/errors.js';
import { retry } from '#shared/retry.js';

export interface RegistryCredentials {
  username: string;
  password: string;
}

/** Where an image goes: `registry` is `host[:port]` (e.g. `127.0.0.1:5000`), `repository` e.g. `team/app`. */
export interface PushTarget {
  registry: string;
  repository: string;
  tag: string;
}

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  attempts: number;
  /** Wait before the 2nd attempt; doubled each time after, up to `maxDelayMs`. */
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  attempts: 5,
  baseDelayMs: 500, // 0.5 s, 1 s, 2 s, 4 s: ~7.5 s of waiting before giving up
  maxDelayMs: 8_000,
});

export interface RegistryRequestOptions {
  retry?: Partial<RetryPolicy>;
  /** Injected for tests; the default waits for real (and honours `signal`). */
  sleep?: (ms: number) => Promise<void>;
  signal?: AbortSignal;
  /** Gets one warning per retried attempt. Nothing is logged without one. */
  logger?: Logger;
  /** Per HTTP request. */
  requestTimeoutMs?: number; // default 30 s
}

export interface PushOptions extends RegistryRequestOptions {
  /** The skopeo binary (default: `skopeo` on PATH). */
  skopeo?: string;
  /** The engine holding the image, as skopeo's `--src-daemon-host` (default: skopeo's, the local socket). */
  dockerHost?: string;
  /** One `skopeo copy`, after which the attempt counts as failed and is retried. */
  attemptTimeoutMs?: number; // default 10 min
  /** A `docker save` of the image (by its id), pushed instead of reading the engine. */
  archive?: string;
}

export interface PushResult {
  /** `<registry>/<repository>:<tag>`, the identity a signature names. */
  reference: string;
  /** `sha256:<hex>`: the `Docker-Content-Digest` the registry serves for the schema-2 manifest we pushed. */
  digest: string;
  /** How many push attempts it took (1 when nothing was retried). */
  attempts: number;
}

/** What a GET of a manifest accepts, schema-2 first. Without it registry 2.8 converts to schema 1, whose digest differs. */
export const MANIFEST_ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ');

const REQUEST_TIMEOUT_MS = 30_000;
const ATTEMPT_TIMEOUT_MS = 10 * 60_000;
const STDERR_CAP = 16 * 1024; // 16 KiB: enough for skopeo's one fatal line and context

// The distribution spec's grammar (docker/distribution reference/regexp.go).
const REPOSITORY = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const REGISTRY = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::\d{1,5})?$/;
const IMAGE_ID = /^(?:sha256:)?([0-9a-f]{64})$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** A failure that another attempt may not hit: the registry was unreachable or answered 5xx/429. */
class TransientFailure extends Error {}

/**
 * Push `imageId` (the engine's `sha256:…` id) to `target` and return the digest the registry serves
 * for it. Throws `InvalidInputError` for a malformed target, `RegistryAuthFailedError` (not retried),
 * `RegistryUnavailableError` after the last retry, `ImageNotFoundError` when the engine lacks the
 * image, `CancelledError` when `signal` aborts; nothing is pushed twice under another digest.
 */
export async function pushImage(imageId: string, target: PushTarget, credentials: RegistryCredentials, options: PushOptions = {}): Promise<PushResult> {
  const id = checkPush(imageId, target, credentials);
  if (options.archive !== undefined && (options.archive.includes(':') || !options.archive.startsWith('/'))) {
    throw new InvalidInputError([issue('archive', `must be an absolute path without ":" (skopeo's docker-archive syntax): ${JSON.stringify(options.archive)}`)]);
  }
  const reference = `${target.registry}/${target.repository}:${target.tag}`;
  const dir = await mkdtemp(join(tmpdir(), 'airlock-push-'));
  try {
    const files = await writeSkopeoFiles(dir, target.registry, credentials);
    const { value: pushed, attempts } = await withRetries(`push of ${reference}`, target.registry, options, async () => {
      await ping(target.registry, credentials, options);
      return copyWithSkopeo(id, reference, target.registry, files, options);
    });
    // The registry, not skopeo, has the last word on what it serves under this tag.
    const served = await manifestDigest(target.registry, target.repository, target.tag, credentials, options);
    if (served !== pushed) {
      throw new InternalError(`registry ${target.registry} serves ${served} for ${reference}, but the manifest pushed was ${pushed} (a concurrent push to the same tag?)`);
    }
    return { reference, digest: served, attempts };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The `Docker-Content-Digest` the registry serves for `<repository>:<tag>`, asked with the schema-2
 * Accept header, after checking that it is the sha256 of the bytes served. `NotFoundError` for an
 * unknown tag; otherwise the same errors and retries as `pushImage`.
 */
export async function manifestDigest(registry: string, repository: string, tag: string, credentials: RegistryCredentials, options: RegistryRequestOptions = {}): Promise<string> {
  checkTarget({ registry, repository, tag }, credentials);
  const url = `${baseUrl(registry)}/v2/${repository}/manifests/${encodeURIComponent(tag)}`;
  const { value } = await withRetries(`manifest lookup of ${registry}/${repository}:${tag}`, registry, options, async () => {
    const res = await request(url, credentials, { Accept: MANIFEST_ACCEPT }, options);
    if (res.status === 404) throw new NotFoundError(`registry ${registry} has no manifest ${repository}:${tag}`);
    throwForStatus(res.status, registry, credentials, `GET ${url}`);
    const body = Buffer.from(await res.arrayBuffer());
    const header = res.headers.get('docker-content-digest') ?? '';
    const computed = `sha256:${createHash('sha256').update(body).digest('hex')}`;
    if (!DIGEST.test(header)) throw new InternalError(`registry ${registry} sent no usable Docker-Content-Digest for ${repository}:${tag}`);
    if (header !== computed) throw new InternalError(`registry ${registry} says ${header} for ${repository}:${tag} but served bytes hashing to ${computed}`);
    return header;
  });
  return value;
}

/** What a failed `skopeo copy` means, read from its stderr. Exported for tests. */
export function classifySkopeoFailure(stderr: string): 'auth' | 'transient' | 'image-missing' | 'engine' | 'other' {
  if (/loading image from docker engine|initializing source docker-daemon/i.test(stderr)) {
    if (/Cannot connect to the Docker daemon|docker\.sock: connect/i.test(stderr)) return 'engine';
    if (/no such file or directory|No such image|reference does not exist|not found/i.test(stderr)) return 'image-missing';
  }
  if (/unauthorized|authentication required|invalid username\/password|denied: requested access|status(?: code)?:? 403\b/i.test(stderr)) return 'auth';
  if (
    /connection refused|connection reset|broken pipe|\bEOF\b|i\/o timeout|TLS handshake timeout|no route to host|too many requests|toomanyrequests|(?:status|code)[^\n]{0,24}\b(?:5\d\d|429)\b/i.test(
      stderr,
    )
  ) {
    return 'transient';
  }
  return 'other';
}

// ---- internals ------------------------------------------------------------------------------------

function checkPush(imageId: string, target: PushTarget, credentials: RegistryCredentials): string {
  const hex = IMAGE_ID.exec(imageId)?.[1];
  checkTarget(target, credentials, hex ? [] : [issue('imageId', `not an image id (sha256:<64 hex>): ${JSON.stringify(imageId)}`)]);
  return `sha256:${hex}`;
}

function checkTarget(target: PushTarget, credentials: RegistryCredentials, issues: Issue[] = []): void {
  if (!REGISTRY.test(target.registry)) issues.push(issue('registry', `not a registry host[:port]: ${JSON.stringify(target.registry)}`));
  if (!REPOSITORY.test(target.repository) || target.repository.length > 255) issues.push(issue('repository', `not a repository name: ${JSON.stringify(target.repository)}`));
  if (!TAG.test(target.tag)) issues.push(issue('tag', `not a tag: ${JSON.stringify(target.tag)}`));
  if (!credentials.username || credentials.username.includes(':')) issues.push(issue('credentials.username', 'empty or contains ":"'));
  if (!credentials.password) issues.push(issue('credentials.password', 'empty'));
  if (issues.length > 0) throw new InvalidInputError(issues);
}

function issue(path: string, message: string): Issue {
  return { file: 'registry push', path, message, severity: 'error' };
}

function isLoopback(registry: string): boolean {
  const host = registry.replace(/:\d+$/, '');
  return host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

function baseUrl(registry: string): string {
  return `${isLoopback(registry) ? 'http' : 'https'}://${registry}`;
}

/** Run `op` until it succeeds, throws something other than a TransientFailure, or runs out of attempts. */
async function withRetries<T>(what: string, registry: string, options: RegistryRequestOptions, op: () => Promise<T>): Promise<{ value: T; attempts: number }> {
  const policy = { ...DEFAULT_RETRY, ...options.retry };
  return retry(async (attempt) => ({ value: await op(), attempts: attempt }), {
    attempts: Math.max(1, policy.attempts), // the first attempt is always made
    baseDelayMs: policy.baseDelayMs,
    maxDelayMs: policy.maxDelayMs,
    retryable: (e) => e instanceof TransientFailure,
    exhausted: (e, attempts) => new RegistryUnavailableError(`${what}: registry ${registry} still unavailable after ${attempts} attempts: ${(e as Error).message}`, { cause: e }),
    onRetry: (e, attempt, ms) => options.logger?.warn({ registry, attempt, delayMs: ms, reason: (e as Error).message }, `${what} failed; retrying`),
    ...(options.signal ? { signal: options.signal } : {}),
    aborted: () => new CancelledError('registry operation cancelled'),
    ...(options.sleep ? { sleep: options.sleep } : {}),
  });
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new CancelledError('registry operation cancelled');
}

/** One HTTP request with Basic auth; a network failure or timeout becomes a TransientFailure. */
async function request(url: string, credentials: RegistryCredentials, headers: Record<string, string>, options: RegistryRequestOptions): Promise<Response> {
  const timeout = AbortSignal.timeout(options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS);
  const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
  const authorization = `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
  try {
    return await fetch(url, { headers: { ...headers, Authorization: authorization }, signal, redirect: 'error' });
  } catch (e) {
    throwIfAborted(options.signal);
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    throw new TransientFailure(`${new URL(url).pathname}: ${cause?.code ?? cause?.message ?? (e as Error).message}`);
  }
}

function throwForStatus(status: number, registry: string, credentials: RegistryCredentials, what: string): void {
  if (status >= 200 && status < 300) return;
  if (status === 401 || status === 403) {
    throw new RegistryAuthFailedError(`registry ${registry} refused the credentials of ${JSON.stringify(credentials.username)} (${what} → ${status})`);
  }
  if (status >= 500 || status === 429) throw new TransientFailure(`${what} → ${status}`);
  throw new InternalError(`registry ${registry} answered ${what} with ${status}`);
}

/**
 * The builder's login check at start (`GET /v2/` with the credentials, the probe each push makes
 * first, tried once): `'ok'`, or `{ unreachable }` (no answer, a 5xx or 429: the pushes retry later).
 * Throws `RegistryAuthFailedError` when the registry refuses the credentials (401/403),
 * `RegistryUnavailableError` when the address answers but is not a v2 registry, `InvalidInputError`
 * for a malformed host or empty credentials.
 */
export async function checkRegistryLogin(registry: string, credentials: RegistryCredentials, options: RegistryRequestOptions = {}): Promise<'ok' | { unreachable: string }> {
  checkTarget({ registry, repository: 'airlock', tag: 'login' }, credentials);
  try {
    await ping(registry, credentials, options);
    return 'ok';
  } catch (e) {
    if (e instanceof TransientFailure) return { unreachable: e.message };
    throw e;
  }
}

/** `GET /v2/` with the credentials: is the registry up, and does it take them? */
async function ping(registry: string, credentials: RegistryCredentials, options: RegistryRequestOptions): Promise<void> {
  const res = await request(`${baseUrl(registry)}/v2/`, credentials, {}, options);
  await res.arrayBuffer();
  if (res.status === 404) throw new RegistryUnavailableError(`${registry} answers GET /v2/ with 404: not a registry speaking the v2 API`);
  throwForStatus(res.status, registry, credentials, 'GET /v2/');
}

interface SkopeoFiles {
  dir: string;
  authfile: string;
  policy: string;
  registriesD: string;
}

/**
 * The files skopeo reads, so that nothing on the machine changes what it does: the credentials
 * (0600), a signature policy that accepts the engine or an archive as a source (we push, we do not verify here),
 * and an empty registries.d (no lookaside writes).
 */
async function writeSkopeoFiles(dir: string, registry: string, credentials: RegistryCredentials): Promise<SkopeoFiles> {
  const files = { dir, authfile: join(dir, 'auth.json'), policy: join(dir, 'policy.json'), registriesD: join(dir, 'registries.d') };
  const auth = Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64');
  await writeFile(files.authfile, JSON.stringify({ auths: { [registry]: { auth } } }), { mode: 0o600, flag: 'wx' });
  const accept = { '': [{ type: 'insecureAcceptAnything' }] };
  const policy = { default: [{ type: 'reject' }], transports: { 'docker-daemon': accept, 'docker-archive': accept } };
  await writeFile(files.policy, JSON.stringify(policy), { flag: 'wx' });
  await mkdir(files.registriesD);
  return files;
}

/** One `skopeo copy`; resolves with the digest of the manifest it pushed. */
async function copyWithSkopeo(imageId: string, reference: string, registry: string, files: SkopeoFiles, options: PushOptions): Promise<string> {
  const digestFile = join(files.dir, 'digest');
  await rm(digestFile, { force: true });
  const args = [
    '--policy', files.policy,
    '--registries.d', files.registriesD,
    'copy', '--quiet', '--format', 'v2s2', '--retry-times', '0',
    '--dest-authfile', files.authfile,
    `--dest-tls-verify=${isLoopback(registry) ? 'false' : 'true'}`,
    '--digestfile', digestFile,
    ...(options.archive ? [`docker-archive:${options.archive}`] : [...(options.dockerHost ? ['--src-daemon-host', options.dockerHost] : []), `docker-daemon:${imageId}`]),
    `docker://${reference}`,
  ];
  const { code, stderr, timedOut } = await run(options.skopeo ?? 'skopeo', args, options.attemptTimeoutMs ?? ATTEMPT_TIMEOUT_MS, options.signal);
  if (code === 0) {
    const digest = (await readFile(digestFile, 'utf8')).trim();
    if (!DIGEST.test(digest)) throw new InternalError(`skopeo wrote no usable digest for ${reference}: ${JSON.stringify(digest)}`);
    return digest;
  }
  throwIfAborted(options.signal);
  const message = lastLine(stderr);
  if (timedOut) throw new TransientFailure(`skopeo copy timed out: ${message}`);
  switch (classifySkopeoFailure(stderr)) {
    case 'auth':
      throw new RegistryAuthFailedError(`registry ${registry} refused the push of ${reference}: ${message}`);
    case 'transient':
      throw new TransientFailure(message);
    case 'image-missing':
      throw new ImageNotFoundError(imageId);
    case 'engine':
      throw new EngineUnavailableError(`skopeo could not read ${imageId} from the engine: ${message}`);
    default:
      throw new InternalError(`skopeo copy to ${reference} failed: ${message}`);
  }
}

function lastLine(stderr: string): string {
  const line = stderr.trim().split('\n').pop() ?? '';
  return (/msg="((?:[^"\\]|\\.)*)"/.exec(line)?.[1]?.replace(/\\"/g, '"') ?? line) || '(no message)';
}

/** Run a short-lived tool, keeping the tail of its stderr. */
function run(bin: string, args: string[], timeoutMs: number, signal: AbortSignal | undefined): Promise<{ code: number | null; stderr: string; timedOut: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'], signal, timeout: timeoutMs, killSignal: 'SIGKILL' });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-STDERR_CAP)));
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.name === 'AbortError') return; // 'close' follows; the caller sees the aborted signal
      if (e.code === 'ENOENT') reject(new InternalError(`${bin} not found: it is needed to push images (Debian package skopeo)`));
      else reject(e instanceof AirlockError ? e : new InternalError(`${bin} failed to start: ${e.message}`));
    });
    child.on('close', (code, sig) => resolve({ code, stderr, timedOut: sig === 'SIGKILL' && !signal?.aborted }));
  });
}
