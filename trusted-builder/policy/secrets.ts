/**
 * `policies/secrets.yaml`: which secrets the trusted builder reads, and which a project's own
 * steps may get. SRE-owned; a repository cannot widen it (its `.airlock.yaml` is never consulted
 * for grants).
 * - `builder`: the paths the builder itself uses: the signing key, the registry credentials, the
 *   HMAC secret that authenticates promotion hints and, optionally, the embargo lane's key (when the
 *   policy names none, or the store has no secret at that path, the lane is off) and the login of
 *   the builder's page (likewise: no such secret, no page).
 * - `grants`: per project, per named step (a job name), the secret paths that step may read. A
 *   granted secret reaches the step only as a file on a tmpfs, never as an environment variable or
 *   an image layer; every value in use is searched for in logs, artifacts and image layers before
 *   anything is published.
 */
import { z } from 'zod';
import { loadPolicyFile } from '../../shared/policy/policy-file.js';

/** A secret path as the SecretStore takes it: `team/app/npm`, no `..`, no leading `/`. */
export const SecretPath = z
  .string()
  .regex(/^[a-z0-9][a-z0-9/_.-]{0,199}$/, 'a secret path (a-z 0-9 / _ . -, starting with a letter or digit)')
  .refine((p) => !p.split('/').some((s) => s === '' || s === '.' || s === '..'), 'no empty, . or .. segment');

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
     * `{username, passwordBcrypt}`: the HTTP Basic login of the builder's page (`GET /ui`,
     * trusted-builder/dashboard/); `scripts/dashboard-password.ts` makes the value. Optional:
     * without it the page is off (404).
     */
    dashboard: SecretPath.optional(),
  }),
  grants: z.record(z.string().min(1).max(200), z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'a job name'), z.array(SecretPath).max(32))).default({}),
});
export type SecretsPolicy = z.infer<typeof SecretsPolicy>;

export function loadSecretsPolicy(file: string): Readonly<SecretsPolicy> {
  return Object.freeze(loadPolicyFile(SecretsPolicy, file));
}

/** The secret paths step `job` of `project` may read (none unless granted). */
export function grantsFor(p: Readonly<SecretsPolicy>, project: string, job: string): readonly string[] {
  return p.grants[project]?.[job] ?? [];
}
