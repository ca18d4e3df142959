/**
 * The CI's checks of a project's `.airlock.yaml`, in the pieces a build runs them (the executor)
 * and all at once for `airlock lint` (no git, no engine): the file itself (YAML, schema, `needs`,
 * resources against the job policy), its environment (an allowlisted image, or a Dockerfile inside
 * its context that passes the Dockerfile check), and each pipeline's job list against the build
 * budget. Both callers use these functions, so lint says what a build would.
 */
import { posix } from 'node:path';
import type { Issue } from '#shared/errors.js';
import { checkDockerfile, checkImageAllowed } from '#shared/docker/dockerfile.js';
import { AIRLOCK_YAML, parseAirlockYaml } from '#shared/repo-config/airlock-yaml.js';
import { compileJobs, type PlannedJob } from '#shared/repo-config/compile-jobs.js';
import { PIPELINES, type AirlockYaml } from '#shared/schemas/airlock-yaml.js';
import type { Pipeline } from '#shared/schemas/api/builds.js';
import type { EnvironmentPolicy } from '../schemas/environment-policy.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';

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

/**
 * Every check a build makes of `.airlock.yaml` before it runs anything, for `airlock lint`.
 * `readFile` reads a file of the repository by its path from the root (the Dockerfile); undefined
 * when it is not there. A pipeline with no job at all is a warning here (a project may run no job
 * in one pipeline; its builds there end with that message).
 */
export async function lintAirlockYaml(
  text: string,
  policies: { job: JobPolicy; environments: EnvironmentPolicy },
  readFile: (path: string) => Promise<string | undefined>,
): Promise<LintResult> {
  const issues: Issue[] = [];
  const policyIssues = new Set<string>();
  const parsed = parseAirlockYaml(text, policies.job);
  issues.push(...parsed.issues);
  if (parsed.value) {
    const cfg = parsed.value;
    const env = cfg.environment;
    if ('image' in env) {
      for (const i of imageEnvironmentIssues(env.image, policies.environments)) (issues.push(i), policyIssues.add(key(i)));
    } else {
      const where = dockerfileLocation(env);
      if ('issue' in where) issues.push(where.issue);
      else {
        const dockerfile = await readFile(where.dockerfile);
        if (dockerfile === undefined) issues.push(missingDockerfile(where.dockerfile));
        else issues.push(...checkDockerfile(dockerfile, where.inContext, policies.environments.baseImages).issues);
      }
    }
    const placeholder = { buildId: 0, attempt: 1, image: 'lint', vars: { project: 'lint', branch: 'lint', change: 'lint', patchset: 1, commit: '0'.repeat(40) } };
    for (const pipeline of PIPELINES) {
      const planned = planJobs(cfg, policies.job, { ...placeholder, pipeline });
      const free = new Set(planJobs(cfg, unbounded(policies.job), { ...placeholder, pipeline }).issues.map(key));
      for (const i of planned.issues) {
        const none = i.path === 'jobs' && i.message === `no job runs in the ${pipeline} pipeline`;
        issues.push(none ? { ...i, severity: 'warning' } : i);
        if (!free.has(key(i))) policyIssues.add(key(i));
      }
    }
  } else if (parsed.issues.length > 0) {
    // Which of the file's problems are the policy's: those that go away without its ceilings.
    const free = new Set(parseAirlockYaml(text, unbounded(policies.job)).issues.map(key));
    for (const i of parsed.issues) if (!free.has(key(i))) policyIssues.add(key(i));
  }
  const problems = issues.map((i): LintProblem => ({ path: i.path, message: i.message, code: policyIssues.has(key(i)) ? 'AIRLOCK_E_POLICY_VIOLATION' : 'AIRLOCK_E_INVALID_INPUT', severity: i.severity }));
  return { ok: !issues.some((i) => i.severity === 'error'), issues, problems };
}
