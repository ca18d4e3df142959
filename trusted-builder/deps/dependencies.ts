/**
 * A project's dependencies, fetched and verified by the builder itself: every npm tarball of its
 * `package-lock.json` files and every Debian package of its Debian lockfiles, from the sources the
 * SRE allows (`dependencies` of policies/promotion.yaml), each checked against its digest before it
 * is kept. The result (`VerifiedDependencies`) is what the provenance lists and what a build or job
 * container may be served (./server.ts): nothing else.
 *
 * Caps: the files of a lockfile are fetched `concurrency` at a time, each at most
 * `maxFileBytes`, all together at most `maxTotalBytes`, each within `timeoutMs`.
 * Outcomes: DependencyRefused (./errors.ts: the lockfile or what a mirror served is not
 * acceptable; the message names the package) or DependencyFailed (the network, the disk).
 */
import { mkdir } from 'node:fs/promises';
import type { DependencyPolicy } from '../policy/promotion.js';
import { DependencyRefused } from './errors.js';
import { fetchDebian, type AptFile, type VerifiedDeb, type VerifiedIndex } from './debian-fetch.js';
import { parseDebianLockfile } from './debian-lockfile.js';
import { Budget } from './http-fetch.js';
import { fetchNpmPackages, type VerifiedNpmPackage } from './npm-fetch.js';
import { parseNpmLockfile, type NpmPackage } from './npm-lockfile.js';
import { debPurl, npmPurl } from './purl.js';
import { dependencyHandlers, type DependencyHandlers, type ServeHooks } from './server.js';

/** One dependency as the provenance names it (a SLSA ResourceDescriptor). */
export interface ProvenanceDependency {
  /** A purl (`pkg:npm/is-number@7.0.0`), or the URL of a verified index. */
  uri: string;
  /** `sha512` (npm, whichever algorithm the lockfile gave) or `sha256`, hex. */
  digest: Record<string, string>;
  /** The URL it was fetched from. */
  downloadLocation: string;
}

export interface VerifiedDependencies {
  npm: readonly VerifiedNpmPackage[];
  debian: readonly VerifiedDeb[];
  /** The InRelease files the Debian packages were checked against. */
  debianIndexes: readonly VerifiedIndex[];
  /** Everything apt may be served, by absolute URL. */
  apt: readonly AptFile[];
  /** The entries of `resolvedDependencies`, in a stable order. */
  provenance: readonly ProvenanceDependency[];
  /** Request listeners serving exactly these files (./server.ts); call once per server. */
  handlers(hooks?: ServeHooks): DependencyHandlers;
}

export interface FetchLimits {
  concurrency: number;
  maxFileBytes: number;
  maxTotalBytes: number;
  timeoutMs: number;
}

export const DEFAULT_LIMITS: FetchLimits = {
  concurrency: 6,
  maxFileBytes: 256 * 1024 * 1024,
  maxTotalBytes: 4 * 1024 * 1024 * 1024,
  timeoutMs: 5 * 60_000,
};

export interface Lockfiles {
  npm: readonly { file: string; text: string }[];
  debian: readonly { file: string; text: string }[];
}

export interface FetchDependenciesOptions {
  /** The SRE's sources (absent: none may be fetched). */
  policy: DependencyPolicy | undefined;
  /** A directory of the lane's own; created. */
  dir: string;
  limits?: Partial<FetchLimits>;
  now?: () => number;
  signal?: AbortSignal;
}

/** Packages of all lockfiles together, at most (one provenance statement lists them all). */
export const MAX_NPM_TOTAL = 40_000;
export const MAX_DEB_TOTAL = 5_000;

export const NO_DEPENDENCIES: VerifiedDependencies = verified([], [], [], []);

/** What `lockfiles` name, fetched and verified into `o.dir`. */
export async function fetchDependencies(lockfiles: Lockfiles, o: FetchDependenciesOptions): Promise<VerifiedDependencies> {
  if (lockfiles.npm.length === 0 && lockfiles.debian.length === 0) return NO_DEPENDENCIES;
  const limits = { ...DEFAULT_LIMITS, ...o.limits };
  const p = o.policy;
  const names = [...lockfiles.npm, ...lockfiles.debian].map((l) => l.file).join(', ');
  if (!p) throw new DependencyRefused(`the project locks dependencies (${names}) but the promotion policy has no \`dependencies\` section: SRE sets dependencies.npmRegistry and/or debianMirrors and debianKeyring in policies/promotion.yaml`);
  if (lockfiles.npm.length > 0 && !p.npmRegistry) throw new DependencyRefused(`the project locks npm packages (${lockfiles.npm.map((l) => l.file).join(', ')}) but the promotion policy sets no dependencies.npmRegistry`);
  if (lockfiles.debian.length > 0 && (p.debianMirrors.length === 0 || !p.debianKeyring)) {
    throw new DependencyRefused(`the project locks Debian packages (${lockfiles.debian.map((l) => l.file).join(', ')}) but the promotion policy sets no dependencies.debianMirrors and debianKeyring`);
  }
  await mkdir(o.dir, { recursive: true, mode: 0o700 });
  const budget = new Budget(limits.maxTotalBytes, limits.maxTotalBytes);
  const common = { dir: o.dir, budget, concurrency: limits.concurrency, maxFileBytes: limits.maxFileBytes, timeoutMs: limits.timeoutMs, ...(o.signal ? { signal: o.signal } : {}) };
  // Every lockfile parsed before anything is fetched: a refusal costs no download.
  const npmWanted: NpmPackage[] = lockfiles.npm.flatMap((l) => parseNpmLockfile(l.text, l.file, p.npmRegistry!));
  const debLocks = lockfiles.debian.map((l) => ({ file: l.file, lock: parseDebianLockfile(l.text, l.file) }));
  // What one provenance statement can list (trusted-builder/sign/provenance.ts caps it too).
  if (npmWanted.length > MAX_NPM_TOTAL) throw new DependencyRefused(`${lockfiles.npm.map((l) => l.file).join(', ')}: ${npmWanted.length} npm packages in all, at most ${MAX_NPM_TOTAL}`);
  const debTotal = debLocks.reduce((n, d) => n + d.lock.packages.length, 0);
  if (debTotal > MAX_DEB_TOTAL) throw new DependencyRefused(`${lockfiles.debian.map((l) => l.file).join(', ')}: ${debTotal} Debian packages in all, at most ${MAX_DEB_TOTAL}`);
  const npm = npmWanted.length ? await fetchNpmPackages(npmWanted, { ...common, registry: p.npmRegistry! }) : [];
  const debian: VerifiedDeb[] = [];
  const indexes: VerifiedIndex[] = [];
  const apt: AptFile[] = [];
  for (const [i, { file, lock }] of debLocks.entries()) {
    const got = await fetchDebian(lock, file, { ...common, mirrors: p.debianMirrors, keyring: p.debianKeyring!, now: () => Math.floor((o.now ?? Date.now)() / 1000) }, `deb${i}`);
    debian.push(...got.packages);
    indexes.push(...got.indexes);
    apt.push(...got.served);
  }
  return verified(npm, debian, indexes, apt);
}

function verified(npm: VerifiedNpmPackage[], debian: VerifiedDeb[], indexes: VerifiedIndex[], apt: AptFile[]): VerifiedDependencies {
  const provenance: ProvenanceDependency[] = [
    ...npm.map((x) => ({ uri: npmPurl(x.name, x.version), digest: { [x.algorithm]: x.hex }, downloadLocation: x.url })),
    ...indexes.map((x) => ({ uri: x.url, digest: { sha256: x.sha256 }, downloadLocation: x.url })),
    ...debian.map((x) => ({ uri: debPurl(x.name, x.version, x.architecture), digest: { sha256: x.sha256 }, downloadLocation: x.url })),
  ];
  return Object.freeze({ npm, debian, debianIndexes: indexes, apt, provenance, handlers: (hooks?: ServeHooks) => dependencyHandlers(npm, apt, hooks) });
}
