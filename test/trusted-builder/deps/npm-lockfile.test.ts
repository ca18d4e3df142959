/**
 * package-lock.json read as a hostile file (trusted-builder/deps/npm-lockfile.ts), as a table: what
 * is listed and skipped, what is refused, and that each refusal names the package and the lockfile.
 * The real fetch is in npm.net.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { DependencyRefused } from '../../../trusted-builder/deps/errors.js';
import { parseNpmLockfile, npmTarballPath } from '../../../trusted-builder/deps/npm-lockfile.js';
import { npmPurl } from '../../../trusted-builder/deps/purl.js';

const REGISTRY = 'https://registry.npmjs.org/';
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
