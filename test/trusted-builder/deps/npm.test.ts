/**
 * npm dependencies (trusted-builder/deps/): the lockfile read as a hostile file (a table: what is
 * skipped, what is refused and that the refusal names the package), then the real thing: a
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
import { parseNpmLockfile, npmTarballPath } from '../../../trusted-builder/deps/npm-lockfile.js';
import { npmPurl } from '../../../trusted-builder/deps/purl.js';
import type { DependencyRequest } from '../../../trusted-builder/deps/server.js';
import { runChild } from '../../support/run-child.js';

const REGISTRY = 'https://registry.npmjs.org/';
const dir = mkdtempSync(join(tmpdir(), 'airlock-deps-npm-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SHA512 = `sha512-${Buffer.alloc(64, 7).toString('base64')}`;
const lock = (packages: Record<string, unknown>, lockfileVersion: unknown = 3): string =>
  JSON.stringify({ name: 'p', version: '1.0.0', lockfileVersion, requires: true, packages: { '': { name: 'p', version: '1.0.0' }, ...packages } });
const refusal = (text: string): string => {
  try {
    parseNpmLockfile(text, 'app/package-lock.json', REGISTRY);
  } catch (e) {
    expect(e).toBeInstanceOf(DependencyRefused);
    return (e as Error).message;
  }
  throw new Error('not refused');
};

describe('package-lock.json, read as a hostile file', () => {
  it('lists registry packages (scoped, aliased, nested) and skips the root, links, bundled entries and workspace folders', () => {
    const got = parseNpmLockfile(
      lock({
        'node_modules/a': { version: '1.0.0', integrity: SHA512 },
        'node_modules/@s/b': { version: '2.0.0-rc.1', integrity: `sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA= ${SHA512}` },
        'node_modules/a/node_modules/c': { version: '3.0.0', integrity: SHA512, resolved: 'https://registry.npmjs.org/c/-/c-3.0.0.tgz' },
        'node_modules/alias': { name: 'real', version: '1.2.3', integrity: SHA512 },
        'node_modules/linked': { resolved: 'packages/x', link: true },
        'node_modules/a/node_modules/bundled': { version: '1.0.0', inBundle: true },
        'packages/x': { name: 'x', version: '0.0.1' },
      }),
      'package-lock.json',
      REGISTRY,
    );
    expect(got.map((p) => `${p.name}@${p.version}`)).toEqual(['a@1.0.0', '@s/b@2.0.0-rc.1', 'c@3.0.0', 'real@1.2.3']);
    expect(got[1]!.sri.algorithm).toBe('sha512');
    expect(npmTarballPath('@s/b', '2.0.0-rc.1')).toBe('@s/b/-/b-2.0.0-rc.1.tgz');
    expect(npmPurl('@types/ms', '0.7.34')).toBe('pkg:npm/%40types/ms@0.7.34');
  });

  it.each([
    ['lockfileVersion 1', lock({}, 1), /lockfileVersion 1 is not supported/],
    ['no integrity', lock({ 'node_modules/left-pad': { version: '1.3.0' } }), /left-pad@1\.3\.0: no integrity/],
    ['SHA-1 only', lock({ 'node_modules/old': { version: '1.0.0', integrity: 'sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA=' } }), /old@1\.0\.0: integrity has only a SHA-1 digest/],
    ['a git dependency', lock({ 'node_modules/g': { version: '1.0.0', resolved: 'git+ssh://git@github.com/x/g.git#0123456789abcdef0123456789abcdef01234567', integrity: SHA512 } }), /"node_modules\/g" \(g\): a git dependency/],
    ['a github: shorthand', lock({ 'node_modules/g': { version: '1.0.0', resolved: 'github:x/g#abc' } }), /\(g\): a git dependency/],
    ['a local tarball', lock({ 'node_modules/f': { version: '1.0.0', resolved: 'file:f-1.0.0.tgz', integrity: SHA512 } }), /\(f\): a local file/],
    ['a tarball on another host', lock({ 'node_modules/h': { version: '1.0.0', resolved: 'https://evil.example/h/-/h-1.0.0.tgz', integrity: SHA512 } }), /h@1\.0\.0: resolved "https:\/\/evil\.example.*is not the registry's tarball/],
    ['another package’s tarball on the registry', lock({ 'node_modules/h': { version: '1.0.0', resolved: 'https://registry.npmjs.org/evil/-/evil-6.6.6.tgz', integrity: SHA512 } }), /h@1\.0\.0: resolved .* is not the registry's tarball/],
    ['a malformed integrity', lock({ 'node_modules/m': { version: '1.0.0', integrity: 'sha512-!!!' } }), /m@1\.0\.0: integrity has a malformed entry/],
    ['a short digest', lock({ 'node_modules/m': { version: '1.0.0', integrity: 'sha512-AAAA' } }), /m@1\.0\.0: integrity's sha512 digest is 3 bytes/],
    ['not JSON', '{"lockfileVersion": 3,', /not JSON/],
    ['no packages', JSON.stringify({ lockfileVersion: 3 }), /no `packages` object/],
  ])('refuses %s, naming the package and the lockfile', (_, text, why) => {
    const message = refusal(text);
    expect(message).toMatch(/^app\/package-lock\.json: /);
    expect(message).toMatch(why);
  });

  it.each([
    ['node_modules/../../etc', { version: '1.0.0', integrity: SHA512 }],
    ['node_modules/x', { name: '../../../etc/passwd', version: '1.0.0', integrity: SHA512 }],
    ['node_modules/x', { name: '@s/../../x', version: '1.0.0', integrity: SHA512 }],
    ['node_modules/x', { name: 'x?y=1', version: '1.0.0', integrity: SHA512 }],
    ['node_modules/x', { name: 'x#frag', version: '1.0.0', integrity: SHA512 }],
    ['node_modules/x', { name: 'x%2f..%2f', version: '1.0.0', integrity: SHA512 }],
    ['node_modules/x', { name: '.hidden', version: '1.0.0', integrity: SHA512 }],
    ['node_modules/x', { name: 'a'.repeat(215), version: '1.0.0', integrity: SHA512 }],
    ['node_modules/x', { version: '1.0.0/../../../y', integrity: SHA512 }],
    ['node_modules/x', { version: '1.0.0?x=1', integrity: SHA512 }],
    ['node_modules/x', { version: '1.0.0-a/b', integrity: SHA512 }],
    ['node_modules/x', { version: 'latest', integrity: SHA512 }],
    ['node_modules/x', { version: 7, integrity: SHA512 }],
  ])('refuses a hostile name or version (%s %j) before it reaches a URL or a path', (key, entry) => {
    expect(refusal(lock({ [key]: entry }))).toMatch(/: (name .*not a valid npm package name|name .*cannot start|name .*1 to 214|version .*not a SemVer|no version)/);
  });
});

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
