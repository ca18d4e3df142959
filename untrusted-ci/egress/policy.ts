/**
 * The egress policy (`policies/egress.yaml`, SRE-owned): which package sources a public build may
 * reach, for environment builds and for jobs, and how big the shared cache may grow. A project asks
 * with `network: packages`; this bounds it (docs/dependencies.md).
 */
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { loadPolicyFile, parsePolicyText } from '#shared/policy/policy-file.js';
import type { Issue } from '#shared/errors.js';
import { Size } from '#shared/schemas/limits.js';

export const DEFAULT_EGRESS_POLICY_FILE = fileURLToPath(new URL('../../policies/egress.yaml', import.meta.url));

export const SOURCE_KINDS = ['debian', 'npm'] as const;
export type SourceKind = (typeof SOURCE_KINDS)[number];

/** A mirror or registry URL: http(s), a host, no credentials, query or fragment; kept with one trailing slash. */
const SourceUrl = (schemes: readonly string[]) =>
  z
    .string()
    .max(2048)
    .superRefine((s, ctx) => {
      let u: URL;
      try {
        u = new URL(s);
      } catch {
        ctx.addIssue({ code: 'custom', message: 'is not a URL' });
        return;
      }
      if (!schemes.includes(u.protocol.slice(0, -1))) ctx.addIssue({ code: 'custom', message: `must be ${schemes.join(' or ')}` });
      if (u.username || u.password) ctx.addIssue({ code: 'custom', message: 'must not carry credentials' });
      if (u.search || u.hash) ctx.addIssue({ code: 'custom', message: 'must have no query or fragment' });
    })
    .transform((s) => {
      const u = new URL(s);
      return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}/`;
    });

export const EgressPolicy = z
  .object({
    version: z.literal(1),
    sources: z
      .object({
        /** apt-cacher-ng only fetches http mirrors (apt checks the signed index itself). */
        debian: z.object({ mirrors: z.array(SourceUrl(['http'])).min(1).max(32) }).strict().optional(),
        // https only: verdaccio fetches the tarball URLs a registry's answers name, so the answers must be the registry's.
        npm: z.object({ registry: SourceUrl(['https']) }).strict().optional(),
      })
      .strict()
      .default({}),
    allow: z
      .object({
        environments: z.array(z.enum(SOURCE_KINDS)).max(2).default([]),
        jobs: z.array(z.enum(SOURCE_KINDS)).max(2).default([]),
      })
      .strict()
      .default({ environments: [], jobs: [] }),
    cache: z.object({ maxSize: Size }).strict().default({ maxSize: 10 * 1024 ** 3 }),
  })
  .strict()
  .superRefine((p, ctx) => {
    for (const kind of ['environments', 'jobs'] as const) {
      p.allow[kind].forEach((s, i) => {
        if (!p.sources[s]) ctx.addIssue({ code: 'custom', path: ['allow', kind, i], message: `${s} is allowed but has no entry under sources` });
      });
    }
  });
export type EgressPolicy = z.infer<typeof EgressPolicy>;

/** The policy of nothing: no source, nobody may ask. */
export const NO_EGRESS: EgressPolicy = { version: 1, sources: {}, allow: { environments: [], jobs: [] }, cache: { maxSize: 10 * 1024 ** 3 } };

export function parseEgressPolicy(text: string, file: string): { value?: EgressPolicy; issues: Issue[] } {
  return parsePolicyText(EgressPolicy, text, file);
}

/** Load the policy file or throw PolicyInvalidError listing every problem. */
export function loadEgressPolicy(file: string = DEFAULT_EGRESS_POLICY_FILE): EgressPolicy {
  return loadPolicyFile(EgressPolicy, file);
}

/** The sources a run of `kind` may use (what `network: packages` gives it). */
export function allowedSources(p: EgressPolicy, kind: 'environments' | 'jobs'): SourceKind[] {
  return p.allow[kind].filter((s) => p.sources[s] !== undefined);
}
