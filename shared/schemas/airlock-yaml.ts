/**
 * `.airlock.yaml`: what a project declares in its own repository — its build environment and its
 * jobs. Everything in it is attacker-controlled (it comes with the patch). It is parsed here, checked
 * against SRE policy by shared/repo-config/, and compiled into JobSpecs; the runner never reads it.
 * The JSON Schema for editors is generated from this file into schemas/airlock-yaml.schema.json
 * (`npm run schemas`; a test keeps it in step).
 */
import { z } from 'zod';
import { ArtifactGlob, ImageRef } from './job-spec.js';
import { Duration, LimitsRequest } from './limits.js';

/** A path inside the repository: relative, no `..`, no NUL. */
export const RepoPath = z
  .string()
  .min(1)
  .max(1024)
  .refine((p) => !p.includes('\0') && !p.startsWith('/') && !p.split('/').includes('..'), 'must be a relative path inside the repository, without ..');

export const JobName = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'job names are 1-63 characters of a-z 0-9 _ - starting with a letter or digit');

export const PIPELINES = ['check', 'gate'] as const;

/**
 * What a build or job may reach: `none` (the default: loopback only) or `packages` (the package
 * sources the SRE's egress policy allows, on the container's own loopback: an HTTP proxy for
 * Debian's mirrors at 127.0.0.1:3142 and an npm registry at 127.0.0.1:4873; see docs/dependencies.md).
 * In the public CI that is the caching proxy; in the trusted builder, only the files of the
 * project's lockfiles, fetched and verified by the builder itself.
 */
export const NetworkMode = z.enum(['none', 'packages']);
export type NetworkMode = z.infer<typeof NetworkMode>;

/** The build environment: a Dockerfile in the repo, or a base image from the policy's allowlist. */
export const Environment = z.union([
  z.object({ dockerfile: RepoPath, context: RepoPath.optional(), network: NetworkMode.optional() }).strict(),
  z.object({ image: ImageRef }).strict(),
]);

/**
 * The `publish` section: the Dockerfile of the image the trusted builder publishes after the
 * merge, and its build context. The builder refuses to promote a project without one; the CI
 * checks it (the file is there and passes the Dockerfile checks) so nothing unpublishable merges.
 */
export const PublishSection = z
  .object({
    /** The Dockerfile of the published image, relative to the repository root. */
    dockerfile: RepoPath,
    /** The build context (a directory of the repository). */
    context: RepoPath.default('.'),
    /** `packages`: its RUN steps get the project's locked dependencies (the builder's own fetch). */
    network: NetworkMode.optional(),
  })
  .strict();
export type PublishSection = z.infer<typeof PublishSection>;

/**
 * The lockfiles of a project, read by the trusted builder, which fetches every file they name
 * itself and verifies it against its digest: npm `package-lock.json` files (their `integrity`),
 * and Debian lockfiles (packages by name, version and architecture, verified by the SHA256 of
 * the mirror's signed index). The public CI reads them only to check them.
 */
export const DependenciesSection = z
  .object({
    npm: z.array(RepoPath).max(16).default([]),
    debian: z.array(RepoPath).max(16).default([]),
  })
  .strict();
export type DependenciesSection = z.infer<typeof DependenciesSection>;

export const JobDefinition = z
  .object({
    /** A list is run as is; a string is run by `sh -c`. */
    command: z.union([z.string().min(1).max(64 * 1024), z.array(z.string().max(64 * 1024)).min(1).max(1024)]),
    /** Resource requests; each must fit within policy (a repo may tighten, never loosen). */
    resources: LimitsRequest.omit({ timeout: true }).default({}),
    timeout: Duration.optional(),
    artifacts: z.array(ArtifactGlob).max(64).default([]),
    needs: z.array(JobName).max(64).default([]),
    pipelines: z.array(z.enum(PIPELINES)).min(1).default(['check', 'gate']),
    env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'not an environment variable name'), z.string().max(32 * 1024)).default({}),
    /** A non-voting job reports but never blocks or resets the gate. */
    voting: z.boolean().default(true),
    /** `packages`: the job reaches the allowed package sources (see NetworkMode). */
    network: NetworkMode.optional(),
  })
  .strict()
  // The file keeps `timeout` beside `resources`; past the parse a job has one `limits`, the shape
  // the policy check, the JobSpec and the runner all take (shared/schemas/limits.ts).
  .transform(({ resources, timeout, ...job }) => {
    const limits: LimitsRequest = { ...resources, ...(timeout !== undefined ? { timeout } : {}) };
    return { ...job, limits };
  });
export type JobDefinition = z.infer<typeof JobDefinition>;

export const AirlockYaml = z
  .object({
    version: z.literal(1),
    environment: Environment,
    jobs: z.record(JobName, JobDefinition).refine((j) => Object.keys(j).length >= 1, 'at least one job').refine((j) => Object.keys(j).length <= 256, 'at most 256 jobs'),
    /** The published image, built by the trusted builder from its own clone; the CI only checks it. */
    publish: PublishSection.optional(),
    /** The lockfiles the trusted builder fetches from, by digest, for `network: packages` (docs/dependencies.md). */
    dependencies: DependenciesSection.optional(),
  })
  .strict();
export type AirlockYaml = z.infer<typeof AirlockYaml>;

/** The JSON Schema of the file as written (input side of the transforms), for editors. */
export function airlockYamlJsonSchema(): Record<string, unknown> {
  return {
    ...z.toJSONSchema(AirlockYaml, { io: 'input' }),
    title: '.airlock.yaml',
    description: 'A project’s build environment and jobs for airlock. Generated from shared/schemas/airlock-yaml.ts: do not edit.',
  };
}
