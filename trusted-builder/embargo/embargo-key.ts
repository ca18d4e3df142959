/**
 * The builder's embargo key: a separate OpenPGP key (never the image-signing key) that security
 * team members encrypt their requests to, that signs the builder's answers, and that decrypts and
 * signs the embargo store's files. Read from the SecretStore at `builder.embargoKey` of
 * policies/secrets.yaml, `{armored, passphrase?}`; when that secret is absent the lane is off.
 *
 * Refused (InvalidInputError, every reason, naming the secret path, never the key): not exactly one
 * private key; a wrong or missing passphrase; a v6 key (the store's files must stay readable with
 * gpg 2.2, see team.ts); a revoked or expired key; no valid encryption subkey; a primary that
 * cannot sign. The decrypted private key is used only by this directory's modules (requests,
 * answers, sealed files) and is never logged or written anywhere.
 */
import * as openpgp from 'openpgp';
import { InvalidInputError, type Issue } from '#shared/errors.js';
import { unlockPrivateKey } from '../sign/signer.js';

export interface EmbargoKey {
  /** The primary key's fingerprint, 40 uppercase hex digits. */
  readonly fingerprint: string;
  readonly publicKey: openpgp.PublicKey;
  /** What the security team passes as `--builder-key`. */
  readonly publicArmored: string;
  /** The decrypted private key, for this directory's modules only. */
  readonly privateKey: openpgp.PrivateKey;
}

export async function loadEmbargoKey(armored: string, passphrase: string | undefined, opts: { source?: string; now?: Date } = {}): Promise<EmbargoKey> {
  const file = opts.source ?? 'embargo key';
  const now = opts.now ?? new Date();
  const key = await unlockPrivateKey(armored, passphrase, file);
  const issues: Issue[] = [];
  const add = (path: string, message: string): void => {
    issues.push({ file, path, message, severity: 'error' });
  };
  if (key.keyPacket.version !== 4) add('primary.version', `a v${key.keyPacket.version} key: use a v4 key so that the store's files stay readable with gpg 2.2`);
  if (await key.isRevoked(undefined, undefined, now)) add('primary.revoked', 'the key is revoked');
  else {
    try {
      await key.verifyPrimaryKey(now);
      await key.getEncryptionKey(undefined, now).catch((e: unknown) => add('encryption', `no valid encryption subkey: ${(e as Error).message}`));
      await key.getSigningKey(undefined, now).catch((e: unknown) => add('signing', `cannot sign: ${(e as Error).message}`));
    } catch (e) {
      add('primary', `not valid now: ${(e as Error).message}`);
    }
  }
  if (issues.length > 0) throw new InvalidInputError(issues);
  const publicKey = key.toPublic();
  return Object.freeze({ fingerprint: key.getFingerprint().toUpperCase(), publicKey, publicArmored: publicKey.armor(), privateKey: key });
}
