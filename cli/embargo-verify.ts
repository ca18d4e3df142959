/**
 * `airlock embargo verify ID`: the security team's own check of a private (patched) image, without
 * SRE and without a copy of the builder's private lookaside. The builder answers (sealed to the
 * member, like every embargo answer) the last patched image's reference and manifest digest with
 * the image's simple-signing signature, its provenance statement and that statement's detached
 * signature; this module checks them here, against the builder's image signing key (the public
 * key consumers verify with, `signing-key.pub.asc`):
 * - the signature is one good OpenPGP signed message by that key whose payload's
 *   `docker-manifest-digest` is the image's digest and `docker-reference` its reference;
 * - the provenance's detached signature is good by that key, its subject is the image (the lane's
 *   registry and `private/…` repository, the same digest), its source commit is the public commit
 *   the image was built on, and its embargoed patches include this embargo's patch digest.
 * Any mismatch is a SignatureInvalidError naming what differs. Pure but for OpenPGP.
 */
import { createHash } from 'node:crypto';
import * as openpgp from 'openpgp';
import { InvalidInputError, SignatureInvalidError } from '#shared/errors.js';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { lookasideDir, parseSimpleSigningPayload, splitDockerReference } from '../trusted-builder/sign/simple-signing.js';
import type { EmbargoResult } from '../trusted-builder/embargo/wire.js';

type Artifacts = Extract<EmbargoResult, { action: 'artifacts' }>;

export interface VerifiedImage {
  id: string;
  reference: string;
  digest: string;
  commit: string;
  /** The signing key's fingerprint (upper-case hex). */
  signer: string;
  /** The provenance's subject: `name@sha256:…`. */
  subject: string;
  /** The embargoed patches the provenance lists, `sha256:…`. */
  patches: string[];
  /** sha256 of each artifact as received. */
  files: { name: string; sha256: string }[];
  /** Where `--lookaside` wrote the signature (for skopeo). */
  lookaside?: string;
}

/**
 * Write verified artifacts under `root` as containers/image reads a lookaside:
 * `<repository>@sha256=<hex>/signature-1`, the provenance (and its `.asc`) next to it.
 * Returns the signature's path.
 */
export async function writeVerifiedLookaside(a: Artifacts, root: string): Promise<string> {
  const ref = splitDockerReference(a.build.reference);
  if (!ref) throw new InvalidInputError([{ file: 'answer', path: 'build.reference', message: `not a full image reference: ${a.build.reference}`, severity: 'error' }]);
  const dir = join(root, lookasideDir(ref.repository, a.build.digest));
  await mkdir(dir, { recursive: true });
  const bytes = (name: string): Buffer => Buffer.from(a.files.find((f) => f.name === name)!.base64, 'base64');
  await writeFile(join(dir, 'provenance.json'), bytes('provenance.json'));
  await writeFile(join(dir, 'provenance.json.asc'), bytes('provenance.json.asc'));
  await writeFile(join(dir, 'signature-1'), bytes('image.signature'));
  return join(dir, 'signature-1');
}

/** Read the builder's image signing public key (armored); an InvalidInputError naming `source` otherwise. */
export async function readSigningPublicKey(armored: string, source: string): Promise<openpgp.PublicKey> {
  let key: openpgp.Key;
  try {
    key = await openpgp.readKey({ armoredKey: armored });
  } catch (e) {
    throw new InvalidInputError([{ file: source, path: 'signing-key', message: `not an armored OpenPGP public key (${(e as Error).message}): pass the builder's signing-key.pub.asc`, severity: 'error' }]);
  }
  if (key.isPrivate()) throw new InvalidInputError([{ file: source, path: 'signing-key', message: "is a private key: pass the builder's public signing key (signing-key.pub.asc)", severity: 'error' }]);
  return key as openpgp.PublicKey;
}

export async function verifyArtifacts(a: Artifacts, signingKey: openpgp.PublicKey): Promise<VerifiedImage> {
  const bad = (what: string): SignatureInvalidError => new SignatureInvalidError(`embargo ${a.id}, image ${a.build.reference}@${a.build.digest}: ${what}`);
  const file = (name: string): Buffer => {
    const f = a.files.find((x) => x.name === name);
    if (!f) throw bad(`the builder sent no ${name}`);
    return Buffer.from(f.base64, 'base64');
  };
  const signer = signingKey.getFingerprint().toUpperCase();

  // The image signature: a signed message by the signing key, claiming this digest and reference.
  let payload: Uint8Array;
  try {
    const message = await openpgp.readMessage({ binaryMessage: file('image.signature') });
    const v = await openpgp.verify({ message, verificationKeys: [signingKey], expectSigned: true, format: 'binary' });
    payload = v.data;
  } catch (e) {
    throw bad(`the image signature does not verify with the signing key ${signer}: ${(e as Error).message}`);
  }
  let claims;
  try {
    claims = parseSimpleSigningPayload(payload).critical;
  } catch (e) {
    throw bad(`the image signature's payload is not a simple-signing claim: ${(e as Error).message}`);
  }
  if (claims.image['docker-manifest-digest'] !== a.build.digest) throw bad(`the image signature is for ${claims.image['docker-manifest-digest']}, not ${a.build.digest}`);
  if (claims.identity['docker-reference'] !== a.build.reference) throw bad(`the image signature names ${claims.identity['docker-reference']}, not ${a.build.reference}`);

  // The provenance: detached signature by the same key; subject, source and patches as expected.
  const statement = file('provenance.json');
  try {
    const message = await openpgp.createMessage({ binary: statement });
    const signature = await openpgp.readSignature({ armoredSignature: file('provenance.json.asc').toString('utf8') });
    const v = await openpgp.verify({ message, signature, verificationKeys: [signingKey], expectSigned: true });
    await v.signatures[0]!.verified;
  } catch (e) {
    throw bad(`the provenance's signature does not verify with the signing key ${signer}: ${(e as Error).message}`);
  }
  let p: Provenance;
  try {
    p = JSON.parse(statement.toString('utf8')) as Provenance;
  } catch (e) {
    throw bad(`the provenance is not JSON: ${(e as Error).message}`);
  }
  const subject = p.subject?.[0];
  const ref = splitDockerReference(a.build.reference);
  const wantName = ref ? `${ref.host}/${ref.repository}` : a.build.reference;
  if (!subject || `sha256:${subject.digest?.sha256 ?? ''}` !== a.build.digest) throw bad(`the provenance's subject digest is ${subject?.digest?.sha256 ? `sha256:${subject.digest.sha256}` : 'missing'}, not the image's ${a.build.digest}`);
  if (subject.name !== wantName) throw bad(`the provenance's subject is ${String(subject.name)}, not ${wantName}`);
  const params = p.predicate?.buildDefinition?.externalParameters;
  if (params?.source?.commit !== a.build.commit) throw bad(`the provenance's source commit is ${String(params?.source?.commit)}, not ${a.build.commit}`);
  const patches = (params.embargoedPatches ?? []).map((x) => `sha256:${x.digest?.sha256 ?? ''}`);
  if (!patches.includes(a.digest)) throw bad(`the provenance does not list this embargo's patch ${a.digest} among the embargoed patches`);

  return {
    id: a.id,
    reference: a.build.reference,
    digest: a.build.digest,
    commit: a.build.commit,
    signer,
    subject: `${wantName}@${a.build.digest}`,
    patches,
    files: a.files.map((f) => ({ name: f.name, sha256: `sha256:${createHash('sha256').update(Buffer.from(f.base64, 'base64')).digest('hex')}` })),
  };
}

export function formatVerified(v: VerifiedImage): string {
  return [
    `embargo ${v.id}: the patched image verifies`,
    `image:      ${v.reference}@${v.digest}`,
    `commit:     ${v.commit}`,
    `signed by:  ${v.signer} (image signature and provenance)`,
    `subject:    ${v.subject}`,
    `patches:    ${v.patches.join(' ')}`,
    ...v.files.map((f) => `artifact:   ${f.name} ${f.sha256}`),
    ...(v.lookaside ? [`lookaside:  ${v.lookaside}`] : []),
    '',
  ].join('\n');
}

/** The fields of the statement checked here (provenance.ts writes it); anything may be missing in what arrives. */
interface Provenance {
  subject?: { name?: string; digest?: { sha256?: string } }[];
  predicate?: { buildDefinition?: { externalParameters?: { source?: { commit?: string }; embargoedPatches?: { digest?: { sha256?: string } }[] } } };
}
