/**
 * `policies/secrets.yaml`: which secrets the trusted builder reads, and which a project's own
 * steps may get. SRE-owned; a repository cannot widen it (its `.airlock.yaml` is never consulted
 * for grants).
 * - `builder`: the paths the builder itself uses: the signing key, the registry credentials, the
 *   HMAC secret that authenticates promotion hints and, optionally, the embargo lane's key (when the
 *   policy names none, or the store has no secret at that path, the lane is off), the login of the
 *   embargo lane's own registry (needed when the lane is on) and the login of
 *   the builder's page (likewise: no such secret, no page).
 * - `grants`: per project, per named step (a job name), the command that step must run and the
 *   secret paths it may then read. The command is part of the grant because the repository writes
 *   `.airlock.yaml`: a job renamed or rewritten there gets nothing, and its promotion is refused.
 *   A granted secret reaches the step only as a file on a tmpfs, never as an environment variable
 *   or an image layer; every value in use is searched for in logs, artifacts and image layers
 *   before anything is published, and the public provenance records no result of such a step.
 */
import { z } from 'zod';
import { loadPolicyFile } from '#shared/policy/policy-file.js';

/** A secret path as the SecretStore takes it: `team/app/npm`, no `..`, no leading `/`. */
export const SecretPath = z
  .string()
  .regex(/^[a-z0-9][a-z0-9/_.-]{0,199}$/, 'a secret path (a-z 0-9 / _ . -, starting with a letter or digit)')
  .refine((p) => !p.split('/').some((s) => s === '' || s === '.' || s === '..'), 'no empty, . or .. segment');

/** A command as `.airlock.yaml` writes it: a string (run with `sh -c`) or an argv. */
const Command = z.union([z.string().min(1).max(64 * 1024), z.array(z.string().max(64 * 1024)).min(1).max(1024)]);

/** One step's grant: the exact command it must run, and what it may read then. */
export const Grant = z.strictObject({ command: Command, secrets: z.array(SecretPath).min(1).max(32) });
export type Grant = z.infer<typeof Grant>;

export const SecretsPolicy = z.strictObject({
  version: z.literal(1),
  builder: z.strictObject({
    /** `{armored, passphrase?}`: the OpenPGP key that signs images and provenance. */
    signingKey: SecretPath,
    /** `{username, password}` for the private registry. */
    registry: SecretPath,
    /** `{secret}`: HMAC key of promotion hints (shared with the CI's hint sender). */
    hintSecret: SecretPath,
    /**
     * `{armored, passphrase?}`: the embargo lane's OpenPGP key (encryption-capable, not the signing
     * key; trusted-builder/embargo/embargo-key.ts). Optional: without it the lane is off.
     */
    embargoKey: SecretPath.optional(),
    /**
     * `{username, password}` for the embargo lane's own registry (the promotion policy's
     * `embargoRegistry`), where patched images are pushed. Needed when the lane is on: with the
     * embargo key present and this path or its secret missing, the builder does not start.
     */
    embargoRegistry: SecretPath.optional(),
    /**
     * `{username, passwordBcrypt}`: the HTTP Basic login of the builder's page (`GET /ui`,
     * trusted-builder/dashboard/); `scripts/dashboard-password.ts` makes the value. Optional:
     * without it the page is off (404).
     */
    dashboard: SecretPath.optional(),
  }),
  grants: z.record(z.string().min(1).max(200), z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'a job name'), Grant)).default({}),
}).superRefine((p, ctx) => {
  // A project's step never gets one of the builder's own secrets (its signing key, its registry
  // logins, the hint key…): repository-controlled code would then hold it, and a leak check cannot
  // find every encoding of it in an image.
  const own = Object.entries(p.builder).filter((e): e is [string, string] => typeof e[1] === 'string');
  for (const [project, jobs] of Object.entries(p.grants)) {
    for (const [job, grant] of Object.entries(jobs)) {
      grant.secrets.forEach((path, i) => {
        const hit = own.find(([, b]) => path === b || path.startsWith(`${b}/`) || b.startsWith(`${path}/`));
        if (hit) ctx.addIssue({ code: 'custom', path: ['grants', project, job, 'secrets', i], message: `${path} is the builder's own secret (builder.${hit[0]}): no project step may read it` });
      });
    }
  }
});
export type SecretsPolicy = z.infer<typeof SecretsPolicy>;

export function loadSecretsPolicy(file: string): Readonly<SecretsPolicy> {
  return Object.freeze(loadPolicyFile(SecretsPolicy, file));
}

/** The grant of step `job` of `project`, if any. */
export function grantFor(p: Readonly<SecretsPolicy>, project: string, job: string): Grant | undefined {
  return p.grants[project]?.[job];
}

/** A command as the runner gets it (a string runs under `sh -c`), to compare a job's with a grant's. */
export function argv(command: string | readonly string[]): string[] {
  return typeof command === 'string' ? ['sh', '-c', command] : [...command];
}
