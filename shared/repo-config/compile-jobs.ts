/**
 * `.airlock.yaml` → the ordered JobSpecs one build runs. Pure: the executor runs the compiled IR,
 * never the YAML (docs/conventions.md "Parse at the edge"). Jobs not in the pipeline are left out; a job that `needs` one left
 * out is a config issue (it could never run). Order is topological, ties in file order, so a
 * build's jobs run in a stable, predictable order.
 */
import type { Issue } from '../errors.js';
import type { AirlockYaml } from '../schemas/airlock-yaml.js';
import type { Pipeline } from '../schemas/api/builds.js';
import { JobSpec } from '../schemas/job-spec.js';
import { zodIssues } from '../schemas/issues.js';
import { formatDuration } from '../units.js';

const JobSpecWithoutLimits = JobSpec.omit({ limits: true });

export interface PlannedJob {
  name: string;
  voting: boolean;
  needs: string[];
  spec: JobSpec;
}

export interface CompileContext {
  buildId: number;
  attempt: number;
  pipeline: Pipeline;
  image: string;
  /** The policy's budget of one build (`build` of the job policy) and the timeout of a job that names none. */
  budget?: { jobs: number; timeMs: number; defaultTimeoutMs: number };
  /** Facts about the change, given to the job as AIRLOCK_* variables. Never secrets. */
  vars: { project: string; branch: string; change: string; patchset: number; commit: string };
  file?: string;
  /**
   * Jobs of the file the schema refused (left out of `cfg`), when a file with problems is checked
   * for all of them at once: a `needs` on one is not judged, and with any, no pipeline is said to
   * run no job. The budget counts the others only. Nothing is compiled then.
   */
  brokenJobs?: readonly string[];
}

export function compileJobs(cfg: AirlockYaml, ctx: CompileContext): { jobs: PlannedJob[]; issues: Issue[] } {
  const file = ctx.file ?? '.airlock.yaml';
  const selected = Object.entries(cfg.jobs).filter(([, j]) => j.pipelines.includes(ctx.pipeline));
  const names = new Set(selected.map(([n]) => n));
  const broken = new Set(ctx.brokenJobs ?? []);
  const issues: Issue[] = [];
  for (const [name, job] of selected) {
    job.needs.forEach((n, i) => {
      if (!names.has(n) && !broken.has(n) && Object.hasOwn(cfg.jobs, n)) issues.push({ file, path: `jobs.${name}.needs[${i}]`, message: `needs ${n}, which does not run in the ${ctx.pipeline} pipeline`, severity: 'error' });
    });
  }
  if (selected.length === 0 && broken.size === 0) issues.push({ file, path: 'jobs', message: `no job runs in the ${ctx.pipeline} pipeline`, severity: 'error' });
  const b = ctx.budget;
  if (b && selected.length > b.jobs) issues.push({ file, path: 'jobs', message: `${selected.length} jobs run in the ${ctx.pipeline} pipeline; the policy allows at most ${b.jobs} per build`, severity: 'error' });
  const total = b ? selected.reduce((sum, [, j]) => sum + (j.limits.timeout ?? b.defaultTimeoutMs), 0) : 0;
  if (b && total > b.timeMs) {
    issues.push({ file, path: 'jobs', message: `the jobs of the ${ctx.pipeline} pipeline may run ${formatDuration(total)} together (the sum of their timeouts); the policy allows ${formatDuration(b.timeMs)} per build: lower their timeouts, or run fewer`, severity: 'error' });
  }
  if (issues.length > 0 || broken.size > 0) return { jobs: [], issues };

  // Kahn's algorithm, always taking the first ready job in file order. Cycles were refused at parse time.
  const order: string[] = [];
  const done = new Set<string>();
  while (order.length < selected.length) {
    const next = selected.find(([n, j]) => !done.has(n) && j.needs.every((d) => done.has(d)));
    if (!next) break;
    order.push(next[0]);
    done.add(next[0]);
  }

  const env = {
    CI: 'true',
    AIRLOCK: 'true',
    AIRLOCK_PIPELINE: ctx.pipeline,
    AIRLOCK_PROJECT: ctx.vars.project,
    AIRLOCK_BRANCH: ctx.vars.branch,
    AIRLOCK_CHANGE: ctx.vars.change,
    AIRLOCK_PATCHSET: String(ctx.vars.patchset),
    AIRLOCK_COMMIT: ctx.vars.commit,
    AIRLOCK_BUILD: String(ctx.buildId),
  };
  const jobs: PlannedJob[] = [];
  order.forEach((name, index) => {
    const job = cfg.jobs[name]!;
    // The limits were parsed with the file and are carried as they are; the rest is checked
    // against the JobSpec's own caps (the environment added here counts towards them).
    const r = JobSpecWithoutLimits.safeParse({
      id: `b${ctx.buildId}-a${ctx.attempt}-j${index}`,
      image: ctx.image,
      command: typeof job.command === 'string' ? ['sh', '-c', job.command] : job.command,
      env: { ...job.env, ...env, AIRLOCK_JOB: name },
      artifacts: job.artifacts,
      network: job.network ?? 'none',
    });
    if (!r.success) issues.push(...zodIssues(r.error, file).map((i) => ({ ...i, path: `jobs.${name}${i.path ? `.${i.path}` : ''}` })));
    else jobs.push({ name, voting: job.voting, needs: job.needs, spec: { ...r.data, limits: job.limits } });
  });
  return { jobs: issues.length ? [] : jobs, issues };
}
