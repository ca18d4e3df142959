/**
 * Debian dependencies (trusted-builder/deps/) for real (the network tier): a real fetch
 * from Debian's mirror (bookworm amd64: jq and the two libraries it needs), its InRelease checked
 * with gpgv against the Debian archive keyring; then what it serves to apt, checked without apt:
 * the served InRelease verifies with gpgv, the served Packages.gz (by path and by hash) has the
 * SHA256 the signed InRelease gives, a .deb asked for as apt asks (absolute form, `+` as `%2b`) is
 * the one the index names. Refusals: a version not in the index, an InRelease with one byte changed
 * (served by a mirror on 127.0.0.1 that passes everything else through), a Packages file or a .deb
 * that is not what the signed index says, a signed InRelease of another suite or past its
 * Valid-Until. The lockfile's own checks are in debian-lockfile.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchDependencies, type VerifiedDependencies } from '../../../trusted-builder/deps/dependencies.js';
import { fetchDeb as fetchWith, JQ, KEYRING, lockfile, MIRROR, ONIG, policy, refused, workDirs } from './debian-support.js';
import type { DependencyRequest } from '../../../trusted-builder/deps/server.js';
import type { DependencyPolicy } from '../../../trusted-builder/policy/promotion.js';

const work = workDirs('airlock-deps-deb-');
const dir = work();
mkdirSync(dir, { recursive: true });
const fetchDeb = (text: string, p: DependencyPolicy = policy()): Promise<VerifiedDependencies> => fetchWith(work, text, p);
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A mirror on 127.0.0.1 that passes requests through to Debian's, with `alter` changing what it answers. */
async function lyingMirror(alter: (path: string, body: Buffer) => Buffer, remap: (path: string) => string = (x) => x): Promise<{ uri: string; close: () => Promise<void> }> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').replace(/^\/debian/, '');
    fetch(`${MIRROR}${remap(path)}`)
      .then(async (up) => {
        if (up.status !== 200) return void res.writeHead(up.status).end();
        const body = alter(path, Buffer.from(await up.arrayBuffer()));
        res.writeHead(200, { 'content-length': body.length }).end(body);
      })
      .catch(() => res.writeHead(502).end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { uri: `http://127.0.0.1:${(server.address() as AddressInfo).port}/debian`, close: () => new Promise<void>((r) => server.close(() => r())) };
}

describe('Debian packages from the real mirror', () => {
  let verified: VerifiedDependencies;
  beforeAll(async () => {
    verified = await fetchDeb(lockfile());
  }, 300_000);

  it('fetches the locked packages, each with the size and SHA256 of the gpgv-checked index', () => {
    expect(verified.debian.map((d) => `${d.name} ${d.version} ${d.architecture}`)).toEqual([`jq ${JQ} amd64`, `libjq1 ${JQ} amd64`, `libonig5 ${ONIG} amd64`]);
    const jq = verified.debian[0]!;
    expect(jq.url).toBe(`${MIRROR}/pool/main/j/jq/jq_${JQ}_amd64.deb`);
    expect(jq.sha256).toBe('f2303584378ac85f6d3a9ae8e46412196061681e81610d3b020abe4b5d389eb0');
    expect(verified.provenance).toContainEqual({ uri: 'pkg:deb/debian/jq@1.6-2.1%2Bdeb12u2?arch=amd64', digest: { sha256: jq.sha256 }, downloadLocation: jq.url });
    expect(verified.provenance).toContainEqual(expect.objectContaining({ uri: `${MIRROR}/dists/bookworm/InRelease`, downloadLocation: `${MIRROR}/dists/bookworm/InRelease` }));
  });

  describe('served to apt (as a proxy: absolute-form requests)', () => {
    let server: Server;
    let port: number;
    const requests: DependencyRequest[] = [];
    beforeAll(async () => {
      server = createServer(verified.handlers({ onRequest: (r) => requests.push(r) }).apt);
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      port = (server.address() as AddressInfo).port;
    });
    afterAll(() => new Promise<void>((r) => server.close(() => r())));

    /** A GET as apt sends it through a proxy: the absolute URL as the request target. */
    const viaProxy = (url: string): Promise<{ status: number; body: Buffer }> =>
      new Promise((resolve, reject) => {
        import('node:http').then(({ request }) => {
          const u = new URL(url);
          const req = request({ host: '127.0.0.1', port, method: 'GET', path: url, headers: { host: u.host } }, (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
          });
          req.on('error', reject);
          req.end();
        }, reject);
      });

    it('serves an InRelease that verifies with gpgv, and Packages files (by path and by hash) with the SHA256 it gives', async () => {
      const inRelease = await viaProxy(`${MIRROR}/dists/bookworm/InRelease`);
      expect(inRelease.status).toBe(200);
      const file = join(dir, 'served-InRelease');
      const signed = join(dir, 'served-InRelease.txt');
      writeFileSync(file, inRelease.body);
      execFileSync('gpgv', ['--keyring', KEYRING, '--output', signed, file], { stdio: 'pipe' });
      const text = execFileSync('cat', [signed]).toString('utf8');
      const sums = text.slice(text.indexOf('\nSHA256:'));
      const line = /^ ([0-9a-f]{64}) +(\d+) main\/binary-amd64\/Packages\.gz$/m.exec(sums)!;
      expect(line).toBeTruthy();
      for (const url of [`${MIRROR}/dists/bookworm/main/binary-amd64/Packages.gz`, `${MIRROR}/dists/bookworm/main/binary-amd64/by-hash/SHA256/${line[1]}`]) {
        const packages = await viaProxy(url);
        expect(packages.status, url).toBe(200);
        expect(sha256(packages.body)).toBe(line[1]);
        expect(packages.body.length).toBe(Number(line[2]));
      }
      const xz = /^ ([0-9a-f]{64}) +\d+ main\/binary-amd64\/Packages\.xz$/m.exec(sums)!;
      expect(sha256((await viaProxy(`${MIRROR}/dists/bookworm/main/binary-amd64/by-hash/SHA256/${xz[1]}`)).body)).toBe(xz[1]);
    });

    it('serves a .deb asked for as apt asks (`+` as %2b), and 404s everything else', async () => {
      const deb = await viaProxy(`${MIRROR}/pool/main/j/jq/jq_1.6-2.1%2bdeb12u2_amd64.deb`);
      expect(deb.status).toBe(200);
      expect(sha256(deb.body)).toBe('f2303584378ac85f6d3a9ae8e46412196061681e81610d3b020abe4b5d389eb0');
      for (const url of [
        `${MIRROR}/dists/bookworm/main/i18n/Translation-en.xz`,
        `${MIRROR}/dists/bookworm/Release`,
        `${MIRROR}/pool/main/c/curl/curl_7.88.1-10+deb12u14_amd64.deb`,
        `http://evil.example/debian/dists/bookworm/InRelease`,
        `${MIRROR}/dists/bookworm/../../../../etc/passwd`,
        `${MIRROR}/pool/main/j/jq/%2e%2e/%2e%2e/%2e%2e/etc/passwd`,
      ]) {
        const r = await viaProxy(url);
        expect(r.status, url).toBe(404);
        expect(r.body.toString()).toBe('not a verified dependency of this build\n');
      }
      const served = requests.filter((r) => r.served).map((r) => r.url);
      expect(served).toContain(`${MIRROR}/pool/main/j/jq/jq_1.6-2.1%2bdeb12u2_amd64.deb`);
      expect(requests.filter((r) => !r.served).map((r) => r.url)).toContain(`${MIRROR}/dists/bookworm/Release`);
    });
  });

  it('refuses a version the signed index does not have, naming the package and what is there', async () => {
    const message = await refused(fetchDeb(lockfile({ packages: [{ name: 'jq', version: '1.6-2.1' }] })));
    expect(message).toContain('debian.lock.yaml: jq 1.6-2.1 (amd64) is not in the signed index of http://deb.debian.org/debian bookworm [main]');
    expect(message).toContain(`there: ${JQ} (amd64)`);
  });
});

describe('a mirror that lies', () => {
  it('refuses an InRelease with one byte changed (gpgv: BADSIG)', async () => {
    const m = await lyingMirror((path, body) => {
      if (!path.endsWith('/InRelease')) return body;
      const text = body.toString('utf8');
      // One byte of the signed text: the Packages.gz size line's digest, 0 ↔ 1.
      const at = text.indexOf('main/binary-amd64/Packages.gz') - 20;
      return Buffer.from(text.slice(0, at) + (text[at] === '0' ? '1' : '0') + text.slice(at + 1), 'utf8');
    });
    try {
      const message = await refused(fetchDeb(lockfile({ uri: m.uri }), policy([m.uri])));
      expect(message).toMatch(/the InRelease signature does not verify against \/usr\/share\/keyrings\/debian-archive-keyring\.gpg: BADSIG/);
    } finally {
      await m.close();
    }
  }, 120_000);

  it('refuses an InRelease signed by a key not in the keyring', async () => {
    const m = await lyingMirror((path, body) => body);
    try {
      const message = await refused(fetchDeb(lockfile({ uri: m.uri }), { debianMirrors: [m.uri], debianKeyring: '/usr/share/keyrings/debian-archive-removed-keys.gpg' }));
      expect(message).toMatch(/signature does not verify .*(NO_PUBKEY|ERRSIG)/);
    } finally {
      await m.close();
    }
  }, 120_000);

  it('refuses a correctly signed InRelease of another suite (a downgrade: bookworm-updates served for bookworm)', async () => {
    const m = await lyingMirror((_, body) => body, (path) => path.replace('/dists/bookworm/', '/dists/bookworm-updates/'));
    try {
      expect(await refused(fetchDeb(lockfile({ uri: m.uri }), policy([m.uri])))).toMatch(/the signed InRelease is for "bookworm-updates", not "bookworm"/);
    } finally {
      await m.close();
    }
  }, 120_000);

  it('refuses a correctly signed InRelease past its Valid-Until (a replayed old copy)', async () => {
    const security = 'http://deb.debian.org/debian-security';
    const text = `version: 1\nsources:\n  - { uri: "${security}", suite: bookworm-security, components: [main], architectures: [amd64] }\npackages: []\n`;
    const inAYear = Date.now() + 365 * 86_400_000;
    const message = await refused(fetchDependencies({ npm: [], debian: [{ file: 'sec.yaml', text }] }, { policy: policy([security]), dir: work(), now: () => inAYear }));
    expect(message).toMatch(/sec\.yaml: http:\/\/deb\.debian\.org\/debian-security bookworm-security: the signed InRelease expired at .* \(Valid-Until\)/);
  }, 120_000);

  it('refuses a Packages index that is not the one the signed InRelease names', async () => {
    const m = await lyingMirror((path, body) => (path.includes('/by-hash/') || path.endsWith('Packages.gz') ? Buffer.from('Package: jq\nVersion: 9\n\n') : body));
    try {
      const message = await refused(fetchDeb(lockfile({ uri: m.uri }), policy([m.uri])));
      expect(message).toMatch(/main\/binary-amd64\/Packages\.gz does not match the signed InRelease/);
    } finally {
      await m.close();
    }
  }, 120_000);

  it('refuses a .deb that is not the one the signed index names, naming the package', async () => {
    const m = await lyingMirror((path, body) => (path.endsWith('.deb') ? Buffer.concat([body.subarray(0, body.length - 1), Buffer.from([body[body.length - 1]! ^ 1])]) : body));
    try {
      const message = await refused(fetchDeb(lockfile({ uri: m.uri, packages: [{ name: 'libonig5', version: ONIG }] }), policy([m.uri])));
      expect(message).toMatch(/libonig5 6\.9\.8-1 \(amd64\): .* does not match the signed index \(expected sha256 59ecfce6/);
    } finally {
      await m.close();
    }
  }, 300_000);
});
