/**
 * npm dependencies (trusted-builder/deps/) for real (the network tier: the real registry): a
 * lockfile written by this host's npm, its tarballs fetched from the real registry and checked,
 * a tampered integrity refused, and the host's `npm ci` installing from the verified set alone,
 * served on a loopback port (`npm_config_registry`), with a cache of its own.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchDependencies, type VerifiedDependencies } from '../../../trusted-builder/deps/dependencies.js';
import { DependencyRefused } from '../../../trusted-builder/deps/errors.js';
import type { DependencyRequest } from '../../../trusted-builder/deps/server.js';
import { runChild } from '../../support/run-child.js';

const REGISTRY = 'https://registry.npmjs.org/';
const dir = mkdtempSync(join(tmpdir(), 'airlock-deps-npm-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('npm tarballs from the real registry, served to the host’s npm ci', () => {
  let project: string;
  let lockText: string;
  let verified: VerifiedDependencies;

  beforeAll(async () => {
    // A lockfile as this host's npm writes it (no `resolved`: omit-lockfile-registry-resolved).
    project = join(dir, 'project');
    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'deps-test', version: '1.0.0', private: true }));
    const made = await runChild('npm', ['install', '--package-lock-only', '--no-audit', '--no-fund', '--ignore-scripts', 'is-number@7.0.0', '@types/ms@0.7.34'], {
      cwd: project,
      env: { ...process.env, npm_config_cache: join(dir, 'npm-cache-lock'), npm_config_registry: REGISTRY, npm_config_update_notifier: 'false' },
      timeoutMs: 120_000,
    });
    expect(made.code, made.output).toBe(0);
    lockText = readFileSync(join(project, 'package-lock.json'), 'utf8');
  }, 180_000);

  it('fetches each tarball from the configured registry and keeps it only when its sha512 is the lockfile’s', async () => {
    verified = await fetchDependencies({ npm: [{ file: 'package-lock.json', text: lockText }], debian: [] }, { policy: { npmRegistry: REGISTRY, debianMirrors: [] }, dir: join(dir, 'fetched') });
    expect(verified.npm.map((p) => `${p.name}@${p.version}`).sort()).toEqual(['@types/ms@0.7.34', 'is-number@7.0.0']);
    for (const p of verified.npm) {
      expect(createHash('sha512').update(readFileSync(p.file)).digest('base64')).toBe(p.integrity.replace(/^sha512-/, ''));
      expect(p.url).toBe(`${REGISTRY}${p.tarballPath}`);
    }
    const isNumber = verified.provenance.find((x) => x.uri === 'pkg:npm/is-number@7.0.0');
    expect(isNumber).toEqual({
      uri: 'pkg:npm/is-number@7.0.0',
      digest: { sha512: Buffer.from('41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==', 'base64').toString('hex') },
      downloadLocation: 'https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz',
    });
    expect(verified.provenance.map((x) => x.uri)).toContain('pkg:npm/%40types/ms@0.7.34');
  });

  it('refuses a tampered integrity, naming the package, what was expected and what came', async () => {
    // is-number locked with @types/ms's digest: a real, well-formed sha512 that is not its own.
    const doc = JSON.parse(lockText) as { packages: Record<string, { integrity?: string }> };
    const other = doc.packages['node_modules/@types/ms']!.integrity!;
    doc.packages['node_modules/is-number']!.integrity = other;
    const err = await fetchDependencies({ npm: [{ file: 'web/package-lock.json', text: JSON.stringify(doc) }], debian: [] }, { policy: { npmRegistry: REGISTRY, debianMirrors: [] }, dir: join(dir, 'tampered') }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DependencyRefused);
    expect((err as Error).message).toContain('is-number@7.0.0 (web/package-lock.json): integrity mismatch: expected ' + other + ', got sha512-41Cifkg6e8');
    expect(existsSync(join(dir, 'tampered'))).toBe(true);
  });

  it('caps each file and the whole fetch', async () => {
    const fetchWith = (limits: { maxFileBytes?: number; maxTotalBytes?: number }, to: string) =>
      fetchDependencies({ npm: [{ file: 'package-lock.json', text: lockText }], debian: [] }, { policy: { npmRegistry: REGISTRY, debianMirrors: [] }, dir: join(dir, to), limits: { ...limits, concurrency: 1 } }).catch((e: unknown) => e);
    // is-number-7.0.0.tgz is 3.3 kB, @types/ms 0.7.34 about 2 kB.
    const one = await fetchWith({ maxFileBytes: 1000 }, 'cap-file');
    expect(one).toBeInstanceOf(DependencyRefused);
    expect((one as Error).message).toMatch(/(is-number@7\.0\.0|@types\/ms@0\.7\.34) \(package-lock\.json\): https:\/\/registry\.npmjs\.org\/.* (is larger than|bytes, more than) 1000/);
    const all = await fetchWith({ maxTotalBytes: 4000 }, 'cap-total');
    expect(all).toBeInstanceOf(DependencyRefused);
    expect((all as Error).message).toMatch(/the dependencies exceed 4000 bytes in all/);
  });

  it('stops reading a file at its cap when the registry sends no length (chunked, endless)', async () => {
    let sent = 0;
    const endless = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' }); // no content-length: chunked
      const more = (): void => {
        if (res.destroyed || sent > 64 * 1024 * 1024) return void res.end();
        sent += 16 * 1024;
        if (res.write(Buffer.alloc(16 * 1024))) setImmediate(more);
        else res.once('drain', more);
      };
      more();
    });
    await new Promise<void>((r) => endless.listen(0, '127.0.0.1', r));
    try {
      const registry = `http://127.0.0.1:${(endless.address() as AddressInfo).port}/`;
      const err = await fetchDependencies({ npm: [{ file: 'package-lock.json', text: lockText }], debian: [] }, { policy: { npmRegistry: registry, debianMirrors: [] }, dir: join(dir, 'endless'), limits: { maxFileBytes: 100_000, concurrency: 1 } }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DependencyRefused);
      expect((err as Error).message).toMatch(/is larger than 100000 bytes/);
      expect(sent).toBeLessThan(64 * 1024 * 1024);
    } finally {
      endless.closeAllConnections();
      await new Promise<void>((r) => endless.close(() => r()));
    }
  });

  it('refuses when the promotion policy names no registry, saying what to set', async () => {
    const err = await fetchDependencies({ npm: [{ file: 'package-lock.json', text: lockText }], debian: [] }, { policy: undefined, dir: join(dir, 'none') }).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/no `dependencies` section: SRE sets dependencies.npmRegistry/);
    const err2 = await fetchDependencies({ npm: [{ file: 'package-lock.json', text: lockText }], debian: [] }, { policy: { debianMirrors: [] }, dir: join(dir, 'none') }).catch((e: unknown) => e);
    expect((err2 as Error).message).toMatch(/sets no dependencies.npmRegistry/);
  });

  describe('served', () => {
    let server: Server;
    let port: number;
    const requests: DependencyRequest[] = [];
    beforeAll(async () => {
      server = createServer(verified.handlers({ onRequest: (r) => requests.push(r) }).npm);
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      port = (server.address() as AddressInfo).port;
    });
    afterAll(() => new Promise<void>((r) => server.close(() => r())));

    it('is enough for the host’s npm ci (it asks for packuments first: they are made from the verified set)', async () => {
      const ci = await runChild('npm', ['ci', '--no-audit', '--no-fund', '--ignore-scripts', '--fetch-retries=0'], {
        cwd: project,
        env: { ...process.env, npm_config_cache: join(dir, 'npm-cache-ci'), npm_config_registry: `http://127.0.0.1:${port}/`, npm_config_update_notifier: 'false', npm_config_offline: 'false' },
        timeoutMs: 120_000,
      });
      expect(ci.code, ci.output).toBe(0);
      expect(JSON.parse(readFileSync(join(project, 'node_modules/is-number/package.json'), 'utf8'))).toMatchObject({ name: 'is-number', version: '7.0.0' });
      expect(existsSync(join(project, 'node_modules/@types/ms/index.d.ts'))).toBe(true);
      expect(requests.filter((r) => !r.served)).toEqual([]);
      const urls = requests.map((r) => r.url);
      expect(urls).toEqual(expect.arrayContaining(['/is-number', '/@types%2fms', '/is-number/-/is-number-7.0.0.tgz', '/@types/ms/-/ms-0.7.34.tgz']));
    });

    it('serves nothing else: 404 with a short text body, and the hook hears of it', async () => {
      const before = requests.length;
      for (const path of ['/left-pad', '/is-number/-/is-number-6.0.0.tgz', '/../../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '/is-number/-/../../../etc/passwd', '/%zz', '/-/v1/search?text=x']) {
        const res = await fetch(`http://127.0.0.1:${port}${path}`);
        expect(res.status, path).toBe(404);
        expect(await res.text()).toBe('not a verified dependency of this build\n');
      }
      const post = await fetch(`http://127.0.0.1:${port}/is-number`, { method: 'PUT', body: '{}' });
      expect(post.status).toBe(405);
      expect(requests.slice(before).every((r) => !r.served)).toBe(true);
      const tgz = await fetch(`http://127.0.0.1:${port}/is-number/-/is-number-7.0.0.tgz`);
      expect(createHash('sha512').update(Buffer.from(await tgz.arrayBuffer())).digest('base64')).toBe('41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==');
    });
  });
});
