/**
 * Where the trusted builder gets its credentials (signing key, registry password, hint HMAC key).
 *
 * A secret is a small map of names to strings, the `data` of one Vault KV v2 entry
 * (`{ "username": "ci", "password": "…" }`), addressed by a relative path such as
 * `registry/push` or `projects/web/npm-token`. Two stores implement the contract:
 *
 * - `VaultSecretStore` (vault-store.ts): the deployed default; AppRole login, KV v2 reads.
 * - `FileSecretStore` (below): a directory of 0600 JSON files, for the local demo and tests.
 *
 * Contract, for every implementation:
 * - `read(path)` validates the path first (`[a-z0-9][a-z0-9/_.-]*`, no `..`, no empty segment,
 *   no leading or trailing `/`) and throws `InvalidInputError` naming it; a missing secret is a
 *   `NotFoundError` naming the path. A store never puts a secret *value* in an error message, an
 *   error cause or a log line: only paths, key names, modes and HTTP statuses.
 * - Every value `read` hands out is remembered; `inUse()` lists them (deduplicated, in first-read
 *   order) so the publish step can scan images, logs and artifacts for them (leak-check.ts). A
 *   store may add credentials of its own that must not leak either (Vault: the AppRole secret_id
 *   and every token it was issued).
 * - `close()` releases what the store holds (Vault: revoke-self and stop the renewal timer). It is
 *   idempotent, never throws, and `inUse()` still answers afterwards (the leak check runs after
 *   the secrets are no longer needed). `read` after `close` throws.
 * - Reads may run concurrently.
 */
import { constants } from 'node:fs';
import { lstat, open } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { InternalError, InvalidInputError, NotFoundError, StorageFailedError, UnauthorizedError, type Issue } from '#shared/errors.js';

/** The key → value map of one secret (the `data.data` of a KV v2 read). */
export type SecretValue = Readonly<Record<string, string>>;

/** See the module comment for the contract every store keeps. */
export interface SecretStore {
  /** 'vault' | 'file': for audit records and logs. */
  readonly kind: string;
  /** The secret at `path`: a fresh object the caller may keep. */
  read(path: string): Promise<SecretValue>;
  /** Every secret value (and store credential) handed out or used so far, for the leak check. */
  inUse(): readonly string[];
  /** Release credentials; idempotent; never throws. */
  close(): Promise<void>;
}

/** Every value in use across `stores`, deduplicated: what the leak check must look for. */
export function secretValues(...stores: readonly SecretStore[]): string[] {
  return [...new Set(stores.flatMap((s) => s.inUse()))];
}

/** Vault (or a store like it) refused this path: an ACL denial or a token it no longer accepts. */
export class SecretAccessDeniedError extends UnauthorizedError {
  constructor(
    readonly secretPath: string,
    detail: string,
  ) {
    super(`secret ${JSON.stringify(secretPath)}: ${detail}`);
  }
}

/** The store cannot answer now: sealed, unreachable, or failing after every retry. Retryable later. */
export class SecretStoreUnavailableError extends StorageFailedError {
  constructor(
    readonly reason: 'sealed' | 'unreachable' | 'server-error',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export const SECRET_PATH_PATTERN = /^[a-z0-9][a-z0-9/_.-]*$/;
const MAX_PATH_LENGTH = 256; // characters; Vault's own limit is far higher, ours is for sanity

/** Throws `InvalidInputError` naming `path` unless it is a safe relative secret path. */
export function validateSecretPath(path: string): void {
  const problem =
    typeof path !== 'string' || path === ''
      ? 'is empty'
      : path.length > MAX_PATH_LENGTH
        ? `is longer than ${MAX_PATH_LENGTH} characters`
        : path.startsWith('/')
          ? 'starts with "/": secret paths are relative'
          : !SECRET_PATH_PATTERN.test(path)
            ? 'may only hold a-z, 0-9, "/", "_", "." and "-", and must start with a letter or digit'
            : path.includes('..')
              ? 'contains ".."'
              : path.split('/').some((s) => s === '' || s === '.')
                ? 'has an empty or "." segment'
                : undefined;
  if (problem) {
    // The path is the caller's input, not a secret value, so it is named (JSON-quoted: it may be odd).
    throw new InvalidInputError([{ file: 'secret path', path: JSON.stringify(String(path)), message: problem, severity: 'error' }]);
  }
}

/**
 * Turns a parsed KV `data` object into a `SecretValue`: every value must be a string. The message
 * names keys, never values.
 */
export function toSecretValue(data: unknown, where: string, path: string): SecretValue {
  const issue = (message: string): InvalidInputError => new InvalidInputError([{ file: where, path, message, severity: 'error' }]);
  if (typeof data !== 'object' || data === null || Array.isArray(data)) throw issue('is not a JSON object of strings');
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [key, value] of Object.entries(data as Record<string, unknown>)) {
    if (typeof value !== 'string') throw issue(`key ${JSON.stringify(key)} is not a string (${value === null ? 'null' : typeof value})`);
    out[key] = value;
  }
  return Object.freeze({ ...out });
}

/**
 * Remembers what a store handed out. Values are kept in a Set: the leak check needs them all, and
 * nothing else may read them back out (there is no per-path lookup on purpose).
 */
export class SecretLedger {
  readonly #values = new Set<string>();

  add(...values: readonly string[]): void {
    for (const v of values) if (v !== '') this.#values.add(v);
  }

  addSecret(value: SecretValue): void {
    this.add(...Object.values(value));
  }

  values(): readonly string[] {
    return [...this.#values];
  }
}

export const MAX_SECRET_FILE_BYTES = 1024 * 1024; // 1 MiB: a signing key is a few KiB

/**
 * Reads a file that holds a credential, refusing anything another user could read or swap:
 * a symbolic link (checked with lstat, and again atomically with O_NOFOLLOW), anything but a
 * regular file, a mode with any group/other bit (0600 and 0400 pass), an owner other than this
 * process's user or root, and more than `maxBytes`. Missing → `NotFoundError`. Errors name the
 * file, never its content.
 */
export async function readPrivateFile(file: string, label: string, maxBytes = MAX_SECRET_FILE_BYTES): Promise<Buffer> {
  const refuse = (message: string): InvalidInputError => new InvalidInputError([{ file, path: label, message, severity: 'error' }]);
  let st;
  try {
    st = await lstat(file);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT' || errnoOf(e) === 'ENOTDIR') throw new NotFoundError(`${label}: no file ${file}`);
    throw new StorageFailedError(`${label}: cannot stat ${file} (${errnoOf(e) ?? 'error'})`);
  }
  if (st.isSymbolicLink()) throw refuse('is a symbolic link: secret files must be regular files');
  // O_NONBLOCK: a FIFO planted in place of the file must not hang the open.
  let handle;
  try {
    handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = errnoOf(e);
    if (code === 'ELOOP') throw refuse('is a symbolic link: secret files must be regular files');
    if (code === 'ENOENT') throw new NotFoundError(`${label}: no file ${file}`);
    if (code === 'EACCES') throw refuse('is not readable by this process');
    throw new StorageFailedError(`${label}: cannot open ${file} (${code ?? 'error'})`);
  }
  try {
    const fst = await handle.stat();
    if (!fst.isFile()) throw refuse('is not a regular file');
    const perm = fst.mode & 0o777;
    if ((perm & 0o077) !== 0) {
      throw refuse(`mode ${perm.toString(8).padStart(4, '0')} lets group or others access it; chmod 600 it`);
    }
    const uid = process.getuid?.();
    if (uid !== undefined && fst.uid !== uid && fst.uid !== 0) throw refuse(`is owned by uid ${fst.uid}, not by this process (uid ${uid}) or root`);
    if (fst.size > maxBytes) throw refuse(`is larger than ${maxBytes} bytes`);
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

function errnoOf(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * A directory of secrets for local use (the demo, tests, a single-host setup).
 *
 * Layout: the secret at path `a/b` is the file `<dir>/a/b.json`, holding one JSON object whose
 * values are strings — exactly the `data` a Vault KV v2 read would return:
 * ```
 * <dir>/registry/push.json        {"username": "airlock", "password": "…"}   mode 0600
 * <dir>/signing/release-key.json  {"armored": "-----BEGIN PGP PRIVATE KEY BLOCK-----…"}
 * ```
 * Each file must be a regular file (no symlink, at any level below `<dir>`), mode 0600 or 0400,
 * owned by this user or root; anything else is refused with an error naming the file. `<dir>`
 * itself may be a symlink (an operator's choice, e.g. /run/secrets).
 */
export class FileSecretStore implements SecretStore {
  readonly kind = 'file';
  readonly #dir: string;
  readonly #ledger = new SecretLedger();
  #closed = false;

  constructor(dir: string) {
    if (!isAbsolute(dir)) dir = resolve(dir);
    this.#dir = dir;
  }

  async read(path: string): Promise<SecretValue> {
    validateSecretPath(path);
    if (this.#closed) throw new InternalError(`secret store is closed (reading ${JSON.stringify(path)})`);
    const segments = path.split('/');
    // Intermediate directories must not be links either: `<dir>/a -> /elsewhere` would read outside.
    let at = this.#dir;
    for (const segment of segments.slice(0, -1)) {
      at = join(at, segment);
      const st = await lstat(at).catch((e: unknown) => {
        if (errnoOf(e) === 'ENOENT' || errnoOf(e) === 'ENOTDIR') throw new NotFoundError(`secret ${JSON.stringify(path)} not found in ${this.#dir}`);
        throw new StorageFailedError(`secret ${JSON.stringify(path)}: cannot stat ${at} (${errnoOf(e) ?? 'error'})`);
      });
      if (st.isSymbolicLink()) throw unsafe(at, path, 'is a symbolic link: directories below the secrets directory must be real');
      if (!st.isDirectory()) throw new NotFoundError(`secret ${JSON.stringify(path)} not found in ${this.#dir}`);
    }
    const file = join(this.#dir, `${path}.json`);
    let raw: Buffer;
    try {
      raw = await readPrivateFile(file, path);
    } catch (e) {
      if (e instanceof NotFoundError) throw new NotFoundError(`secret ${JSON.stringify(path)} not found in ${this.#dir}`);
      throw e;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch {
      // JSON.parse's message quotes the input, which is the secret: say only that it is not JSON.
      throw unsafe(file, path, 'is not valid JSON');
    }
    const value = toSecretValue(parsed, file, path);
    this.#ledger.addSecret(value);
    return { ...value };
  }

  inUse(): readonly string[] {
    return this.#ledger.values();
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}

function unsafe(file: string, path: string, message: string): InvalidInputError {
  const issue: Issue = { file, path, message, severity: 'error' };
  return new InvalidInputError([issue]);
}
