/**
 * npm tarballs fetched from the registry the SRE configures, at the URL derived from its name and
 * version (./npm-lockfile.ts), each checked against its lockfile integrity before it is kept.
 * Duplicates (the same name and version at several places of a tree, or in several lockfiles) are
 * fetched once; the same name and version with different digests is a refusal.
 */
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { DependencyRefused } from './errors.js';
import { download, mapLimit, type Budget } from './http-fetch.js';
import { normaliseRegistry, npmTarballPath, type NpmPackage } from './npm-lockfile.js';
import type { SriAlgorithm } from './sri.js';

export interface VerifiedNpmPackage {
  name: string;
  version: string;
  /** The lockfile's integrity string (what `npm ci` checks again). */
  integrity: string;
  /** The checked digest. */
  algorithm: SriAlgorithm;
  hex: string;
  /** The verified tarball on disk. */
  file: string;
  /** Where it was fetched from. */
  url: string;
  /** Its path under a registry root (`is-number/-/is-number-7.0.0.tgz`). */
  tarballPath: string;
}

export interface NpmFetchOptions {
  registry: string;
  /** A directory of the lane's own (the tarballs are written here). */
  dir: string;
  budget: Budget;
  concurrency: number;
  maxFileBytes: number;
  timeoutMs: number;
  signal?: AbortSignal;
}

/** One entry per name and version; the same one twice with other digests is a refusal. */
export function dedupeNpm(packages: readonly NpmPackage[]): NpmPackage[] {
  const byId = new Map<string, NpmPackage>();
  for (const p of packages) {
    const id = `${p.name}@${p.version}`;
    const had = byId.get(id);
    if (!had) byId.set(id, p);
    else if (had.sri.algorithm === p.sri.algorithm && !had.sri.hex.some((h) => p.sri.hex.includes(h))) {
      throw new DependencyRefused(`${id}: locked with different digests (${had.lockfile}: ${had.integrity.slice(0, 40)}…, ${p.lockfile}: ${p.integrity.slice(0, 40)}…)`);
    } else if (STRENGTH[p.sri.algorithm] > STRENGTH[had.sri.algorithm]) byId.set(id, p);
  }
  return [...byId.values()];
}
const STRENGTH: Readonly<Record<SriAlgorithm, number>> = { sha256: 1, sha384: 2, sha512: 3 };

export async function fetchNpmPackages(packages: readonly NpmPackage[], o: NpmFetchOptions): Promise<VerifiedNpmPackage[]> {
  const registry = normaliseRegistry(o.registry);
  return mapLimit(dedupeNpm(packages), o.concurrency, async (p, i) => {
    const id = `${p.name}@${p.version}`;
    const tarballPath = npmTarballPath(p.name, p.version);
    const url = `${registry}${tarballPath}`;
    const part = join(o.dir, `${i}.part`);
    const got = await download(url, part, { maxBytes: o.maxFileBytes, timeoutMs: o.timeoutMs, budget: o.budget, algorithms: [p.sri.algorithm], what: `${id} (${p.lockfile})`, ...(o.signal ? { signal: o.signal } : {}) });
    const hex = got.digests[p.sri.algorithm]!;
    if (!p.sri.hex.includes(hex)) {
      await rm(part, { force: true });
      throw new DependencyRefused(
        `${id} (${p.lockfile}): integrity mismatch: expected ${p.sri.algorithm}-${Buffer.from(p.sri.hex[0]!, 'hex').toString('base64')}, got ${p.sri.algorithm}-${Buffer.from(hex, 'hex').toString('base64')} from ${url}`,
      );
    }
    const file = join(o.dir, `${i}.tgz`);
    await rename(part, file);
    return { name: p.name, version: p.version, integrity: p.integrity, algorithm: p.sri.algorithm, hex, file, url, tarballPath };
  });
}
