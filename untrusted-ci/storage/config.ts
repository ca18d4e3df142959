/**
 * The `artifactStore` section of a service's config, and the one place a concrete ArtifactStore is
 * chosen (docs/conventions.md "Composition root": the composition root calls `createArtifactStore`, nothing else names a class).
 *
 *   artifactStore: { kind: fs, root: /var/lib/airlock/artifacts }
 *   artifactStore:
 *     kind: s3
 *     endpoint: http://127.0.0.1:9000      # absent: AWS
 *     bucket: airlock-artifacts
 *     prefix: ci/                           # optional: share a bucket
 *     credentialsFile: /etc/airlock/s3.yaml # { accessKeyId, secretAccessKey }, mode 0600
 *
 * S3 keys are never written in the main config: it is logged, diffed and shown around, so it
 * names a file instead (JSON or YAML). Without `credentialsFile` the SDK's default chain is used
 * (AWS_* environment at startup, instance role).
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { z } from 'zod';
import { InvalidInputError } from '#shared/errors.js';
import { zodIssues } from '#shared/schemas/issues.js';
import { parseYaml } from '#shared/yaml.js';
import { keyProblems, type ArtifactStore } from './artifact-store.js';
import { FsArtifactStore } from './fs-artifact-store.js';
import { S3ArtifactStore } from './s3-artifact-store.js';

/** A local directory. Relative paths are resolved against the working directory when the store is made. */
export const FsStoreConfig = z.object({ kind: z.literal('fs'), root: z.string().min(1).max(4096) }).strict();

/** An S3 (or S3-compatible) bucket. */
export const S3StoreConfig = z
  .object({
    kind: z.literal('s3'),
    /** http(s) URL of an S3-compatible server; absent: AWS. */
    endpoint: z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' }).optional(),
    region: z.string().min(1).max(64).default('us-east-1'),
    /** S3 bucket naming rules: 3-63 of a-z 0-9 . - */
    bucket: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'bucket names are 3-63 characters of a-z 0-9 . - starting and ending with a letter or digit'),
    /** Prepended to every key, e.g. `ci/`, so installations can share a bucket. */
    prefix: z
      .string()
      .max(256)
      .refine((p) => p === '' || keyProblems(p.replace(/\/$/, '')).length === 0, 'must be a relative path like ci/ (no //, . or .. segments)')
      .optional(),
    /** true for MinIO and s3rver (`http://host/bucket/key`); false for AWS virtual-host style. */
    forcePathStyle: z.boolean().default(true),
    /** Path to a JSON or YAML file `{ accessKeyId, secretAccessKey }`; absent: the SDK's default chain. */
    credentialsFile: z.string().min(1).max(4096).optional(),
  })
  .strict();

/** Which store, and where: `kind` decides. */
export const ArtifactStoreConfig = z.discriminatedUnion('kind', [FsStoreConfig, S3StoreConfig]);
export type ArtifactStoreConfig = z.infer<typeof ArtifactStoreConfig>;
export type ArtifactStoreConfigInput = z.input<typeof ArtifactStoreConfig>;

/** The content of `credentialsFile`. */
export const S3Credentials = z
  .object({ accessKeyId: z.string().min(1).max(256), secretAccessKey: z.string().min(1).max(1024) })
  .strict();
export type S3Credentials = z.infer<typeof S3Credentials>;

/** Read and check a credentials file; InvalidInputError naming the file (never the values) when it is unreadable or malformed. */
export function loadS3Credentials(file: string): S3Credentials {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InvalidInputError([{ file, path: '', message: `cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, severity: 'error' }]);
  }
  const y = parseYaml(text, file);
  if (y.issues.length > 0) throw new InvalidInputError(y.issues);
  const r = S3Credentials.safeParse(y.value);
  if (!r.success) throw new InvalidInputError(zodIssues(r.error, file));
  return r.data;
}

/** The store a parsed config names. Reads `credentialsFile` (synchronously: this runs at startup). */
export function createArtifactStore(config: ArtifactStoreConfig): ArtifactStore {
  switch (config.kind) {
    case 'fs':
      return new FsArtifactStore(resolve(config.root));
    case 's3': {
      const credentials = config.credentialsFile !== undefined ? loadS3Credentials(config.credentialsFile) : {};
      return new S3ArtifactStore({
        region: config.region,
        bucket: config.bucket,
        forcePathStyle: config.forcePathStyle,
        ...(config.endpoint !== undefined ? { endpoint: config.endpoint } : {}),
        ...(config.prefix !== undefined ? { prefix: config.prefix } : {}),
        ...credentials,
      });
    }
  }
}
