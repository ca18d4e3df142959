/**
 * A real image registry for tests: Debian's `docker-registry serve` in a child process on
 * 127.0.0.1, storing blobs in a fresh temp directory, with htpasswd auth for one generated user
 * and any `others` (or none). Tests never use the demo's registry on :5000 that the bootstrap runs.
 *
 * `port` omitted: the registry binds port 0 and we read the port it got from its "listening on"
 * log line, so two test files never race for a port. `port` given (e.g. to start a registry late,
 * where a client already points): that exact port. `startRegistry` resolves once `GET /v2/`
 * answers (401 with auth, 200 without). `stop()` kills the process by its pid, waits for it to
 * exit and removes the directory; a test process that exits first kills what it started.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { htpasswdLine, randomPassword } from '../../scripts/registry-htpasswd.js';

export interface TestRegistry {
  /** `127.0.0.1:PORT`: the registry host as an image reference spells it (plain HTTP). */
  url: string;
  port: number;
  username: string;
  password: string;
  /** The `others`' logins, by user name. */
  logins: Readonly<Record<string, { username: string; password: string }>>;
  /** The registry's process id. */
  pid: number;
  stop(): Promise<void>;
}

export interface StartRegistryOptions {
  /** htpasswd auth (default true). */
  auth?: boolean;
  port?: number;
  username?: string;
  password?: string;
  /** More htpasswd users, each with a generated password (as a registry with several logins: a consumer's, a team's). */
  others?: readonly string[];
}

const STARTUP_TIMEOUT_MS = 15_000;
/** bcrypt cost for test registries: the registry checks it on every request; tests need no strength. */
const TEST_BCRYPT_ROUNDS = 4;

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** A port that was free a moment ago (for a registry that must come up later at a known address). */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

export async function startRegistry(options: StartRegistryOptions = {}): Promise<TestRegistry> {
  const auth = options.auth ?? true;
  const username = options.username ?? 'airlock-test';
  const password = options.password ?? randomPassword();
  const dir = await mkdtemp(join(tmpdir(), 'airlock-registry-'));
  const logins = Object.fromEntries((options.others ?? []).map((u) => [u, { username: u, password: randomPassword() }]));
  const htpasswd = [htpasswdLine(username, password, TEST_BCRYPT_ROUNDS), ...Object.values(logins).map((l) => htpasswdLine(l.username, l.password, TEST_BCRYPT_ROUNDS))].join('');
  await writeFile(join(dir, 'htpasswd'), htpasswd, { mode: 0o600 });
  const config = [
    'version: 0.1',
    'log:',
    '  level: info',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${join(dir, 'data')}`,
    'http:',
    `  addr: 127.0.0.1:${options.port ?? 0}`,
    '  secret: airlock-test-only',
    ...(auth ? ['auth:', '  htpasswd:', '    realm: airlock-test', `    path: ${join(dir, 'htpasswd')}`] : []),
  ].join('\n');
  await writeFile(join(dir, 'config.yml'), `${config}\n`);

  const child = spawn('/usr/bin/docker-registry', ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(child);
  const exited = once(child, 'exit').then(() => live.delete(child));
  let log = '';
  let port: number | undefined;
  child.stderr!.on('data', (d: Buffer) => {
    log = (log + d.toString()).slice(-8000);
    port ??= Number(/msg="listening on 127\.0\.0\.1:(\d+)"/.exec(log)?.[1]) || undefined;
  });

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid!, 'SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    })());

  try {
    const deadline = Date.now() + STARTUP_TIMEOUT_MS;
    const want = auth ? 401 : 200;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`docker-registry exited during startup:\n${log}`);
      if (Date.now() > deadline) throw new Error(`docker-registry did not answer within ${STARTUP_TIMEOUT_MS} ms:\n${log}`);
      if (port !== undefined) {
        const status = await fetch(`http://127.0.0.1:${port}/v2/`, { signal: AbortSignal.timeout(2_000) }).then(
          (r) => r.status,
          () => 0,
        );
        if (status === want) break;
        if (status !== 0) throw new Error(`docker-registry answered GET /v2/ with ${status}, want ${want}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    return { url: `127.0.0.1:${port!}`, port: port!, username, password, logins, pid: child.pid!, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
