// Make the trusted builder's image-signing key, the kind docs/signing.md "Keys" says gpg 2.2 and
// skopeo 1.9 accept: a v4 ed25519Legacy key whose primary is the only (signing) key, no expiry,
// created a few minutes in the past so that a verifier whose clock is slightly behind still imports it.
//
//   AIRLOCK_SIGNING_KEY_PASSPHRASE=… npx tsx scripts/make-signing-key.ts --out DIR [--name N] [--email E]
//
// Writes DIR/signing-key.asc (armored private key, 0600, passphrase-protected when the variable is
// set) and DIR/signing-key.pub.asc (the public key consumers put in their policy.json); never
// overwrites. The passphrase is read from the environment so that it never appears in `ps`.
// Put the private key into the SecretStore and delete the file.
//
//   AIRLOCK_EMBARGO_KEY_PASSPHRASE=… npx tsx scripts/make-signing-key.ts --embargo --out DIR
//
// makes the embargo lane's key instead (trusted-builder/embargo/embargo-key.ts): an ed25519 primary
// that signs the builder's answers and sealed files, with a cv25519 subkey the security team
// encrypts requests to; DIR/embargo-key.asc goes into the SecretStore at `builder.embargoKey`
// (`{armored, passphrase?}`), DIR/embargo-key.pub.asc to the team (their `--builder-key`).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as openpgp from 'openpgp';

/** How far the creation time is set back. */
const BACKDATE_MS = 5 * 60_000; // 5 min

export interface GeneratedSigningKey {
  privateArmored: string;
  publicArmored: string;
  /** 40 uppercase hex digits. */
  fingerprint: string;
}

export function generateSigningKey(opts: KeyOptions): Promise<GeneratedSigningKey> {
  // No subkeys: the primary certifies and signs, and nothing could sign in its place.
  return generate(opts, { curve: 'ed25519Legacy', subkeys: [] });
}

/**
 * The embargo lane's key (and, in tests, a security team member's): v4, an ed25519 primary that
 * signs and one cv25519 encryption subkey, no expiry, backdated like the signing key.
 */
export function generateEmbargoKey(opts: KeyOptions): Promise<GeneratedSigningKey> {
  return generate(opts, { curve: 'curve25519Legacy', subkeys: [{}] });
}

interface KeyOptions {
  name: string;
  email: string;
  passphrase?: string;
  now?: Date;
}

async function generate(opts: KeyOptions, kind: { curve: 'ed25519Legacy' | 'curve25519Legacy'; subkeys: openpgp.SubkeyOptions[] }): Promise<GeneratedSigningKey> {
  const now = opts.now ?? new Date();
  const { privateKey, publicKey } = await openpgp.generateKey({
    type: 'ecc',
    curve: kind.curve,
    userIDs: [{ name: opts.name, email: opts.email }],
    subkeys: kind.subkeys,
    keyExpirationTime: 0,
    date: new Date(now.getTime() - BACKDATE_MS),
    ...(opts.passphrase ? { passphrase: opts.passphrase } : {}),
    format: 'object',
  });
  return { privateArmored: privateKey.armor(), publicArmored: publicKey.armor(), fingerprint: privateKey.getFingerprint().toUpperCase() };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string' },
      embargo: { type: 'boolean', default: false },
      name: { type: 'string' },
      email: { type: 'string' },
    },
  });
  const kind = values.embargo
    ? { file: 'embargo-key', env: 'AIRLOCK_EMBARGO_KEY_PASSPHRASE', name: 'airlock trusted builder (embargo)', email: 'embargo@airlock.invalid', make: generateEmbargoKey }
    : { file: 'signing-key', env: 'AIRLOCK_SIGNING_KEY_PASSPHRASE', name: 'airlock trusted builder', email: 'builder@airlock.invalid', make: generateSigningKey };
  if (!values.out) {
    process.stderr.write('usage: AIRLOCK_SIGNING_KEY_PASSPHRASE=… tsx scripts/make-signing-key.ts --out DIR [--name N] [--email E]\n');
    process.stderr.write('       AIRLOCK_EMBARGO_KEY_PASSPHRASE=… tsx scripts/make-signing-key.ts --embargo --out DIR [--name N] [--email E]\n');
    process.exit(2);
  }
  const passphrase = process.env[kind.env];
  if (!passphrase) process.stderr.write(`warning: ${kind.env} is not set: the private key is written unprotected\n`);
  const key = await kind.make({ name: values.name ?? kind.name, email: values.email ?? kind.email, ...(passphrase ? { passphrase } : {}) });
  mkdirSync(values.out, { recursive: true });
  writeFileSync(join(values.out, `${kind.file}.asc`), key.privateArmored, { mode: 0o600, flag: 'wx' });
  writeFileSync(join(values.out, `${kind.file}.pub.asc`), key.publicArmored, { mode: 0o644, flag: 'wx' });
  process.stdout.write(`${key.fingerprint}\n`);
}

if (process.argv[1]?.endsWith('make-signing-key.ts')) {
  main().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
