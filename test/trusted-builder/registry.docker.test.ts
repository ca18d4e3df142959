/**
 * Pushing to a real registry (Debian's docker-registry, one per test, on its own port and temp
 * dir) from the real engine with the real skopeo. Outages are real too: a stopped registry, a
 * server that answers 503, a proxy that fails uploads, a registry that comes up during the retries.
 * Only the sleep between attempts is injected, so the retry tests take milliseconds.
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { classifySkopeoFailure, manifestDigest, pushImage, type PushOptions, type RegistryCredentials } from '../../trusted-builder/publish/registry.js';
import { BUSYBOX, tempDir } from '../support/docker.js';
import { freePort, startRegistry, type TestRegistry } from '../support/registry.js';

const DIGEST = /^sha256:[0-9a-f]{64}$/;

let reg: TestRegistry;
let imageId: string;
let creds: RegistryCredentials;
const dirs: string[] = [];
function scratch(prefix: string): string {
  const dir = tempDir(prefix);
  dirs.push(dir);
  return dir;
}

beforeAll(async () => {
  imageId = (await createDocker().getImage(BUSYBOX).inspect()).Id;
  reg = await startRegistry();
  creds = { username: reg.username, password: reg.password };
});
afterAll(async () => {
  await reg?.stop();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** An injected sleep that records the delays it was asked for and waits for none. */
function recordingSleep(onSleep?: (n: number) => Promise<void>): { sleeps: number[]; sleep: (ms: number) => Promise<void> } {
  const sleeps: number[] = [];
  return { sleeps, sleep: async (ms) => { sleeps.push(ms); await onSleep?.(sleeps.length); } };
}

async function listen(server: Server): Promise<string> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `127.0.0.1:${(server.address() as { port: number }).port}`;
}

/** skopeo inspect's view of the digest, with its own auth file (test-only). */
function skopeoInspectDigest(reference: string, c: RegistryCredentials): string {
  const dir = scratch('airlock-inspect-');
  const registry = reference.split('/')[0]!;
  writeFileSync(join(dir, 'auth.json'), JSON.stringify({ auths: { [registry]: { auth: Buffer.from(`${c.username}:${c.password}`).toString('base64') } } }), { mode: 0o600 });
  const out = execFileSync('skopeo', ['inspect', '--tls-verify=false', '--authfile', join(dir, 'auth.json'), `docker://${reference}`], { encoding: 'utf8' });
  return (JSON.parse(out) as { Digest: string }).Digest;
}

describe('pushImage to a real registry', () => {
  let first: string;

  it('pushes, and returns the digest that skopeo inspect and a schema-2 GET both see', async () => {
    const { sleeps, sleep } = recordingSleep();
    const r = await pushImage(imageId, { registry: reg.url, repository: 'team/app', tag: 'v1' }, creds, { sleep });
    expect(r).toEqual({ reference: `${reg.url}/team/app:v1`, digest: expect.stringMatching(DIGEST), attempts: 1 });
    expect(sleeps).toEqual([]);
    expect(skopeoInspectDigest(r.reference, creds)).toBe(r.digest);
    expect(await manifestDigest(reg.url, 'team/app', 'v1', creds)).toBe(r.digest);

    // Why the Accept header matters: without it registry 2.8 converts to schema 1, another digest.
    const auth = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
    const schema1 = await fetch(`http://${reg.url}/v2/team/app/manifests/v1`, { headers: { Authorization: auth } });
    expect(schema1.status).toBe(200);
    expect(schema1.headers.get('docker-content-digest')).toMatch(DIGEST);
    expect(schema1.headers.get('docker-content-digest')).not.toBe(r.digest);
    first = r.digest;
  });

  it('is idempotent: pushing again, or under another tag, gives the same digest', async () => {
    const again = await pushImage(imageId, { registry: reg.url, repository: 'team/app', tag: 'v1' }, creds);
    const other = await pushImage(imageId.replace(/^sha256:/, ''), { registry: reg.url, repository: 'team/app', tag: 'v2' }, creds);
    expect(again.digest).toBe(first);
    expect(other.digest).toBe(first);
  });

  it('keeps the password out of argv: skopeo reads it from a 0600 auth file that is removed afterwards', async () => {
    const dir = scratch('airlock-skopeo-spy-');
    const spy = join(dir, 'skopeo');
    writeFileSync(
      spy,
      `#!/bin/sh\nprintf '%s\\n' "$@" > ${dir}/argv\nprev=\nfor a in "$@"; do\n  [ "$prev" = --dest-authfile ] && { echo "$a" > ${dir}/authfile; stat -c %a "$a" > ${dir}/mode; }\n  prev=$a\ndone\nexec skopeo "$@"\n`,
    );
    chmodSync(spy, 0o755);
    const r = await pushImage(imageId, { registry: reg.url, repository: 'team/spy', tag: 'v1' }, creds, { skopeo: spy });
    expect(r.digest).toBe(first);
    const argv = readFileSync(join(dir, 'argv'), 'utf8');
    expect(argv).toContain('--dest-authfile');
    expect(argv).not.toContain(creds.password);
    expect(argv).not.toContain(Buffer.from(`${creds.username}:${creds.password}`).toString('base64'));
    expect(readFileSync(join(dir, 'mode'), 'utf8').trim()).toBe('600');
    expect(existsSync(readFileSync(join(dir, 'authfile'), 'utf8').trim())).toBe(false);
  });

  it('a wrong password is an auth error at once, never retried', async () => {
    const { sleeps, sleep } = recordingSleep();
    const bad = { username: creds.username, password: `${creds.password}x` };
    const err = await pushImage(imageId, { registry: reg.url, repository: 'team/app', tag: 'bad' }, bad, { sleep }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'AIRLOCK_E_REGISTRY_AUTH_FAILED', retryable: false });
    expect((err as Error).message).toContain(reg.url);
    expect((err as Error).message).not.toContain(bad.password);
    expect(sleeps).toEqual([]);
    await expect(manifestDigest(reg.url, 'team/app', 'v1', bad, { sleep })).rejects.toMatchObject({ code: 'AIRLOCK_E_REGISTRY_AUTH_FAILED' });
    expect(sleeps).toEqual([]);
  });

  it('an auth failure inside skopeo (not at the ping) is not retried either', async () => {
    // A proxy that lets GET /v2/ through but answers 401 to everything else, as a registry with per-repository ACLs would.
    const proxy = createServer((req, res) => {
      if (req.url === '/v2/') forward(reg.url, req, res);
      else res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="x"' }).end();
    });
    const at = await listen(proxy);
    try {
      const { sleeps, sleep } = recordingSleep();
      await expect(pushImage(imageId, { registry: at, repository: 'team/app', tag: 'acl' }, creds, { sleep })).rejects.toMatchObject({ code: 'AIRLOCK_E_REGISTRY_AUTH_FAILED' });
      expect(sleeps).toEqual([]);
    } finally {
      proxy.close();
    }
  });

  it('manifestDigest of an unknown tag is NotFound', async () => {
    await expect(manifestDigest(reg.url, 'team/app', 'nope', creds)).rejects.toMatchObject({ code: 'AIRLOCK_E_NOT_FOUND' });
  });

  it('rejects a malformed target, listing every problem, before touching anything', async () => {
    const err = await pushImage('latest', { registry: 'http://x', repository: 'Team/App', tag: '-x' }, { username: 'a:b', password: '' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
    expect((err as { issues: { path: string }[] }).issues.map((i) => i.path)).toEqual(['imageId', 'registry', 'repository', 'tag', 'credentials.username', 'credentials.password']);
  });

  it('an image the engine does not have is ImageNotFound, not retried', async () => {
    const { sleeps, sleep } = recordingSleep();
    await expect(pushImage(`sha256:${'0'.repeat(64)}`, { registry: reg.url, repository: 'team/app', tag: 'none' }, creds, { sleep })).rejects.toMatchObject({ code: 'AIRLOCK_E_IMAGE_NOT_FOUND' });
    expect(sleeps).toEqual([]);
  });
});

describe('pushImage when the registry is unavailable', () => {
  const retry = { attempts: 4, baseDelayMs: 10, maxDelayMs: 25 };

  it('registry stopped: retries with exponential backoff, then RegistryUnavailableError', async () => {
    const gone = await startRegistry();
    await gone.stop();
    const { sleeps, sleep } = recordingSleep();
    const err = await pushImage(imageId, { registry: gone.url, repository: 'team/app', tag: 'v1' }, { username: gone.username, password: gone.password }, { sleep, retry }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'AIRLOCK_E_REGISTRY_UNAVAILABLE', retryable: true, httpStatus: 503 });
    expect((err as Error).message).toMatch(new RegExp(`registry ${gone.url} still unavailable after 4 attempts: .*ECONNREFUSED`));
    expect(sleeps).toEqual([10, 20, 25]);
  });

  it('a server answering 503: retried, then RegistryUnavailableError', async () => {
    let hits = 0;
    const down = createServer((_req, res) => {
      hits++;
      res.writeHead(503).end('maintenance');
    });
    const at = await listen(down);
    try {
      const { sleeps, sleep } = recordingSleep();
      await expect(pushImage(imageId, { registry: at, repository: 'team/app', tag: 'v1' }, creds, { sleep, retry })).rejects.toMatchObject({ code: 'AIRLOCK_E_REGISTRY_UNAVAILABLE' });
      expect(sleeps).toEqual([10, 20, 25]);
      expect(hits).toBe(4);
    } finally {
      down.close();
    }
  });

  it('5xx in the middle of a push (uploads failing): skopeo fails, the push is retried and gives the same digest', async () => {
    // The proxy lets reads through but answers 503 to skopeo's writes during the first two attempts
    // (an attempt starts with our own GET /v2/, the one not sent by skopeo).
    let attempt = 0;
    const flaky = createServer((req, res) => {
      const skopeo = /skopeo/i.test(req.headers['user-agent'] ?? '');
      if (req.url === '/v2/' && !skopeo) attempt++;
      if (skopeo && req.method !== 'GET' && req.method !== 'HEAD' && attempt <= 2) {
        req.resume();
        return void res.writeHead(503).end();
      }
      forward(reg.url, req, res);
    });
    const at = await listen(flaky);
    try {
      const { sleeps, sleep } = recordingSleep();
      const direct = await pushImage(imageId, { registry: reg.url, repository: 'team/flaky', tag: 'v1' }, creds);
      const r = await pushImage(imageId, { registry: at, repository: 'team/flaky2', tag: 'v1' }, creds, { sleep, retry });
      expect(r.attempts).toBe(3);
      expect(sleeps).toEqual([10, 20]);
      expect(r.digest).toBe(direct.digest);
    } finally {
      flaky.close();
    }
  });

  it('registry started late, during the retries: the push succeeds', async () => {
    const port = await freePort();
    const late = { username: 'late', password: 'late-password-123' };
    let started: TestRegistry | undefined;
    const { sleeps, sleep } = recordingSleep(async (n) => {
      if (n === 2) started = await startRegistry({ port, ...late });
    });
    try {
      const opts: PushOptions = { sleep, retry: { attempts: 6, baseDelayMs: 10, maxDelayMs: 1_000 } };
      const r = await pushImage(imageId, { registry: `127.0.0.1:${port}`, repository: 'team/late', tag: 'v1' }, late, opts);
      expect(started).toBeDefined();
      expect(r.attempts).toBe(3);
      expect(sleeps).toEqual([10, 20]);
      expect(r.digest).toBe(await manifestDigest(`127.0.0.1:${port}`, 'team/late', 'v1', late));
    } finally {
      await started?.stop();
    }
  });
});

describe('classifySkopeoFailure', () => {
  it.each([
    ['level=fatal msg="trying to reuse blob sha256:aa at destination: checking whether a blob sha256:aa exists in 127.0.0.1:5000/team/app: unauthorized: authentication required"', 'auth'],
    ['level=fatal msg="trying to reuse blob sha256:aa at destination: pinging container registry 127.0.0.1:1: Get \\"http://127.0.0.1:1/v2/\\": dial tcp 127.0.0.1:1: connect: connection refused"', 'transient'],
    ['level=fatal msg="... pinging container registry 127.0.0.1:5000: invalid status code from registry 503 (Service Unavailable)"', 'transient'],
    ['level=fatal msg="writing blob: initiating layer upload to /v2/team/app/blobs/uploads/ in 127.0.0.1:5000: received unexpected HTTP status: 500 Internal Server Error"', 'transient'],
    ['level=fatal msg="initializing source docker-daemon:sha256:00: loading image from docker engine: Error response from daemon: open /var/lib/docker/image/overlay2/imagedb/content/sha256/00: no such file or directory"', 'image-missing'],
    ['level=fatal msg="initializing source docker-daemon:sha256:00: loading image from docker engine: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"', 'engine'],
    ['level=fatal msg="writing manifest: uploading manifest v1 to 127.0.0.1:5000/team/app: manifest invalid"', 'other'],
  ] as const)('%s → %s', (stderr, kind) => {
    expect(classifySkopeoFailure(stderr)).toBe(kind);
  });
});

/** Pass one request through to `target` unchanged (Host header included, so upload URLs keep pointing at the proxy). */
function forward(target: string, req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): void {
  const [hostname, port] = target.split(':');
  const up = httpRequest({ hostname, port: Number(port), method: req.method, path: req.url, headers: req.headers }, (upRes) => {
    res.writeHead(upRes.statusCode ?? 502, upRes.headers);
    upRes.pipe(res);
  });
  up.on('error', () => res.destroy());
  req.pipe(up);
}
