/**
 * The Debian lockfile read as a hostile file (trusted-builder/deps/debian-lockfile.ts): hostile
 * names, versions, architectures, suites and mirror URLs are refused, naming the entry; a mirror
 * the policy does not allow, and a policy without a keyring, are refused before anything is
 * fetched. The real fetch is in debian.net.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { fetchDependencies, type VerifiedDependencies } from '../../../trusted-builder/deps/dependencies.js';
import { fetchDeb as fetchWith, lockfile, MIRROR, policy, refused, workDirs } from './debian-support.js';
import { parseDebianLockfile } from '../../../trusted-builder/deps/debian-lockfile.js';
import type { DependencyPolicy } from '../../../trusted-builder/policy/promotion.js';

const work = workDirs('airlock-deps-deblock-');
const fetchDeb = (text: string, p: DependencyPolicy = policy()): Promise<VerifiedDependencies> => fetchWith(work, text, p);

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
