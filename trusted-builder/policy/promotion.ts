/**
 * `policies/promotion.yaml`: what the trusted builder may promote, decided by SRE, never by a
 * hint or a repository. For each project: its canonical repository (the builder clones it from
 * here, never from a URL it is sent), the protected branches a commit must be reachable from, the
 * image name it is published as, and how its review is checked: the review system it lives in
 * (`reviewSystems`: URL and the builder's own read-only credential, a path in its SecretStore) and
 * what an approval is (labels and values, who may give them, whether an author may approve their
 * own change), or `none` (branch protection alone: said so in the provenance). Base images are
 * allowlisted by digest (the engine's image id): a rebuild uses no other. Loaded once through the
 * shared policy loader (every problem listed).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { remoteUrlProblem } from '#shared/git/git.js';
import { PolicyInvalidError } from '#shared/errors.js';
import { parsePolicyText, readPolicyText } from '#shared/policy/policy-file.js';
import { ProjectName, RefName } from '#shared/schemas/events/trigger.js';
import { ImageRef } from '#shared/schemas/job-spec.js';

/** A repository path in the registry (`team/app`): lowercase, as the distribution spec allows. */
const RepositoryPath = z.string().regex(/^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/, 'a registry repository path (lowercase a-z 0-9 . _ - and /)');
/** A registry as an image reference names it: `host` or `host:port` (lowercase). */
const RegistryHost = z.string().regex(/^[a-z0-9.-]+(?::\d{1,5})?$/, 'host or host:port');
const Digest = z.string().regex(/^sha256:[a-f0-9]{64}$/, 'a sha256 digest');

const Sha = z.string().regex(/^(?:[0-9a-f]{40}|[0-9a-f]{64})$/, 'a full commit id');
/** An account as the review system names it: its username or e-mail address. */
const AccountName = z.string().min(1).max(256).regex(/^[^\s,]+$/, 'a username or e-mail address (no spaces)');

/** A review system the builder reads review records from, with its own read-only account. */
export const ReviewSystemDef = z.strictObject({
  kind: z.literal('gerrit'),
  /** Its base URL (https://review.example.org); no credentials in it. */
  url: z.string().url().max(2048).refine((u) => !new URL(u).username && !new URL(u).password, 'no credentials in the URL: they come from the secret store'),
  /** A path in the builder's SecretStore holding `{username, password}` (an HTTP password of a read-only account). */
  credentials: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$/, 'a secret path'),
});
export type ReviewSystemDef = z.infer<typeof ReviewSystemDef>;

/** One approval a merged change must carry: `label` at `value` or more, from one of `by` (absent: anyone), and no `-value` veto. */
export const ReviewRequirement = z.strictObject({
  label: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$/, 'a label name'),
  value: z.number().int().min(1).max(100),
  by: z.strictObject({ accounts: z.array(AccountName).max(10_000).default([]), groups: z.array(z.string().min(1).max(256)).max(1000).default([]) }).optional(),
});
export type ReviewRequirement = z.infer<typeof ReviewRequirement>;

export const ProjectReview = z.strictObject({
  /** A name in `reviewSystems`. */
  system: z.string().min(1).max(100),
  /** The project's name there (default: the policy name). */
  project: ProjectName.optional(),
  /**
   * Review is checked for every commit after this one (it and its history are accepted as they
   * are); the first promotion of a project walks back to it. Absent: to the root.
   */
  since: Sha.optional(),
  require: z.array(ReviewRequirement).min(1).max(20),
  /** Whether the change's own authors (its owner, an uploader of any patch set, the author or committer of its merged commit) may give a required approval. Default: no. */
  selfApproval: z.boolean().default(false),
});
export type ProjectReview = z.infer<typeof ProjectReview>;

export const PromotedProject = z.strictObject({
  name: ProjectName,
  /** The canonical repository (https://, ssh://, file:// or an absolute path on this host). */
  url: z.string().min(1).max(2048).refine((u) => remoteUrlProblem(u) === undefined, 'not a repository URL git may fetch from'),
  /** A commit is promoted only if one of these branches contains it. */
  protectedBranches: z.array(RefName).min(1).max(64),
  /** Pushed as `<registry>/<image>:<commit>`; `private/…` is the embargo lane's namespace. */
  image: RepositoryPath.refine((i) => i !== 'private' && !i.startsWith('private/'), 'private/… is reserved for the embargo lane'),
  /** How review is checked, or `none`: promoted on branch protection alone (the provenance says so). */
  review: z.union([z.literal('none'), ProjectReview]),
});
export type PromotedProject = z.infer<typeof PromotedProject>;

const HttpUrl = z
  .string()
  .max(2048)
  .url()
  .refine((u) => /^https?:$/.test(new URL(u).protocol), 'an http:// or https:// URL')
  .refine((u) => !new URL(u).username && !new URL(u).password && !new URL(u).search && !new URL(u).hash, 'no credentials, query or fragment in the URL');

/**
 * Where the builder may fetch a project's locked dependencies from (trusted-builder/deps/). Absent:
 * it fetches none, and a project whose `.airlock.yaml` names lockfiles is refused, saying what to set.
 */
export const DependencyPolicy = z.strictObject({
  /** The npm registry tarballs are fetched from (`<registry>/<name>/-/<base>-<version>.tgz`); absent: npm lockfiles are refused. */
  npmRegistry: HttpUrl.optional(),
  /** The Debian mirrors a Debian lockfile's `sources[].uri` may name, exactly. */
  debianMirrors: z.array(HttpUrl).max(32).default([]),
  /** The keyring every InRelease is checked against with gpgv (an absolute path on the builder's host). */
  debianKeyring: z.string().min(2).max(1024).refine((p) => p.startsWith('/') && !p.split('/').includes('..'), 'an absolute path').optional(),
});
export type DependencyPolicy = z.infer<typeof DependencyPolicy>;

export const PromotionPolicy = z.strictObject({
  version: z.literal(1),
  /** The `builder.id` written into provenance. */
  builderId: z.string().url().max(500),
  /** The registry public images are pushed to (consumers pull from it), `host[:port]`. */
  registry: RegistryHost,
  /**
   * The embargo lane's own registry, `host[:port]`: patched images go to `private/<image>` there,
   * never to `registry`, whose logins consumers and the public tier have. Its logins are the
   * builder's (`builder.embargoRegistry` in secrets.yaml) and the security team's, no other. The
   * lane needs it: with the embargo key present and this absent, the builder does not start.
   */
  embargoRegistry: RegistryHost.optional(),
  /** Review systems by name, each with the builder's own read-only account. */
  reviewSystems: z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]{0,99}$/, 'a name of lowercase a-z 0-9 _ -'), ReviewSystemDef).default({}),
  projects: z.array(PromotedProject).max(10_000),
  /** Base images a rebuild may use, by name, each pinned to the image id it must have. */
  baseImages: z
    .array(
      z.strictObject(
        { name: ImageRef, digest: Digest },
        // What a bare image name gets: say the shape, and where the id comes from.
        { error: (iss) => (iss.code === 'invalid_type' ? "a base image is {name, digest}, digest being its image id: docker image inspect --format '{{.Id}}' NAME" : undefined) },
      ),
    )
    .max(1000)
    .default([]),
  /** Where locked dependencies may be fetched from (absent: nowhere). */
  dependencies: DependencyPolicy.optional(),
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
    if (p.review !== 'none' && !Object.hasOwn(r.value.reviewSystems, p.review.system)) {
      issues.push({ file, path: `projects[${i}].review.system`, message: `no review system ${JSON.stringify(p.review.system)} in reviewSystems`, severity: 'error' as const });
    }
  }
  if (r.value.embargoRegistry !== undefined && sameRegistry(r.value.embargoRegistry, r.value.registry)) {
    issues.push({
      file,
      path: 'embargoRegistry',
      message: `is the public registry ${r.value.registry}: every login of that registry (consumers' too) could read the embargoed images; name a registry of its own, with only the builder's and the security team's logins`,
      severity: 'error' as const,
    });
  }
  if (issues.length > 0) throw new PolicyInvalidError(issues);
  return { policy: Object.freeze(r.value), digest: `sha256:${createHash('sha256').update(text).digest('hex')}`, file };
}

/** The same registry, however spelt (docker's default port for a bare host is 443). */
function sameRegistry(a: string, b: string): boolean {
  const norm = (h: string): string => (h.includes(':') ? h : `${h}:443`);
  return norm(a) === norm(b);
}

/** The project's policy entry, or why it may not be promoted. */
export function projectPolicy(p: Readonly<PromotionPolicy>, project: string): PromotedProject | undefined {
  return p.projects.find((x) => x.name === project);
}
