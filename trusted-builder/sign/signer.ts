/**
 * The builder's signing key: loaded from armored text (as the SecretStore hands it over), checked
 * against what gpg 2.2 and skopeo 1.9 accept (docs/signing.md "Keys"), and wrapped so that
 * the private key never leaves this module. Every signature made here is parsed back and verified
 * with the public key before it is returned: a signature that a consumer would reject is an
 * `InternalError` here, not a failed pull later.
 *
 * Refused, with every reason listed in one InvalidInputError (file = the key's source label):
 * a v6 key; an algorithm other than ed25519Legacy (EdDSA), nistP256 (ECDSA) or RSA ≥ 3072 (so no
 * RFC 9580 Ed25519/Ed448 "curve25519"/"curve448" keys); a primary that cannot sign; any subkey
 * marked for signing (openpgp would prefer it, skopeo 1.9 rejects it); a key with an expiry (gpg
 * then rejects every signature the key ever made); a revoked key; a key created after `now`
 * (verifiers drop it on import); a protected key without the right passphrase.
 */
import * as openpgp from 'openpgp';
import { InternalError, InvalidInputError, type Issue } from '#shared/errors.js';

/** A loaded, checked signing key. Signatures are always made by the primary key. */
export interface SigningKey {
  /** The primary key's v4 fingerprint, 40 uppercase hex digits (what skopeo and gpg print). */
  readonly fingerprint: string;
  /** The primary key's long key id, 16 uppercase hex digits. */
  readonly keyId: string;
  /** The public key, armored: what consumers put in their policy's `keyPath`/`keyData`. */
  readonly publicArmored: string;
  /** `eddsaLegacy/ed25519Legacy`, `ecdsa/nistP256` or `rsaSign/4096` (for logs and audit). */
  readonly algorithm: string;
  readonly createdAt: Date;
  /**
   * One OpenPGP signed message, binary: one-pass-signature + literal data + exactly one signature
   * by the primary key. This is the containers "simple signing" envelope.
   */
  signMessage(data: Uint8Array, date?: Date): Promise<Uint8Array>;
  /** A detached signature over exactly `data` (binary document type), ASCII-armored. */
  signDetached(data: Uint8Array, date?: Date): Promise<string>;
}

export interface LoadSigningKeyOptions {
  /** Names the key in errors, e.g. `secret:builder/signing-key`. Never the key itself. */
  source?: string;
  /** The clock the creation time is checked against. */
  now?: Date;
}

const MIN_RSA_BITS = 3072;
const { enums } = openpgp;

/** Load and check an armored private key; see the module comment for what is refused. */
export async function loadSigningKey(armoredPrivate: string, passphrase?: string, opts: LoadSigningKeyOptions = {}): Promise<SigningKey> {
  const file = opts.source ?? 'signing key';
  const now = opts.now ?? new Date();
  const key = await unlockPrivateKey(armoredPrivate, passphrase, file);
  const issues = await keyIssues(key, now, file);
  if (issues.length > 0) throw new InvalidInputError(issues);

  const signing = createSigningKey(key);
  // Self-test: a throwaway message must round-trip through sign → parse → verify.
  await signing.signMessage(new TextEncoder().encode('airlock signing self-test'), now);
  return signing;
}

/**
 * Exactly one armored private key, decrypted with `passphrase` when it is protected. Refusals are an
 * InvalidInputError naming `file` (a label, never the key): not a private key, several, a missing
 * or wrong passphrase. Also what the embargo lane reads its keys with.
 */
export async function unlockPrivateKey(armoredPrivate: string, passphrase: string | undefined, file: string): Promise<openpgp.PrivateKey> {
  const refuse = (path: string, message: string): never => {
    throw new InvalidInputError([{ file, path, message, severity: 'error' }]);
  };
  let keys: openpgp.PrivateKey[] = [];
  try {
    keys = await openpgp.readPrivateKeys({ armoredKeys: armoredPrivate });
  } catch (e) {
    refuse('', `not an armored OpenPGP private key: ${(e as Error).message}`);
  }
  if (keys.length !== 1) refuse('', `holds ${keys.length} private keys; give exactly one`);
  const key = keys[0] as openpgp.PrivateKey;
  if (key.isDecrypted()) return key;
  if (passphrase === undefined) refuse('passphrase', 'the key is passphrase-protected and no passphrase was given');
  try {
    return await openpgp.decryptKey({ privateKey: key, passphrase });
  } catch {
    return refuse('passphrase', 'the passphrase does not decrypt the key');
  }
}

/** Every reason this key must not sign for consumers on gpg 2.2 / skopeo 1.9. */
async function keyIssues(key: openpgp.PrivateKey, now: Date, file: string): Promise<Issue[]> {
  const issues: Issue[] = [];
  const add = (path: string, message: string) => issues.push({ file, path, message, severity: 'error' });

  const version = key.keyPacket.version;
  if (version !== 4) add('primary.version', `a v${version} key: gpg 2.2 and skopeo 1.9 verify v4 keys only (never generate with config.v6Keys)`);

  const algoProblem = algorithmProblem(key.getAlgorithmInfo());
  if (algoProblem) add('primary.algorithm', algoProblem);

  const created = key.getCreationTime();
  if (created.getTime() > now.getTime()) {
    add('primary.created', `created ${created.toISOString()}, after this clock's ${now.toISOString()}: verifiers drop keys from the future on import; make keys ahead of time`);
  }

  try {
    const expires = await key.getExpirationTime();
    if (expires !== Infinity) {
      add('primary.expiry', `the key expires (${expires instanceof Date ? expires.toISOString() : String(expires)}): gpg then rejects every signature it ever made; make a key without expiry`);
    }
  } catch (e) {
    add('primary.selfSignature', `no valid self-signature: ${(e as Error).message}`);
  }

  if (await key.isRevoked(undefined, undefined, now)) add('primary.revoked', 'the key is revoked');

  try {
    const signer = await key.getSigningKey(key.getKeyID(), now);
    if (!signer.getKeyID().equals(key.getKeyID())) add('primary.flags', 'the primary key is not the signing key');
  } catch (e) {
    add('primary.flags', `the primary key cannot sign: ${(e as Error).message}`);
  }

  key.subkeys.forEach((subkey, i) => {
    const signs = subkey.bindingSignatures.some((s) => ((s.keyFlags?.[0] ?? 0) & enums.keyFlags.signData) !== 0);
    if (signs) {
      add(`subkeys[${i}]`, `subkey ${subkey.getKeyID().toHex().toUpperCase()} is marked for signing: openpgp would sign with it and skopeo 1.9 rejects subkey signatures; use a key whose primary is its only signing key`);
    }
  });
  return issues;
}

/** Why this algorithm is not one docs/signing.md "Keys" lists, or undefined when it is. */
function algorithmProblem(info: openpgp.AlgorithmInfo): string | undefined {
  const { algorithm, curve, bits } = info as openpgp.AlgorithmInfo & { bits?: number };
  if (algorithm === 'eddsaLegacy' && curve === 'ed25519Legacy') return undefined;
  if (algorithm === 'ecdsa' && curve === 'nistP256') return undefined;
  if (algorithm === 'rsaSign' || algorithm === 'rsaEncryptSign') {
    return bits !== undefined && bits >= MIN_RSA_BITS ? undefined : `RSA with ${bits ?? '?'} bits: use at least ${MIN_RSA_BITS}`;
  }
  if (algorithm === 'ed25519' || algorithm === 'ed448') {
    return `${algorithm} (RFC 9580, openpgp type 'curve25519'/'curve448'): gpg 2.2 cannot verify it; use type 'ecc' with curve 'ed25519Legacy'`;
  }
  return `${algorithm}${curve ? `/${curve}` : ''} is not one of ed25519Legacy, nistP256 or RSA ≥ ${MIN_RSA_BITS}, the keys gpg 2.2 and skopeo 1.9 were shown to accept`;
}

function describeAlgorithm(info: openpgp.AlgorithmInfo): string {
  const { algorithm, curve, bits } = info as openpgp.AlgorithmInfo & { bits?: number };
  return `${algorithm}/${curve ?? bits ?? '?'}`;
}

function createSigningKey(key: openpgp.PrivateKey): SigningKey {
  const primaryId = key.getKeyID();
  const publicKey = key.toPublic();
  const keyId = primaryId.toHex().toUpperCase();

  /** The checks a detached signature passes before it leaves: exactly one, by the primary, valid. */
  const checkDetached = async (signature: openpgp.Signature, data: Uint8Array, what: string): Promise<void> => {
    const issuers = signature.getSigningKeyIDs();
    if (signature.packets.length !== 1 || issuers.length !== 1) {
      throw new InternalError(`self-check: the ${what} carries ${signature.packets.length} signatures, expected exactly one`);
    }
    if (!issuers[0]?.equals(primaryId)) {
      throw new InternalError(`self-check: the ${what} was issued by ${issuers[0]?.toHex().toUpperCase()}, not the primary key ${keyId}`);
    }
    const message = await openpgp.createMessage({ binary: data });
    await asSelfCheck(what, async () => {
      const { signatures } = await openpgp.verify({ message, signature, verificationKeys: publicKey, expectSigned: true, format: 'binary' });
      await signatures[0]?.verified; // expectSigned: throws when invalid
    });
  };

  return {
    fingerprint: key.getFingerprint().toUpperCase(),
    keyId,
    publicArmored: publicKey.armor(),
    algorithm: describeAlgorithm(key.getAlgorithmInfo()),
    createdAt: key.getCreationTime(),

    async signMessage(data, date = new Date()) {
      const message = await openpgp.createMessage({ binary: data });
      const signed = await openpgp.sign({ message, signingKeys: key, signingKeyIDs: primaryId, format: 'binary', date });
      // Read it back as a consumer does: OPS + literal data + signature, and nothing else.
      const tags = packetTags(signed);
      const expected = [enums.packet.onePassSignature, enums.packet.literalData, enums.packet.signature];
      if (tags.join(',') !== expected.join(',')) {
        throw new InternalError(`self-check: the signed message has packets [${tags.join(', ')}], expected [${expected.join(', ')}]`);
      }
      const { data: literal, signatures } = await asSelfCheck('signed message', async () => {
        const parsed = await openpgp.readMessage({ binaryMessage: signed });
        return openpgp.verify({ message: parsed, verificationKeys: publicKey, expectSigned: true, format: 'binary' });
      });
      if (signatures.length !== 1 || !signatures[0]?.keyID.equals(primaryId)) {
        throw new InternalError(`self-check: the signed message is signed by [${signatures.map((s) => s.keyID.toHex().toUpperCase()).join(', ')}], not only the primary key ${keyId}`);
      }
      await asSelfCheck('signed message', () => signatures[0]?.verified ?? Promise.resolve(true));
      if (Buffer.compare(Buffer.from(literal), Buffer.from(data)) !== 0) {
        throw new InternalError('self-check: the signed message does not carry the payload unchanged');
      }
      return signed;
    },

    async signDetached(data, date = new Date()) {
      const message = await openpgp.createMessage({ binary: data });
      const armored = await openpgp.sign({ message, signingKeys: key, signingKeyIDs: primaryId, detached: true, format: 'armored', date });
      await checkDetached(await openpgp.readSignature({ armoredSignature: armored }), data, 'detached signature');
      return armored;
    },
  };
}

/** Run a check on our own output; any failure is our bug, reported as an InternalError. */
async function asSelfCheck<T>(what: string, check: () => Promise<T>): Promise<T> {
  try {
    return await check();
  } catch (e) {
    throw new InternalError(`self-check: the ${what} does not verify with our own public key: ${(e as Error).message}`, { cause: e });
  }
}

/** A detached armored signature over `bytes` by `key`'s primary (e.g. for a provenance statement). */
export function signDetached(key: SigningKey, bytes: Uint8Array, date?: Date): Promise<string> {
  return key.signDetached(bytes, date);
}

/**
 * The tags of the top-level packets in `bytes` (RFC 4880 §4.2: old- and new-format headers,
 * partial body lengths). An independent reading of what we produced, not openpgp's own parser,
 * which hands trailing signature packets over lazily. Throws on anything truncated or malformed.
 */
export function packetTags(bytes: Uint8Array): number[] {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tags: number[] = [];
  let i = 0;
  const take = (n: number): number => {
    if (i + n > buf.length) throw new InternalError('self-check: truncated OpenPGP packet');
    const at = i;
    i += n;
    return at;
  };
  while (i < buf.length) {
    const header = buf[take(1)] as number;
    if ((header & 0x80) === 0) throw new InternalError('self-check: not an OpenPGP packet header');
    if (header & 0x40) {
      tags.push(header & 0x3f);
      for (let partial = true; partial; ) {
        const l0 = buf[take(1)] as number;
        partial = l0 >= 224 && l0 < 255;
        let length: number;
        if (l0 < 192) length = l0;
        else if (l0 < 224) length = ((l0 - 192) << 8) + (buf[take(1)] as number) + 192;
        else if (l0 === 255) length = buf.readUInt32BE(take(4));
        else length = 1 << (l0 & 0x1f);
        take(length);
      }
    } else {
      tags.push((header >> 2) & 0x0f);
      const lengthType = header & 0x03;
      if (lengthType === 3) throw new InternalError('self-check: indeterminate-length OpenPGP packet');
      const size = [1, 2, 4][lengthType] as number;
      take(buf.readUIntBE(take(size), size));
    }
  }
  return tags;
}
