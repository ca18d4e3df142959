/**
 * npm `package-lock.json` (lockfileVersion 2 and 3), read as a hostile file: the list of package
 * tarballs to fetch, each with the digest it must have. Pure: no network, no disk.
 *
 * From `packages`: the root (`""`), `link: true` entries (a workspace or `file:` directory),
 * `inBundle` entries (they come inside their parent's tarball) and keys that are not under a
 * `node_modules/` (workspace folders: local source, nothing to fetch) are skipped. Everything else
 * must come from the registry: `resolved`, when present (this machine's npm writes none:
 * `omit-lockfile-registry-resolved`), must be exactly the tarball URL the registry has for that
 * name and version (under the configured registry or npm's default one, which npm itself rewrites
 * to the configured registry); a git, file or other-host source is refused, as is an entry with no
 * integrity or with SHA-1 only. Names and versions are checked against npm's rules before they go
 * into a URL or a path. The URL fetched is always derived from the SRE's registry, name and
 * version, never taken from the file.
 */
import { DependencyRefused, quote } from './errors.js';
import { parseSri, type Sri } from './sri.js';

/** The largest lockfile read (the stage reads it capped at this). */
export const NPM_LOCKFILE_MAX_BYTES = 32 * 1024 * 1024;
/** Packages in one lockfile at most. */
export const NPM_MAX_PACKAGES = 20_000;
/** npm's own default registry: a `resolved` under it is accepted (npm rewrites it to the configured one). */
export const NPM_DEFAULT_REGISTRY = 'https://registry.npmjs.org/';

export interface NpmPackage {
  name: string;
  version: string;
  /** The integrity string as the lockfile has it. */
  integrity: string;
  /** Its strongest digest (what is checked). */
  sri: Sri;
  /** The lockfile it came from (for messages). */
  lockfile: string;
}

/** npm's rules for a package name (validate-npm-package-name), old packages' capitals allowed. */
const NAME = /^(?:@[a-z0-9~-][a-z0-9._~-]*\/)?[a-zA-Z0-9~-][a-zA-Z0-9._~-]*$/;
/** SemVer 2.0.0, as the registry publishes versions. */
const VERSION = /^(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)(?:-(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*)?(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?$/;

export function npmNameProblem(name: string): string | undefined {
  if (name.length === 0 || name.length > 214) return 'a package name is 1 to 214 characters';
  if (!NAME.test(name)) return 'not a valid npm package name';
  const base = name.startsWith('@') ? name.slice(name.indexOf('/') + 1) : name;
  if (base === '.' || base === '..' || base.startsWith('.') || base.startsWith('_')) return 'a package name cannot start with . or _';
  return undefined;
}

export function npmVersionProblem(version: string): string | undefined {
  if (version.length > 256 || !VERSION.test(version)) return 'not a SemVer version as the registry publishes them';
  return undefined;
}

/** `<registry>/<name>/-/<basename>-<version>.tgz` (scoped: `@s/n/-/n-1.0.0.tgz`); name and version already checked. */
export function npmTarballPath(name: string, version: string): string {
  const base = name.startsWith('@') ? name.slice(name.indexOf('/') + 1) : name;
  return `${name}/-/${base}-${version}.tgz`;
}

/** A registry URL as the policy gives it, with exactly one trailing slash. */
export function normaliseRegistry(url: string): string {
  return url.endsWith('/') ? url : `${url}/`;
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
const isObject = (v: unknown): v is Record<string, Json> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Every package `text` (the lockfile at `file`) asks to fetch. Throws DependencyRefused naming the
 * package and the file on the first entry that is not acceptable.
 */
export function parseNpmLockfile(text: string, file: string, registry: string): NpmPackage[] {
  const refuse = (msg: string): never => {
    throw new DependencyRefused(`${file}: ${msg}`);
  };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return refuse(`not JSON (${(e as Error).message.slice(0, 200)})`);
  }
  if (!isObject(doc)) return refuse('not a package-lock.json (not a JSON object)');
  const v = doc.lockfileVersion;
  if (v === 1) return refuse('lockfileVersion 1 is not supported (it has no per-package integrity in `packages`); run `npm install --package-lock-only` with npm 7 or later to write version 3');
  if (v !== 2 && v !== 3) return refuse(`lockfileVersion ${quote(v)}: only 2 and 3 are supported`);
  const packages = doc.packages;
  if (!isObject(packages)) return refuse('no `packages` object');
  const keys = Object.keys(packages);
  if (keys.length > NPM_MAX_PACKAGES + 1) return refuse(`${keys.length} entries in packages: at most ${NPM_MAX_PACKAGES}`);
  const reg = normaliseRegistry(registry);
  const out: NpmPackage[] = [];
  for (const key of keys) {
    if (key === '') continue; // the root project
    const e = packages[key];
    const where = `package ${quote(key)}`;
    if (!isObject(e)) return refuse(`${where}: not an object`);
    if (e.link === true) continue; // a symlink to a folder of the project
    if (e.inBundle === true) continue; // inside its parent's tarball
    const at = key.lastIndexOf('node_modules/');
    if (at === -1) continue; // a workspace folder: local source
    const name = typeof e.name === 'string' ? e.name : key.slice(at + 'node_modules/'.length);
    const nameProblem = npmNameProblem(name);
    if (nameProblem) return refuse(`${where}: name ${quote(name)}: ${nameProblem}`);
    const version = e.version;
    const resolved = e.resolved;
    if (resolved !== undefined && typeof resolved !== 'string') return refuse(`${where} (${name}): resolved is not a string`);
    if (typeof resolved === 'string' && !resolved.startsWith('https://') && !resolved.startsWith('http://')) {
      const kind = /^git(\+[a-z]+)?:|^github:|^gitlab:|^bitbucket:/.test(resolved) ? 'a git dependency' : resolved.startsWith('file:') ? 'a local file' : 'not from a registry';
      return refuse(`${where} (${name}): ${kind} (resolved ${quote(resolved)}); only registry packages with an integrity are fetched`);
    }
    if (typeof version !== 'string') return refuse(`${where} (${name}): no version`);
    const versionProblem = npmVersionProblem(version);
    if (versionProblem) return refuse(`${where} (${name}): version ${quote(version)}: ${versionProblem}`);
    const id = `${name}@${version}`;
    if (typeof resolved === 'string') {
      const path = npmTarballPath(name, version);
      if (resolved !== `${reg}${path}` && resolved !== `${NPM_DEFAULT_REGISTRY}${path}`) {
        return refuse(`${id}: resolved ${quote(resolved)} is not the registry's tarball for it (${reg}${path}): a tarball from elsewhere is not fetched`);
      }
    }
    const integrity = e.integrity;
    if (integrity === undefined) return refuse(`${id}: no integrity: the builder fetches only what it can verify`);
    if (typeof integrity !== 'string') return refuse(`${id}: integrity is not a string`);
    const sri = parseSri(integrity);
    if (!sri.ok) return refuse(`${id}: ${sri.problem}`);
    out.push({ name, version, integrity, sri: sri.sri, lockfile: file });
  }
  return out;
}
