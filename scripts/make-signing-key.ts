// Make the trusted builder's image-signing key, the kind ../shared/SIGNING.md says gpg 2.2 and
// skopeo 1.9 accept: a v4 ed25519Legacy key whose primary is the only (signing) key, no expiry,
// created a few minutes in the past so that a verifier whose clock is slightly behind still imports it.
//
//   AIRLOCK_SIGNING_KEY_PASSPHRASE=… npx tsx scripts/make-signing-key.ts --out DIR [--name N] [--email E]
//
// Writes DIR/signing-key.asc (armored private key, 0600, passphrase-protected when the variable is
// set) and DIR/signing-key.pub.asc (the public key consumers put in their policy.json); never
// overwrites. The passphrase is read from the environment so that it never appears in `ps`.
// Put the private key into the SecretStore and delete the file.
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

export async function generateSigningKey(opts: { name: string; email: string; passphrase?: string; now?: Date }): Promise<GeneratedSigningKey> {
  const now = opts.now ?? new Date();
  const { privateKey, publicKey } = await openpgp.generateKey({
    type: 'ecc',
    curve: 'ed25519Legacy',
    userIDs: [{ name: opts.name, email: opts.email }],
    // No subkeys: the primary certifies and signs, and nothing could sign in its place.
    subkeys: [],
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
      name: { type: 'string', default: 'airlock trusted builder' },
      email: { type: 'string', default: 'builder@airlock.invalid' },
    },
  });
  if (!values.out) {
    process.stderr.write('usage: AIRLOCK_SIGNING_KEY_PASSPHRASE=… tsx scripts/make-signing-key.ts --out DIR [--name N] [--email E]\n');
    process.exit(2);
  }
  const passphrase = process.env.AIRLOCK_SIGNING_KEY_PASSPHRASE;
  if (!passphrase) process.stderr.write('warning: AIRLOCK_SIGNING_KEY_PASSPHRASE is not set: the private key is written unprotected\n');
  const key = await generateSigningKey({ name: values.name, email: values.email, ...(passphrase ? { passphrase } : {}) });
  mkdirSync(values.out, { recursive: true });
  writeFileSync(join(values.out, 'signing-key.asc'), key.privateArmored, { mode: 0o600, flag: 'wx' });
  writeFileSync(join(values.out, 'signing-key.pub.asc'), key.publicArmored, { mode: 0o644, flag: 'wx' });
  process.stdout.write(`${key.fingerprint}\n`);
}

if (process.argv[1]?.endsWith('make-signing-key.ts')) {
  main().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
