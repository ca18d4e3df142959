/**
 * Image signatures and provenance, checked by the tools consumers use: the payload's exact shape
 * (docs/signing.md), the binary one-pass signed message, the keys we refuse, the lookaside
 * writer, and then real gpg 2.2 (`gpg --verify` of the provenance) and real skopeo 1.9
 * (`skopeo standalone-verify`), each with a temporary GNUPGHOME.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidInputError } from '#shared/errors.js';
import { generateSigningKey } from '../../scripts/make-signing-key.js';
import { canonicalJson } from '../../trusted-builder/canonical-json.js';
import { buildStatement, provenanceStatement, type ProvenanceInput } from '../../trusted-builder/sign/provenance.js';
import { loadSigningKey, packetTags, signDetached, type SigningKey } from '../../trusted-builder/sign/signer.js';
import { lookasideDir, parseSimpleSigningPayload, signImage, simpleSigningPayload, writeLookaside } from '../../trusted-builder/sign/simple-signing.js';

const root = mkdtempSync(join(tmpdir(), 'airlock-sign-'));
const homes: string[] = [];
afterAll(async () => {
  for (const home of homes) {
    await run('gpgconf', ['--homedir', home, '--kill', 'all']);
    rmSync(home, { recursive: true, force: true });
  }
  rmSync(root, { recursive: true, force: true });
});

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}
function run(cmd: string, args: string[], env: Record<string, string> = {}, input?: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    if (input !== undefined) {
      child.stdin?.on('error', () => undefined); // a tool that exits early fails on its own
      child.stdin?.end(input);
    }
  });
}

let seq = 0;
function tempPath(name: string): string {
  return join(root, `${++seq}-${name}`);
}

/** A fresh GNUPGHOME under /tmp (short: gpg-agent's socket path is limited) holding `publicKeys`. */
async function gnupgHome(...publicKeys: string[]): Promise<string> {
  const home = mkdtempSync(join(tmpdir(), 'gh-'));
  homes.push(home);
  for (const key of publicKeys) {
    const r = await run('gpg', ['--homedir', home, '--batch', '--import'], {}, key);
    expect(r.code, r.stderr).toBe(0);
  }
  return home;
}

const REF = '127.0.0.1:5000/team/app:1a2b3c';
const MANIFEST = Buffer.from(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
    config: { mediaType: 'application/vnd.docker.container.image.v1+json', size: 2, digest: `sha256:${'1'.repeat(64)}` },
    layers: [],
  }),
);
const DIGEST = `sha256:${createHash('sha256').update(MANIFEST).digest('hex')}`;
const NOW = new Date('2026-01-02T03:04:05.678Z');

let key: SigningKey;
let other: SigningKey;
beforeAll(async () => {
  const made = await generateSigningKey({ name: 'airlock test', email: 'test@airlock.invalid', passphrase: 'pw' });
  key = await loadSigningKey(made.privateArmored, 'pw');
  other = await loadSigningKey((await generateSigningKey({ name: 'someone else', email: 'else@airlock.invalid' })).privateArmored);
});

describe('simple signing payload', () => {
  it('has exactly the shape containers/image reads', () => {
    const bytes = simpleSigningPayload({ dockerReference: REF, manifestDigest: DIGEST, creator: 'airlock 0.1.0', timestamp: NOW });
    expect(bytes.toString()).toBe(
      `{"critical":{"identity":{"docker-reference":"${REF}"},"image":{"docker-manifest-digest":"${DIGEST}"},"type":"atomic container signature"},` +
        `"optional":{"creator":"airlock 0.1.0","timestamp":${Math.floor(NOW.getTime() / 1000)}}}`,
    );
    const parsed = parseSimpleSigningPayload(bytes);
    expect(Object.keys(parsed)).toEqual(['critical', 'optional']);
    expect(Object.keys(parsed.critical)).toEqual(['identity', 'image', 'type']);
    expect(Number.isInteger(parsed.optional.timestamp)).toBe(true);
  });

  it.each([
    ['no host', { dockerReference: 'team/app:t1' }],
    ['no tag', { dockerReference: '127.0.0.1:5000/team/app' }],
    ['a digest instead of a tag', { dockerReference: `127.0.0.1:5000/team/app@${DIGEST}` }],
    ['upper-case path', { dockerReference: '127.0.0.1:5000/Team/app:t1' }],
    ['a short digest', { manifestDigest: 'sha256:abc' }],
    ['a fractional timestamp', { timestamp: 1.5 }],
  ])('refuses %s', (_, override) => {
    const claims = { dockerReference: REF, manifestDigest: DIGEST, creator: 'airlock', timestamp: 1, ...override };
    expect(() => simpleSigningPayload(claims)).toThrow(InvalidInputError);
  });

  it('accepts an explicit host without a port and localhost', () => {
    for (const ref of ['registry.example.com/a/b:v1', 'localhost/app:latest', 'localhost:5000/a:1']) {
      expect(() => simpleSigningPayload({ dockerReference: ref, manifestDigest: DIGEST, creator: 'x', timestamp: 1 })).not.toThrow();
    }
  });
});

describe('signImage', () => {
  it('is one binary signed message: one-pass signature, literal payload, one signature by the primary', async () => {
    const payload = simpleSigningPayload({ dockerReference: REF, manifestDigest: DIGEST, creator: 'airlock', timestamp: NOW });
    const sig = await signImage(key, payload);
    expect(sig.subarray(0, 5).toString()).not.toBe('-----'); // not armored
    expect(packetTags(sig)).toEqual([openpgp.enums.packet.onePassSignature, openpgp.enums.packet.literalData, openpgp.enums.packet.signature]);
    // gpg's own reading of the packets: the signature's issuer is the primary key.
    const sigFile = tempPath('message.sig');
    writeFileSync(sigFile, sig);
    const listed = await run('gpg', ['--homedir', await gnupgHome(), '--batch', '--list-packets', sigFile]);
    const kinds = listed.stdout.split('\n').filter((l) => l.startsWith(':')).map((l) => l.split(':')[1]);
    expect(kinds).toEqual(['onepass_sig packet', 'literal data packet', 'signature packet']);
    expect(listed.stdout).toMatch(new RegExp(`:signature packet: algo \\d+, keyid ${key.keyId}\\b`));
    expect(key.fingerprint.endsWith(key.keyId)).toBe(true);
    const message = await openpgp.readMessage({ binaryMessage: sig });
    const verified = await openpgp.verify({
      message,
      verificationKeys: await openpgp.readKey({ armoredKey: key.publicArmored }),
      expectSigned: true,
      format: 'binary',
    });
    expect(Buffer.from(verified.data as Uint8Array)).toEqual(payload);
  });

  it('signs only a simple-signing payload', async () => {
    await expect(signImage(key, Buffer.from('{"critical":{}}'))).rejects.toThrow(InvalidInputError);
    await expect(signImage(key, Buffer.from('not json'))).rejects.toThrow(InvalidInputError);
  });
});

describe('loadSigningKey refuses what gpg 2.2 / skopeo 1.9 reject', () => {
  const uid = { name: 'bad', email: 'bad@airlock.invalid' };
  const earlier = new Date(Date.now() - 60_000);
  const cases: [string, () => Promise<string>, RegExp][] = [
    ['a v6 key', async () => (await openpgp.generateKey({ type: 'curve25519', userIDs: [uid], date: earlier, config: { v6Keys: true } })).privateKey, /v6 key/],
    ['an RFC 9580 Ed25519 (curve25519) key', async () => (await openpgp.generateKey({ type: 'curve25519', userIDs: [uid], date: earlier })).privateKey, /ed25519Legacy/],
    [
      'a signing subkey',
      async () => (await openpgp.generateKey({ type: 'ecc', curve: 'ed25519Legacy', userIDs: [uid], date: earlier, subkeys: [{ sign: true }] })).privateKey,
      /marked for signing/,
    ],
    ['an expiry', async () => (await openpgp.generateKey({ type: 'ecc', curve: 'ed25519Legacy', userIDs: [uid], date: earlier, keyExpirationTime: 86_400 * 365 })).privateKey, /expires/],
    ['RSA below 3072 bits', async () => (await openpgp.generateKey({ type: 'rsa', rsaBits: 2048, userIDs: [uid], date: earlier })).privateKey, /at least 3072/],
    ['a nistP384 key', async () => (await openpgp.generateKey({ type: 'ecc', curve: 'nistP384', userIDs: [uid], date: earlier })).privateKey, /not one of/],
    [
      'a key created in the future',
      async () => (await openpgp.generateKey({ type: 'ecc', curve: 'ed25519Legacy', userIDs: [uid], date: new Date(Date.now() + 3_600_000) })).privateKey,
      /after this clock/,
    ],
    ['a public key', async () => (await openpgp.generateKey({ userIDs: [uid], date: earlier })).publicKey, /not an armored OpenPGP private key/],
  ];
  it.each(cases)('%s', async (_, make, message) => {
    const armored = await make();
    const err = await loadSigningKey(armored, undefined, { source: 'secret:builder/signing-key' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).toMatch(/^secret:builder\/signing-key: /);
    expect((err as Error).message).not.toContain('PRIVATE KEY BLOCK');
  });

  it('lists every problem of one key at once', async () => {
    const { privateKey } = await openpgp.generateKey({ type: 'ecc', curve: 'ed25519Legacy', userIDs: [uid], date: earlier, keyExpirationTime: 3600, subkeys: [{ sign: true }] });
    const err = (await loadSigningKey(privateKey).catch((e: unknown) => e)) as InvalidInputError;
    expect(err.issues.map((i) => i.path).sort()).toEqual(['primary.expiry', 'subkeys[0]']);
  });

  it('needs the right passphrase for a protected key', async () => {
    const made = await generateSigningKey({ name: 'p', email: 'p@airlock.invalid', passphrase: 'right' });
    await expect(loadSigningKey(made.privateArmored)).rejects.toThrow(/passphrase-protected/);
    await expect(loadSigningKey(made.privateArmored, 'wrong')).rejects.toThrow(/does not decrypt/);
    expect((await loadSigningKey(made.privateArmored, 'right')).fingerprint).toBe(made.fingerprint);
  });

  it('accepts RSA 3072 and nistP256 primaries', async () => {
    for (const opts of [{ type: 'rsa', rsaBits: 3072 }, { type: 'ecc', curve: 'nistP256' }] as const) {
      const { privateKey } = await openpgp.generateKey({ ...opts, userIDs: [uid], date: earlier });
      const k = await loadSigningKey(privateKey);
      expect(k.fingerprint).toMatch(/^[0-9A-F]{40}$/);
    }
  });

  it('the key script makes a key with no subkey, no expiry, created in the past', async () => {
    const made = await generateSigningKey({ name: 'n', email: 'n@airlock.invalid' });
    const k = await openpgp.readPrivateKey({ armoredKey: made.privateArmored });
    expect(k.keyPacket.version).toBe(4);
    expect(k.getAlgorithmInfo()).toEqual({ algorithm: 'eddsaLegacy', curve: 'ed25519Legacy' });
    expect(k.subkeys).toEqual([]);
    expect(await k.getExpirationTime()).toBe(Infinity);
    expect(k.getCreationTime().getTime()).toBeLessThan(Date.now() - 60_000);
  });
});

describe('writeLookaside', () => {
  it('lays out <repo>@sha256=<hex>/signature-<n>, counting from 1, and is idempotent', async () => {
    const dir = tempPath('lookaside');
    const a = await writeLookaside(dir, 'team/app', DIGEST, Buffer.from('a'));
    const b = await writeLookaside(dir, 'team/app', DIGEST, Buffer.from('b'));
    const again = await writeLookaside(dir, 'team/app', DIGEST, Buffer.from('a'));
    expect(a).toEqual({ n: 1, path: join(dir, `team/app@sha256=${DIGEST.slice(7)}`, 'signature-1'), created: true });
    expect(b).toMatchObject({ n: 2, created: true });
    expect(again).toEqual({ ...a, created: false });
    expect(lookasideDir('team/app', DIGEST)).toBe(`team/app@sha256=${DIGEST.slice(7)}`);
  });

  it('concurrent writers get distinct n with no gap and leave no temporary file', async () => {
    const dir = tempPath('lookaside');
    const writes = await Promise.all(Array.from({ length: 12 }, (_, i) => writeLookaside(dir, 'team/app', DIGEST, Buffer.from(`sig ${i}`))));
    expect(writes.map((w) => w.n).sort((x, y) => x - y)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    const files = readdirSync(join(dir, lookasideDir('team/app', DIGEST)));
    expect(files.sort()).toEqual(Array.from({ length: 12 }, (_, i) => `signature-${i + 1}`).sort());
    for (const w of writes) expect(readFileSync(w.path).toString()).toMatch(/^sig \d+$/);
  });

  it.each(['127.0.0.1:5000/team/app', '../team', 'team/../../etc', '/team/app', 'team/app:t1', 'Team/app'])('refuses the repository path %s', async (repo) => {
    await expect(writeLookaside(tempPath('lookaside'), repo, DIGEST, Buffer.from('x'))).rejects.toThrow(InvalidInputError);
  });
});

const INPUT: ProvenanceInput = {
  subject: { name: '127.0.0.1:5000/team/app', digest: DIGEST },
  builderId: 'https://builder.airlock.invalid/v1',
  source: { repo: 'https://git.example.com/team/app.git', commit: 'a'.repeat(40) },
  policyDigest: `sha256:${'b'.repeat(64)}`,
  baseImages: [{ name: 'airlock/base:busybox', digest: `sha256:${'c'.repeat(64)}` }],
  steps: [
    { name: 'test', command: ['make', 'test'], exitCode: 0 },
    { name: 'publish', command: 'docker build .', exitCode: 0 },
  ],
  startedOn: '2026-01-02T03:04:05+01:00',
  finishedOn: NOW,
  invocationId: 'build-42',
};

describe('provenance statement', () => {
  it('is an in-toto Statement v1 with a SLSA provenance v1 predicate', () => {
    const s = JSON.parse(provenanceStatement(INPUT).toString());
    expect(s).toEqual({
      _type: 'https://in-toto.io/Statement/v1',
      subject: [{ name: '127.0.0.1:5000/team/app', digest: { sha256: DIGEST.slice(7) } }],
      predicateType: 'https://slsa.dev/provenance/v1',
      predicate: {
        buildDefinition: {
          buildType: 'urn:airlock:buildtype:trusted-rebuild:v1',
          externalParameters: { source: { repository: 'https://git.example.com/team/app.git', commit: 'a'.repeat(40) } },
          internalParameters: { policyDigest: `sha256:${'b'.repeat(64)}`, steps: INPUT.steps },
          resolvedDependencies: [
            { uri: 'git+https://git.example.com/team/app.git', digest: { gitCommit: 'a'.repeat(40) } },
            { name: 'airlock/base:busybox', digest: { sha256: 'c'.repeat(64) } },
          ],
        },
        runDetails: {
          builder: { id: 'https://builder.airlock.invalid/v1' },
          metadata: { invocationId: 'build-42', startedOn: '2026-01-02T02:04:05.000Z', finishedOn: NOW.toISOString() },
        },
      },
    });
  });

  it('is canonical: sorted keys, no whitespace, the same bytes every time', () => {
    const bytes = provenanceStatement(INPUT).toString();
    expect(bytes).toBe(canonicalJson(JSON.parse(bytes)));
    expect(bytes).not.toMatch(/\s(?=(?:[^"]*"[^"]*")*[^"]*$)/); // no whitespace outside strings
    expect(bytes.startsWith('{"_type":')).toBe(true);
    expect(provenanceStatement({ ...INPUT }).toString()).toBe(bytes);
    expect(canonicalJson({ b: 1, a: [{ d: null, c: 'é' }], B: true })).toBe('{"B":true,"a":[{"c":"é","d":null}],"b":1}');
    // Every number in a statement is a safe integer (the input schema refuses others), so no
    // consumer's number formatting can matter.
    expect(() => buildStatement({ ...INPUT, steps: [{ name: 's', command: 'c', exitCode: 1.5 }] })).toThrow(/exitCode/);
    expect(() => buildStatement({ ...INPUT, steps: [{ name: 's', command: 'c', exitCode: 2 ** 53 }] })).toThrow(/exitCode/);
  });

  it('lists every bad field', () => {
    const err = (() => {
      try {
        buildStatement({ ...INPUT, source: { repo: 'x', commit: 'main' }, policyDigest: 'md5:1', finishedOn: '2020-01-01T00:00:00Z' });
      } catch (e) {
        return e as InvalidInputError;
      }
      throw new Error('accepted');
    })();
    expect(err).toBeInstanceOf(InvalidInputError);
    expect(err.issues.map((i) => i.path).sort()).toEqual(['finishedOn', 'policyDigest', 'source.commit']);
    const late = (() => {
      try {
        buildStatement({ ...INPUT, finishedOn: '2020-01-01T00:00:00Z' });
      } catch (e) {
        return e as InvalidInputError;
      }
      throw new Error('accepted');
    })();
    expect(late.issues.map((i) => i.path)).toEqual(['finishedOn']);
  });
});

describe('gpg --verify accepts the signed provenance', () => {
  async function verify(home: string, statement: Buffer, signature: string): Promise<RunResult> {
    const dir = tempPath('prov');
    rmSync(dir, { recursive: true, force: true });
    writeFileSync(`${dir}.json`, statement);
    writeFileSync(`${dir}.json.asc`, signature);
    return run('gpg', ['--homedir', home, '--batch', '--status-fd', '1', '--verify', `${dir}.json.asc`, `${dir}.json`]);
  }

  it('by the primary key, and rejects a tampered copy', async () => {
    const home = await gnupgHome(key.publicArmored);
    const statement = provenanceStatement(INPUT);
    const signature = await signDetached(key, statement);
    expect(signature).toMatch(/^-----BEGIN PGP SIGNATURE-----/);

    const ok = await verify(home, statement, signature);
    expect(ok.code, ok.stderr).toBe(0);
    const validsig = ok.stdout.split('\n').find((l) => l.startsWith('[GNUPG:] VALIDSIG '));
    expect(validsig?.split(' ')[2]).toBe(key.fingerprint);
    expect(validsig?.split(' ').at(-1)).toBe(key.fingerprint); // the primary key's fingerprint

    const tampered = Buffer.from(statement.toString().replace('"exitCode":0', '"exitCode":1'));
    expect(tampered.equals(statement)).toBe(false);
    const bad = await verify(home, tampered, signature);
    expect(bad.code).not.toBe(0);
    expect(bad.stdout).toContain('[GNUPG:] BADSIG');
    expect(bad.stdout).not.toContain('VALIDSIG');
  });

  it('does not accept another key', async () => {
    const home = await gnupgHome(key.publicArmored);
    const statement = provenanceStatement(INPUT);
    const r = await verify(home, statement, await signDetached(other, statement));
    expect(r.code).not.toBe(0);
    expect(r.stdout).not.toContain('VALIDSIG');
  });
});

describe('skopeo standalone-verify accepts our image signature', () => {
  let home: string;
  let manifestFile: string;
  beforeAll(async () => {
    home = await gnupgHome(key.publicArmored);
    manifestFile = tempPath('manifest.json');
    writeFileSync(manifestFile, MANIFEST);
  });

  async function standaloneVerify(signature: Uint8Array, ref = REF, fingerprint = key.fingerprint, gnupg = home): Promise<RunResult> {
    const sigFile = tempPath('signature');
    writeFileSync(sigFile, signature);
    return run('skopeo', ['standalone-verify', manifestFile, ref, fingerprint, sigFile], { GNUPGHOME: gnupg });
  }
  const payload = (ref = REF, digest = DIGEST) => simpleSigningPayload({ dockerReference: ref, manifestDigest: digest, creator: 'airlock test', timestamp: new Date() });

  it('accepts it', async () => {
    const r = await standaloneVerify(await signImage(key, payload()));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`Signature verified, digest ${DIGEST}`);
  });

  it('rejects a wrong identity', async () => {
    const sig = await signImage(key, payload());
    const r = await standaloneVerify(sig, '127.0.0.1:5000/team/app:other');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`Docker reference ${REF} does not match 127.0.0.1:5000/team/app:other`);
  });

  it('rejects a signature for another manifest', async () => {
    const r = await standaloneVerify(await signImage(key, payload(REF, `sha256:${'d'.repeat(64)}`)));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Signature for docker digest \\?"sha256:d{64}\\?" does not match/);
  });

  it('rejects a tampered signature', async () => {
    const sig = await signImage(key, payload());
    const at = sig.indexOf(Buffer.from('airlock test'));
    expect(at).toBeGreaterThan(0);
    sig[at] = 'A'.charCodeAt(0); // the creator, inside the signed literal data
    const r = await standaloneVerify(sig);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('Invalid GPG signature');
  });

  it('rejects another key, known or not', async () => {
    const sig = await signImage(other, payload());
    const unknown = await standaloneVerify(sig);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain('Invalid GPG signature'); // no public key
    const both = await gnupgHome(key.publicArmored, other.publicArmored);
    const known = await standaloneVerify(sig, REF, key.fingerprint, both);
    expect(known.code).not.toBe(0);
    expect(known.stderr).toContain(`Signature by ${other.fingerprint} does not match expected fingerprint ${key.fingerprint}`);
  });

  it('accepts a key made offline with gpg (passphrase-protected, exported armored)', async () => {
    const gh = await gnupgHome();
    const gpg = (args: string[]) => run('gpg', ['--homedir', gh, '--batch', '--pinentry-mode', 'loopback', '--passphrase', 'gpg-pw', ...args]);
    const made = await gpg(['--quick-gen-key', 'airlock gpg test <gpg@airlock.invalid>', 'ed25519', 'sign', 'never']);
    expect(made.code, made.stderr).toBe(0);
    const exported = await gpg(['--armor', '--export-secret-keys']);
    expect(exported.code, exported.stderr).toBe(0);
    const gpgKey = await loadSigningKey(exported.stdout, 'gpg-pw');
    const r = await standaloneVerify(await signImage(gpgKey, payload()), REF, gpgKey.fingerprint, gh);
    expect(r.code, r.stderr).toBe(0);
  });
});
