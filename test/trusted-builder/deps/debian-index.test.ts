/**
 * Debian's index formats, read (trusted-builder/deps/debian-index.ts): the Release part of an
 * InRelease, and a Packages file streamed in arbitrary chunks, keeping only the locked stanzas
 * and refusing a stanza whose Filename would leave the pool.
 */
import { describe, expect, it } from 'vitest';
import { PackagesScanner, parseRelease } from '../../../trusted-builder/deps/debian-index.js';

const HEX = 'a'.repeat(64);
const stanza = (name: string, version: string, filename = `pool/main/${name[0]}/${name}/${name}_${version}_amd64.deb`) =>
  `Package: ${name}\nSource: x\nVersion: ${version}\nArchitecture: amd64\nDescription: a thing\n it does things\n .\n more\nFilename: ${filename}\nSize: 42\nSHA256: ${HEX}\n\n`;

describe('debian indexes', () => {
  it('reads the Release fields and the SHA256 section', () => {
    const r = parseRelease(`Origin: Debian\nSuite: oldstable\nCodename: bookworm\nValid-Until: Sat, 12 Dec 2026 03:33:28 UTC\nAcquire-By-Hash: yes\nMD5Sum:\n ${'b'.repeat(32)} 10 main/binary-amd64/Packages.gz\nSHA256:\n ${HEX}   123 main/binary-amd64/Packages.gz\n`, 'x');
    expect(r).toMatchObject({ suite: 'oldstable', codename: 'bookworm', acquireByHash: true, validUntil: Date.parse('2026-12-12T03:33:28Z') / 1000 });
    expect(r.sha256.get('main/binary-amd64/Packages.gz')).toEqual({ sha256: HEX, size: 123 });
    expect(() => parseRelease(`SHA256:\n nothex 1 a\n`, 'x')).toThrow(/malformed SHA256 line/);
  });

  it('keeps only the locked stanzas, whatever the chunking, and the versions seen of their names', () => {
    const text = stanza('jq', '1.6-2.1+deb12u2') + stanza('curl', '7.0') + stanza('jq', '1.5') + stanza('libonig5', '6.9.8-1');
    for (const size of [1, 7, 100, text.length]) {
      const s = new PackagesScanner(new Set([PackagesScanner.key('jq', '1.6-2.1+deb12u2', 'amd64'), PackagesScanner.key('libonig5', '6.9.8-1', 'amd64')]), new Set(['jq', 'libonig5']), 'x');
      for (let i = 0; i < text.length; i += size) s.push(text.slice(i, i + size));
      s.end();
      expect([...s.found.keys()]).toEqual(['jq 1.6-2.1+deb12u2 amd64', 'libonig5 6.9.8-1 amd64']);
      expect(s.found.get('jq 1.6-2.1+deb12u2 amd64')).toEqual({ package: 'jq', version: '1.6-2.1+deb12u2', architecture: 'amd64', filename: 'pool/main/j/jq/jq_1.6-2.1+deb12u2_amd64.deb', size: 42, sha256: HEX });
      expect([...s.versionsSeen.get('jq')!]).toEqual(['1.6-2.1+deb12u2 (amd64)', '1.5 (amd64)']);
    }
  });

  it.each(['../../etc/passwd', 'pool/../../../etc/passwd.deb', '/etc/x.deb', 'pool/main/j/jq/jq.sh', 'pool/main/j/jq/./x.deb', 'http://evil.example/x.deb'])('refuses a Filename %j that would leave the pool', (filename) => {
    const s = new PackagesScanner(new Set(['jq 1.0 amd64']), new Set(['jq']), 'mirror');
    expect(() => {
      s.push(stanza('jq', '1.0', filename));
      s.end();
    }).toThrow(/jq 1\.0 \(amd64\): the index names an unacceptable file/);
  });
});
