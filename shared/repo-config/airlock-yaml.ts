/**
 * Loading a project's `.airlock.yaml`: every problem is collected and named (file, path such as
 * `jobs.test.resources.memory`, message), never just the first, never a crash. Three layers:
 * YAML (size, alias bombs, nesting), the schema, then meaning — `needs` naming jobs that exist and
 * forming no cycle, and each job's requests fitting the job policy (a repo may only tighten).
 */
import { type Issue } from '../errors.js';
import { checkAgainstPolicy } from '../policy/job-policy.js';
import { AirlockYaml } from '../schemas/airlock-yaml.js';
import { zodIssues } from '../schemas/issues.js';
import type { JobPolicy } from '../schemas/job-policy.js';
import { parseYaml } from '../yaml.js';

export const AIRLOCK_YAML = '.airlock.yaml';

export function parseAirlockYaml(text: string, policy: JobPolicy, file = AIRLOCK_YAML): { value?: AirlockYaml; issues: Issue[] } {
  const y = parseYaml(text, file);
  if (y.issues.length > 0) return { issues: y.issues };
  const r = AirlockYaml.safeParse(y.value);
  if (!r.success) return { issues: zodIssues(r.error, file) };
  const issues = [...checkNeeds(r.data, file), ...checkResources(r.data, policy, file)];
  return issues.some((i) => i.severity === 'error') ? { issues } : { value: r.data, issues };
}

function checkNeeds(cfg: AirlockYaml, file: string): Issue[] {
  const issues: Issue[] = [];
  const names = new Set(Object.keys(cfg.jobs));
  for (const [name, job] of Object.entries(cfg.jobs)) {
    job.needs.forEach((n, i) => {
      if (!names.has(n)) issues.push({ file, path: `jobs.${name}.needs[${i}]`, message: `no job named ${JSON.stringify(n)}`, severity: 'error' });
      else if (n === name) issues.push({ file, path: `jobs.${name}.needs[${i}]`, message: 'a job cannot need itself', severity: 'error' });
    });
  }
  if (issues.length > 0) return issues;
  // Cycles: depth-first, iterative, reporting each cycle once by the job where it was found.
  const state = new Map<string, 'visiting' | 'done'>();
  for (const start of names) {
    if (state.get(start) === 'done') continue;
    const stack: { name: string; next: number; path: string[] }[] = [{ name: start, next: 0, path: [start] }];
    state.set(start, 'visiting');
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const needs = cfg.jobs[top.name]!.needs;
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

function checkResources(cfg: AirlockYaml, policy: JobPolicy, file: string): Issue[] {
  return Object.entries(cfg.jobs).flatMap(([name, job]) =>
    checkAgainstPolicy(job.limits, undefined, policy, file).map((i) => ({
      ...i,
      path: i.path === 'limits.timeout' ? `jobs.${name}.timeout` : `jobs.${name}.resources.${i.path.replace(/^limits\./, '')}`,
    })),
  );
}
