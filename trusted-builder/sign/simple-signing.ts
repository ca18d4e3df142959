/**
 * Containers "simple signing" (containers/image `docs/containers-signature.5.md`; the facts this
 * machine established are in docs/signing.md): the JSON payload that names an image by
 * its fully expanded reference and manifest digest, the binary OpenPGP signed message around it,
 * and the lookaside tree where consumers fetch signatures from:
 *
 *   <lookaside root>/<repository path without host>@sha256=<hex>/signature-<n>    n = 1, 2, …
 *
 * Readers (skopeo, podman) fetch signature-1, signature-2, … and stop at the first 404, so the
 * writer never leaves a gap and never exposes a half-written file.
 */
import { randomBytes } from 'node:crypto';
import { link, mkdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { syncDir, writeDurably } from '../durable-file.js';
import { InvalidInputError, StorageFailedError } from '#shared/errors.js';
import { absentAsUndefined } from '#shared/absent.js';
import { parseOrThrow } from '#shared/schemas/issues.js';
import type { SigningKey } from './signer.js';

export const SIMPLE_SIGNING_TYPE = 'atomic container signature';

const DOMAIN = String.raw`(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?`;
const PATH_COMPONENT = String.raw`[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`;
const REPO_PATH = `${PATH_COMPONENT}(?:/${PATH_COMPONENT})*`;
const TAG = String.raw`[\w][\w.-]{0,127}`;
/** host[:port]/path:tag, where the host is explicit (has a dot or a port, or is localhost). */
const FULL_REFERENCE = new RegExp(`^(${DOMAIN})/(${REPO_PATH}):(${TAG})$`);
const MAX_NAME_LENGTH = 255;

/** `sha256:` + 64 lowercase hex: a manifest digest as the registry returns it. */
export const ManifestDigest = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'must be sha256:<64 lowercase hex>');

/** A repository path without its registry host, e.g. `team/app`. */
export const RepositoryPath = z.string().max(MAX_NAME_LENGTH).regex(new RegExp(`^${REPO_PATH}$`), 'must be a repository path without host, tag or digest, e.g. team/app');

/** A fully expanded docker reference with a tag: `127.0.0.1:5000/team/app:1a2b3c`. */
export const DockerReference = z
  .string()
  .refine((s) => splitDockerReference(s) !== undefined, 'must be a fully expanded reference with host and tag, e.g. 127.0.0.1:5000/team/app:1a2b3c');

/** Split `host/path:tag`; undefined unless the host is explicit and a tag is present. */
export function splitDockerReference(ref: string): { host: string; repository: string; tag: string } | undefined {
  const m = FULL_REFERENCE.exec(ref);
  if (!m) return undefined;
  const [, host = '', repository = '', tag = ''] = m;
  const explicitHost = host.includes('.') || host.includes(':') || host === 'localhost';
  if (!explicitHost || `${host}/${repository}`.length > MAX_NAME_LENGTH) return undefined;
  return { host, repository, tag };
}

/** The payload exactly as containers/image writes and reads it (top level and `critical` closed). */
export const SimpleSigningPayload = z.strictObject({
  critical: z.strictObject({
    identity: z.strictObject({ 'docker-reference': DockerReference }),
    image: z.strictObject({ 'docker-manifest-digest': ManifestDigest }),
    type: z.literal(SIMPLE_SIGNING_TYPE),
  }),
  optional: z.strictObject({ creator: z.string().min(1).max(256), timestamp: z.number().int().nonnegative() }),
});
export type SimpleSigningPayload = z.infer<typeof SimpleSigningPayload>;

export interface SimpleSigningClaims {
  /** Fully expanded, with tag: the name consumers pull. */
  dockerReference: string;
  /** The `Docker-Content-Digest` of the manifest as pushed (schema 2 / OCI, never a schema 1 conversion). */
  manifestDigest: string;
  /** e.g. `airlock 0.1.0`. */
  creator: string;
  /** When the signature is made; seconds are kept, fractions dropped. */
  timestamp: Date | number;
}

/** The payload bytes for one image. Key order follows containers/image's own output. */
export function simpleSigningPayload(claims: SimpleSigningClaims): Buffer {
  const seconds = claims.timestamp instanceof Date ? Math.floor(claims.timestamp.getTime() / 1000) : claims.timestamp;
  const payload = parseOrThrow(
    SimpleSigningPayload,
    {
      critical: {
        identity: { 'docker-reference': claims.dockerReference },
        image: { 'docker-manifest-digest': claims.manifestDigest },
        type: SIMPLE_SIGNING_TYPE,
      },
      optional: { creator: claims.creator, timestamp: seconds },
    },
    'simple signing payload',
  );
  return Buffer.from(JSON.stringify(payload), 'utf8');
}

/** Parse payload bytes (ours or a verifier's view of them); throws InvalidInputError. */
export function parseSimpleSigningPayload(bytes: Uint8Array): SimpleSigningPayload {
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (e) {
    throw new InvalidInputError([{ file: 'simple signing payload', path: '', message: `not JSON: ${(e as Error).message}`, severity: 'error' }]);
  }
  return parseOrThrow(SimpleSigningPayload, json, 'simple signing payload');
}

/**
 * The image signature: one binary OpenPGP signed message over `payload`, by the primary key.
 * Only a well-formed simple-signing payload is signed, so this key never signs arbitrary bytes
 * that a consumer could mistake for an image claim. The key's self-checks run on the result.
 */
export async function signImage(key: SigningKey, payload: Uint8Array, date?: Date): Promise<Buffer> {
  parseSimpleSigningPayload(payload);
  return Buffer.from(await key.signMessage(payload, date));
}

/** `team/app@sha256=<hex>`: the lookaside directory of one manifest, relative to the root. */
export function lookasideDir(repository: string, manifestDigest: string): string {
  const repo = parseOrThrow(RepositoryPath, repository, 'lookaside');
  const digest = parseOrThrow(ManifestDigest, manifestDigest, 'lookaside');
  return `${repo}@${digest.replace(':', '=')}`;
}

export interface LookasideWrite {
  /** The signature's index: `signature-<n>`. */
  n: number;
  /** Absolute path of the file. */
  path: string;
  /** false when these exact bytes were already published (a retried publish). */
  created: boolean;
}

/**
 * Publish `signature` as the next `signature-<n>` for `repository@manifestDigest` under `root`.
 * Idempotent: the same bytes already present are not added twice. Atomic and race-safe: the file
 * is written and fsynced under a temporary name in the same directory, then hard-linked to its
 * final name, which fails if another writer took that n first (then the next n is tried); readers
 * therefore see either no file or the whole file, and n always continues without a gap.
 */
export async function writeLookaside(root: string, repository: string, manifestDigest: string, signature: Uint8Array): Promise<LookasideWrite> {
  const dir = join(root, lookasideDir(repository, manifestDigest));
  const bytes = Buffer.from(signature);
  try {
    await mkdir(dir, { recursive: true });
    let n = 1;
    for (;;) {
      const existing = await absentAsUndefined(readFile(join(dir, `signature-${n}`)));
      if (existing === undefined) break;
      if (existing.equals(bytes)) return { n, path: join(dir, `signature-${n}`), created: false };
      n++;
    }

    const tmp = join(dir, `.signature-tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    await writeDurably(tmp, bytes);
    try {
      for (;;) {
        const path = join(dir, `signature-${n}`);
        try {
          await link(tmp, path);
          await syncDir(dir);
          return { n, path, created: true };
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
          // A concurrent writer took n: if it published the same bytes, that is ours too.
          if ((await absentAsUndefined(readFile(path)))?.equals(bytes)) return { n, path, created: false };
          n++;
        }
      }
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  } catch (e) {
    throw new StorageFailedError(`could not publish a signature under ${dir}: ${(e as Error).message}`, { cause: e });
  }
}

