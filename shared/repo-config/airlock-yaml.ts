/**
 * Loading a project's `.airlock.yaml`: every problem is collected and named (file, path such as
 * `jobs.test.resources.memory`, message), never just the first, never a crash, and in one pass.
 * Three layers: YAML (size, alias bombs, nesting; a syntax error with its line and column), the
 * schema (a missing key says `required`, an unknown one that is a near miss says which known key
 * it resembles), then meaning — `needs` naming jobs that exist and forming no cycle, and each
 * job's requests fitting the job policy (a repo may only tighten). Only a YAML problem stops the
 * rest: a section or job the schema refuses is left out of the later checks, the others are still
 * checked, so a file's structural, `needs` and policy problems are all listed together.
 */
import { type Issue } from '../errors.js';
import { checkAgainstPolicy } from '../policy/job-policy.js';
import { AirlockYaml, DependenciesSection, Environment, JobDefinition, JobName, PublishSection } from '../schemas/airlock-yaml.js';
import { nearMiss, zodIssues } from '../schemas/issues.js';
import type { JobPolicy } from '../schemas/job-policy.js';
import { parseYaml } from '../yaml.js';

export const AIRLOCK_YAML = '.airlock.yaml';

/**
 * The parts of a file that the schema accepted, when the whole did not pass: the environment and
 * the publish section if each is good, the jobs that are, and the names of those that are not
 * (they exist, so a `needs` on one is not "no such job"; it is just not checked further).
 */
export interface PartialAirlockYaml {
  environment?: AirlockYaml['environment'];
  publish?: AirlockYaml['publish'];
  /** True when the file has a `publish` key (good or not). */
  hasPublish: boolean;
  jobs: AirlockYaml['jobs'];
  brokenJobs: string[];
  dependencies?: AirlockYaml['dependencies'];
}

export interface ParsedAirlockYaml {
  /** The whole file, when it has no error. */
  value?: AirlockYaml;
  /** What could be read of it: the whole when `value` is there, else the good parts (none after a YAML error). */
  partial?: PartialAirlockYaml;
  issues: Issue[];
}

export function parseAirlockYaml(text: string, policy: JobPolicy, file = AIRLOCK_YAML): ParsedAirlockYaml {
  const y = parseYaml(text, file);
  if (y.issues.length > 0) return { issues: y.issues };
  const r = AirlockYaml.safeParse(y.value);
  const partial: PartialAirlockYaml = r.success
    ? { environment: r.data.environment, publish: r.data.publish, hasPublish: r.data.publish !== undefined, jobs: r.data.jobs, brokenJobs: [], dependencies: r.data.dependencies }
    : goodParts(y.value);
  const issues = [
    ...(r.success ? [] : zodIssues(r.error, file, { input: y.value, schema: AirlockYaml })),
    ...checkNeeds(partial, file),
    ...checkResources(partial.jobs, policy, file),
  ];
  if (r.success && !issues.some((i) => i.severity === 'error')) return { value: r.data, partial, issues };
  return { partial, issues };
}

/** Each section on its own, for the checks that can still be made of a file the schema refused. */
function goodParts(raw: unknown): PartialAirlockYaml {
  const out: PartialAirlockYaml = { jobs: {}, brokenJobs: [], hasPublish: false };
  if (!isMap(raw)) return out;
  const env = Environment.safeParse(raw.environment);
  if (env.success) out.environment = env.data;
  out.hasPublish = raw.publish !== undefined;
  const publish = PublishSection.safeParse(raw.publish);
  if (publish.success) out.publish = publish.data;
  const deps = DependenciesSection.safeParse(raw.dependencies);
  if (deps.success) out.dependencies = deps.data;
  if (isMap(raw.jobs)) {
    for (const [name, def] of Object.entries(raw.jobs)) {
      if (!JobName.safeParse(name).success) continue;
      const job = JobDefinition.safeParse(def);
      if (job.success) out.jobs[name] = job.data;
      else out.brokenJobs.push(name);
    }
  }
  return out;
}

function isMap(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function checkNeeds(cfg: PartialAirlockYaml, file: string): Issue[] {
  const issues: Issue[] = [];
  const names = new Set([...Object.keys(cfg.jobs), ...cfg.brokenJobs]);
  for (const [name, job] of Object.entries(cfg.jobs)) {
    job.needs.forEach((n, i) => {
      if (!names.has(n)) issues.push({ file, path: `jobs.${name}.needs[${i}]`, message: `no job named ${JSON.stringify(n)}${didYouMean(n, names)}`, severity: 'error' });
      else if (n === name) issues.push({ file, path: `jobs.${name}.needs[${i}]`, message: 'a job cannot need itself', severity: 'error' });
    });
  }
  if (issues.length > 0) return issues;
  // Cycles: depth-first, iterative, reporting each cycle once by the job where it was found. A
  // job the schema refused has no needs that can be read: the search stops there.
  const state = new Map<string, 'visiting' | 'done'>();
  for (const start of Object.keys(cfg.jobs)) {
    if (state.get(start) === 'done') continue;
    const stack: { name: string; next: number; path: string[] }[] = [{ name: start, next: 0, path: [start] }];
    state.set(start, 'visiting');
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const needs = cfg.jobs[top.name]?.needs ?? [];
      if (top.next >= needs.length) {
        state.set(top.name, 'done');
        stack.pop();
        continue;
      }
      const n = needs[top.next++]!;
      if (state.get(n) === 'visiting') {
        const cycle = [...top.path.slice(top.path.indexOf(n)), n];
        issues.push({ file, path: `jobs.${top.name}.needs`, message: `needs form a cycle: ${cycle.join(' → ')}`, severity: 'error' });
      } else if (state.get(n) !== 'done') {
        state.set(n, 'visiting');
        stack.push({ name: n, next: 0, path: [...top.path, n] });
      }
    }
  }
  return issues;
}

/** `: did you mean "build"?` when a job of that name is a near miss of `name`, else ''. */
function didYouMean(name: string, names: ReadonlySet<string>): string {
  const near = nearMiss(name, [...names]);
  return near === undefined ? '' : `; did you mean ${JSON.stringify(near)}?`;
}

function checkResources(jobs: AirlockYaml['jobs'], policy: JobPolicy, file: string): Issue[] {
  return Object.entries(jobs).flatMap(([name, job]) =>
    checkAgainstPolicy(job.limits, undefined, policy, file).map((i) => ({
      ...i,
      path: i.path === 'limits.timeout' ? `jobs.${name}.timeout` : `jobs.${name}.resources.${i.path.replace(/^limits\./, '')}`,
    })),
  );
}
