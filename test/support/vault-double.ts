/**
 * A test double of HashiCorp Vault's HTTP API, as a real HTTP server on 127.0.0.1 (random port).
 * No Vault server can be installed on this machine, so VaultSecretStore is tested against this;
 * it is written from Vault's public API documentation, not from Vault's code:
 *
 * - Overview, `X-Vault-Token`, error body `{"errors": [...]}`, status codes (403, 404, 503 sealed):
 *   https://developer.hashicorp.com/vault/api-docs  (website/content/api-docs/index.mdx)
 * - KV v2 (read with `?version=N`, create/update with `options.cas`, soft delete, metadata, the
 *   `data.data` + `data.metadata` response shape, default `max_versions` 10):
 *   https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2
 * - AppRole login (`POST /auth/approle/login {role_id, secret_id}` → `auth.client_token`,
 *   `auth.lease_duration`, `auth.renewable`):
 *   https://developer.hashicorp.com/vault/api-docs/auth/approle#login-with-approle
 * - Token lookup-self / renew-self (`increment`) / revoke-self (204):
 *   https://developer.hashicorp.com/vault/api-docs/auth/token
 * - ACL policies (path globs with a trailing `*` and `+` segments, Vault's priority rules for
 *   overlapping paths, `deny`; the built-in `default` policy lets a token look up, renew and revoke itself), and
 *   tokens' TTL / max TTL capping on renewal:
 *   https://developer.hashicorp.com/vault/docs/concepts/policies
 *   https://developer.hashicorp.com/vault/docs/concepts/tokens#token-time-to-live-periodic-tokens-and-explicit-max-ttls
 * - Seal status and health, answered while sealed; everything else is 503 `Vault is sealed`:
 *   https://developer.hashicorp.com/vault/api-docs/system/seal-status
 *   https://developer.hashicorp.com/vault/api-docs/system/health
 *
 * Not modelled: other auth methods and engines, namespaces, response wrapping, batch tokens,
 * token num_uses, secret_id TTLs/num_uses, CIDR bindings, KV v1, metadata writes.
 *
 * Faults for retry tests: `failNext(n, 'http-500' | 'http-502' | 'http-503' | 'reset')` makes the
 * next n requests (optionally only those whose path starts with a prefix) fail that way.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type Capability = 'create' | 'read' | 'update' | 'patch' | 'delete' | 'list' | 'sudo' | 'deny';

/** A Vault ACL policy: path pattern (as in HCL `path "secret/data/app/*"`) → capabilities. */
export type Policy = Readonly<Record<string, readonly Capability[]>>;

export interface RoleSpec {
  policy: Policy;
  /** Seconds. Vault's AppRole `token_ttl`. */
  tokenTtl?: number; // default 3600
  /** Seconds. Vault's AppRole `token_max_ttl`. */
  tokenMaxTtl?: number; // default 86400
}

export type Fault = 'http-500' | 'http-502' | 'http-503' | 'reset';

export interface RequestRecord {
  method: string;
  /** Path after `/v1/`, without the query: `secret/data/app/db`. */
  path: string;
  query: string;
  status: number | 'reset';
}

interface Role {
  name: string;
  roleId: string;
  secretIds: Set<string>;
  policy: Policy;
  tokenTtl: number;
  tokenMaxTtl: number;
}

interface TokenEntry {
  id: string;
  accessor: string;
  role: Role | undefined; // undefined: the root token
  issuedAt: number; // ms
  creationTtl: number; // s
  expiresAt: number; // ms; Infinity for root
  maxExpiresAt: number; // ms
  revoked: boolean;
}

interface KvVersion {
  data: Record<string, unknown>;
  createdTime: string;
  deletionTime: string;
  destroyed: boolean;
}

interface KvEntry {
  versions: Map<number, KvVersion>;
  current: number;
  oldest: number;
  createdTime: string;
  updatedTime: string;
}

class HttpAnswer {
  constructor(
    readonly status: number,
    readonly body?: unknown,
  ) {}
}

const MAX_VERSIONS = 10; // KV v2: "When 0 is used or the value is unset, Vault will keep 10 versions."
const PERMISSION_DENIED = ['1 error occurred:\n\t* permission denied\n\n'];
const DEFAULT_POLICY: Policy = {
  'auth/token/lookup-self': ['read'],
  'auth/token/renew-self': ['update'],
  'auth/token/revoke-self': ['update'],
};

export class VaultDouble {
  readonly rootToken = `hvs.${token(24)}`;
  readonly requests: RequestRecord[] = [];
  sealed = false;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #now: () => number;
  readonly #mounts = new Map<string, Map<string, KvEntry>>();
  readonly #roles = new Map<string, Role>();
  readonly #tokens = new Map<string, TokenEntry>();
  #faults: { remaining: number; fault: Fault; pathPrefix: string }[] = [];
  #url = '';

  private constructor(options: { now?: () => number; mounts?: readonly string[] }) {
    this.#now = options.now ?? Date.now;
    for (const m of options.mounts ?? ['secret']) this.#mounts.set(m, new Map());
    const now = this.#now();
    this.#tokens.set(this.rootToken, { id: this.rootToken, accessor: token(24), role: undefined, issuedAt: now, creationTtl: 0, expiresAt: Infinity, maxExpiresAt: Infinity, revoked: false });
    this.#server = createServer((req, res) => void this.#handle(req, res));
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
  }

  /** Starts a double with KV v2 engines at `mounts` (default `secret`). */
  static async start(options: { now?: () => number; mounts?: readonly string[] } = {}): Promise<VaultDouble> {
    const v = new VaultDouble(options);
    await new Promise<void>((resolve, reject) => {
      v.#server.once('error', reject);
      v.#server.listen(0, '127.0.0.1', () => resolve());
    });
    v.#url = `http://127.0.0.1:${(v.#server.address() as AddressInfo).port}`;
    return v;
  }

  /** `http://127.0.0.1:<port>`, Vault's `VAULT_ADDR`. */
  get url(): string {
    return this.#url;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  /** An AppRole with one secret_id, as `vault write auth/approle/role/<name> …` + `…/secret-id` would make. */
  addRole(name: string, spec: RoleSpec): { roleId: string; secretId: string } {
    const role: Role = {
      name,
      roleId: randomUUID(),
      secretIds: new Set([randomUUID()]),
      policy: spec.policy,
      tokenTtl: spec.tokenTtl ?? 3600,
      tokenMaxTtl: spec.tokenMaxTtl ?? 86400,
    };
    this.#roles.set(name, role);
    return { roleId: role.roleId, secretId: [...role.secretIds][0]! };
  }

  /** Writes a new version over HTTP with the root token, exactly as a client would (`POST /v1/<mount>/data/<path>`). */
  async put(path: string, data: Record<string, unknown>, options: { mount?: string; cas?: number } = {}): Promise<{ version: number }> {
    const res = await fetch(`${this.#url}/v1/${options.mount ?? 'secret'}/data/${path}`, {
      method: 'POST',
      headers: { 'X-Vault-Token': this.rootToken, 'Content-Type': 'application/json' },
      body: JSON.stringify({ data, ...(options.cas === undefined ? {} : { options: { cas: options.cas } }) }),
    });
    const body = (await res.json()) as { data?: { version?: number }; errors?: string[] };
    if (res.status !== 200 || typeof body.data?.version !== 'number') throw new Error(`vault double: write failed: HTTP ${res.status} ${JSON.stringify(body.errors)}`);
    return { version: body.data.version };
  }

  seal(): void {
    this.sealed = true;
  }

  unseal(): void {
    this.sealed = false;
  }

  /** The next `n` requests (whose path after /v1/ starts with `pathPrefix`, if given) fail with `fault`. */
  failNext(n: number, fault: Fault, pathPrefix = ''): void {
    this.#faults.push({ remaining: n, fault, pathPrefix });
  }

  /** Drops every pending fault. */
  clearFaults(): void {
    this.#faults = [];
  }

  /** How many requests matched `method` and the exact `path` (after /v1/, no query). */
  count(method: string, path: string): number {
    return this.requests.filter((r) => r.method === method && r.path === path).length;
  }

  /** Tokens issued by AppRole logins that are neither revoked nor expired. */
  liveTokens(): string[] {
    const now = this.#now();
    return [...this.#tokens.values()].filter((t) => t.role && !t.revoked && now < t.expiresAt).map((t) => t.id);
  }

  /** Every token ever issued by an AppRole login (revoked or not). */
  issuedTokens(): string[] {
    return [...this.#tokens.values()].filter((t) => t.role).map((t) => t.id);
  }

  /** Revokes a token out of band, as an operator's `vault token revoke` would. */
  revoke(tokenId: string): void {
    const t = this.#tokens.get(tokenId);
    if (t) t.revoked = true;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://vault');
    const method = req.method === 'PUT' ? 'POST' : (req.method ?? 'GET'); // Vault treats PUT as POST
    const path = url.pathname.startsWith('/v1/') ? url.pathname.slice(4) : url.pathname;
    const record: RequestRecord = { method, path, query: url.search.slice(1), status: 0 };
    this.requests.push(record);

    const fault = this.#faults.find((f) => f.remaining > 0 && path.startsWith(f.pathPrefix));
    if (fault) {
      fault.remaining--;
      this.#faults = this.#faults.filter((f) => f.remaining > 0);
      if (fault.fault === 'reset') {
        record.status = 'reset';
        req.socket.resetAndDestroy();
        return;
      }
      const status = Number(fault.fault.slice(5));
      record.status = status;
      return send(res, status, { errors: [status === 503 ? 'Vault is temporarily unavailable' : 'internal error'] });
    }

    let answer: HttpAnswer;
    try {
      const raw = await readBody(req);
      let body: Record<string, unknown> = {};
      if (raw.length) {
        try {
          const parsed: unknown = JSON.parse(raw.toString('utf8'));
          if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) body = parsed as Record<string, unknown>;
        } catch (e) {
          throw new HttpAnswer(400, { errors: [`failed to parse JSON input: ${(e as Error).message}`] });
        }
      }
      answer = this.#route(method, path, url.searchParams, body, req);
    } catch (e) {
      if (!(e instanceof HttpAnswer)) throw e;
      answer = e;
    }
    record.status = answer.status;
    send(res, answer.status, answer.body);
  }

  #route(method: string, path: string, query: URLSearchParams, body: Record<string, unknown>, req: IncomingMessage): HttpAnswer {
    if (path === 'sys/seal-status' && method === 'GET') return this.#sealStatus();
    if (path === 'sys/health' && method === 'GET') return this.#health();
    if (this.sealed) return new HttpAnswer(503, { errors: ['Vault is sealed'] });
    if (path === 'auth/approle/login' && method === 'POST') return this.#login(body);

    const tokenEntry = this.#authenticate(req);
    const segs = path.split('/');
    const mount = segs[0] ?? '';
    const kv = this.#mounts.get(mount);
    // POST is `update`, except on a KV data path that does not exist yet, where it is `create`
    // (Vault's existence check, which only some backends implement).
    const creates = kv !== undefined && segs[1] === 'data' && !kv.has(segs.slice(2).join('/'));
    const capability: Capability =
      method === 'GET' ? (query.get('list') === 'true' ? 'list' : 'read') : method === 'DELETE' ? 'delete' : method === 'PATCH' ? 'patch' : method === 'LIST' ? 'list' : creates ? 'create' : 'update';
    if (!allowed(tokenEntry, path, capability)) return new HttpAnswer(403, { errors: PERMISSION_DENIED });

    if (path === 'auth/token/lookup-self' && method === 'GET') return this.#lookupSelf(tokenEntry);
    if (path === 'auth/token/renew-self' && method === 'POST') return this.#renewSelf(tokenEntry, body);
    if (path === 'auth/token/revoke-self' && method === 'POST') {
      tokenEntry.revoked = true;
      return new HttpAnswer(204);
    }
    if (kv && segs.length > 2) {
      const key = segs.slice(2).join('/');
      if (segs[1] === 'data' && method === 'GET') return this.#kvRead(kv, key, query);
      if (segs[1] === 'data' && method === 'POST') return this.#kvWrite(kv, key, body);
      if (segs[1] === 'data' && method === 'DELETE') return this.#kvDelete(kv, key);
      if (segs[1] === 'metadata' && method === 'GET') return this.#kvMetadata(kv, key);
    }
    return new HttpAnswer(404, { errors: [`1 error occurred:\n\t* unsupported path\n\n`] });
  }

  #authenticate(req: IncomingMessage): TokenEntry {
    const header = req.headers['x-vault-token'];
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const id = (Array.isArray(header) ? header[0] : header) ?? bearer;
    const t = id ? this.#tokens.get(id) : undefined;
    // Vault answers a missing, unknown, expired or revoked token the same way: 403.
    if (!t || t.revoked || this.#now() >= t.expiresAt) throw new HttpAnswer(403, { errors: ['permission denied'] });
    return t;
  }

  #login(body: Record<string, unknown>): HttpAnswer {
    const roleId = body.role_id;
    const secretId = body.secret_id;
    if (typeof roleId !== 'string' || roleId === '') return new HttpAnswer(400, { errors: ['missing role_id'] });
    const role = [...this.#roles.values()].find((r) => r.roleId === roleId);
    if (typeof secretId !== 'string' || secretId === '') return new HttpAnswer(400, { errors: ['missing secret_id'] });
    if (!role || !role.secretIds.has(secretId)) return new HttpAnswer(400, { errors: ['invalid role or secret ID'] });
    const now = this.#now();
    const ttl = Math.min(role.tokenTtl, role.tokenMaxTtl);
    const t: TokenEntry = {
      id: `hvs.${token(24)}`,
      accessor: token(24),
      role,
      issuedAt: now,
      creationTtl: ttl,
      expiresAt: now + ttl * 1000,
      maxExpiresAt: now + role.tokenMaxTtl * 1000,
      revoked: false,
    };
    this.#tokens.set(t.id, t);
    return ok({ auth: this.#authBlock(t, ttl) });
  }

  #authBlock(t: TokenEntry, leaseDuration: number): Record<string, unknown> {
    const policies = t.role ? ['default', `role-${t.role.name}`] : ['root'];
    return {
      client_token: t.id,
      accessor: t.accessor,
      policies,
      token_policies: policies,
      metadata: t.role ? { role_name: t.role.name } : null,
      lease_duration: leaseDuration,
      renewable: Boolean(t.role),
      entity_id: '',
      token_type: 'service',
      orphan: true,
      mfa_requirement: null,
      num_uses: 0,
    };
  }

  #lookupSelf(t: TokenEntry): HttpAnswer {
    const now = this.#now();
    const ttl = Number.isFinite(t.expiresAt) ? Math.max(0, Math.round((t.expiresAt - now) / 1000)) : 0;
    return ok({
      data: {
        accessor: t.accessor,
        creation_time: Math.floor(t.issuedAt / 1000),
        creation_ttl: t.creationTtl,
        display_name: t.role ? 'approle' : 'root',
        entity_id: '',
        expire_time: Number.isFinite(t.expiresAt) ? new Date(t.expiresAt).toISOString() : null,
        explicit_max_ttl: 0,
        id: t.id,
        issue_time: new Date(t.issuedAt).toISOString(),
        meta: t.role ? { role_name: t.role.name } : null,
        num_uses: 0,
        orphan: true,
        path: t.role ? 'auth/approle/login' : 'auth/token/root',
        policies: t.role ? ['default', `role-${t.role.name}`] : ['root'],
        renewable: Boolean(t.role),
        ttl,
        type: 'service',
      },
    });
  }

  #renewSelf(t: TokenEntry, body: Record<string, unknown>): HttpAnswer {
    if (!t.role) return new HttpAnswer(400, { errors: ['lease is not renewable'] });
    const now = this.#now();
    const requested = body.increment === undefined ? t.role.tokenTtl : parseDuration(body.increment);
    if (requested === undefined) return new HttpAnswer(400, { errors: ['invalid increment'] });
    const remainingMax = Math.max(0, Math.floor((t.maxExpiresAt - now) / 1000));
    const lease = Math.min(requested || t.role.tokenTtl, remainingMax);
    t.expiresAt = now + lease * 1000;
    const warnings = lease < requested ? [`TTL of "${requested}s" exceeded the effective max_ttl of "${remainingMax}s"; TTL value is capped accordingly`] : null;
    return ok({ auth: this.#authBlock(t, lease), warnings });
  }

  #kvRead(kv: Map<string, KvEntry>, key: string, query: URLSearchParams): HttpAnswer {
    const entry = kv.get(key);
    if (!entry) return new HttpAnswer(404, { errors: [] });
    const asked = Number(query.get('version') ?? '0');
    if (!Number.isInteger(asked) || asked < 0) return new HttpAnswer(400, { errors: ['invalid version'] });
    const n = asked === 0 ? entry.current : asked;
    const v = entry.versions.get(n);
    if (!v) return new HttpAnswer(404, { errors: [] });
    const metadata = { created_time: v.createdTime, custom_metadata: null, deletion_time: v.deletionTime, destroyed: v.destroyed, version: n };
    // A deleted or destroyed version is a 404 that still carries its metadata, with data null.
    if (v.deletionTime !== '' || v.destroyed) return new HttpAnswer(404, envelope({ data: { data: null, metadata } }));
    return ok({ data: { data: structuredClone(v.data), metadata } });
  }

  #kvWrite(kv: Map<string, KvEntry>, key: string, body: Record<string, unknown>): HttpAnswer {
    const data = body.data;
    if (typeof data !== 'object' || data === null || Array.isArray(data)) return new HttpAnswer(400, { errors: ['no data provided'] });
    const entry = kv.get(key);
    const cas = (body.options as { cas?: unknown } | undefined)?.cas;
    if (cas !== undefined && cas !== (entry?.current ?? 0)) {
      return new HttpAnswer(400, { errors: ['check-and-set parameter did not match the current version'] });
    }
    const now = new Date(this.#now()).toISOString();
    const e: KvEntry = entry ?? { versions: new Map(), current: 0, oldest: 0, createdTime: now, updatedTime: now };
    e.current += 1;
    e.updatedTime = now;
    e.versions.set(e.current, { data: structuredClone(data as Record<string, unknown>), createdTime: now, deletionTime: '', destroyed: false });
    for (const n of [...e.versions.keys()].sort((a, b) => a - b)) {
      if (e.versions.size <= MAX_VERSIONS) break;
      e.versions.delete(n);
    }
    e.oldest = Math.min(...e.versions.keys());
    kv.set(key, e);
    return ok({ data: { created_time: now, custom_metadata: null, deletion_time: '', destroyed: false, version: e.current } });
  }

  #kvDelete(kv: Map<string, KvEntry>, key: string): HttpAnswer {
    const v = kv.get(key)?.versions.get(kv.get(key)!.current);
    if (v && v.deletionTime === '') v.deletionTime = new Date(this.#now()).toISOString();
    return new HttpAnswer(204);
  }

  #kvMetadata(kv: Map<string, KvEntry>, key: string): HttpAnswer {
    const e = kv.get(key);
    if (!e) return new HttpAnswer(404, { errors: [] });
    const versions = Object.fromEntries([...e.versions].map(([n, v]) => [String(n), { created_time: v.createdTime, deletion_time: v.deletionTime, destroyed: v.destroyed }]));
    return ok({
      data: {
        cas_required: false,
        created_time: e.createdTime,
        current_version: e.current,
        custom_metadata: null,
        delete_version_after: '0s',
        max_versions: 0,
        oldest_version: e.oldest,
        updated_time: e.updatedTime,
        versions,
      },
    });
  }

  #sealStatus(): HttpAnswer {
    return new HttpAnswer(200, { type: 'shamir', initialized: true, sealed: this.sealed, t: 1, n: 1, progress: 0, nonce: '', version: '1.15.0', build_date: '', migration: false, recovery_seal: false, storage_type: 'inmem' });
  }

  #health(): HttpAnswer {
    const body = { initialized: true, sealed: this.sealed, standby: false, performance_standby: false, server_time_utc: Math.floor(this.#now() / 1000), version: '1.15.0' };
    return new HttpAnswer(this.sealed ? 503 : 200, body);
  }
}

function allowed(t: TokenEntry, path: string, capability: Capability): boolean {
  if (!t.role) return true; // root
  // Policies merge into one ACL: capabilities of the same pattern add up; then one pattern decides.
  const merged: Record<string, Capability[]> = {};
  for (const policy of [DEFAULT_POLICY, t.role.policy]) {
    for (const [pattern, caps] of Object.entries(policy)) merged[pattern] = [...(merged[pattern] ?? []), ...caps];
  }
  const caps = bestMatch(merged, path);
  return caps !== undefined && !caps.includes('deny') && caps.includes(capability);
}

/**
 * The capabilities of the highest-priority pattern matching `path`, by Vault's documented rules:
 * the first wildcard (`+` or `*`) later in the pattern wins; a pattern not ending in `*` beats one
 * that does; fewer `+` segments win; a longer pattern wins; then the lexicographically larger.
 */
function bestMatch(policy: Policy, path: string): readonly Capability[] | undefined {
  const matching = Object.keys(policy).filter((pattern) => {
    const glob = pattern.endsWith('*');
    const body = glob ? pattern.slice(0, -1) : pattern;
    return new RegExp(`^${body.split('+').map(escapeRe).join('[^/]+')}${glob ? '.*' : ''}$`).test(path);
  });
  const firstWildcard = (p: string): number => {
    const i = p.search(/[+*]/);
    return i < 0 ? Infinity : i;
  };
  const priority = (a: string, b: string): number =>
    firstWildcard(a) - firstWildcard(b) ||
    Number(!a.endsWith('*')) - Number(!b.endsWith('*')) ||
    (b.split('+').length - a.split('+').length) ||
    a.length - b.length ||
    (a < b ? -1 : a > b ? 1 : 0);
  const best = matching.sort(priority).at(-1);
  return best === undefined ? undefined : policy[best];
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function parseDuration(v: unknown): number | undefined {
  if (typeof v === 'number' && v >= 0) return Math.floor(v);
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+)(s|m|h)?$/.exec(v);
  if (!m) return undefined;
  return Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1);
}

function envelope(fields: Record<string, unknown>): Record<string, unknown> {
  return { request_id: randomUUID(), lease_id: '', renewable: false, lease_duration: 0, data: null, wrap_info: null, warnings: null, auth: null, mount_type: '', ...fields };
}

function ok(fields: Record<string, unknown>): HttpAnswer {
  return new HttpAnswer(200, envelope(fields));
}

function send(res: ServerResponse, status: number, body?: unknown): void {
  if (status === 204 || body === undefined) {
    res.writeHead(status, { 'Cache-Control': 'no-store' });
    res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function token(n: number): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  return [...randomBytes(n)].map((b) => alphabet[b % alphabet.length]).join('');
}
