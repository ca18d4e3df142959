/**
 * `policies/promotion.yaml`: what the trusted builder may promote, decided by SRE, never by a
 * hint or a repository. For each project: its canonical repository (the builder clones it from
 * here, never from a URL it is sent), the protected branches a commit must be reachable from, and
 * the image name it is published as. Base images are allowlisted by digest (the engine's image id):
 * a rebuild uses no other. Loaded once through the shared policy loader (every problem listed).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { remoteUrlProblem } from '../../shared/git/git.js';
import { PolicyInvalidError } from '../../shared/errors.js';
import { parsePolicyText, readPolicyText } from '../../shared/policy/policy-file.js';
import { ProjectName, RefName } from '../../shared/schemas/events/trigger.js';
import { ImageRef } from '../../shared/schemas/job-spec.js';

/** A repository path in the registry (`team/app`): lowercase, as the distribution spec allows. */
const RepositoryPath = z.string().regex(/^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/, 'a registry repository path (lowercase a-z 0-9 . _ - and /)');
const Digest = z.string().regex(/^sha256:[a-f0-9]{64}$/, 'a sha256 digest');

export const PromotedProject = z.strictObject({
  name: ProjectName,
  /** The canonical repository (https://, ssh://, file:// or an absolute path on this host). */
  url: z.string().min(1).max(2048).refine((u) => remoteUrlProblem(u) === undefined, 'not a repository URL git may fetch from'),
  /** A commit is promoted only if one of these branches contains it. */
  protectedBranches: z.array(RefName).min(1).max(64),
  /** Pushed as `<registry>/<image>:<commit>`; `private/…` is the embargo lane's namespace. */
  image: RepositoryPath.refine((i) => i !== 'private' && !i.startsWith('private/'), 'private/… is reserved for the embargo lane'),
});
export type PromotedProject = z.infer<typeof PromotedProject>;

export const PromotionPolicy = z.strictObject({
  version: z.literal(1),
  /** The `builder.id` written into provenance. */
  builderId: z.string().url().max(500),
  /** The private registry, `host:port`. */
  registry: z.string().regex(/^[a-z0-9.-]+(?::\d{1,5})?$/, 'host or host:port'),
  projects: z.array(PromotedProject).max(10_000),
  /** Base images a rebuild may use, by name, each pinned to the image id it must have. */
  baseImages: z.array(z.strictObject({ name: ImageRef, digest: Digest })).max(1000).default([]),
});
export type PromotionPolicy = z.infer<typeof PromotionPolicy>;

/** A loaded policy with the digest of its exact bytes (recorded in provenance). */
export interface LoadedPromotionPolicy {
  readonly policy: Readonly<PromotionPolicy>;
  readonly digest: string;
  readonly file: string;
}

export function loadPromotionPolicy(file: string): LoadedPromotionPolicy {
  return parsePromotionPolicy(readPolicyText(file), file);
}

export function parsePromotionPolicy(text: string, file: string): LoadedPromotionPolicy {
  const r = parsePolicyText(PromotionPolicy, text, file);
  if (!r.value) throw new PolicyInvalidError(r.issues);
  const issues = [];
  const seen = new Set<string>();
  for (const [i, p] of r.value.projects.entries()) {
    if (seen.has(p.name)) issues.push({ file, path: `projects[${i}].name`, message: `project ${p.name} is listed twice`, severity: 'error' as const });
    seen.add(p.name);
  }
  if (issues.length > 0) throw new PolicyInvalidError(issues);
  return { policy: Object.freeze(r.value), digest: `sha256:${createHash('sha256').update(text).digest('hex')}`, file };
}

/** The project's policy entry, or why it may not be promoted. */
export function projectPolicy(p: Readonly<PromotionPolicy>, project: string): PromotedProject | undefined {
  return p.projects.find((x) => x.name === project);
}
