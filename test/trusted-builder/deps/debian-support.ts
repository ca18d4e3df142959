/**
 * What the Debian dependency tests share: a lockfile of jq and the two libraries it needs (as in
 * bookworm's main/binary-amd64/Packages when this was written; a point release may move jq), the
 * builder's fetch of one into a directory of its own, and the refusal it ends with.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect } from 'vitest';
import { fetchDependencies, type VerifiedDependencies } from '../../../trusted-builder/deps/dependencies.js';
import { DependencyRefused } from '../../../trusted-builder/deps/errors.js';
import type { DependencyPolicy } from '../../../trusted-builder/policy/promotion.js';

export const MIRROR = 'http://deb.debian.org/debian';
export const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
export const JQ = '1.6-2.1+deb12u2';
export const ONIG = '6.9.8-1';

/** A fresh work directory per call, all removed after the file's tests (call at the top level). */
export function workDirs(prefix: string): () => string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  return () => join(dir, `w${++n}`);
}

export const lockfile = (o: { uri?: string; packages?: { name: string; version: string; architecture?: string }[] } = {}): string =>
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

export const policy = (mirrors: string[] = [MIRROR]): DependencyPolicy => ({ debianMirrors: mirrors, debianKeyring: KEYRING });

export const fetchDeb = (work: () => string, text: string, p: DependencyPolicy = policy()): Promise<VerifiedDependencies> =>
  fetchDependencies({ npm: [], debian: [{ file: 'debian.lock.yaml', text }] }, { policy: p, dir: work() });

/** The message of the DependencyRefused `p` ends with (anything else fails the test). */
export const refused = async (p: Promise<unknown>): Promise<string> => {
  const e = await p.then(
    () => new Error('not refused'),
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(DependencyRefused);
  return (e as Error).message;
};
