/**
 * The host's own apt-get (root: the host tier) through the apt listener as its proxy: `update` and
 * `download` of the locked packages with a state directory of their own, the sources.list naming
 * Debian's mirror as the lockfile does. apt asks for the InRelease, then the Packages index by hash
 * (`.xz`: why the fetcher keeps the verified .xz too), then the pool files, and checks the InRelease
 * signature itself; everything it asked for was served from the verified set. No container: the
 * container wiring is the environment/tests/build stages'.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchDependencies, type VerifiedDependencies } from '../../../trusted-builder/deps/dependencies.js';
import type { DependencyRequest } from '../../../trusted-builder/deps/server.js';
import { runChild } from '../../support/run-child.js';

const MIRROR = 'http://deb.debian.org/debian';
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
const hasApt = (() => {
  try {
    execFileSync('apt-get', ['--version'], { stdio: 'ignore' });
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
})();
const dir = mkdtempSync(join(tmpdir(), 'airlock-deps-apt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(!hasApt)('apt-get through the apt listener', () => {
  let verified: VerifiedDependencies;
  let server: Server;
  let port: number;
  const requests: DependencyRequest[] = [];
  beforeAll(async () => {
    const text = `version: 1\nsources:\n  - { uri: "${MIRROR}", suite: bookworm, components: [main], architectures: [amd64] }\npackages:\n  - { name: jq, version: "1.6-2.1+deb12u2", architecture: amd64 }\n  - { name: libjq1, version: "1.6-2.1+deb12u2", architecture: amd64 }\n  - { name: libonig5, version: "6.9.8-1", architecture: amd64 }\n`;
    verified = await fetchDependencies({ npm: [], debian: [{ file: 'debian.lock.yaml', text }] }, { policy: { debianMirrors: [MIRROR], debianKeyring: KEYRING }, dir: join(dir, 'fetched') });
    server = createServer(verified.handlers({ onRequest: (r) => requests.push(r) }).apt);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  }, 300_000);
  afterAll(() => new Promise<void>((r) => (server ? server.close(() => r()) : r())));

  it('updates from and downloads the verified files alone', async () => {
    const t = join(dir, 'apt');
    for (const d of ['state/lists/partial', 'cache/archives/partial', 'etc', 'out']) mkdirSync(join(t, d), { recursive: true });
    writeFileSync(join(t, 'status'), '');
    writeFileSync(join(t, 'etc/sources.list'), `deb [signed-by=${KEYRING}] ${MIRROR} bookworm main\n`);
    const o = [
      `Dir::Etc::SourceList=${t}/etc/sources.list`,
      'Dir::Etc::SourceParts=/nonexistent',
      `Dir::State=${t}/state`,
      `Dir::Cache=${t}/cache`,
      `Dir::State::status=${t}/status`,
      `Acquire::http::Proxy=http://127.0.0.1:${port}`,
      'APT::Architecture=amd64',
      'APT::Architectures::=amd64',
      'Debug::NoLocking=1',
      'Acquire::Languages=none',
      'APT::Sandbox::User=root',
    ].flatMap((x) => ['-o', x]);
    const update = await runChild('apt-get', [...o, 'update'], { timeoutMs: 120_000 });
    expect(update.code, update.output).toBe(0);
    expect(update.output).not.toMatch(/^(W|E):/m);
    const download = await runChild('apt-get', [...o, 'download', 'jq', 'libjq1', 'libonig5'], { cwd: join(t, 'out'), timeoutMs: 120_000 });
    expect(download.code, download.output).toBe(0);
    const deb = join(t, 'out', 'jq_1.6-2.1+deb12u2_amd64.deb');
    expect(existsSync(deb)).toBe(true);
    expect(createHash('sha256').update(readFileSync(deb)).digest('hex')).toBe(verified.debian.find((d) => d.name === 'jq')!.sha256);
    expect(requests.filter((r) => !r.served)).toEqual([]);
    expect(requests.map((r) => r.url)).toEqual(expect.arrayContaining([`${MIRROR}/dists/bookworm/InRelease`, expect.stringMatching(/\/main\/binary-amd64\/by-hash\/SHA256\/[0-9a-f]{64}$/)]));
  }, 300_000);
});
