/**
 * The trusted builder's configuration: its own file, port, data dir and policies; nothing shared
 * with the untrusted CI (docs/architecture.md "Two tiers": a separate deploy). Validated once at startup against a
 * strict schema (every problem listed), deep-frozen and handed to constructors. No secret is in
 * this file: secrets come from the SecretStore it names (Vault, or a directory of 0600 files).
 */
import { existsSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deepFreeze } from '#shared/deep-freeze.js';
import { readConfigFile, resolvedNote } from '#shared/config-file.js';
import { z } from 'zod';
import { InvalidInputError, type Issue } from '#shared/errors.js';
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

/** The policies this checkout ships, named in the message when a configured one is missing. */
const SHIPPED_POLICIES = fileURLToPath(new URL('../policies/', import.meta.url));

/**
 * Read, validate and check `file`: every path it names (or defaults to) that the builder reads at
 * start must exist, or the error names the path, what it was resolved against, and the fix.
 */
export function loadBuilderConfig(file: string): Readonly<BuilderConfig> {
  const raw = readConfigFile(file);
  const baseDir = dirname(resolve(file));
  const config = buildBuilderConfig(raw, file, baseDir);
  const issues = pathProblems(config, raw, file, baseDir);
  if (issues.length > 0) throw new InvalidInputError(issues);
  return config;
}

function pathProblems(c: Readonly<BuilderConfig>, raw: unknown, file: string, baseDir: string): Issue[] {
  const given = (path: readonly string[]): string | undefined => {
    let at: unknown = raw;
    for (const k of path) at = at !== null && typeof at === 'object' ? (at as Record<string, unknown>)[k] : undefined;
    return typeof at === 'string' ? at : undefined;
  };
  const issues: Issue[] = [];
  const check = (path: readonly string[], resolved: string, kind: 'file' | 'directory', optional = false): void => {
    const written = given(path);
    if (optional && written === undefined) return;
    let problem: string | undefined;
    if (!existsSync(resolved)) problem = 'does not exist';
    else if (kind === 'directory' && !statSync(resolved).isDirectory()) problem = 'is not a directory';
    else if (kind === 'file' && !statSync(resolved).isFile()) problem = 'is not a file';
    if (!problem) return;
    let message = `${resolved} ${problem}${resolvedNote(written, baseDir, file)}`;
    if (path[0] === 'policies') {
      const shipped = join(SHIPPED_POLICIES, resolved.slice(resolved.lastIndexOf('/') + 1));
      if (existsSync(shipped)) message += `; the shipped one is ${shipped}`;
    }
    issues.push({ file, path: path.join('.'), message, severity: 'error' });
  };
  check(['policies', 'promotion'], c.policies.promotion, 'file');
  check(['policies', 'secrets'], c.policies.secrets, 'file');
  if (c.policies.job) check(['policies', 'job'], c.policies.job, 'file');
  // Read only when the embargo lane is on (its key is in the SecretStore): checked when written.
  check(['policies', 'securityTeam'], c.policies.securityTeam, 'directory', true);
  if (c.secrets.kind === 'file') check(['secrets', 'dir'], c.secrets.dir, 'directory');
  else {
    check(['secrets', 'roleIdFile'], c.secrets.roleIdFile, 'file');
    check(['secrets', 'secretIdFile'], c.secrets.secretIdFile, 'file');
  }
  return issues;
}
