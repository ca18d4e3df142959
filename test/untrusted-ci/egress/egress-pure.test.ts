/**
 * The egress pieces that need no engine: the policy's schema, the config check's bounds, the
 * front's refusals (with a stand-in for the proxies: nothing allowed reaches them here), the npm
 * request → cache file mapping, and the cache's size bound.
 */
import { mkdirSync, mkdtempSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { request, createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { pruneCache } from '../../../untrusted-ci/egress/cache-gc.js';
import { egressHandlers, npmCacheFile, RUN_IN_FLIGHT, RUN_WAITING, type EgressEvent } from '../../../untrusted-ci/egress/front.js';
import { EgressPolicy, loadEgressPolicy, NO_EGRESS, parseEgressPolicy } from '../../../untrusted-ci/egress/policy.js';
import type { PackageProxies } from '../../../untrusted-ci/egress/proxies.js';
import { loadEnvironmentPolicy } from '../../../untrusted-ci/environments/policy.js';
import { checkConfig } from '../../../untrusted-ci/executor/config-check.js';

describe('egress policy', () => {
  it('the shipped policy loads', () => {
    const p = loadEgressPolicy();
    expect(p.sources.debian?.mirrors).toContain('http://deb.debian.org/debian/');
    expect(p.allow.jobs).toEqual(['npm']);
  });

  it.each([
    ['an https Debian mirror', { sources: { debian: { mirrors: ['https://deb.debian.org/debian'] } } }, /sources\.debian\.mirrors\[0\].*must be http/],
    ['credentials in a URL', { sources: { npm: { registry: 'https://u:p@registry.example/' } } }, /must not carry credentials/],
    ['a query', { sources: { npm: { registry: 'https://registry.example/?x=1' } } }, /no query or fragment/],
    ['an allowed source with no entry', { allow: { jobs: ['npm'] } }, /allow\.jobs\[0\].*npm is allowed but has no entry under sources/],
    ['an unknown source kind', { allow: { jobs: ['pypi'] } }, /allow\.jobs\[0\]/],
  ])('refuses %s, naming it', (_name, over, message) => {
    const r = parseEgressPolicy(JSON.stringify({ version: 1, ...over }), 'egress.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues.map((i) => `${i.path}: ${i.message}`).join('\n')).toMatch(message);
  });
});

describe('the config check bounds network: packages by the policy', () => {
  const repo = { readFile: async (path: string) => (path === 'ci/Dockerfile' ? 'FROM airlock/base:busybox\n' : path === 'package-lock.json' ? '{}' : undefined), isDirectory: async () => false };
  const file = (net: string) =>
    ['version: 1', `environment: { dockerfile: ci/Dockerfile, network: ${net} }`, 'jobs:', `  test: { command: make, network: ${net} }`, 'dependencies: { npm: [package-lock.json], debian: [debian.lock] }', ''].join('\n');
  const check = (text: string, egress: EgressPolicy) => checkConfig(text, { job: loadJobPolicy(), environments: loadEnvironmentPolicy(), egress }, repo, { pipelines: ['check'] });

  it('with no source allowed, each run that asks is refused, with the key and the policy named', async () => {
    const r = await check(file('packages'), NO_EGRESS);
    const msgs = r.issues.map((i) => `${i.path}: ${i.message}`);
    expect(msgs).toContainEqual(expect.stringMatching(/^environment\.network: network: packages is not allowed here: policies\/egress\.yaml gives environment builds no package source/));
    expect(msgs).toContainEqual(expect.stringMatching(/^jobs\.test\.network: network: packages is not allowed here: policies\/egress\.yaml gives jobs no package source/));
    expect(r.issues.filter((i) => i.path.endsWith('network')).every((i) => r.policyIssues.has(i))).toBe(true);
  });

  it('a lockfile named in dependencies must be in the repository', async () => {
    const r = await check(file('none'), NO_EGRESS);
    const errors = r.issues.filter((i) => i.severity === 'error').map((i) => `${i.path}: ${i.message}`);
    expect(errors).toEqual([expect.stringMatching(/^dependencies\.debian\[0\]: .*debian\.lock/)]);
  });

  it('with the shipped policy both may ask', async () => {
    const r = await check(file('packages'), loadEgressPolicy());
    expect(r.issues.filter((i) => i.path.endsWith('network'))).toEqual([]);
  });
});

describe('npm requests and the cache', () => {
  it.each([
    ['/is-number', 'S/is-number/package.json'],
    ['/JSONStream', 'S/JSONStream/package.json'],
    ['/@types%2fnode', 'S/@types/node/package.json'],
    ['/@types/node', 'S/@types/node/package.json'],
    ['/is-number/-/is-number-7.0.0.tgz', 'S/is-number/is-number-7.0.0.tgz'],
    ['/@types/node/-/node-20.1.0.tgz', 'S/@types/node/node-20.1.0.tgz'],
    ['/is-number?write=true', 'S/is-number/package.json'],
  ])('%s → %s', (path, file) => {
    expect(npmCacheFile('S', path)).toBe(file);
  });

  it.each(['/-/v1/search?text=x', '/-/whoami', '/-/npm/v1/security/advisories/bulk', '/../etc/passwd', '/%2e%2e/x', '/a/../b', '/x/-/..%2f..%2fy.tgz', '/x/-/y.tgz/z', '//x', '/x/y', '/', 'x', '/@/x', '/x%00y'])('%s is not a packument or a tarball', (path) => {
    expect(npmCacheFile('S', path)).toBeUndefined();
  });
});

describe('the front refuses, with a reason, before any proxy is asked', () => {
  let server: Server;
  let port: number;
  const events: EgressEvent[] = [];
  let asked = 0;
  beforeAll(async () => {
    const handlers = egressHandlers({
      proxies: () => {
        asked += 1;
        return Promise.reject(new Error('not in this test'));
      },
      allowed: ['debian', 'npm'],
      mirrors: ['http://deb.debian.org/debian/'],
      onEvent: (e) => events.push(e),
    });
    // One server for both handlers: the path's first segment picks (a test convenience).
    server = createServer((req, res) => {
      const apt = req.headers['x-port'] === 'apt';
      (apt ? handlers.apt : handlers.npm)(req, res);
    });
    server.on('connect', (req, socket) => {
      handlers.connect?.(req);
      socket.end('HTTP/1.1 403 Forbidden\r\n\r\n');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => server.close());

  const ask = (method: string, path: string, portKind: 'apt' | 'npm') =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const r = request({ host: '127.0.0.1', port, method, path, headers: { 'x-port': portKind } }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      r.on('error', reject);
      r.end();
    });

  it.each([
    ['apt', 'GET', '/debian/dists/bookworm/InRelease', 400, /absolute http:\/\/ URL expected/],
    ['apt', 'GET', 'http://example.com/debian/x', 403, /example\.com is not an allowed package source/],
    ['apt', 'GET', 'http://deb.debian.org/debian-evil/x', 403, /not an allowed package source/],
    ['apt', 'GET', 'http://deb.debian.org.evil.example/debian/x', 403, /not an allowed package source/],
    ['apt', 'GET', 'http://user:pw@deb.debian.org/debian/x', 403, /only plain http/],
    ['apt', 'POST', 'http://deb.debian.org/debian/x', 405, /POST is refused/],
    ['npm', 'PUT', '/is-number', 405, /PUT is refused/],
    ['npm', 'GET', '/-/whoami', 403, /only packuments and tarballs/],
  ] as const)('%s %s %s → %i', async (kind, method, path, status, body) => {
    const before = asked;
    const r = await ask(method, path, kind);
    expect(r.status).toBe(status);
    expect(r.body).toMatch(body);
    expect(asked).toBe(before);
    expect(events.at(-1)?.outcome).toBe('refused');
  });

  it('an allowed request whose proxy cannot start is an error (503) with the reason', async () => {
    const r = await ask('GET', 'http://deb.debian.org/debian/dists/bookworm/InRelease', 'apt');
    expect(r.status).toBe(503);
    expect(r.body).toMatch(/the package cache cannot start: not in this test/);
    expect(events.at(-1)).toMatchObject({ source: 'debian', outcome: 'error' });
  });

  it('a policy without the source refuses it', async () => {
    const h = egressHandlers({ proxies: () => Promise.resolve({} as PackageProxies), allowed: ['npm'], mirrors: ['http://deb.debian.org/debian/'], onEvent: (e) => events.push(e) });
    const s = createServer(h.apt);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const p = (s.address() as AddressInfo).port;
    const status = await new Promise<number>((resolve) => request({ host: '127.0.0.1', port: p, path: 'http://deb.debian.org/debian/x' }, (res) => (res.resume(), resolve(res.statusCode ?? 0))).end());
    s.close();
    expect(status).toBe(403);
  });
});

describe('a run\'s log of refusals', () => {
  it('holds the first ones and then one line, however many a run makes; the summary counts them all', async () => {
    const { Egress, LOGGED_PROBLEMS } = await import('../../../untrusted-ci/egress/egress.js');
    const e = await Egress.start({ stateDir: mkdtempSync(join(tmpdir(), 'airlock-egress-log-')), policy: EgressPolicy.parse({ version: 1 }) });
    expect(e.forRun('jobs', () => undefined)).toBeUndefined(); // no source: nothing to serve
    const lines: string[] = [];
    const p = EgressPolicy.parse({ version: 1, sources: { npm: { registry: 'https://registry.npmjs.org/' } }, allow: { jobs: ['npm'] } });
    // the proxies are never started: every request below is refused before any is asked
    const e2 = await Egress.start({ stateDir: '/nonexistent', policy: p, checkHost: false });
    const run = e2.forRun('jobs', (l: string) => lines.push(l))!;
    const server = createServer(run.handlers.npm);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    for (let i = 0; i < LOGGED_PROBLEMS + 20; i++) {
      await new Promise<void>((resolve) => request({ host: '127.0.0.1', port, path: `/-/whoami?${i}` }, (res) => (res.resume(), res.on('end', resolve))).end());
    }
    server.close();
    expect(lines).toHaveLength(LOGGED_PROBLEMS + 1);
    expect(lines.at(-1)).toMatch(/more refused or failed requests than 50/);
    expect(run.summary()).toMatch(/70 requests, 0 from the cache, 0 fetched, 70 refused/);
  });
});

describe('a run\'s share of the proxies', () => {
  /** A stand-in for verdaccio on a unix socket: `answer` decides what each request gets. */
  async function fakeRegistry(answer: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ socket: string; close: () => void }> {
    const socket = join(mkdtempSync(join(tmpdir(), 'airlock-fake-')), 'npm.sock');
    const s = createServer(answer);
    await new Promise<void>((r) => s.listen(socket, r));
    return { socket, close: () => (s.closeAllConnections(), s.close()) };
  }
  const proxiesAt = (socket: string) => ({ up: () => true, npmSocket: socket, npmStorage: mkdtempSync(join(tmpdir(), 'airlock-store-')), mirrors: [] }) as unknown as PackageProxies;
  const serve = async (h: ReturnType<typeof egressHandlers>) => {
    const s = createServer(h.npm);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return { port: (s.address() as AddressInfo).port, close: () => (s.closeAllConnections(), s.close()) };
  };

  it('forwards at most RUN_IN_FLIGHT at once, holds RUN_WAITING, and answers the rest at once (pipelining included)', async () => {
    let seen = 0;
    const hung: ServerResponse[] = [];
    const reg = await fakeRegistry((_req, res) => {
      seen += 1;
      hung.push(res); // never answered: the run's requests pile up
    });
    const events: EgressEvent[] = [];
    const h = egressHandlers({ proxies: async () => proxiesAt(reg.socket), allowed: ['npm'], mirrors: [], onEvent: (e) => events.push(e) });
    const srv = await serve(h);
    const extra = 5;
    const n = RUN_IN_FLIGHT + RUN_WAITING + extra;
    // Every request on one connection, pipelined, none of the answers read.
    const sock = connect(srv.port, '127.0.0.1');
    sock.on('error', () => undefined);
    sock.write(Array.from({ length: n }, (_, i) => `GET /p${i} HTTP/1.1\r\nHost: x\r\n\r\n`).join(''));
    for (let i = 0; i < 100 && events.filter((e) => e.outcome === 'error').length < extra; i++) await new Promise((r) => setTimeout(r, 50));
    for (let i = 0; i < 100 && seen < RUN_IN_FLIGHT; i++) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 200)); // and no more than that arrive
    expect(seen).toBe(RUN_IN_FLIGHT);
    expect(events.filter((e) => e.outcome === 'error').map((e) => e.reason)).toEqual(Array(extra).fill(`this run has more than ${RUN_IN_FLIGHT + RUN_WAITING} requests open at once`));
    sock.destroy();
    for (const r of hung) r.end();
    srv.close();
    reg.close();
    h.close?.();
  });

  it('refuses further misses once a run had the caches fetch its budget; the count is of bytes answered', async () => {
    const reg = await fakeRegistry((_req, res) => res.end(Buffer.alloc(1000)));
    const events: EgressEvent[] = [];
    const h = egressHandlers({ proxies: async () => proxiesAt(reg.socket), allowed: ['npm'], mirrors: [], onEvent: (e) => events.push(e), fetchBudget: 1500 });
    const srv = await serve(h);
    const get = (path: string) => new Promise<number>((resolve) => request({ host: '127.0.0.1', port: srv.port, path }, (res) => (res.resume(), res.on('end', () => resolve(res.statusCode ?? 0)))).end());
    expect(await get('/a')).toBe(200);
    expect(await get('/b')).toBe(200);
    expect(await get('/c')).toBe(403);
    expect(events.at(-1)?.reason).toMatch(/fetch more than 1500 bytes/);
    srv.close();
    reg.close();
    h.close?.();
  });
});

describe('the front and the caches\' kept-alive connections', () => {
  /**
   * A stand-in for apt-cacher-ng that answers the first request of each connection and, like it,
   * says nothing of closing: a later request on that connection finds it closed (`drop` decides
   * which are dropped). The front's agent keeps the connection alive and reuses it.
   */
  async function fakeAcng(drop: (nth: number) => boolean): Promise<{ port: number; seen: string[]; close: () => void }> {
    const seen: string[] = [];
    const perSocket = new WeakMap<object, number>();
    const s = createServer((req, res) => {
      const nth = (perSocket.get(req.socket) ?? 0) + 1;
      perSocket.set(req.socket, nth);
      seen.push(`${req.url} #${nth}`);
      if (drop(nth)) return void req.socket.destroy(); // closed before any answer: what a reused stale connection meets
      res.end('deb');
    });
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return { port: (s.address() as AddressInfo).port, seen, close: () => (s.closeAllConnections(), s.close()) };
  }
  const MIRROR = 'http://deb.debian.org/debian/';
  const frontTo = async (acngPort: number, events: EgressEvent[]) => {
    const proxies = { up: () => true, aptPort: acngPort, mirrors: [{ prefix: MIRROR, dir: mkdtempSync(join(tmpdir(), 'airlock-acng-')) }] } as unknown as PackageProxies;
    const h = egressHandlers({ proxies: async () => proxies, allowed: ['debian'], mirrors: [MIRROR], onEvent: (e) => events.push(e) });
    const s = createServer(h.apt);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as AddressInfo).port;
    const get = (file: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const r = request({ host: '127.0.0.1', port, path: `${MIRROR}${file}`, agent: false }, (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        r.on('error', reject);
        r.end();
      });
    return { get, close: () => (s.closeAllConnections(), s.close(), h.close?.()) };
  };

  it('a request that meets a kept-alive connection the cache closed is asked again once, on a new one: apt sees no failure', async () => {
    const acng = await fakeAcng((nth) => nth > 1);
    const events: EgressEvent[] = [];
    const front = await frontTo(acng.port, events);
    expect(await front.get('dists/bookworm/InRelease')).toEqual({ status: 200, body: 'deb' });
    const index = await front.get('dists/bookworm/main/binary-amd64/by-hash/SHA256/00');
    const deb = await front.get('pool/main/j/jq/jq_1.6_amd64.deb');
    front.close();
    acng.close();
    expect(index).toEqual({ status: 200, body: 'deb' });
    expect(deb).toEqual({ status: 200, body: 'deb' });
    // the index went out on the kept-alive connection first, then once on a new one; the .deb on a new kept-alive one
    expect(acng.seen).toEqual([`${MIRROR}dists/bookworm/InRelease #1`, `${MIRROR}dists/bookworm/main/binary-amd64/by-hash/SHA256/00 #2`, `${MIRROR}dists/bookworm/main/binary-amd64/by-hash/SHA256/00 #1`, `${MIRROR}pool/main/j/jq/jq_1.6_amd64.deb #1`]);
    expect(events.map((e) => e.outcome)).toEqual(['miss', 'miss', 'miss']);
  });

  it('a new connection that fails is not asked again: the request is an error, named', async () => {
    const acng = await fakeAcng(() => true);
    const events: EgressEvent[] = [];
    const front = await frontTo(acng.port, events);
    const r = await front.get('pool/main/j/jq/jq_1.6_amd64.deb');
    front.close();
    acng.close();
    expect(r.status).toBe(503);
    expect(acng.seen).toEqual([`${MIRROR}pool/main/j/jq/jq_1.6_amd64.deb #1`]);
    expect(events).toMatchObject([{ outcome: 'error', reason: 'the cache did not answer: socket hang up' }]);
  });
});

describe('the cache size bound', () => {
  it('removes the least recently used first, with their .head files, until the rest fits', async () => {
    const root = mkdtempSync(join(tmpdir(), 'airlock-cache-'));
    const a = join(root, 'debian', 'm0', 'pool');
    const n = join(root, 'npm', 'x');
    mkdirSync(a, { recursive: true });
    mkdirSync(n, { recursive: true });
    const put = (path: string, bytes: number, ageS: number) => {
      writeFileSync(path, Buffer.alloc(bytes));
      const t = new Date(Date.now() - ageS * 1000);
      utimesSync(path, t, t);
    };
    put(join(a, 'old.deb'), 1000, 300);
    put(join(a, 'old.deb.head'), 100, 300);
    put(join(n, 'x-1.tgz'), 1000, 200);
    put(join(a, 'new.deb'), 1000, 10);
    const r = await pruneCache([join(root, 'debian'), join(root, 'npm')], 1500);
    expect(r).toEqual({ files: 2, bytes: 2100, keptBytes: 1000 });
    expect(readdirSync(a)).toEqual(['new.deb']);
    expect(readdirSync(n)).toEqual([]);
    expect(await pruneCache([join(root, 'debian')], 1500)).toEqual({ files: 0, bytes: 0, keptBytes: 1000 });
  });
});
