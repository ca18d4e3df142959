/**
 * The verified dependency files, served to a build or job container on its own loopback, and
 * nothing else: two `http.RequestListener`s.
 *
 *   npm   an npm registry root (`npm_config_registry=http://127.0.0.1:4873/`). `npm ci` with a
 *         lockfile that has `integrity` but no `resolved` first asks for each package's packument
 *         (`GET /is-number`, `GET /@types%2fms`, both with the abbreviated and the full Accept
 *         header); each is synthesised here from the verified set: one version per verified
 *         tarball, its `dist.integrity` the lockfile's, its `dist.tarball` on this server. Then
 *         the tarballs: `GET /<name>/-/<basename>-<version>.tgz`.
 *   apt   an HTTP proxy (`Acquire::http::Proxy "http://127.0.0.1:3142"`): apt asks in absolute
 *         form (`GET http://deb.debian.org/debian/dists/bookworm/InRelease`), for the InRelease,
 *         the Packages indexes by path or by hash, and the pool files. Exactly the URLs fetched
 *         and verified are served (percent-escapes decoded: apt writes `+` as `%2b`).
 *
 * Everything else is 404 with a short text body. Only GET and HEAD. Every request is reported to
 * `onRequest` (what was asked, and whether it was served). Lookups are exact matches in a table
 * built from the verified set: no path from a request ever reaches the file system.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { AptFile } from './debian-fetch.js';
import type { VerifiedNpmPackage } from './npm-fetch.js';

export interface DependencyRequest {
  kind: 'npm' | 'apt';
  /** The request target as sent (cut to 2000 characters). */
  url: string;
  served: boolean;
}

export interface ServeHooks {
  onRequest?: (r: DependencyRequest) => void;
  /**
   * The registry root written into synthesised packuments' `dist.tarball` when the request's Host
   * header is not a plain `host[:port]` (default `http://127.0.0.1:4873/`).
   */
  npmBaseUrl?: string;
}

export interface DependencyHandlers {
  npm: RequestListener;
  apt: RequestListener;
}

const DEFAULT_NPM_BASE = 'http://127.0.0.1:4873/';
const HOST = /^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$/;

export function dependencyHandlers(npm: readonly VerifiedNpmPackage[], apt: readonly AptFile[], hooks: ServeHooks = {}): DependencyHandlers {
  const tarballs = new Map<string, VerifiedNpmPackage>(npm.map((p) => [`/${p.tarballPath}`, p]));
  const byName = new Map<string, VerifiedNpmPackage[]>();
  for (const p of npm) byName.set(p.name, [...(byName.get(p.name) ?? []), p]);
  const aptFiles = new Map<string, string>(apt.map((a) => [a.url, a.file]));
  const report = (kind: 'npm' | 'apt', req: IncomingMessage, served: boolean): void => hooks.onRequest?.({ kind, url: (req.url ?? '').slice(0, 2000), served });

  const npmHandler: RequestListener = (req, res) => {
    const path = methodAndPath(req, res);
    if (path === undefined) return report('npm', req, false);
    const tgz = tarballs.get(path);
    if (tgz) {
      report('npm', req, true);
      return sendFile(req, res, tgz.file, 'application/octet-stream');
    }
    const versions = byName.get(path.slice(1));
    if (versions) {
      report('npm', req, true);
      const base = baseUrl(req, hooks.npmBaseUrl);
      const body = Buffer.from(JSON.stringify(packument(path.slice(1), versions, base)));
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
      return void res.end(req.method === 'HEAD' ? undefined : body);
    }
    report('npm', req, false);
    notFound(res);
  };

  const aptHandler: RequestListener = (req, res) => {
    const raw = req.url ?? '';
    let key: string | undefined;
    if (req.method === 'GET' || req.method === 'HEAD') {
      try {
        // Absolute form (a proxy request), or origin form with the Host header.
        const u = raw.startsWith('/') ? new URL(`http://${hostOf(req) ?? 'invalid.invalid'}${raw}`) : new URL(raw);
        if (u.protocol === 'http:' && !u.username && !u.password) key = `${u.protocol}//${u.host}${decodeURIComponent(u.pathname)}`;
      } catch {
        key = undefined;
      }
    }
    const file = key === undefined ? undefined : aptFiles.get(key);
    report('apt', req, file !== undefined);
    if (file === undefined) return notFound(res);
    sendFile(req, res, file, key!.endsWith('.deb') ? 'application/vnd.debian.binary-package' : 'application/octet-stream');
  };

  return { npm: npmHandler, apt: aptHandler };
}

/** A minimal packument: what npm ci reads of one (name, versions with dist, dist-tags). */
function packument(name: string, versions: readonly VerifiedNpmPackage[], base: string): unknown {
  const sorted = [...versions];
  return {
    name,
    'dist-tags': { latest: sorted[sorted.length - 1]!.version },
    versions: Object.fromEntries(sorted.map((p) => [p.version, { name, version: p.version, dist: { integrity: p.integrity, tarball: `${base}${p.tarballPath}` } }])),
  };
}

function hostOf(req: IncomingMessage): string | undefined {
  const h = req.headers.host;
  return typeof h === 'string' && HOST.test(h) ? h : undefined;
}

function baseUrl(req: IncomingMessage, fallback: string | undefined): string {
  const h = hostOf(req);
  return h ? `http://${h}/` : (fallback ?? DEFAULT_NPM_BASE);
}

/** The decoded path of a GET or HEAD in origin form; otherwise answers 404 (405 for a method) and gives undefined. */
function methodAndPath(req: IncomingMessage, res: ServerResponse): string | undefined {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { 'content-type': 'text/plain', allow: 'GET, HEAD' });
    res.end('only GET and HEAD\n');
    return undefined;
  }
  const raw = req.url ?? '';
  if (!raw.startsWith('/') || raw.length > 4096) {
    notFound(res);
    return undefined;
  }
  const q = raw.indexOf('?');
  try {
    return decodeURIComponent(q === -1 ? raw : raw.slice(0, q));
  } catch {
    notFound(res);
    return undefined;
  }
}

function notFound(res: ServerResponse): void {
  const body = 'not a verified dependency of this build\n';
  res.writeHead(404, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function sendFile(req: IncomingMessage, res: ServerResponse, file: string, type: string): void {
  stat(file).then(
    ({ size }) => {
      res.writeHead(200, { 'content-type': type, 'content-length': size });
      if (req.method === 'HEAD') return void res.end();
      const s = createReadStream(file);
      s.once('error', () => res.destroy());
      s.pipe(res);
    },
    () => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('cannot read a verified file\n');
    },
  );
}
