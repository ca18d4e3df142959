/**
 * The CI's checks of a project's `.airlock.yaml`, all made before a build runs anything, by the
 * executor (on the merged commit) and by `airlock lint` (on a working copy; no git, no engine):
 * the file itself (YAML, schema, `needs`, resources against the job policy), its environment (an
 * allowlisted image, or a Dockerfile inside its context that passes the Dockerfile check), what
 * the trusted builder will need to publish it (the `publish` Dockerfile there and passing the same
 * check, its context a directory), and each pipeline's job list against the build budget. Every
 * problem in one pass: a part the schema refused is left out of the later checks, the rest are
 * still made. Both callers use `checkConfig`, so lint says what a build would.
 */
import { posix } from 'node:path';
import { IssuesError, type Issue } from '#shared/errors.js';
import { checkDockerfile, checkImageAllowed, DOCKERFILE_MAX_BYTES } from '#shared/docker/dockerfile.js';
import { AIRLOCK_YAML, parseAirlockYaml, type PartialAirlockYaml } from '#shared/repo-config/airlock-yaml.js';
import { compileJobs, type PlannedJob } from '#shared/repo-config/compile-jobs.js';
import { PIPELINES, type AirlockYaml } from '#shared/schemas/airlock-yaml.js';
import type { Pipeline } from '#shared/schemas/api/builds.js';
import type { EnvironmentPolicy } from '../schemas/environment-policy.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import { allowedSources, NO_EGRESS, type EgressPolicy } from '../egress/policy.js';

/** The job policy's budget of one build, as compileJobs checks it. */
export function buildBudget(policy: JobPolicy): { jobs: number; timeMs: number; defaultTimeoutMs: number } {
  return { jobs: policy.build.jobs, timeMs: policy.build.time, defaultTimeoutMs: policy.limits.timeout };
}

/** The one-line reason of a build that ends `config-error` over these issues. */
export function configErrorReason(issues: readonly Issue[]): string {
  const errors = issues.filter((i) => i.severity === 'error');
  return `${AIRLOCK_YAML} has ${errors.length} problem${errors.length === 1 ? '' : 's'}`;
}

/** An image environment: the allowlist check a build makes before it looks the image up. */
export function imageEnvironmentIssues(image: string, policy: EnvironmentPolicy, file = AIRLOCK_YAML): Issue[] {
  return checkImageAllowed(image, policy.baseImages, file, 'environment.image');
}

/** A Dockerfile environment: where the Dockerfile and its context are, or why they cannot be used. */
export function dockerfileLocation(environment: { dockerfile: string; context?: string | undefined }, file = AIRLOCK_YAML): { dockerfile: string; context: string; inContext: string } | { issue: Issue } {
  const dockerfile = posix.normalize(environment.dockerfile);
  const context = posix.normalize(environment.context ?? posix.dirname(dockerfile));
  const inContext = posix.relative(context, dockerfile);
  if (inContext.startsWith('..')) return { issue: { file, path: 'environment.dockerfile', message: `must be inside the build context ${context}`, severity: 'error' } };
  return { dockerfile, context, inContext };
}

/** The message when the Dockerfile named by the environment is not there. */
export function missingDockerfile(dockerfile: string, file = AIRLOCK_YAML): Issue {
  return { file, path: 'environment.dockerfile', message: `${dockerfile} is not in the repository`, severity: 'error' };
}

/** One pipeline's jobs, planned for a build (or for lint, with placeholder facts). */
export function planJobs(
  cfg: AirlockYaml,
  policy: JobPolicy,
  ctx: { buildId: number; attempt: number; pipeline: Pipeline; image: string; vars: { project: string; branch: string; change: string; patchset: number; commit: string } },
): { jobs: PlannedJob[]; issues: Issue[] } {
  return compileJobs(cfg, { ...ctx, budget: buildBudget(policy) });
}

/** A problem as `airlock lint` reports it. */
export interface LintProblem {
  path: string;
  message: string;
  /** AIRLOCK_E_POLICY_VIOLATION: the file asks for more than a policy allows; AIRLOCK_E_INVALID_INPUT: anything else. */
  code: 'AIRLOCK_E_INVALID_INPUT' | 'AIRLOCK_E_POLICY_VIOLATION';
  severity: 'error' | 'warning';
  /** Line and column in the file (1-based), when known: a YAML syntax error. */
  line?: number;
  column?: number;
}

export interface LintResult {
  ok: boolean;
  /** The issues as a build would list them (file, path, message, severity). */
  issues: Issue[];
  problems: LintProblem[];
}

/** A policy with no ceiling anywhere: what a file's problems are without the policy's limits. */
function unbounded(policy: JobPolicy): JobPolicy {
  const big = Number.MAX_SAFE_INTEGER;
  const limits = Object.fromEntries(Object.entries(policy.limits).map(([k, v]) => [k, typeof v === 'number' ? big : v])) as JobPolicy['limits'];
  return { ...policy, limits, build: { jobs: big, time: big } };
}

const key = (i: Issue): string => `${i.path}\u0000${i.message}`;

/** The repository the checks read, at the commit built (the executor) or in a working copy (lint). */
export interface RepoFiles {
  /**
   * A file's text by its path from the root; undefined when it is not there. May throw an
   * IssuesError (a symbolic link, a directory, over `maxBytes`): that is the change's problem.
   */
  readFile(path: string, maxBytes: number): Promise<string | undefined>;
  /** Whether `path` ('.' = the root) is a directory of the repository; undefined when it is not there at all. */
  isDirectory(path: string): Promise<boolean | undefined>;
}

export interface ConfigCheck {
  /** The file, when it has no error. */
  cfg?: AirlockYaml;
  /** Every problem: the errors, then the warnings, each in the order the file, its environment, publish, the pipelines. */
  issues: Issue[];
  /** Those of `issues` that are a policy's (a ceiling, the allowlist, the Dockerfile rules), not the file's form. */
  policyIssues: ReadonlySet<Issue>;
}

/**
 * Every check the CI makes of `.airlock.yaml` before it runs anything, for the given pipelines.
 * `noJobIsWarning`: a pipeline that runs no job is a warning (lint, which checks both), not an
 * error (a build of that pipeline).
 */
export async function checkConfig(
  text: string,
  policies: { job: JobPolicy; environments: EnvironmentPolicy; egress?: EgressPolicy },
  repo: RepoFiles,
  opts: { pipelines: readonly Pipeline[]; noJobIsWarning?: boolean },
): Promise<ConfigCheck> {
  const issues: Issue[] = [];
  const policy = new Set<Issue>();
  const parsed = parseAirlockYaml(text, policies.job);
  const free = new Set(parsed.issues.length > 0 ? parseAirlockYaml(text, unbounded(policies.job)).issues.map(key) : []);
  for (const i of parsed.issues) {
    issues.push(i);
    if (!free.has(key(i))) policy.add(i);
  }
  const part = parsed.partial;
  if (!part) return { issues, policyIssues: policy };
  const fromPolicy = (found: Issue[]): void => {
    for (const i of found) (issues.push(i), policy.add(i));
  };

  // The environment the jobs run in.
  const env = part.environment;
  if (env && 'image' in env) fromPolicy(imageEnvironmentIssues(env.image, policies.environments));
  else if (env) {
    const where = dockerfileLocation(env);
    if ('issue' in where) issues.push(where.issue);
    else {
      const dockerfile = await readRepoFile(repo, where.dockerfile, 'environment.dockerfile');
      if (typeof dockerfile !== 'string') issues.push(dockerfile ?? missingDockerfile(where.dockerfile));
      else fromPolicy(checkDockerfile(dockerfile, where.inContext, policies.environments.baseImages).issues);
    }
  }

  // What each run may reach (policies/egress.yaml): `network: packages` only where sources are allowed.
  fromPolicy(networkIssues(part, policies.egress ?? NO_EGRESS));
  issues.push(...(await lockfileIssues(part, repo)));

  // What the trusted builder will need after the merge.
  const publish = await publishIssues(part, policies.environments, repo);
  fromPolicy(publish.policy);
  issues.push(...publish.other);

  // The jobs of each pipeline, against the build budget.
  {
    // Compiling does not read the environment: a broken one does not stop these checks.
    const cfg: AirlockYaml = parsed.value ?? { version: 1, environment: part.environment ?? { image: 'check' }, jobs: part.jobs };
    const placeholder = { buildId: 0, attempt: 1, image: 'check', vars: { project: 'check', branch: 'check', change: 'check', patchset: 1, commit: '0'.repeat(40) } };
    const brokenJobs = part.brokenJobs;
    for (const pipeline of opts.pipelines) {
      const planned = compileJobs(cfg, { ...placeholder, pipeline, brokenJobs, budget: buildBudget(policies.job) });
      const freeOfBudget = new Set(compileJobs(cfg, { ...placeholder, pipeline, brokenJobs, budget: buildBudget(unbounded(policies.job)) }).issues.map(key));
      for (const i of planned.issues) {
        const none = opts.noJobIsWarning && i.path === 'jobs' && i.message === `no job runs in the ${pipeline} pipeline`;
        const it = none ? { ...i, severity: 'warning' as const } : i;
        issues.push(it);
        if (!freeOfBudget.has(key(i))) policy.add(it);
      }
    }
  }
  const cfg = parsed.value && !issues.some((i) => i.severity === 'error') ? parsed.value : undefined;
  // Errors first (what stops the build), then warnings; each in the order found.
  const ordered = [...issues.filter((i) => i.severity === 'error'), ...issues.filter((i) => i.severity !== 'error')];
  return { ...(cfg ? { cfg } : {}), issues: ordered, policyIssues: policy };
}

/** `network: packages` where the egress policy gives that kind of run no package source. */
function networkIssues(part: PartialAirlockYaml, egress: EgressPolicy): Issue[] {
  const out: Issue[] = [];
  const refuse = (path: string, kind: 'environments' | 'jobs') => {
    const what = kind === 'jobs' ? 'jobs' : 'environment builds';
    out.push({ file: AIRLOCK_YAML, path, message: `network: packages is not allowed here: policies/egress.yaml gives ${what} no package source (allow.${kind} is empty); use network: none, or ask SRE`, severity: 'error' });
  };
  const env = part.environment;
  if (env && 'dockerfile' in env && env.network === 'packages' && allowedSources(egress, 'environments').length === 0) refuse('environment.network', 'environments');
  if (allowedSources(egress, 'jobs').length === 0) {
    for (const [name, job] of Object.entries(part.jobs)) if (job.network === 'packages') refuse(`jobs.${name}.network`, 'jobs');
  }
  return out;
}

/** The lockfiles `dependencies` names must be there: the trusted builder fetches from them after the merge. */
async function lockfileIssues(part: PartialAirlockYaml, repo: RepoFiles): Promise<Issue[]> {
  const out: Issue[] = [];
  for (const kind of ['npm', 'debian'] as const) {
    const files = part.dependencies?.[kind] ?? [];
    for (const [i, file] of files.entries()) {
      const r = await readRepoFile(repo, file, `dependencies.${kind}[${i}]`);
      if (typeof r !== 'string') out.push(r ?? { file: AIRLOCK_YAML, path: `dependencies.${kind}[${i}]`, message: `${file} is not in the repository: the trusted builder fetches ${kind} dependencies from it`, severity: 'error' });
    }
  }
  return out;
}

/** The message of a file with no `publish` section (a warning: a project need not publish). */
export const NO_PUBLISH_SECTION = 'no publish section: the trusted builder will not publish this project (it refuses to promote one without it); to publish an image, add publish: { dockerfile: Dockerfile }';

/**
 * The `publish` section against the commit: its Dockerfile there, parsing and passing the CI's
 * Dockerfile check with every base on the CI's allowlist (the trusted builder checks its own pins
 * again; the CI cannot see them), its context a directory. No section at all is a warning.
 */
async function publishIssues(part: PartialAirlockYaml, policy: EnvironmentPolicy, repo: RepoFiles): Promise<{ policy: Issue[]; other: Issue[] }> {
  const out = { policy: [] as Issue[], other: [] as Issue[] };
  const err = (path: string, message: string): Issue => ({ file: AIRLOCK_YAML, path, message, severity: 'error' });
  if (!part.hasPublish) {
    out.other.push({ file: AIRLOCK_YAML, path: 'publish', message: NO_PUBLISH_SECTION, severity: 'warning' });
    return out;
  }
  const publish = part.publish;
  if (!publish) return out; // the schema's issues say what is wrong with it
  const context = posix.normalize(publish.context);
  if (context !== '.') {
    const dir = await guarded(() => repo.isDirectory(context));
    if (dir === undefined) out.other.push(err('publish.context', `${context} is not in the repository: the trusted builder sends this directory as the published image's build context; commit it, or name another (default .)`));
    else if (dir === false) out.other.push(err('publish.context', `${context} is not a directory: the build context is a directory of the repository (default .)`));
    else if (typeof dir !== 'boolean') out.other.push({ ...dir, path: 'publish.context' });
  }
  const dockerfile = posix.normalize(publish.dockerfile);
  const text = await readRepoFile(repo, dockerfile, 'publish.dockerfile');
  if (text === undefined) out.other.push(err('publish.dockerfile', `${dockerfile} is not in the repository: the trusted builder builds the published image from it after the merge; commit it, or fix the path`));
  else if (typeof text !== 'string') out.other.push(text);
  else out.policy.push(...checkDockerfile(text, dockerfile, policy.baseImages).issues);
  return out;
}

/** A file of the repository, or the issue (at `path` of .airlock.yaml) that says why it cannot be read. */
async function readRepoFile(repo: RepoFiles, file: string, path: string): Promise<string | Issue | undefined> {
  const r = await guarded(() => repo.readFile(file, DOCKERFILE_MAX_BYTES));
  if (typeof r !== 'object') return r;
  return { ...r, file: AIRLOCK_YAML, path, message: r.message.startsWith(file) ? r.message : `${file} ${r.message}` };
}

/** `f()`, or the first issue of the IssuesError it throws (the change's problem); anything else is rethrown. */
async function guarded<T>(f: () => Promise<T>): Promise<T | Issue> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof IssuesError && e.issues[0]) return { ...e.issues[0], message: e.issues.map((i) => i.message).join('; ') };
    throw e;
  }
}

/**
 * Every check a build makes of `.airlock.yaml` before it runs anything, for `airlock lint`, in
 * both pipelines. A pipeline with no job at all is a warning here (a project may run no job in
 * one pipeline; its builds there end with that message).
 */
export async function lintAirlockYaml(text: string, policies: { job: JobPolicy; environments: EnvironmentPolicy; egress?: EgressPolicy }, repo: RepoFiles): Promise<LintResult> {
  const r = await checkConfig(text, policies, repo, { pipelines: PIPELINES, noJobIsWarning: true });
  const problems = r.issues.map(
    (i): LintProblem => ({
      path: i.path,
      message: i.message,
      code: r.policyIssues.has(i) ? 'AIRLOCK_E_POLICY_VIOLATION' : 'AIRLOCK_E_INVALID_INPUT',
      severity: i.severity,
      ...(i.line !== undefined ? { line: i.line } : {}),
      ...(i.column !== undefined ? { column: i.column } : {}),
    }),
  );
  return { ok: !r.issues.some((i) => i.severity === 'error'), issues: r.issues, problems };
}
