/**
 * End to end with the real consumer stack: a real registry (Debian's docker-registry 2.8) on a
 * free port, an image pushed to it with skopeo, our signature published in a lookaside tree served
 * over HTTP, and `skopeo copy` under the shipped policies/containers-policy.json and
 * policies/registries.d/airlock.yaml (placeholders substituted). The pull must succeed for our
 * signed image and fail, with the error containers/image gives, for an unsigned image, a tampered
 * signature, a signature for another tag or repository, for another manifest, and another key.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, normalize, sep } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKey } from '../../scripts/make-signing-key.js';
import { loadSigningKey, type SigningKey } from '../../trusted-builder/sign/signer.js';
import { signImage, simpleSigningPayload, writeLookaside } from '../../trusted-builder/sign/simple-signing.js';

/** The placeholders in the shipped consumer files. */
const SHIPPED_REGISTRY = '127.0.0.1:5000';
const SHIPPED_LOOKASIDE = 'http://127.0.0.1:8090/lookaside';
const SHIPPED_POLICY = new URL('../../policies/containers-policy.json', import.meta.url);
const SHIPPED_REGISTRIES_D = new URL('../../policies/registries.d/airlock.yaml', import.meta.url);
const SOURCE_IMAGE = 'docker-daemon:airlock/base:busybox';

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}
function run(cmd: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createNetServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** A static file server for the lookaside tree: GET only, nothing outside `root`, 404 otherwise. */
function serveStatic(root: string): Promise<{ server: Server; base: string }> {
  const server = createHttpServer((req, res) => {
    void (async () => {
      const path = normalize(join(root, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)));
      if (req.method !== 'GET' || !path.startsWith(root + sep)) return res.writeHead(404).end();
      try {
        const body = await readFile(path);
        res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(body);
      } catch {
        res.writeHead(404).end();
      }
    })();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, base: `http://127.0.0.1:${(server.address() as { port: number }).port}` })));
}

const work = mkdtempSync(join(tmpdir(), 'airlock-sigreg-'));
const lookasideRoot = join(work, 'lookaside');
let registry: ChildProcess | undefined;
let registryLog = '';
let lookaside: { server: Server; base: string } | undefined;
let host = '';
let key: SigningKey;
let other: SigningKey;
let digest = '';
let policyFile = '';

beforeAll(async () => {
  const [made, otherMade] = await Promise.all([
    generateSigningKey({ name: 'airlock registry test', email: 'registry@airlock.invalid' }),
    generateSigningKey({ name: 'not the builder', email: 'other@airlock.invalid' }),
  ]);
  [key, other] = await Promise.all([loadSigningKey(made.privateArmored), loadSigningKey(otherMade.privateArmored)]);

  // The registry: no auth, temp storage, a free port on loopback.
  const port = await freePort();
  host = `127.0.0.1:${port}`;
  const config = join(work, 'registry.yml');
  writeFileSync(config, `version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: ${join(work, 'storage')}\nhttp:\n  addr: ${host}\n`);
  registry = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  registry.stdout?.on('data', (d: Buffer) => (registryLog += d.toString()));
  registry.stderr?.on('data', (d: Buffer) => (registryLog += d.toString()));
  await waitForRegistry();

  // Push as the builder does (its own image, so no consumer policy applies to this copy).
  const digestFile = join(work, 'digest');
  for (const repo of ['team/app:t1', 'team/unsigned:t1']) {
    const push = await run('skopeo', ['--insecure-policy', 'copy', '--dest-tls-verify=false', '--digestfile', digestFile, SOURCE_IMAGE, `docker://${host}/${repo}`]);
    expect(push.code, push.stderr).toBe(0);
  }
  digest = readFileSync(digestFile, 'utf8').trim();
  expect(digest).toMatch(/^sha256:[0-9a-f]{64}$/);

  lookaside = await serveStatic(lookasideRoot);

  // The consumer's policy: the shipped file, scope moved to this registry, key from this test.
  const keyFile = join(work, 'builder.pub.asc');
  writeFileSync(keyFile, key.publicArmored);
  const policy = JSON.parse(readFileSync(SHIPPED_POLICY, 'utf8')) as { default: unknown; transports: { docker: Record<string, [{ keyPath: string }]> } };
  const requirements = policy.transports.docker[SHIPPED_REGISTRY];
  if (!requirements) throw new Error(`the shipped policy has no scope ${SHIPPED_REGISTRY}`);
  requirements[0].keyPath = keyFile;
  policy.transports.docker = { [host]: requirements };
  policyFile = join(work, 'policy.json');
  writeFileSync(policyFile, JSON.stringify(policy));
}, 60_000);

afterAll(async () => {
  lookaside?.server.close();
  if (registry?.pid !== undefined && registry.exitCode === null) {
    const exited = new Promise((resolve) => registry?.once('exit', resolve));
    process.kill(registry.pid, 'SIGTERM');
    await exited;
  }
  rmSync(work, { recursive: true, force: true });
});

async function waitForRegistry(): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      if ((await fetch(`http://${host}/v2/`)).ok) return;
    } catch {
      // not listening yet
    }
    if (registry?.exitCode !== null || Date.now() > deadline) throw new Error(`docker-registry did not start:\n${registryLog}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

let caseSeq = 0;
/**
 * A lookaside tree of its own for one case, holding `signatures` for `team/app@digest`, and the
 * shipped registries.d file pointing at it. Returns the registries.d directory.
 */
async function publish(signatures: Uint8Array[], repository = 'team/app'): Promise<string> {
  const name = `case-${++caseSeq}`;
  for (const sig of signatures) await writeLookaside(join(lookasideRoot, name), repository, digest, sig);
  const dir = join(work, `${name}-registries.d`);
  mkdirSync(dir);
  const shipped = readFileSync(SHIPPED_REGISTRIES_D, 'utf8');
  expect(shipped).toContain(`  ${SHIPPED_REGISTRY}:\n    lookaside: ${SHIPPED_LOOKASIDE}\n`);
  writeFileSync(join(dir, 'airlock.yaml'), shipped.replaceAll(SHIPPED_REGISTRY, host).replaceAll(SHIPPED_LOOKASIDE, `${lookaside?.base}/${name}`));
  return dir;
}

/** `skopeo copy` from the registry to a fresh dir: under the consumer policy. */
async function pull(registriesD: string, repo = 'team/app:t1', policy = policyFile): Promise<RunResult & { out: string }> {
  const out = join(work, `pull-${++caseSeq}`);
  const r = await run('skopeo', ['--policy', policy, '--registries.d', registriesD, 'copy', '--src-tls-verify=false', `docker://${host}/${repo}`, `dir:${out}`]);
  return { ...r, out };
}

async function signatureFor(signer: SigningKey, dockerReference: string, manifestDigest = digest): Promise<Buffer> {
  return signImage(signer, simpleSigningPayload({ dockerReference, manifestDigest, creator: 'airlock test', timestamp: new Date() }));
}

describe('a consumer with the shipped policy', () => {
  it('signs the digest the registry serves for the v2 manifest', async () => {
    const res = await fetch(`http://${host}/v2/team/app/manifests/t1`, { headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' } });
    const body = Buffer.from(await res.arrayBuffer());
    expect(res.headers.get('docker-content-digest')).toBe(digest);
    expect(`sha256:${createHash('sha256').update(body).digest('hex')}`).toBe(digest);
  });

  it('pulls our signed image', async () => {
    const r = await pull(await publish([await signatureFor(key, `${host}/team/app:t1`)]));
    expect(r.code, r.stderr).toBe(0);
    const manifest = readFileSync(join(r.out, 'manifest.json'));
    expect(`sha256:${createHash('sha256').update(manifest).digest('hex')}`).toBe(digest);
  });

  it('pulls it when one of several signatures is ours', async () => {
    const r = await pull(await publish([await signatureFor(other, `${host}/team/app:t1`), await signatureFor(key, `${host}/team/app:t1`)]));
    expect(r.code, r.stderr).toBe(0);
  });

  it('refuses an unsigned image', async () => {
    const r = await pull(await publish([await signatureFor(key, `${host}/team/app:t1`)]), 'team/unsigned:t1');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('A signature was required, but no signature exists');
  });

  it('refuses a tampered signature', async () => {
    const sig = await signatureFor(key, `${host}/team/app:t1`);
    const at = sig.indexOf(Buffer.from('airlock test'));
    expect(at).toBeGreaterThan(0);
    sig[at] = 'A'.charCodeAt(0); // inside the signed payload
    const r = await pull(await publish([sig]));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('Invalid GPG signature');
  });

  it.each([
    ['another tag', 'team/app:t2'],
    ['another repository', 'team/other:t1'],
  ])('refuses a signature for %s', async (_, signed) => {
    const r = await pull(await publish([await signatureFor(key, `${host}/${signed}`)]));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`Signature for identity ${host}/${signed} is not accepted`);
  });

  it('refuses a signature for another manifest', async () => {
    const r = await pull(await publish([await signatureFor(key, `${host}/team/app:t1`, `sha256:${'e'.repeat(64)}`)]));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Signature for digest sha256:e{64} does not match/);
  });

  it('refuses a signature by another key', async () => {
    const r = await pull(await publish([await signatureFor(other, `${host}/team/app:t1`)]));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('Invalid GPG signature');
  });
});

describe('rotating the signing key (docs/deploy.md "Rotating the signing key")', () => {
  it('accepts either key while the keyPath file holds both public keys, and only the new one after', async () => {
    const both = join(work, 'rotation.pub.asc');
    writeFileSync(both, key.publicArmored + other.publicArmored);
    const policy = JSON.parse(readFileSync(policyFile, 'utf8')) as { transports: { docker: Record<string, [{ keyPath: string }]> } };
    policy.transports.docker[host]![0].keyPath = both;
    const overlap = join(work, 'policy-overlap.json');
    writeFileSync(overlap, JSON.stringify(policy));
    for (const signer of [key, other]) {
      const r = await pull(await publish([await signatureFor(signer, `${host}/team/app:t1`)]), 'team/app:t1', overlap);
      expect(r.code, r.stderr).toBe(0);
    }
    // After the overlap: the new key alone; what only the old key signed is refused.
    const next = join(work, 'rotation-new.pub.asc');
    writeFileSync(next, other.publicArmored);
    policy.transports.docker[host]![0].keyPath = next;
    const after = join(work, 'policy-after.json');
    writeFileSync(after, JSON.stringify(policy));
    const old = await pull(await publish([await signatureFor(key, `${host}/team/app:t1`)]), 'team/app:t1', after);
    expect(old.code).not.toBe(0);
    expect(old.stderr).toContain('Invalid GPG signature');
    const renewed = await pull(await publish([await signatureFor(other, `${host}/team/app:t1`)]), 'team/app:t1', after);
    expect(renewed.code, renewed.stderr).toBe(0);
  });
});
