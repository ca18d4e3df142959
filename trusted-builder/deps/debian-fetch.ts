/**
 * Debian packages fetched as apt would, and checked further: for each source of a Debian lockfile
 * (its `uri` one of the mirrors the SRE allows), the suite's InRelease verified with gpgv against
 * the SRE's keyring; the Packages index of each component and architecture fetched (by hash when
 * the InRelease says Acquire-By-Hash) and checked against the SHA256 and size the signed InRelease
 * gives; each locked name, version and architecture found in it; its `Filename` fetched and checked
 * against the index's size and SHA256. Kept for serving apt later (./server.ts): the InRelease
 * bytes, the verified index files (under their paths and by-hash paths), the .debs.
 *
 * The index is read from `Packages.gz` (gzip is built into Node); `Packages.xz`, when the InRelease
 * lists it, is fetched and hash-checked too, only to be served (apt asks for .xz first).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createGunzip } from 'node:zlib';
import { DependencyFailed, DependencyRefused, quote } from './errors.js';
import { parseRelease, PackagesScanner, type PackageStanza, type ReleaseFile } from './debian-index.js';
import type { DebianLockfile, DebianSource } from './debian-lockfile.js';
import { verifyInRelease } from './gpgv.js';
import { download, fetchBytes, mapLimit, type Budget } from './http-fetch.js';

export const INRELEASE_MAX_BYTES = 16 * 1024 * 1024;
export const PACKAGES_MAX_BYTES = 128 * 1024 * 1024;
/** Decompressed: main/binary-amd64 is about 50 MB. */
export const PACKAGES_MAX_UNCOMPRESSED = 1024 * 1024 * 1024;

export interface VerifiedDeb {
  name: string;
  version: string;
  architecture: string;
  sha256: string;
  size: number;
  file: string;
  /** Where it was fetched from (`<mirror>/<Filename>`). */
  url: string;
}

/** A file apt may ask for, by its absolute URL (as apt asks a proxy), and where it is on disk. */
export interface AptFile {
  url: string;
  file: string;
}

/** A verified InRelease: which suite of which mirror, and its digest (for the provenance). */
export interface VerifiedIndex {
  url: string;
  sha256: string;
}

export interface VerifiedDebian {
  packages: VerifiedDeb[];
  indexes: VerifiedIndex[];
  served: AptFile[];
}

export interface DebianFetchOptions {
  /** The mirrors the SRE allows (`debianMirrors`). */
  mirrors: readonly string[];
  /** The keyring gpgv checks InRelease files against (`debianKeyring`). */
  keyring: string;
  dir: string;
  budget: Budget;
  concurrency: number;
  maxFileBytes: number;
  timeoutMs: number;
  /** Seconds since the epoch, for Valid-Until. */
  now: () => number;
  signal?: AbortSignal;
}

/** A mirror URL as apt will ask for it through a proxy (host lowercased, default port dropped), without a trailing slash. */
const trimSlash = (u: string): string => new URL(u).href.replace(/\/+$/, '');

export async function fetchDebian(lock: DebianLockfile, file: string, o: DebianFetchOptions, serial: string): Promise<VerifiedDebian> {
  const allowed = new Set(o.mirrors.map(trimSlash));
  for (const s of lock.sources) {
    if (!allowed.has(trimSlash(s.uri))) {
      throw new DependencyRefused(`${file}: source ${quote(s.uri)} is not a mirror the builder may fetch from (debianMirrors of the promotion policy: ${[...allowed].join(', ') || 'none'})`);
    }
  }
  const served: AptFile[] = [];
  const indexes: VerifiedIndex[] = [];
  const wanted = new Set(lock.packages.map((p) => PackagesScanner.key(p.name, p.version, p.architecture)));
  const wantedNames = new Set(lock.packages.map((p) => p.name));
  const found = new Map<string, { stanza: PackageStanza; uri: string }>();
  const seen = new Map<string, Set<string>>();
  let n = 0;
  const common = { timeoutMs: o.timeoutMs, budget: o.budget, ...(o.signal ? { signal: o.signal } : {}) };
  for (const s of lock.sources) {
    const uri = trimSlash(s.uri);
    const base = `${uri}/dists/${s.suite}`;
    const what = `${file}: ${uri} ${s.suite}`;
    const inReleaseUrl = `${base}/InRelease`;
    const bytes = await fetchBytes(inReleaseUrl, { ...common, maxBytes: INRELEASE_MAX_BYTES, what });
    const prefix = join(o.dir, `${serial}-${n++}`);
    const signed = await verifyInRelease(bytes, o.keyring, prefix, what);
    const release = parseRelease(signed, what);
    checkRelease(release, s, what, o.now());
    const inReleaseFile = `${prefix}.InRelease`;
    await writeOnce(inReleaseFile, bytes);
    served.push({ url: inReleaseUrl, file: inReleaseFile });
    indexes.push({ url: inReleaseUrl, sha256: sha256(bytes) });
    for (const component of s.components) {
      for (const arch of s.architectures) {
        const rel = `${component}/binary-${arch}/Packages`;
        const gz = release.sha256.get(`${rel}.gz`);
        if (!gz) throw new DependencyRefused(`${what}: the signed InRelease lists no ${rel}.gz`);
        const scanner = new PackagesScanner(wanted, wantedNames, `${what} ${rel}`);
        for (const ext of ['.gz', '.xz'] as const) {
          const entry = release.sha256.get(`${rel}${ext}`);
          if (!entry) continue;
          const byHash = `${base}/${component}/binary-${arch}/by-hash/SHA256/${entry.sha256}`;
          const byPath = `${base}/${rel}${ext}`;
          const dest = `${prefix}-${component}-${arch}-Packages${ext}`;
          const got = await download(release.acquireByHash ? byHash : byPath, `${dest}.part`, { ...common, maxBytes: Math.min(entry.size, PACKAGES_MAX_BYTES), algorithms: ['sha256'], what: `${what} ${rel}${ext}` });
          if (got.digests.sha256 !== entry.sha256 || got.bytes !== entry.size) {
            await rm(`${dest}.part`, { force: true });
            throw new DependencyRefused(`${what}: ${rel}${ext} does not match the signed InRelease (expected sha256 ${entry.sha256}, ${entry.size} bytes; got ${got.digests.sha256}, ${got.bytes} bytes)`);
          }
          await rename(`${dest}.part`, dest);
          served.push({ url: byPath, file: dest }, { url: byHash, file: dest });
          if (ext === '.gz') await scanGzip(dest, scanner, `${what} ${rel}.gz`);
        }
        scanner.end();
        for (const [key, stanza] of scanner.found) if (!found.has(key)) found.set(key, { stanza, uri });
        for (const [name, versions] of scanner.versionsSeen) {
          const all = seen.get(name) ?? new Set<string>();
          for (const v of versions) all.add(v);
          seen.set(name, all);
        }
      }
    }
  }
  const debs: { stanza: PackageStanza; uri: string }[] = [];
  for (const p of lock.packages) {
    const hit = found.get(PackagesScanner.key(p.name, p.version, p.architecture));
    if (!hit) {
      const there = [...(seen.get(p.name) ?? [])];
      throw new DependencyRefused(
        `${file}: ${p.name} ${p.version} (${p.architecture}) is not in the signed index of ${lock.sources.map((s) => `${trimSlash(s.uri)} ${s.suite} [${s.components.join(' ')}]`).join(', ')}` +
          (there.length ? ` (there: ${there.slice(0, 10).join(', ')})` : ' (no such package there)'),
      );
    }
    debs.push(hit);
  }
  const packages = await mapLimit(debs, o.concurrency, async ({ stanza: st, uri }, i) => {
    const url = `${uri}/${st.filename}`;
    const what = `${file}: ${st.package} ${st.version} (${st.architecture})`;
    if (st.size > o.maxFileBytes) throw new DependencyRefused(`${what}: ${st.size} bytes, more than ${o.maxFileBytes}`);
    const dest = join(o.dir, `${serial}-deb-${i}.deb`);
    const got = await download(url, `${dest}.part`, { ...common, maxBytes: st.size, algorithms: ['sha256'], what });
    if (got.digests.sha256 !== st.sha256 || got.bytes !== st.size) {
      await rm(`${dest}.part`, { force: true });
      throw new DependencyRefused(`${what}: ${url} does not match the signed index (expected sha256 ${st.sha256}, ${st.size} bytes; got ${got.digests.sha256}, ${got.bytes} bytes)`);
    }
    await rename(`${dest}.part`, dest);
    return { name: st.package, version: st.version, architecture: st.architecture, sha256: st.sha256, size: st.size, file: dest, url };
  });
  for (const d of packages) served.push({ url: d.url, file: d.file });
  return { packages, indexes, served };
}

/** The InRelease is the suite asked for, and still valid. */
function checkRelease(r: ReleaseFile, s: DebianSource, what: string, nowSeconds: number): void {
  if (r.codename !== s.suite && r.suite !== s.suite) {
    throw new DependencyRefused(`${what}: the signed InRelease is for ${quote(r.codename ?? r.suite ?? '(no suite)')}, not ${quote(s.suite)}`);
  }
  if (r.validUntil !== undefined && r.validUntil < nowSeconds) {
    throw new DependencyRefused(`${what}: the signed InRelease expired at ${new Date(r.validUntil * 1000).toISOString()} (Valid-Until): an old copy is being replayed, or the mirror is stale`);
  }
}

async function scanGzip(file: string, scanner: PackagesScanner, what: string): Promise<void> {
  let total = 0;
  const gunzip = createGunzip();
  const input = createReadStream(file);
  try {
    await new Promise<void>((resolve, reject) => {
      input.on('error', reject);
      gunzip.on('error', (e) => reject(e instanceof DependencyRefused ? e : new DependencyRefused(`${what}: not a gzip file (${e.message})`)));
      gunzip.setEncoding('utf8');
      gunzip.on('data', (chunk: string) => {
        total += chunk.length;
        try {
          if (total > PACKAGES_MAX_UNCOMPRESSED) throw new DependencyRefused(`${what}: more than ${PACKAGES_MAX_UNCOMPRESSED} bytes decompressed`);
          scanner.push(chunk);
        } catch (e) {
          input.destroy();
          gunzip.destroy();
          reject(e);
        }
      });
      gunzip.on('end', resolve);
      input.pipe(gunzip);
    });
  } catch (e) {
    if (e instanceof DependencyRefused) throw e;
    throw new DependencyFailed(`${what}: ${(e as Error).message}`);
  }
}

async function writeOnce(path: string, bytes: Buffer): Promise<void> {
  await writeFile(path, bytes, { flag: 'wx', mode: 0o600 });
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}
