/**
 * The package network of one job or one image build: the container's own loopback carries two
 * ports, and nothing else is reachable (docs/dependencies.md).
 *
 *   127.0.0.1:3142  an HTTP proxy for Debian's mirrors (apt honours `http_proxy`)
 *   127.0.0.1:4873  an npm registry (`npm_config_registry`)
 *
 * Who answers is the caller's: in the public CI the egress front (allowlist, then the caching
 * proxies); in the trusted builder the server of the files it fetched and verified itself. Both
 * give `PackageHandlers`; this module only carries the bytes.
 *
 * How, for one run:
 * 1. An HTTP server of this process per port, on a unix socket in a directory of the run's own
 *    (0700, root's): the handlers see each request and know which run it is from.
 * 2. A holder container (`--network none`, every hardening of a job, a 1-process `sleep`): the
 *    engine makes its network namespace, which has only `lo`.
 * 3. Per port, `socat` listening on 127.0.0.1 *inside that namespace* (`nsenter --net`), relaying
 *    each connection to the unix socket. socat is Debian's; the namespace has no other interface, so
 *    no route leads anywhere: not the host's ports, not other containers, not the internet. Each
 *    relay is capped in connections (`max-children`) and dies with this process (`setpriv --pdeathsig`).
 * 4. The job or build joins the holder's namespace (`--network container:<holder>`): a job
 *    container or the classic builder's RUN containers (`networkmode`, honoured for each RUN step).
 *
 * The holder carries the runner's owner label, so the runner's reaper removes it after a crash.
 * Root inside the job's user namespace has no CAP_NET_ADMIN over a namespace the host made, so it
 * cannot add an interface or a route to it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lstatSync, mkdirSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type RequestListener, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { ExecutorFailedError } from '../errors.js';
import type { Logger } from '../logging.js';
import { LABEL_CREATED, LABEL_JOB, LABEL_KIND, LABEL_OWNER } from '../runner/labels.js';

export const APT_PROXY_PORT = 3142;
export const NPM_REGISTRY_PORT = 4873;
export const APT_PROXY_URL = `http://127.0.0.1:${APT_PROXY_PORT}`;
export const NPM_REGISTRY_URL = `http://127.0.0.1:${NPM_REGISTRY_PORT}/`;
/** The holder of a package network: the bootstrap's busybox image (it has `sleep`). */
export const DEFAULT_HOLDER_IMAGE = 'airlock/base:busybox';
/** Connections one relay carries at once (each is a socat process on the host). */
export const MAX_CONNECTIONS = 32;
const RELAY_START_MS = 10_000;
const MAX_SOCKET_PATH = 107;

/**
 * The answers of the two ports, for one run. `connect` hears a CONNECT (a tunnel), which is always
 * refused; `close` is called when the run's network goes (to free what the handlers hold).
 */
export interface PackageHandlers {
  apt: RequestListener;
  npm: RequestListener;
  connect?: (req: IncomingMessage) => void;
  close?: () => void;
}

/**
 * What a job or a build is given: in its environment (jobs) or as build arguments (builds;
 * `http_proxy`, `no_proxy` and their capitals are Docker's predefined build arguments, kept out of
 * the image's history; `npm_config_registry` needs an `ARG npm_config_registry` in the Dockerfile).
 */
export function packageEnv(): Record<string, string> {
  return {
    http_proxy: APT_PROXY_URL,
    HTTP_PROXY: APT_PROXY_URL,
    no_proxy: '127.0.0.1,localhost',
    NO_PROXY: '127.0.0.1,localhost',
    npm_config_registry: NPM_REGISTRY_URL,
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
  };
}

/** What an image build gets of packageEnv(), as build arguments (the rest would only be reported unused). */
export function packageBuildArgs(): Record<string, string> {
  const env = packageEnv();
  return Object.fromEntries(['http_proxy', 'HTTP_PROXY', 'no_proxy', 'NO_PROXY', 'npm_config_registry'].map((k) => [k, env[k] ?? '']));
}

export interface PackageNetworkOptions {
  docker: Docker;
  /** A local image with `sleep` (the holder's; default airlock/base:busybox). */
  image: string;
  /** A directory for the run's sockets (created; removed on close). Short: unix socket paths are at most 107 bytes. */
  dir: string;
  owner: string;
  /** The job id or build id the holder is labelled with. */
  runId: string;
  handlers: PackageHandlers;
  logger?: Logger;
}

export interface PackageNetwork {
  /** The `NetworkMode` (or the build's `networkmode`) that joins the namespace. */
  networkMode: string;
  holderId: string;
  close(): Promise<void>;
}

/** Open the package network of one run; on any failure everything made so far is removed. */
export async function openPackageNetwork(o: PackageNetworkOptions): Promise<PackageNetwork> {
  const dir = join(o.dir, randomBytes(4).toString('hex'));
  if (join(dir, 'npm.sock').length > MAX_SOCKET_PATH) throw new ExecutorFailedError(`the package network's directory ${o.dir} is too long for unix sockets`);
  const servers: Server[] = [];
  const relays: ChildProcess[] = [];
  let holder: Docker.Container | undefined;
  const close = async (): Promise<void> => {
    for (const r of relays) if (r.exitCode === null && r.signalCode === null) r.kill('SIGKILL');
    await Promise.all(
      servers.map(
        (s) =>
          new Promise<void>((resolve) => {
            s.close(() => resolve());
            s.closeAllConnections();
          }),
      ),
    );
    if (holder) await holder.remove({ force: true }).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
    o.handlers.close?.();
  };
  try {
    ownDirectory(o.dir);
    mkdirSync(dir, { mode: 0o700 });
    const ports: [number, string, RequestListener][] = [
      [APT_PROXY_PORT, join(dir, 'apt.sock'), o.handlers.apt],
      [NPM_REGISTRY_PORT, join(dir, 'npm.sock'), o.handlers.npm],
    ];
    for (const [, path, handler] of ports) servers.push(await listenUnix(path, handler, o.handlers.connect));

    // Started once more if the engine fails to start it: seen once under heavy load ("cannot start
    // a stopped process": its runtime's init died before the command ran); a sleeping holder is safe
    // to start again, and a second failure is the engine's, said as one.
    const createHolder = (): Promise<Docker.Container> => o.docker.createContainer({
      Image: o.image,
      Cmd: ['sleep', '2147483647'],
      Entrypoint: [],
      User: '65534:65534',
      NetworkDisabled: false,
      Labels: { [LABEL_OWNER]: o.owner, [LABEL_KIND]: 'package-network', [LABEL_JOB]: o.runId, [LABEL_CREATED]: String(Date.now()) },
      HostConfig: {
        NetworkMode: 'none',
        ReadonlyRootfs: true,
        CapDrop: ['ALL'],
        SecurityOpt: ['no-new-privileges'],
        // `sleep` needs one; the rest is room for the runtime's own init while it starts the holder.
        PidsLimit: 16,
        Memory: 16 * 1024 * 1024,
        MemorySwap: 16 * 1024 * 1024,
        NanoCpus: 100_000_000,
        LogConfig: { Type: 'none', Config: {} },
        AutoRemove: false,
      },
    });
    for (let attempt = 1; ; attempt++) {
      holder = await createHolder();
      try {
        await holder.start();
        break;
      } catch (e) {
        await holder.remove({ force: true }).catch(() => undefined);
        holder = undefined;
        const why = (e as { json?: { message?: string } }).json?.message ?? (e as Error).message;
        if (attempt >= 2) throw new ExecutorFailedError(`the package network's holder container did not start: ${why}`, { cause: e });
      }
    }
    const pid = (await holder.inspect()).State.Pid;
    if (!pid) throw new ExecutorFailedError('the package network holder has no process');
    for (const [port, path] of ports) relays.push(await startRelay(pid, port, path));
    return { networkMode: `container:${holder.id}`, holderId: holder.id, close };
  } catch (e) {
    await close();
    throw e;
  }
}

/**
 * `dir` as a directory of this process's user alone (made 0700 if absent): the relays connect to
 * sockets below it by path at each connection, so nobody else may be able to rename or replace
 * anything there (a shared /tmp would let another local user answer a build's package ports).
 */
function ownDirectory(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const s = lstatSync(dir);
  const uid = process.getuid?.() ?? 0;
  if (!s.isDirectory() || s.uid !== uid || (s.mode & 0o022) !== 0) {
    throw new ExecutorFailedError(`${dir} must be a directory of uid ${uid} that nobody else can write to (it holds the package networks' sockets)`);
  }
}

function listenUnix(path: string, handler: RequestListener, onConnect: PackageHandlers['connect']): Promise<Server> {
  const server = createServer({ requestTimeout: 300_000, headersTimeout: 30_000, maxHeaderSize: 16 * 1024 }, handler);
  server.on('connect', (req: IncomingMessage, socket: Duplex) => {
    // Node has taken its own error handler off a CONNECT's socket: without this one, a client that
    // resets it while the refusal is written would be an uncaught error in this process.
    socket.on('error', () => socket.destroy());
    try {
      onConnect?.(req);
    } catch {
      // counting is best effort; the refusal still goes out
    }
    socket.end('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nairlock: tunnels (CONNECT) are refused; only the allowed package sources are reachable\n');
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve(server));
  });
}

/** socat on 127.0.0.1:`port` inside the namespace of process `pid`, relaying to `socket`; resolves once it listens. */
function startRelay(pid: number, port: number, socket: string): Promise<ChildProcess> {
  const child = spawn(
    'nsenter',
    [
      `--net=/proc/${pid}/ns/net`,
      '--',
      'setpriv',
      '--pdeathsig',
      'KILL',
      '--',
      'socat',
      '-d',
      '-d',
      // nodelay: requests and answers are small writes on kept-alive connections; Nagle would hold them back.
      `TCP4-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork,max-children=${MAX_CONNECTIONS},backlog=64,nodelay`,
      `UNIX-CONNECT:${socket}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  return new Promise((resolve, reject) => {
    let err = '';
    const timer = setTimeout(() => fail(`did not listen within ${RELAY_START_MS / 1000} s`), RELAY_START_MS);
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new ExecutorFailedError(`the package network relay on port ${port} failed: ${why}${err ? `: ${err.trim().split('\n').slice(-2).join(' ')}` : ''} (are socat and setpriv installed? npm run bootstrap)`));
    };
    child.on('error', (e) => fail(e.message));
    child.on('exit', (code, sig) => fail(`exited (${sig ?? code})`));
    child.stderr?.on('data', (d: Buffer) => {
      err = (err + d.toString('utf8')).slice(-4096);
      if (/listening on/.test(err)) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        child.removeAllListeners('error');
        child.on('error', () => undefined);
        // socat logs each connection at -d -d; keep reading so it never blocks on a full pipe.
        child.stderr?.removeAllListeners('data');
        child.stderr?.resume();
        resolve(child);
      }
    });
  });
}
