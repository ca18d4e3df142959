/**
 * sign: what the registry serves, signed. An in-toto/SLSA provenance statement of the build
 * (source, policy, base images, locked dependencies, steps; the review or the embargoed patches as the lane says) with
 * a detached signature next to it in the lane's lookaside, and last the simple-signing signature
 * of the image digest: once that is there, everything it vouches for is in place.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BaseImagePin } from '../../build/image-build.js';
import type { PushResult } from '../../publish/registry.js';
import { provenanceStatement } from '../../sign/provenance.js';
import type { SigningKey } from '../../sign/signer.js';
import { lookasideDir, signImage, simpleSigningPayload, writeLookaside } from '../../sign/simple-signing.js';
import type { Lane, ProvenanceStep } from './lane.js';

export interface SignPort {
  signingKey: SigningKey;
  builderId: string;
  policyDigest: string;
  now: () => number;
}

export interface Signed {
  reference: string;
  digest: string;
  /** The simple-signing signature's path in the lookaside. */
  signature: string;
  /** The provenance statement's path (its detached signature is `<path>.asc`). */
  provenance: string;
}

export async function sign(p: SignPort, l: Lane, pushed: PushResult, bases: readonly BaseImagePin[], steps: readonly ProvenanceStep[]): Promise<Signed> {
  const statement = provenanceStatement({
    // Named in the registry the lane pushed to (as the signature's docker reference is: pushed.reference).
    subject: { name: `${l.registry.host}/${l.repository}`, digest: pushed.digest },
    builderId: p.builderId,
    source: { repo: l.project.url, commit: l.commit },
    policyDigest: p.policyDigest,
    baseImages: bases.map((b) => ({ name: b.name, digest: b.digest })),
    steps: l.provenance.steps(steps),
    startedOn: l.startedOn,
    finishedOn: new Date(p.now()),
    invocationId: randomUUID(),
    ...(l.dependencies && l.dependencies.provenance.length > 0 ? { dependencies: l.dependencies.provenance.map((x) => ({ ...x, digest: { ...x.digest } })) } : {}),
    ...(l.provenance.patches ? { patches: l.provenance.patches.map((digest) => ({ digest })) } : {}),
    ...(l.provenance.review ? { review: l.provenance.review } : {}),
  });
  const dir = join(l.lookasideRoot, lookasideDir(l.repository, pushed.digest));
  await mkdir(dir, { recursive: true });
  const provenance = join(dir, 'provenance.json');
  await writeFile(provenance, statement);
  await writeFile(`${provenance}.asc`, await p.signingKey.signDetached(statement));
  // The image signature last: once it is public, everything it vouches for is in place.
  const payload = simpleSigningPayload({ dockerReference: pushed.reference, manifestDigest: pushed.digest, creator: 'airlock trusted-builder', timestamp: Math.floor(p.now() / 1000) });
  const signature = await writeLookaside(l.lookasideRoot, l.repository, pushed.digest, await signImage(p.signingKey, payload));
  await l.record('signed', { digest: pushed.digest, key: p.signingKey.fingerprint, signature: signature.path, provenance });
  l.phase('sign');
  return { reference: pushed.reference, digest: pushed.digest, signature: signature.path, provenance };
}
