// Make the trusted builder's image-signing key, the kind docs/signing.md "Keys" says gpg 2.2 and
// skopeo 1.9 accept: a v4 ed25519Legacy key whose primary is the only (signing) key, no expiry,
// created a few minutes in the past so that a verifier whose clock is slightly behind still imports it.
// `--embargo` makes the embargo lane's key instead (trusted-builder/embargo/embargo-key.ts): an
// ed25519 primary that signs the builder's answers and sealed files, with a cv25519 subkey the
// security team encrypts requests to. `--help` says how to use it and where each file goes.
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

/** What `--help` prints, and the usage line on a mistake. */
export const USAGE = `usage: AIRLOCK_SIGNING_KEY_PASSPHRASE=… npx tsx scripts/make-signing-key.ts --out DIR [--name N] [--email E]
       AIRLOCK_EMBARGO_KEY_PASSPHRASE=… npx tsx scripts/make-signing-key.ts --embargo --out DIR [--name N] [--email E]

Makes the trusted builder's image-signing key (or, with --embargo, the embargo lane's key) in DIR,
never overwriting a file there. The passphrase comes from the environment variable, so that it never
appears in \`ps\`; without it the private key is written unprotected (a warning says so).

  DIR/signing-key.json     the secret's value, {"armored", "passphrase"?} (mode 0600): put it into the
                           SecretStore at builder.signingKey of policies/secrets.yaml (airlock/signing-key):
                           file store: <dir>/airlock/signing-key.json; Vault (KV v2):
                           vault kv put secret/airlock/signing-key @DIR/signing-key.json
                           then delete DIR/signing-key.json and DIR/signing-key.asc
  DIR/signing-key.asc      the armored private key alone (mode 0600), for gpg
  DIR/signing-key.pub.asc  the public key: consumers name it in policy.json (docs/signing.md)

With --embargo the files are embargo-key.*: the secret goes to builder.embargoKey (airlock/embargo-key;
the lane is on when that secret exists) and embargo-key.pub.asc to the security team (their
--builder-key; docs/security-team.md).

Prints the key's fingerprint. Exit 0 done, 2 a usage mistake, 1 anything else.
`;

/** The SecretStore value of a key: what the builder reads at builder.signingKey / builder.embargoKey. */
export function secretValue(privateArmored: string, passphrase: string | undefined): { armored: string; passphrase?: string } {
  return { armored: privateArmored, ...(passphrase ? { passphrase } : {}) };
}

function usageError(message: string): never {
  process.stderr.write(`make-signing-key: ${message}\n${USAGE}`);
  process.exit(2);
}

async function main(): Promise<void> {
  let values: { out?: string | undefined; embargo?: boolean | undefined; name?: string | undefined; email?: string | undefined; help?: boolean | undefined };
  try {
    ({ values } = parseArgs({
      options: {
        out: { type: 'string' },
        embargo: { type: 'boolean', default: false },
        name: { type: 'string' },
        email: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (e) {
    usageError(e instanceof Error ? e.message : String(e));
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const kind = values.embargo
    ? { file: 'embargo-key', env: 'AIRLOCK_EMBARGO_KEY_PASSPHRASE', name: 'airlock trusted builder (embargo)', email: 'embargo@airlock.invalid', make: generateEmbargoKey }
    : { file: 'signing-key', env: 'AIRLOCK_SIGNING_KEY_PASSPHRASE', name: 'airlock trusted builder', email: 'builder@airlock.invalid', make: generateSigningKey };
  if (!values.out) usageError('--out DIR is required');
  const passphrase = process.env[kind.env];
  if (!passphrase) process.stderr.write(`warning: ${kind.env} is not set: the private key is written unprotected\n`);
  const key = await kind.make({ name: values.name ?? kind.name, email: values.email ?? kind.email, ...(passphrase ? { passphrase } : {}) });
  mkdirSync(values.out, { recursive: true });
  // `wx` refuses an existing file (a second run changes nothing) and never follows a link. The
  // secret's JSON, which holds the passphrase beside the key, comes last: a failure before it leaves
  // no passphrase on disk.
  writeFileSync(join(values.out, `${kind.file}.pub.asc`), key.publicArmored, { mode: 0o644, flag: 'wx' });
  writeFileSync(join(values.out, `${kind.file}.asc`), key.privateArmored, { mode: 0o600, flag: 'wx' });
  writeFileSync(join(values.out, `${kind.file}.json`), `${JSON.stringify(secretValue(key.privateArmored, passphrase))}\n`, { mode: 0o600, flag: 'wx' });
  process.stderr.write(
    `wrote ${join(values.out, `${kind.file}.json`)} (the SecretStore value), ${kind.file}.asc and ${kind.file}.pub.asc\n` +
      `once the secret is in the store, delete ${kind.file}.json and ${kind.file}.asc: together they are the key and its passphrase\n`,
  );
  process.stdout.write(`${key.fingerprint}\n`);
}

if (process.argv[1]?.endsWith('make-signing-key.ts')) {
  main().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
