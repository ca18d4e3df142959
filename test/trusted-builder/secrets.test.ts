/**
 * SecretStore implementations: FileSecretStore on a real directory, VaultSecretStore against the
 * Vault HTTP double (test/support/vault-double.ts; no Vault server can be installed here).
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { InternalError, InvalidInputError, NotFoundError, UnauthorizedError } from '#shared/errors.js';
import { FileSecretStore, SecretAccessDeniedError, secretValues, SecretStoreUnavailableError, validateSecretPath } from '../../trusted-builder/secrets/secret-store.js';
import { VaultSecretStore, type VaultSecretStoreOptions } from '../../trusted-builder/secrets/vault-store.js';
import { VaultDouble } from '../support/vault-double.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'airlock-secrets-'));
  dirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function writeSecret(dir: string, path: string, content: string, mode = 0o600): string {
  const file = join(dir, `${path}.json`);
  mkdirSync(join(file, '..'), { recursive: true });
  writeFileSync(file, content, { mode });
  chmodSync(file, mode);
  return file;
}

/** Runs `fn`, expecting it to throw; returns the error. */
async function failure(fn: () => Promise<unknown>): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a failure');
}

describe('secret paths', () => {
  it.each(['registry/push', 'a', 'projects/web-app/npm_token', 'x/y.z/v1', '0/1'])('accepts %j', (p) => {
    expect(() => validateSecretPath(p)).not.toThrow();
  });

  it.each(['', '/etc/passwd', '../x', 'a/../b', 'a/..', 'x..y', 'A/b', 'a//b', 'a/./b', 'a/', '-a', '.a', 'a b', 'a\\b', 'a\0b', 'é'])('refuses %j, naming it', (p) => {
    let err: unknown;
    try {
      validateSecretPath(p);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as InvalidInputError).code).toBe('AIRLOCK_E_INVALID_INPUT');
    expect((err as InvalidInputError).message).toContain(JSON.stringify(p));
  });
});

describe('FileSecretStore', () => {
  const VALUE = 'hunter2-file-secret-Zq9';
  let dir: string;
  let store: FileSecretStore;

  beforeEach(() => {
    dir = tempDir();
    store = new FileSecretStore(dir);
  });

  it('reads <dir>/<path>.json (0600) and remembers the values it handed out', async () => {
    writeSecret(dir, 'registry/push', JSON.stringify({ username: 'airlock', password: VALUE }));
    writeSecret(dir, 'signing', JSON.stringify({ key: 'k-0123456789' }), 0o400);
    writeSecret(dir, 'owner-only', JSON.stringify({}), 0o700); // no group or other bit: accepted
    expect(store.inUse()).toEqual([]);
    await expect(store.read('registry/push')).resolves.toEqual({ username: 'airlock', password: VALUE });
    await expect(store.read('signing')).resolves.toEqual({ key: 'k-0123456789' });
    await expect(store.read('owner-only')).resolves.toEqual({});
    expect(store.inUse()).toEqual(['airlock', VALUE, 'k-0123456789']);
    expect(secretValues(store, store)).toEqual(['airlock', VALUE, 'k-0123456789']);
  });

  it('returns a fresh object each time (a caller cannot poison the next read)', async () => {
    writeSecret(dir, 's', JSON.stringify({ a: 'value-123456' }));
    const first = (await store.read('s')) as Record<string, string>;
    first.a = 'changed';
    await expect(store.read('s')).resolves.toEqual({ a: 'value-123456' });
  });

  it.each(['0640', '0644', '0604', '0660', '0606', '0666', '0750'])('refuses mode %s, naming the file and the path', async (mode) => {
    const file = writeSecret(dir, 'registry/push', JSON.stringify({ password: VALUE }), parseInt(mode, 8));
    const e = await failure(() => store.read('registry/push'));
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(e.message).toContain(file);
    expect(e.message).toContain('registry/push');
    expect(e.message).toMatch(/chmod 600/);
    expect(e.message).not.toContain(VALUE);
    expect(store.inUse()).toEqual([]);
  });

  it('refuses a symlinked file, even to a 0600 file', async () => {
    const target = writeSecret(tempDir(), 'real', JSON.stringify({ password: VALUE }));
    symlinkSync(target, join(dir, 'linked.json'));
    const e = await failure(() => store.read('linked'));
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(e.message).toMatch(/symbolic link/);
    expect(e.message).toContain('linked');
    expect(e.message).not.toContain(VALUE);
  });

  it('refuses a symlinked directory below the secrets directory', async () => {
    const elsewhere = tempDir();
    writeSecret(elsewhere, 'push', JSON.stringify({ password: VALUE }));
    symlinkSync(elsewhere, join(dir, 'registry'));
    const e = await failure(() => store.read('registry/push'));
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(e.message).toMatch(/symbolic link/);
    expect(e.message).toContain(join(dir, 'registry'));
  });

  it('refuses a file that is not a regular file', async () => {
    mkdirSync(join(dir, 'adir.json'));
    const e = await failure(() => store.read('adir'));
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(e.message).toContain('adir');
  });

  it('missing → NotFoundError naming the path', async () => {
    for (const p of ['nope', 'no/such/dir/secret']) {
      const e = await failure(() => store.read(p));
      expect(e).toBeInstanceOf(NotFoundError);
      expect(e.message).toContain(JSON.stringify(p));
    }
    writeSecret(dir, 'file', '{}');
    const e = await failure(() => store.read('file/below')); // a file where a directory is expected
    expect(e).toBeInstanceOf(NotFoundError);
  });

  it('a bad path is refused before the filesystem is touched', async () => {
    const e = await failure(() => store.read('../outside'));
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(e.message).toContain('"../outside"');
  });

  it('broken JSON and non-string values are refused without quoting the content', async () => {
    writeSecret(dir, 'broken', `{"password": "${VALUE}"`);
    const e1 = await failure(() => store.read('broken'));
    expect(e1).toBeInstanceOf(InvalidInputError);
    expect(e1.message).toMatch(/not valid JSON/);
    expect(inspect(e1, { depth: 5 })).not.toContain(VALUE);

    writeSecret(dir, 'typed', JSON.stringify({ password: VALUE, port: 5000 }));
    const e2 = await failure(() => store.read('typed'));
    expect(e2.message).toContain('"port"');
    expect(e2.message).not.toContain(VALUE);

    writeSecret(dir, 'list', JSON.stringify([VALUE]));
    await expect(store.read('list')).rejects.toThrow(/not a JSON object/);
    expect(store.inUse()).toEqual([]);
  });

  it('close: reads are refused, inUse still answers, close again is fine', async () => {
    writeSecret(dir, 's', JSON.stringify({ a: VALUE }));
    await store.read('s');
    await store.close();
    await store.close();
    await expect(store.read('s')).rejects.toBeInstanceOf(InternalError);
    expect(store.inUse()).toEqual([VALUE]);
  });
});

describe('VaultSecretStore against the Vault double', () => {
  const NPM = 'npm_Tok3n-for-web-7c1f';
  const REG = 'registry-pa55word!&<>';
  let vault: VaultDouble;
  let dir: string;
  let creds: { roleIdFile: string; secretIdFile: string; secretId: string };
  let delays: number[];
  let logLines: string[];
  const stores: VaultSecretStore[] = [];

  beforeAll(async () => {
    vault = await VaultDouble.start();
    await vault.put('projects/web/npm', { token: NPM });
    await vault.put('shared/registry', { username: 'airlock', password: REG });
    await vault.put('projects/api/npm', { token: 'not-for-web-0000' });
  });
  afterAll(async () => {
    await vault.close();
  });
  beforeEach(() => {
    dir = tempDir();
    creds = role('builder', { 'secret/data/projects/web/*': ['read'], 'secret/data/shared/registry': ['read'] });
    delays = [];
    logLines = [];
    vault.requests.length = 0;
  });
  afterEach(async () => {
    vault.unseal();
    vault.clearFaults();
    for (const s of stores.splice(0)) await s.close();
    // Each test starts with no live token (a test may leave one behind on purpose, e.g. a failed revoke).
    for (const t of vault.liveTokens()) vault.revoke(t);
    // Nothing secret ever reached a log line.
    const log = logLines.join('');
    for (const v of [NPM, REG, creds.secretId, ...vault.issuedTokens()]) expect(log).not.toContain(v);
  });

  function role(name: string, policy: Record<string, ('read' | 'deny')[]>, ttl: { tokenTtl?: number; tokenMaxTtl?: number } = {}): typeof creds {
    const { roleId, secretId } = vault.addRole(name, { policy, ...ttl });
    const roleIdFile = join(dir, `${name}.role-id`);
    const secretIdFile = join(dir, `${name}.secret-id`);
    writeFileSync(roleIdFile, `${roleId}\n`);
    writeFileSync(secretIdFile, `${secretId}\n`, { mode: 0o600 });
    return { roleIdFile, secretIdFile, secretId };
  }

  function open(options: Partial<VaultSecretStoreOptions> = {}): VaultSecretStore {
    const logger = pino({ level: 'debug' }, { write: (s: string) => void logLines.push(s) });
    const store = new VaultSecretStore({
      endpoint: vault.url,
      roleIdFile: creds.roleIdFile,
      secretIdFile: creds.secretIdFile,
      sleep: async (ms) => void delays.push(ms),
      random: () => 0.5,
      logger,
      ...options,
    });
    stores.push(store);
    return store;
  }

  it('logs in with AppRole on first read and reads KV v2 data.data', async () => {
    const store = open();
    await expect(store.read('projects/web/npm')).resolves.toEqual({ token: NPM });
    await expect(store.read('shared/registry')).resolves.toEqual({ username: 'airlock', password: REG });
    expect(vault.count('POST', 'auth/approle/login')).toBe(1);
    expect(vault.count('GET', 'secret/data/projects/web/npm')).toBe(1);
    expect(vault.liveTokens()).toHaveLength(1);
    // The values, the secret_id and the token it was issued are all "in use" for the leak check.
    expect(store.inUse()).toEqual(expect.arrayContaining([NPM, 'airlock', REG, creds.secretId, vault.liveTokens()[0]]));
    expect(secretValues(store)).toEqual([...store.inUse()]);
  });

  it('concurrent first reads share one login', async () => {
    const store = open();
    await Promise.all([store.read('projects/web/npm'), store.read('shared/registry'), store.login()]);
    expect(vault.count('POST', 'auth/approle/login')).toBe(1);
  });

  it('reads a version: latest by default, ?version=N when asked; a missing or deleted version is NotFound', async () => {
    await vault.put('projects/web/rotating', { key: 'version-one-111' });
    await vault.put('projects/web/rotating', { key: 'version-two-222' });
    const store = open();
    await expect(store.read('projects/web/rotating')).resolves.toEqual({ key: 'version-two-222' });
    await expect(store.read('projects/web/rotating', { version: 1 })).resolves.toEqual({ key: 'version-one-111' });
    expect(vault.requests.some((r) => r.path === 'secret/data/projects/web/rotating' && r.query === 'version=1')).toBe(true);
    const e = await failure(() => store.read('projects/web/rotating', { version: 3 }));
    expect(e).toBeInstanceOf(NotFoundError);
    expect(e.message).toContain('"projects/web/rotating" version 3');
    await expect(store.read('projects/web/rotating', { version: 0 })).rejects.toBeInstanceOf(InvalidInputError);

    // Soft-delete the latest version (DELETE …/data/<path>, as Vault does): now a 404 with metadata.
    const del = await fetch(`${vault.url}/v1/secret/data/projects/web/rotating`, { method: 'DELETE', headers: { 'X-Vault-Token': vault.rootToken } });
    expect(del.status).toBe(204);
    await expect(store.read('projects/web/rotating')).rejects.toBeInstanceOf(NotFoundError);
    await expect(store.read('projects/web/rotating', { version: 1 })).resolves.toEqual({ key: 'version-one-111' });
  });

  it('the double shapes a KV v2 read as Vault does', async () => {
    const { version } = await vault.put('projects/web/shape', { a: 'b' });
    const res = await fetch(`${vault.url}/v1/secret/data/projects/web/shape?version=${version}`, { headers: { 'X-Vault-Token': vault.rootToken } });
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({
      lease_id: '',
      renewable: false,
      lease_duration: 0,
      wrap_info: null,
      auth: null,
      data: { data: { a: 'b' }, metadata: { version, destroyed: false, deletion_time: '', custom_metadata: null, created_time: expect.any(String) } },
    });
  });

  it('missing → NotFoundError naming the path', async () => {
    const e = await failure(() => open().read('projects/web/absent'));
    expect(e).toBeInstanceOf(NotFoundError);
    expect(e.message).toContain('"projects/web/absent"');
    expect(e.message).toContain('"secret"');
  });

  it('403 → SecretAccessDeniedError naming the path, after one fresh login; no secret in it', async () => {
    const store = open();
    await store.read('projects/web/npm');
    const e = await failure(() => store.read('projects/api/npm'));
    expect(e).toBeInstanceOf(SecretAccessDeniedError);
    expect(e).toBeInstanceOf(UnauthorizedError);
    expect((e as SecretAccessDeniedError).code).toBe('AIRLOCK_E_UNAUTHORIZED');
    expect((e as SecretAccessDeniedError).secretPath).toBe('projects/api/npm');
    expect(e.message).toContain('"projects/api/npm"');
    expect(e.message).toMatch(/permission denied/);
    const dump = inspect(e, { depth: 10, showHidden: true });
    for (const v of [NPM, 'not-for-web-0000', creds.secretId, ...vault.issuedTokens()]) expect(dump).not.toContain(v);
    // Vault cannot tell "expired" from "not allowed", so the store logged in again once, then gave up.
    expect(vault.count('POST', 'auth/approle/login')).toBe(2);
    expect(vault.count('GET', 'secret/data/projects/api/npm')).toBe(2);
    expect(vault.requests.filter((r) => r.path === 'secret/data/projects/api/npm').map((r) => r.status)).toEqual([403, 403]);
  });

  it('a token revoked behind its back is replaced by a fresh login', async () => {
    const store = open();
    await store.read('projects/web/npm');
    for (const t of vault.liveTokens()) vault.revoke(t);
    await expect(store.read('projects/web/npm')).resolves.toEqual({ token: NPM });
    expect(vault.count('POST', 'auth/approle/login')).toBe(2);
  });

  it('sealed (503 "Vault is sealed") → a clear failure that says sealed, without retrying', async () => {
    const store = open();
    await store.read('projects/web/npm');
    vault.seal();
    const e = await failure(() => store.read('projects/web/npm'));
    expect(e).toBeInstanceOf(SecretStoreUnavailableError);
    expect((e as SecretStoreUnavailableError).reason).toBe('sealed');
    expect((e as SecretStoreUnavailableError).retryable).toBe(true);
    expect(e.message).toMatch(/is sealed/);
    expect(e.message).toContain(vault.url);
    expect(delays).toEqual([]);
    expect(vault.count('GET', 'secret/data/projects/web/npm')).toBe(2);
    // A login against a sealed Vault says the same.
    const fresh = open();
    await expect(fresh.read('projects/web/npm')).rejects.toThrow(/sealed/);
  });

  it('500s then success: retried with exponential backoff', async () => {
    const store = open();
    await store.login();
    vault.failNext(3, 'http-500', 'secret/');
    await expect(store.read('projects/web/npm')).resolves.toEqual({ token: NPM });
    expect(vault.requests.filter((r) => r.path === 'secret/data/projects/web/npm').map((r) => r.status)).toEqual([500, 500, 500, 200]);
    // random() = 0.5 → each delay is 3/4 of the doubling ceiling (200, 400, 800 ms).
    expect(delays).toEqual([150, 300, 600]);
  });

  it('connection resets (network errors) and a 502 at login are retried too', async () => {
    const store = open();
    vault.failNext(1, 'http-502', 'auth/approle/login');
    vault.failNext(2, 'reset', 'secret/');
    await expect(store.read('projects/web/npm')).resolves.toEqual({ token: NPM });
    expect(vault.requests.map((r) => r.status)).toEqual([502, 200, 'reset', 'reset', 200]);
    expect(delays).toHaveLength(3);
  });

  it('retries are bounded: exhausted → SecretStoreUnavailableError with the last failure, nothing secret in it', async () => {
    const store = open({ maxAttempts: 4, baseDelayMs: 100, maxDelayMs: 250 });
    await store.login();
    vault.failNext(100, 'http-503', 'secret/');
    const e = await failure(() => store.read('projects/web/npm'));
    expect(e).toBeInstanceOf(SecretStoreUnavailableError);
    expect((e as SecretStoreUnavailableError).reason).toBe('server-error');
    expect(e.message).toMatch(/read "projects\/web\/npm" failed after 4 attempts \(last: HTTP 503\)/);
    expect(vault.count('GET', 'secret/data/projects/web/npm')).toBe(4);
    expect(delays).toEqual([75, 150, 188]); // 100, 200, then capped at 250
    const dump = inspect(e, { depth: 10, showHidden: true });
    for (const v of [creds.secretId, ...vault.issuedTokens()]) expect(dump).not.toContain(v);
  });

  it('an unreachable Vault → SecretStoreUnavailableError "unreachable"; the secret_id is not in the error', async () => {
    const closed = await VaultDouble.start();
    const url = closed.url;
    await closed.close();
    const store = open({ endpoint: url, maxAttempts: 2 });
    const e = await failure(() => store.read('projects/web/npm'));
    expect(e).toBeInstanceOf(SecretStoreUnavailableError);
    expect((e as SecretStoreUnavailableError).reason).toBe('unreachable');
    expect(e.message).toMatch(/AppRole login failed after 2 attempts \(last: ECONNREFUSED\)/);
    expect(inspect(e, { depth: 10, showHidden: true })).not.toContain(creds.secretId);
  });

  it('a refused AppRole login → UnauthorizedError, without the secret_id', async () => {
    writeFileSync(creds.secretIdFile, 'wrong-secret-id-123456\n', { mode: 0o600 });
    const e = await failure(() => open().read('projects/web/npm'));
    expect(e).toBeInstanceOf(UnauthorizedError);
    expect(e.message).toMatch(/refused the AppRole login/);
    expect(e.message).toMatch(/invalid role or secret ID/);
    expect(e.message).not.toContain('wrong-secret-id-123456');
  });

  it('the secret_id file must be private', async () => {
    chmodSync(creds.secretIdFile, 0o644);
    const e = await failure(() => open().read('projects/web/npm'));
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(e.message).toContain(creds.secretIdFile);
    expect(vault.count('POST', 'auth/approle/login')).toBe(0);
  });

  it('renews the token (renew-self) before it expires, on an unref\'d timer', async () => {
    creds = role('short', { 'secret/data/projects/web/*': ['read'] }, { tokenTtl: 1, tokenMaxTtl: 60 });
    const store = open({ renewFraction: 0.5 });
    await store.read('projects/web/npm');
    const [token] = vault.liveTokens();
    await new Promise((r) => setTimeout(r, 2_300)); // more than twice the 1 s TTL
    expect(vault.count('POST', 'auth/token/renew-self')).toBeGreaterThanOrEqual(3);
    expect(vault.liveTokens()).toEqual([token]);
    await expect(store.read('projects/web/npm')).resolves.toEqual({ token: NPM });
    expect(vault.count('POST', 'auth/approle/login')).toBe(1);
    expect(vault.requests.filter((r) => r.path === 'auth/token/renew-self').every((r) => r.status === 200)).toBe(true);
  });

  it('once the max TTL caps renewal, the next read logs in afresh', async () => {
    creds = role('capped', { 'secret/data/projects/web/*': ['read'] }, { tokenTtl: 1, tokenMaxTtl: 1 });
    const store = open({ renewFraction: 0.5 });
    await store.read('projects/web/npm');
    await new Promise((r) => setTimeout(r, 1_200));
    await expect(store.read('projects/web/npm')).resolves.toEqual({ token: NPM });
    expect(vault.count('POST', 'auth/approle/login')).toBe(2);
  });

  it('close revokes the token (revoke-self) and stops renewing; reads are refused after', async () => {
    creds = role('closing', { 'secret/data/projects/web/*': ['read'] }, { tokenTtl: 1 });
    const store = open({ renewFraction: 0.5 });
    await store.read('projects/web/npm');
    expect(vault.liveTokens()).toHaveLength(1);
    await store.close();
    expect(vault.count('POST', 'auth/token/revoke-self')).toBe(1);
    expect(vault.liveTokens()).toEqual([]);
    const renewals = vault.count('POST', 'auth/token/renew-self');
    await new Promise((r) => setTimeout(r, 800));
    expect(vault.count('POST', 'auth/token/renew-self')).toBe(renewals);
    await expect(store.read('projects/web/npm')).rejects.toBeInstanceOf(InternalError);
    await store.close();
    expect(vault.count('POST', 'auth/token/revoke-self')).toBe(1);
    expect(store.inUse()).toContain(NPM);
  });

  it('close never throws, even when Vault is sealed', async () => {
    const store = open();
    await store.read('projects/web/npm');
    vault.seal();
    await expect(store.close()).resolves.toBeUndefined();
    expect(logLines.join('')).toMatch(/revoke-self failed/);
  });

  it('close without a login does nothing', async () => {
    await open().close();
    expect(vault.requests).toEqual([]);
  });

  it('the double applies ACLs: the built-in default policy, deny, and the most specific path', async () => {
    const r = vault.addRole('acl', { policy: { 'secret/data/projects/*': ['read'], 'secret/data/projects/api/*': ['deny'], 'secret/data/projects/+/npm': ['read'] } });
    const login = await fetch(`${vault.url}/v1/auth/approle/login`, { method: 'POST', body: JSON.stringify({ role_id: r.roleId, secret_id: r.secretId }) });
    const { auth } = (await login.json()) as { auth: { client_token: string; lease_duration: number; renewable: boolean } };
    expect(auth.lease_duration).toBe(3600);
    expect(auth.renewable).toBe(true);
    const get = async (p: string): Promise<number> => (await fetch(`${vault.url}/v1/${p}`, { headers: { 'X-Vault-Token': auth.client_token } })).status;
    expect(await get('secret/data/projects/web/npm')).toBe(200); // `+/npm` beats `*`: same first wildcard, not a trailing glob
    expect(await get('secret/data/projects/api/npm')).toBe(403); // `api/*` wins: its first wildcard comes later
    expect(await get('secret/data/projects/web/other')).toBe(404); // allowed, but nothing there
    expect(await get('secret/data/shared/registry')).toBe(403);
    expect(await get('auth/token/lookup-self')).toBe(200);
    const denied = await fetch(`${vault.url}/v1/secret/data/shared/registry`, { headers: { 'X-Vault-Token': auth.client_token } });
    expect(await denied.json()).toEqual({ errors: ['1 error occurred:\n\t* permission denied\n\n'] });
    const self = (await (await fetch(`${vault.url}/v1/auth/token/lookup-self`, { headers: { 'X-Vault-Token': auth.client_token } })).json()) as { data: { ttl: number; policies: string[] } };
    expect(self.data.ttl).toBeGreaterThan(3590);
    expect(self.data.policies).toContain('default');
  });
});
