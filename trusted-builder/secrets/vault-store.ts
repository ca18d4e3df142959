/**
 * `SecretStore` on HashiCorp Vault through node-vault: AppRole login, KV v2 reads, token renewal,
 * revoke-self on close. The contract is in secret-store.ts.
 *
 * Vault HTTP API used (https://developer.hashicorp.com/vault/api-docs):
 *   POST /v1/auth/<approle>/login  {role_id, secret_id}  → auth.client_token, auth.lease_duration (s)
 *   GET  /v1/<mount>/data/<path>[?version=N]             → data.data (the secret), data.metadata
 *   POST /v1/auth/token/renew-self                       → auth.lease_duration, auth.renewable
 *   POST /v1/auth/token/revoke-self                      → 204
 * Errors come as `{"errors": [...]}`: 403 permission denied (ACL, or a token Vault no longer
 * accepts: Vault does not tell them apart), 404 no such secret/version, 503 `Vault is sealed`.
 *
 * What we do with each:
 * - 500/502/503 (not sealed)/504/412/429 and network errors (refused, reset, timeout) are retried
 *   with exponential backoff and jitter, `maxAttempts` in all; then `SecretStoreUnavailableError`.
 * - Sealed (503 + "Vault is sealed") fails at once with reason 'sealed': unsealing takes an operator,
 *   so retrying inside one build only delays the report. The error is retryable for the caller.
 * - 403 on a read: the token may have expired or been revoked behind our back, so we log in again
 *   once and retry; a second 403 is `SecretAccessDeniedError` naming the path.
 * - 404 → `NotFoundError` naming the path (and version).
 *
 * Secrets never reach a message, a log line or an error `cause`: axios errors carry the request
 * config (the X-Vault-Token header, the login body with the secret_id), so they are replaced by a
 * summary (`ECONNRESET`, `HTTP 500`) before anything is thrown or logged, and node-vault's own
 * `debug` output (which prints request bodies) is switched off.
 */
import { readFile } from 'node:fs/promises';
import nodeVault from 'node-vault';
import { InternalError, InvalidInputError, NotFoundError, UnauthorizedError } from '#shared/errors.js';
import { rootLogger, type Logger } from '#shared/logging.js';
import { retry } from '#shared/retry.js';
import {
  readPrivateFile,
  SecretAccessDeniedError,
  SecretLedger,
  SecretStoreUnavailableError,
  toSecretValue,
  validateSecretPath,
  type SecretStore,
  type SecretValue,
} from './secret-store.js';

export interface VaultSecretStoreOptions {
  /** Vault's address, e.g. `https://vault.internal:8200`. */
  endpoint: string;
  /** Where the KV v2 engine is mounted. */
  mount?: string; // default 'secret'
  /** Where the AppRole auth method is mounted. */
  approleMount?: string; // default 'approle'
  /** File holding the AppRole role_id (not secret on its own). */
  roleIdFile: string;
  /** File holding the AppRole secret_id: must be 0600, no symlink (see readPrivateFile). */
  secretIdFile: string;
  /** Vault Enterprise namespace (X-Vault-Namespace). */
  namespace?: string;
  requestTimeoutMs?: number; // default 10_000 (10 s) per HTTP request
  /** Attempts per Vault call, the first included. */
  maxAttempts?: number; // default 5
  baseDelayMs?: number; // default 200 ms, doubled per retry
  maxDelayMs?: number; // default 5_000 ms
  /** Renew the token when this fraction of its lease has passed. */
  renewFraction?: number; // default 2/3
  /** Injected for tests. */
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
  now?: () => number;
  logger?: Logger;
}

const MOUNT_PATTERN = /^[a-z0-9][a-z0-9_-]*(\/[a-z0-9][a-z0-9_-]*)*$/;
const TRANSIENT_STATUSES = new Set([412, 429, 500, 502, 503, 504]);
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ECONNABORTED', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ERR_NETWORK', 'ERR_SOCKET_CONNECTION_TIMEOUT']);

/** A Vault answer we do not retry, summarised: status and Vault's `errors` (diagnostics, never data). */
class VaultHttpError extends Error {
  constructor(
    readonly status: number,
    readonly errors: readonly string[],
  ) {
    super(`HTTP ${status}${errors.length ? `: ${errors.join('; ').slice(0, 200)}` : ''}`);
  }
}

interface Token {
  value: string;
  expiresAt: number; // ms since epoch; Infinity when the lease does not expire
  leaseMs: number;
  renewable: boolean;
}

export class VaultSecretStore implements SecretStore {
  readonly kind = 'vault';
  readonly #client: nodeVault.client;
  readonly #o: Required<Omit<VaultSecretStoreOptions, 'namespace' | 'logger'>>;
  readonly #log: Logger;
  readonly #ledger = new SecretLedger();
  #token: Token | undefined;
  #loggingIn: Promise<Token> | undefined;
  #renewTimer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: VaultSecretStoreOptions) {
    this.#o = {
      endpoint: options.endpoint.replace(/\/+$/, ''),
      mount: options.mount ?? 'secret',
      approleMount: options.approleMount ?? 'approle',
      roleIdFile: options.roleIdFile,
      secretIdFile: options.secretIdFile,
      requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
      maxAttempts: options.maxAttempts ?? 5,
      baseDelayMs: options.baseDelayMs ?? 200,
      maxDelayMs: options.maxDelayMs ?? 5_000,
      renewFraction: options.renewFraction ?? 2 / 3,
      sleep: options.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms))),
      random: options.random ?? Math.random,
      now: options.now ?? Date.now,
    };
    const issues = [];
    if (!/^https?:\/\/[^/]+$/.test(this.#o.endpoint)) issues.push({ path: 'endpoint', message: 'must be http(s)://host[:port]' });
    if (!MOUNT_PATTERN.test(this.#o.mount)) issues.push({ path: 'mount', message: 'is not a mount path' });
    if (!MOUNT_PATTERN.test(this.#o.approleMount)) issues.push({ path: 'approleMount', message: 'is not a mount path' });
    if (!(this.#o.maxAttempts >= 1)) issues.push({ path: 'maxAttempts', message: 'must be at least 1' });
    if (!(this.#o.renewFraction > 0 && this.#o.renewFraction < 1)) issues.push({ path: 'renewFraction', message: 'must be between 0 and 1' });
    if (issues.length) throw new InvalidInputError(issues.map((i) => ({ file: 'vault options', ...i, severity: 'error' as const })));

    this.#log = options.logger ?? rootLogger().child({ component: 'secrets', store: 'vault' });
    this.#client = nodeVault({
      endpoint: this.#o.endpoint,
      apiVersion: 'v1',
      ...(options.namespace ? { namespace: options.namespace } : {}),
      // node-vault's debug() prints request bodies, the login's secret_id among them.
      debug: () => undefined,
      requestOptions: { timeout: this.#o.requestTimeoutMs },
    });
    this.#client.token = '';
  }

  /** Logs in now (reads do it on demand). Idempotent while the token is usable. */
  async login(): Promise<void> {
    await this.#usableToken();
  }

  /**
   * The secret at `<mount>/data/<path>`, latest version unless `version` is given.
   * Errors: InvalidInputError (bad path/version, non-string values), NotFoundError,
   * SecretAccessDeniedError, SecretStoreUnavailableError (sealed/unreachable/5xx after retries),
   * UnauthorizedError (AppRole login refused).
   */
  async read(path: string, options: { version?: number } = {}): Promise<SecretValue> {
    validateSecretPath(path);
    const { version } = options;
    if (version !== undefined && !(Number.isSafeInteger(version) && version >= 1)) {
      throw new InvalidInputError([{ file: 'secret version', path: JSON.stringify(path), message: 'must be a positive integer', severity: 'error' }]);
    }
    this.#assertOpen(path);
    const what = version === undefined ? JSON.stringify(path) : `${JSON.stringify(path)} version ${version}`;
    const url = `${this.#o.mount}/data/${path}${version === undefined ? '' : `?version=${version}`}`;
    for (let relogin = 0; ; relogin++) {
      const token = await this.#usableToken();
      let body: unknown;
      try {
        body = await this.#call(`read ${what}`, () => this.#client.read(url, { headers: { 'X-Vault-Token': token.value } }));
      } catch (e) {
        if (!(e instanceof VaultHttpError)) throw e;
        if (e.status === 403 && relogin === 0) {
          // Expired or revoked behind our back looks the same as an ACL denial: log in once more.
          this.#log.info({ path, version }, 'vault: permission denied, logging in again once');
          if (this.#token === token) this.#dropToken();
          continue;
        }
        if (e.status === 403) throw new SecretAccessDeniedError(path, `permission denied by Vault at ${this.#o.endpoint} (mount "${this.#o.mount}"): this AppRole's policy does not grant read on it`);
        if (e.status === 404) throw new NotFoundError(`secret ${what} not found in Vault mount "${this.#o.mount}"`);
        throw new InternalError(`Vault read of secret ${what} failed: ${e.message}`);
      }
      const data = (body as { data?: { data?: unknown } } | undefined)?.data?.data;
      if (data === null || data === undefined) throw new NotFoundError(`secret ${what} not found in Vault mount "${this.#o.mount}" (deleted or destroyed)`);
      const value = toSecretValue(data, `vault:${this.#o.mount}`, path);
      this.#ledger.addSecret(value);
      this.#log.debug({ path, version, keys: Object.keys(value) }, 'vault: secret read');
      return { ...value };
    }
  }

  /** Every value read, plus the AppRole secret_id and every token issued to this store. */
  inUse(): readonly string[] {
    return this.#ledger.values();
  }

  /** Stops renewal and revokes the token (revoke-self). Never throws: a failed revoke is logged; the token then dies at its TTL. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopRenewal();
    const token = this.#token ?? (await this.#loggingIn?.catch(() => undefined));
    this.#token = undefined;
    if (!token) return;
    try {
      // client.request, not tokenRevokeSelf(args): node-vault posts a schema-less command's args as the body.
      const revoke = (): Promise<unknown> =>
        this.#client.request({ path: '/auth/token/revoke-self', method: 'POST', headers: { 'X-Vault-Token': token.value }, timeout: this.#o.requestTimeoutMs });
      await this.#call('revoke-self', revoke, Math.min(2, this.#o.maxAttempts));
      this.#log.info('vault: token revoked');
    } catch (e) {
      this.#log.warn({ err: summary(e) }, 'vault: revoke-self failed; the token expires at its TTL');
    } finally {
      this.#client.token = '';
    }
  }

  #assertOpen(path: string): void {
    if (this.#closed) throw new InternalError(`secret store is closed (reading ${JSON.stringify(path)})`);
  }

  /** The current token, logging in first when there is none or it is about to expire. */
  async #usableToken(): Promise<Token> {
    const t = this.#token;
    if (t) {
      const margin = Math.min(5_000, t.leaseMs * (1 - this.#o.renewFraction) / 2);
      if (this.#o.now() < t.expiresAt - margin) return t;
      this.#dropToken();
    }
    this.#loggingIn ??= this.#login().finally(() => {
      this.#loggingIn = undefined;
    });
    return this.#loggingIn;
  }

  async #login(): Promise<Token> {
    const roleId = (await readFile(this.#o.roleIdFile, 'utf8').catch(() => {
      throw new InvalidInputError([{ file: this.#o.roleIdFile, path: 'role_id', message: 'cannot be read', severity: 'error' }]);
    })).trim();
    const secretId = (await readPrivateFile(this.#o.secretIdFile, 'secret_id')).toString('utf8').trim();
    if (!roleId || !secretId) {
      throw new InvalidInputError([{ file: roleId ? this.#o.secretIdFile : this.#o.roleIdFile, path: roleId ? 'secret_id' : 'role_id', message: 'is empty', severity: 'error' }]);
    }
    this.#ledger.add(secretId);
    let body: unknown;
    try {
      body = await this.#call('AppRole login', () => this.#client.approleLogin({ mount_point: this.#o.approleMount, role_id: roleId, secret_id: secretId }));
    } catch (e) {
      if (e instanceof VaultHttpError) {
        throw new UnauthorizedError(`Vault at ${this.#o.endpoint} refused the AppRole login at auth/${this.#o.approleMount} (${e.message})`);
      }
      throw e;
    }
    const auth = (body as { auth?: { client_token?: unknown; lease_duration?: unknown; renewable?: unknown } } | undefined)?.auth;
    if (typeof auth?.client_token !== 'string' || auth.client_token === '') throw new InternalError('Vault AppRole login answered without auth.client_token');
    const leaseMs = typeof auth.lease_duration === 'number' && auth.lease_duration > 0 ? auth.lease_duration * 1000 : 0;
    const token: Token = {
      value: auth.client_token,
      leaseMs,
      expiresAt: leaseMs ? this.#o.now() + leaseMs : Infinity,
      renewable: auth.renewable === true,
    };
    this.#ledger.add(token.value);
    if (this.#closed) {
      // close() ran while we were logging in; it will revoke this token (it awaits #loggingIn).
      return token;
    }
    this.#token = token;
    this.#client.token = token.value;
    this.#scheduleRenewal(token);
    this.#log.info({ leaseSeconds: leaseMs / 1000, renewable: token.renewable }, 'vault: logged in with AppRole');
    return token;
  }

  #dropToken(): void {
    this.#stopRenewal();
    this.#token = undefined;
  }

  #stopRenewal(): void {
    if (this.#renewTimer) clearTimeout(this.#renewTimer);
    this.#renewTimer = undefined;
  }

  /** Renew at `renewFraction` of the lease; the timer is unref'd so it never keeps the process alive. */
  #scheduleRenewal(token: Token): void {
    this.#stopRenewal();
    if (!token.renewable || !token.leaseMs) return;
    this.#renewTimer = setTimeout(() => void this.#renew(token), token.leaseMs * this.#o.renewFraction);
    this.#renewTimer.unref();
  }

  async #renew(token: Token): Promise<void> {
    if (this.#closed || this.#token !== token) return;
    try {
      const body = await this.#call('renew-self', () => this.#client.tokenRenewSelf({ requestOptions: { headers: { 'X-Vault-Token': token.value } } }));
      const auth = (body as { auth?: { lease_duration?: unknown; renewable?: unknown } } | undefined)?.auth;
      const leaseMs = typeof auth?.lease_duration === 'number' ? auth.lease_duration * 1000 : 0;
      if (this.#closed || this.#token !== token) return;
      const shrunk = leaseMs < token.leaseMs; // capped by the token's max TTL: renewing again gains ever less
      token.expiresAt = this.#o.now() + leaseMs;
      token.leaseMs = leaseMs;
      token.renewable = auth?.renewable === true && !shrunk && leaseMs > 0;
      this.#log.debug({ leaseSeconds: leaseMs / 1000, renewable: token.renewable }, 'vault: token renewed');
      // When it can no longer be renewed, the next read past the expiry margin logs in afresh.
      this.#scheduleRenewal(token);
    } catch (e) {
      // Not fatal: the next read logs in again once this token nears expiry or is refused.
      this.#log.warn({ err: summary(e) }, 'vault: token renewal failed');
    }
  }

  /**
   * Runs one Vault call, retrying transient failures with exponential backoff and jitter.
   * Throws VaultHttpError (a status we do not retry), SecretStoreUnavailableError (sealed, or
   * transient failures on every attempt) or InternalError (a client-side failure).
   */
  async #call<T>(op: string, fn: () => Promise<T>, maxAttempts = this.#o.maxAttempts): Promise<T> {
    const lastOf = (f: Transient): string => (f.failure.kind === 'network' ? f.failure.code : `HTTP ${f.failure.status}`);
    return retry(
      async () => {
        try {
          return await fn();
        } catch (e) {
          const failure = classify(e);
          if (failure.kind === 'status' && failure.status === 503 && failure.errors.some((m) => /sealed/i.test(m))) {
            throw new SecretStoreUnavailableError('sealed', `Vault at ${this.#o.endpoint} is sealed: ${op} refused (HTTP 503); an operator must unseal it`);
          }
          if (failure.kind === 'other') throw new InternalError(`Vault ${op} failed in the client: ${failure.summary}`);
          if (failure.kind === 'status' && !TRANSIENT_STATUSES.has(failure.status)) throw new VaultHttpError(failure.status, failure.errors);
          throw new Transient(failure);
        }
      },
      {
        attempts: maxAttempts,
        baseDelayMs: this.#o.baseDelayMs,
        maxDelayMs: this.#o.maxDelayMs,
        jitter: 'equal',
        random: this.#o.random,
        sleep: this.#o.sleep,
        retryable: (e) => e instanceof Transient,
        onRetry: (e, attempt, delayMs) => this.#log.warn({ op, attempt, last: lastOf(e as Transient), delayMs }, 'vault: transient failure, retrying'),
        exhausted: (e, attempts) => {
          const last = lastOf(e as Transient);
          return new SecretStoreUnavailableError(
            (e as Transient).failure.kind === 'network' ? 'unreachable' : 'server-error',
            `Vault at ${this.#o.endpoint}: ${op} failed after ${attempts} attempt${attempts === 1 ? '' : 's'} (last: ${last})`,
            { cause: new Error(last) },
          );
        },
      },
    );
  }
}

/** A failure worth another try: a network error or a transient status (internal to #call). */
class Transient extends Error {
  constructor(readonly failure: Extract<Failure, { kind: 'network' | 'status' }>) {
    super('transient Vault failure');
  }
}

type Failure = { kind: 'status'; status: number; errors: string[] } | { kind: 'network'; code: string } | { kind: 'other'; summary: string };

/** What went wrong, without anything the error object carries about the request (headers, body). */
function classify(e: unknown): Failure {
  const err = e as { response?: { statusCode?: unknown; body?: unknown }; isAxiosError?: unknown; code?: unknown } | null;
  const status = err?.response?.statusCode;
  if (typeof status === 'number') {
    const errors = (err?.response?.body as { errors?: unknown } | undefined)?.errors;
    return { kind: 'status', status, errors: Array.isArray(errors) ? errors.filter((x): x is string => typeof x === 'string') : [] };
  }
  const code = typeof err?.code === 'string' ? err.code : undefined;
  if (err?.isAxiosError === true || (code && NETWORK_CODES.has(code))) return { kind: 'network', code: code ?? 'network error' };
  return { kind: 'other', summary: summary(e) };
}

/** A loggable one-liner for any failure: class name and code/status only. */
function summary(e: unknown): string {
  if (e instanceof SecretStoreUnavailableError || e instanceof VaultHttpError || e instanceof InternalError) return e.message;
  const f = e as { name?: unknown; code?: unknown } | null;
  return [typeof f?.name === 'string' ? f.name : 'Error', typeof f?.code === 'string' || typeof f?.code === 'number' ? String(f.code) : ''].filter(Boolean).join(' ');
}
