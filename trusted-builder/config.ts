/**
 * The trusted builder's configuration: its own file, port, data dir and policies; nothing shared
 * with the untrusted CI (docs/architecture.md "Two tiers": a separate deploy). Validated once at startup against a
 * strict schema (every problem listed), deep-frozen and handed to constructors. No secret is in
 * this file: secrets come from the SecretStore it names (Vault, or a directory of 0600 files).
 */
import { dirname, isAbsolute, resolve } from 'node:path';
import { deepFreeze } from '#shared/deep-freeze.js';
import { readConfigFile } from '#shared/config-file.js';
import { z } from 'zod';
import { InvalidInputError } from '#shared/errors.js';
import { zodIssues } from '#shared/schemas/issues.js';

const FileSecrets = z.strictObject({ kind: z.literal('file'), dir: z.string().min(1) });
const VaultSecrets = z.strictObject({
  kind: z.literal('vault'),
  /** e.g. https://vault.internal:8200 */
  address: z.string().url(),
  /** The KV v2 mount. */
  mount: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/).default('secret'),
  /** Files holding the AppRole role_id and secret_id (0600). */
  roleIdFile: z.string().min(1),
  secretIdFile: z.string().min(1),
});

export const BuilderConfig = z.strictObject({
  version: z.literal(1),
  listen: z.strictObject({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(8090) }).default({ host: '127.0.0.1', port: 8090 }),
  dataDir: z.string().min(1),
  /** Where the job runner keeps its workspace files (as for the CI). */
  runnerStateDir: z.string().min(1).default('/var/lib/airlock'),
  policies: z
    .strictObject({
      promotion: z.string().default('policies/promotion.yaml'),
      secrets: z.string().default('policies/secrets.yaml'),
      /** Bounds of the re-run test jobs; default: policies/untrusted-job.yaml's. */
      job: z.string().optional(),
      /** The security team's public keys, one `<name>.asc` per member (trusted-builder/embargo/team.ts). */
      securityTeam: z.string().default('policies/security-team'),
    })
    .default({ promotion: 'policies/promotion.yaml', secrets: 'policies/secrets.yaml', securityTeam: 'policies/security-team' }),
  secrets: z.discriminatedUnion('kind', [FileSecrets, VaultSecrets]),
  /** Watch the protected branches of every policy project this often (0: hints only). */
  pollEveryMs: z.number().int().min(0).default(0),
  /**
   * Where break warnings of embargoed patches go: a webhook of the security team (https, or http
   * to loopback), posted a signed payload naming only the embargo id, the commit and the step.
   */
  embargoWebhook: z.string().url().max(2048).optional(),
});
export type BuilderConfig = z.infer<typeof BuilderConfig>;

/** Validate a config value; relative paths resolve against `baseDir`. */
export function buildBuilderConfig(input: unknown, file: string, baseDir = process.cwd()): Readonly<BuilderConfig> {
  const r = BuilderConfig.safeParse(input);
  if (!r.success) throw new InvalidInputError(zodIssues(r.error, file));
  const c = r.data;
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(baseDir, p));
  c.dataDir = abs(c.dataDir);
  c.runnerStateDir = abs(c.runnerStateDir);
  c.policies.promotion = abs(c.policies.promotion);
  c.policies.secrets = abs(c.policies.secrets);
  if (c.policies.job) c.policies.job = abs(c.policies.job);
  c.policies.securityTeam = abs(c.policies.securityTeam);
  if (c.secrets.kind === 'file') c.secrets.dir = abs(c.secrets.dir);
  else {
    c.secrets.roleIdFile = abs(c.secrets.roleIdFile);
    c.secrets.secretIdFile = abs(c.secrets.secretIdFile);
  }
  return deepFreeze(c);
}

export function loadBuilderConfig(file: string): Readonly<BuilderConfig> {
  return buildBuilderConfig(readConfigFile(file), file, dirname(resolve(file)));
}
