/**
 * The egress front: what answers a public run's two package ports (shared/egress/package-network.ts).
 * It is the allowlist and the count, not a cache: every request is checked against the sources the
 * egress policy gives this kind of run, then handed to the caching proxy made for it (./proxies.ts).
 *
 *   apt port (3142)  an absolute-form proxy request (`GET http://mirror/path`) whose URL lies under
 *                    an allowed Debian mirror → apt-cacher-ng
 *   npm port (4873)  a packument (`/name`, `/@scope%2fname`) or a tarball (`/name/-/file.tgz`)
 *                    → verdaccio, as the registry at http://127.0.0.1:4873/
 *
 * Everything else is refused with 403 and a line saying why: another host, a tunnel (CONNECT),
 * a method other than GET/HEAD (nobody publishes), npm's other endpoints (search, audit, login).
 * Each request becomes one event: hit (the file was in the cache), miss (fetched), refused, or
 * error (the proxy was down or failed). A hit also marks the file used, for the LRU bound.
 */
import { lstatSync, lutimesSync } from 'node:fs';
import { Agent, request, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { PackageHandlers } from '#shared/egress/package-network.js';
import { NPM_REGISTRY_PORT } from '#shared/egress/package-network.js';
import type { SourceKind } from './policy.js';
import type { PackageProxies } from './proxies.js';

export type EgressOutcome = 'hit' | 'miss' | 'refused' | 'error';

export interface EgressEvent {
  source: SourceKind | 'other';
  outcome: EgressOutcome;
  method: string;
  /** What was asked for (at most 512 characters). */
  url: string;
  /** Why it was refused or failed. */
  reason?: string;
}

export interface FrontOptions {
  /** The proxies, started on first use (a rejection: they cannot start). */
  proxies: () => Promise<PackageProxies>;
  /** The sources this run may use (allowedSources of the policy, for its kind). */
  allowed: readonly SourceKind[];
  /** The policy's Debian mirrors (URL prefixes ending in /). */
  mirrors: readonly string[];
  onEvent: (e: EgressEvent) => void;
  /** Bytes this run may have the caches fetch (default RUN_FETCH_BUDGET). */
  fetchBudget?: number;
  /** Told the bytes of each answer the caches had to fetch (a miss). */
  onFetched?: (bytes: number) => void;
}

/** Request headers passed on to the proxies; the rest (cookies, authorization…) stay behind. */
const PASSED_HEADERS = ['accept', 'accept-encoding', 'range', 'if-range', 'if-modified-since', 'if-none-match', 'cache-control', 'pragma', 'user-agent', 'npm-command', 'npm-session'];
const UPSTREAM_TIMEOUT_MS = 120_000;
/** How a request fails on a kept-alive connection the other end had already closed. */
const STALE_CONNECTION = new Set(['ECONNRESET', 'EPIPE']);
/**
 * One run's share of the proxies: at most this many of its requests are forwarded at once (each on
 * a kept-alive connection of the run's own agent), at most RUN_WAITING more wait, and the rest are
 * answered 503 at once. HTTP pipelining hands the server every request of a connection at once:
 * without these a run could hold every connection to the proxies, or queue without end.
 */
export const RUN_IN_FLIGHT = 16;
export const RUN_WAITING = 256;
/** Bytes a run may have the caches fetch (misses); past it, further misses are refused. Hits are free. */
export const RUN_FETCH_BUDGET = 4 * 1024 ** 3;
/** An npm package name as the registry holds it (url-safe; old names may have capitals; a scope is @scope/name). */
const NPM_NAME = /^(?:@[a-z0-9][a-z0-9._~-]{0,213}\/)?[A-Za-z0-9][A-Za-z0-9._~-]{0,213}$/;

export function egressHandlers(o: FrontOptions): PackageHandlers {
  const agent = new Agent({ keepAlive: true, maxSockets: RUN_IN_FLIGHT, maxFreeSockets: RUN_IN_FLIGHT });
  const gate = new RunGate(o.fetchBudget ?? RUN_FETCH_BUDGET);
  const refuse = (res: ServerResponse, e: Omit<EgressEvent, 'outcome'>, status = 403) => {
    o.onEvent({ ...e, outcome: 'refused' });
    if (!res.headersSent) res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' });
    res.end(`airlock: refused: ${e.reason}\n`);
  };
  const forward = (req: IncomingMessage, res: ServerResponse, e: EgressEvent, to: Upstream): void => {
    if (e.outcome === 'miss' && gate.overBudget()) return refuse(res, { ...e, reason: `this run had the caches fetch more than ${gate.budget} bytes; the rest of what it asks is refused` });
    if (!gate.enter(() => send(req, res, o, e, { ...to, agent }, (bytes) => {
      if (e.outcome !== 'miss') return;
      gate.fetched(bytes);
      o.onFetched?.(bytes);
    }, () => gate.leave()))) {
      fail(res, o, e, `this run has more than ${RUN_IN_FLIGHT + RUN_WAITING} requests open at once`);
    }
  };
  return {
    close: () => agent.destroy(),
    connect: (req) => o.onEvent({ source: 'other', outcome: 'refused', method: 'CONNECT', url: clip(req.url ?? ''), reason: 'tunnels (CONNECT) are refused: use the package ports' }),

    apt: (req, res) => {
      const method = req.method ?? '';
      const raw = req.url ?? '';
      const base = { source: 'other' as const, method, url: clip(raw) };
      let url: URL;
      try {
        url = new URL(raw);
      } catch {
        return refuse(res, { ...base, reason: 'not a proxy request for a package mirror (absolute http:// URL expected)' }, 400);
      }
      if (url.protocol !== 'http:' || url.username || url.password) return refuse(res, { ...base, reason: 'only plain http:// mirror URLs go through the apt proxy' });
      const target = `http://${url.host}${url.pathname}`;
      const mirror = o.allowed.includes('debian') ? o.mirrors.filter((m) => target.startsWith(m)).sort((a, b) => b.length - a.length)[0] : undefined;
      if (!mirror) return refuse(res, { ...base, reason: `${url.host} is not an allowed package source for this build (policies/egress.yaml)` });
      const e = { source: 'debian' as const, method, url: clip(target) };
      if (method !== 'GET' && method !== 'HEAD') return refuse(res, { ...e, reason: `${method} is refused: package sources are read-only` }, 405);
      withProxies(res, o, e, (p) => {
        const cache = p.mirrors.find((m) => m.prefix === mirror);
        if (!p.up('debian') || p.aptPort === undefined || !cache) return fail(res, o, e, 'the Debian cache is not running');
        const file = join(cache.dir, decodeSafe(target.slice(mirror.length)));
        const cached = file.startsWith(`${cache.dir}/`) && touchIfCached(file); // never a path outside the cache
        forward(req, res, { ...e, outcome: cached ? 'hit' : 'miss' }, { host: '127.0.0.1', port: p.aptPort, path: `${target}${url.search}`, headers: { ...pass(req), host: url.host } });
      });
    },

    npm: (req, res) => {
      const method = req.method ?? '';
      const raw = req.url ?? '';
      const e = { source: 'npm' as const, method, url: clip(raw) };
      if (!o.allowed.includes('npm')) return refuse(res, { ...e, source: 'other', reason: 'the npm registry is not an allowed package source for this build (policies/egress.yaml)' });
      if (method !== 'GET' && method !== 'HEAD') return refuse(res, { ...e, reason: `${method} is refused: the registry is read-only here (nobody publishes through the CI)` }, 405);
      if (!npmCacheFile('/', raw)) return refuse(res, { ...e, reason: 'only packuments and tarballs are served (no search, audit, login or other registry endpoints)' });
      withProxies(res, o, e, (p) => {
        if (!p.up('npm') || !p.npmSocket) return fail(res, o, e, 'the npm cache is not running');
        const cached = touchIfCached(npmCacheFile(p.npmStorage, raw)!);
        forward(req, res, { ...e, outcome: cached ? 'hit' : 'miss' }, { socketPath: p.npmSocket, path: raw, headers: { ...pass(req), host: `127.0.0.1:${NPM_REGISTRY_PORT}` } });
      });
    },
  };
}

/**
 * The cache file of an npm request (its packument or tarball in verdaccio's storage), or undefined
 * for a request that is neither. Exported for tests.
 */
export function npmCacheFile(storage: string, rawPath: string): string | undefined {
  const q = rawPath.indexOf('?');
  const path = q >= 0 ? rawPath.slice(0, q) : rawPath;
  if (!path.startsWith('/') || path.includes('//')) return undefined;
  const parts = path.slice(1).split('/').map(decodeSafe);
  if (parts.some((p) => p === '' || p === '.' || p === '..' || p.includes('\0') || p.includes('\\'))) return undefined;
  // `/@scope%2fname` is the encoded form of `/@scope/name`.
  const flat = parts.flatMap((p) => (p.startsWith('@') && p.includes('/') ? p.split('/') : [p]));
  const scoped = flat[0]?.startsWith('@') === true;
  const nameParts = scoped ? 2 : 1;
  const name = flat.slice(0, nameParts).join('/');
  if (!NPM_NAME.test(name)) return undefined;
  const rest = flat.slice(nameParts);
  if (rest.length === 0) return join(storage, name, 'package.json');
  if (rest.length === 2 && rest[0] === '-' && /^[A-Za-z0-9][A-Za-z0-9._~-]{0,255}\.tgz$/.test(rest[1]!)) return join(storage, name, rest[1]!);
  return undefined;
}

interface Upstream {
  host?: string;
  port?: number;
  socketPath?: string;
  path: string;
  headers: OutgoingHttpHeaders;
}

/** A run's admission: RUN_IN_FLIGHT at once, RUN_WAITING in line, and its fetch budget. */
class RunGate {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  private bytes = 0;
  constructor(readonly budget: number) {}
  /** Runs `start` now or when a place frees; false when the line is full (nothing runs). */
  enter(start: () => void): boolean {
    if (this.active < RUN_IN_FLIGHT) {
      this.active += 1;
      start();
      return true;
    }
    if (this.waiting.length >= RUN_WAITING) return false;
    this.waiting.push(start);
    return true;
  }
  leave(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.active -= 1;
  }
  fetched(bytes: number): void {
    this.bytes += bytes;
  }
  overBudget(): boolean {
    return this.bytes >= this.budget;
  }
}

function send(req: IncomingMessage, res: ServerResponse, o: FrontOptions, e: EgressEvent, to: Upstream & { agent: Agent }, counted: (bytes: number) => void, done: () => void): void {
  let finished = false;
  let bytes = 0;
  const end = () => {
    if (finished) return;
    finished = true;
    counted(bytes);
    done();
  };
  if (req.destroyed || res.destroyed) return end(); // the client left while it waited
  res.on('close', end);
  let up: ClientRequest | undefined;
  const attempt = (fresh: boolean) => {
    // fresh: a connection of its own, closed after the answer (the run's agent might hand out another stale one)
    const r = request({ ...to, ...(fresh ? { agent: false } : {}), method: req.method, timeout: UPSTREAM_TIMEOUT_MS }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, filterResponse(answer.headers));
      answer.on('data', (d: Buffer) => (bytes += d.length));
      answer.pipe(res);
      answer.on('error', () => res.destroy());
      o.onEvent(answer.statusCode !== undefined && answer.statusCode < 500 ? e : { ...e, outcome: 'error', reason: `the cache answered ${answer.statusCode}` });
    });
    up = r;
    r.on('timeout', () => r.destroy(new Error('timed out')));
    r.on('error', (err: NodeJS.ErrnoException) => {
      if (res.headersSent) return void res.destroy();
      // A kept-alive connection the cache had closed as this request went out on it: apt-cacher-ng
      // closes some after an answer without saying so (no `Connection: close`), and the agent can
      // reuse one before its close arrives. Nothing was answered and only GET and HEAD come here:
      // asked again once, on a new connection, unless the client left meanwhile.
      if (!fresh && r.reusedSocket && STALE_CONNECTION.has(err.code ?? '') && !finished) return attempt(true);
      fail(res, o, e, `the cache did not answer: ${err.message}`);
    });
    r.end();
  };
  res.on('close', () => {
    if (!res.writableFinished) up?.destroy(); // the client left mid-answer
  });
  attempt(false);
}

function withProxies(res: ServerResponse, o: FrontOptions, e: Omit<EgressEvent, 'outcome'>, then: (p: PackageProxies) => void): void {
  o.proxies().then(then, (err: unknown) => fail(res, o, e, `the package cache cannot start: ${(err as Error).message}`));
}

function fail(res: ServerResponse, o: FrontOptions, e: Omit<EgressEvent, 'outcome'>, reason: string): void {
  o.onEvent({ ...e, outcome: 'error', reason });
  if (!res.headersSent) res.writeHead(503, { 'content-type': 'text/plain; charset=utf-8', 'retry-after': '5' });
  res.end(`airlock: ${reason}\n`);
}

function pass(req: IncomingMessage): OutgoingHttpHeaders {
  const h: OutgoingHttpHeaders = {};
  for (const k of PASSED_HEADERS) {
    const v = req.headers[k];
    if (v !== undefined) h[k] = v;
  }
  return h;
}

/** Response headers minus hop-by-hop ones. */
function filterResponse(h: IncomingMessage['headers']): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined || ['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'set-cookie'].includes(k)) continue;
    out[k] = v;
  }
  return out;
}

/** Whether `file` is in the cache; if so it is marked used now (the LRU bound goes by mtime). */
function touchIfCached(file: string): boolean {
  try {
    // lstat and lutimes: a link the proxies' user made in their cache is not followed by this (root) process.
    if (!lstatSync(file).isFile()) return false;
    const now = new Date();
    lutimesSync(file, now, now);
    return true;
  } catch {
    return false;
  }
}

function decodeSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function clip(s: string): string {
  const clean = s.replace(/[\u0000-\u001f\u007f]/g, '?');
  return clean.length > 512 ? `${clean.slice(0, 509)}...` : clean;
}
