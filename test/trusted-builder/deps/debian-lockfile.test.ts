/**
 * The Debian lockfile read as a hostile file (trusted-builder/deps/debian-lockfile.ts): hostile
 * names, versions, architectures, suites and mirror URLs are refused, naming the entry; a mirror
 * the policy does not allow, and a policy without a keyring, are refused before anything is
 * fetched. The real fetch is in debian.net.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fetchDependencies, type VerifiedDependencies } from '../../../trusted-builder/deps/dependencies.js';
import { parseDebianLockfile } from '../../../trusted-builder/deps/debian-lockfile.js';
import { DependencyRefused } from '../../../trusted-builder/deps/errors.js';
import type { DependencyPolicy } from '../../../trusted-builder/policy/promotion.js';

const MIRROR = 'http://deb.debian.org/debian';
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
const JQ = '1.6-2.1+deb12u2';
const ONIG = '6.9.8-1';
const dir = mkdtempSync(join(tmpdir(), 'airlock-deps-deblock-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const work = (): string => join(dir, `w${++n}`);
const lockfile = (o: { uri?: string; packages?: { name: string; version: string; architecture?: string }[] } = {}): string =>
  [
    'version: 1',
    'sources:',
    `  - { uri: "${o.uri ?? MIRROR}", suite: bookworm, components: [main], architectures: [amd64] }`,
    'packages:',
    ...(o.packages ?? [
      { name: 'jq', version: JQ },
      { name: 'libjq1', version: JQ },
      { name: 'libonig5', version: ONIG },
    ]).map((p) => `  - { name: ${JSON.stringify(p.name)}, version: ${JSON.stringify(p.version)}, architecture: ${p.architecture ?? 'amd64'} }`),
    '',
  ].join('\n');
const policy = (mirrors: string[] = [MIRROR]): DependencyPolicy => ({ debianMirrors: mirrors, debianKeyring: KEYRING });
const fetchDeb = (text: string, p: DependencyPolicy = policy()): Promise<VerifiedDependencies> =>
  fetchDependencies({ npm: [], debian: [{ file: 'debian.lock.yaml', text }] }, { policy: p, dir: work() });
const refused = async (p: Promise<unknown>): Promise<string> => {
  const e = await p.then(
    () => new Error('not refused'),
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(DependencyRefused);
  return (e as Error).message;
};

describe('the Debian lockfile, read as a hostile file', () => {
  it.each([
    ['a name with a path', { name: '../../etc/passwd', version: '1.0' }, /packages\[0\] \("\.\.\/\.\.\/etc\/passwd" "1\.0"\)\.name: not a Debian package name/],
    ['a name with a slash', { name: 'jq/../x', version: '1.0' }, /packages\[0\] \("jq\/\.\.\/x" "1\.0"\)\.name/],
    ['a version with a path', { name: 'jq', version: '1.0/../../x' }, /packages\[0\] \("jq" "1\.0\/\.\.\/\.\.\/x"\)\.version: not a Debian version/],
    ['a version with ..', { name: 'jq', version: '1..0' }, /packages\[0\] \("jq" "1\.\.0"\)\.version: not a Debian version/],
    ['a version with a query', { name: 'jq', version: '1.0?x=1' }, /packages\[0\] \("jq" "1\.0\?x=1"\)\.version/],
    ['an architecture with a path', { name: 'jq', version: '1.0', architecture: '"amd64/../../x"' }, /packages\[0\] \("jq" "1\.0"\)\.architecture: not a Debian architecture/],
  ])('refuses %s, naming the entry', (_, p, why) => {
    expect(() => parseDebianLockfile(lockfile({ packages: [p] }), 'debian.lock.yaml')).toThrow(why);
  });

  it('refuses a hostile suite or mirror URL, and unknown keys', () => {
    const with_ = (source: string): string => `version: 1\nsources:\n  - ${source}\npackages: []\n`;
    expect(() => parseDebianLockfile(with_('{ uri: "http://deb.debian.org/debian", suite: "../../x", components: [main], architectures: [amd64] }'), 'l')).toThrow(/suite: not a suite name/);
    expect(() => parseDebianLockfile(with_('{ uri: "http://u:p@deb.debian.org/debian", suite: bookworm, components: [main], architectures: [amd64] }'), 'l')).toThrow(/uri: no credentials/);
    expect(() => parseDebianLockfile(with_('{ uri: "file:///etc", suite: bookworm, components: [main], architectures: [amd64] }'), 'l')).toThrow(/uri: http or https/);
    expect(() => parseDebianLockfile(with_('{ uri: "http://deb.debian.org/debian", suite: bookworm, components: ["main/../x"], architectures: [amd64] }'), 'l')).toThrow(/components\[0\]/);
    expect(() => parseDebianLockfile(with_('{ uri: "http://deb.debian.org/debian", suite: bookworm, components: [main], architectures: [amd64], trusted: yes }'), 'l')).toThrow(/trusted/);
  });

  it('refuses a mirror the policy does not allow, before anything is fetched', async () => {
    expect(await refused(fetchDeb(lockfile({ uri: 'http://evil.example/debian' })))).toMatch(/source "http:\/\/evil\.example\/debian" is not a mirror the builder may fetch from/);
    expect(await refused(fetchDependencies({ npm: [], debian: [{ file: 'd.yaml', text: lockfile() }] }, { policy: { debianMirrors: [MIRROR] }, dir: work() }))).toMatch(/sets no dependencies.debianMirrors and debianKeyring/);
  });
});
