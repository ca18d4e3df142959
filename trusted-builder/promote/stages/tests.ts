/**
 * tests: the project's gate jobs re-run in the hardened runner, one at a time in `needs` order (the
 * job plan the CI runs too, as a graph there), on the lane's own archive of its tree, in the environment the builder made. A step
 * the secrets policy grants secrets gets them as read-only files (each read an audit record); a
 * voting job that does not pass ends the promotion. Each job's log and artifacts are kept for the
 * leak check.
 */
import { createReadStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isAirlockError } from '#shared/errors.js';
import { AIRLOCK_YAML } from '#shared/repo-config/airlock-yaml.js';
import { compileJobs } from '#shared/repo-config/compile-jobs.js';
import { runJobPlan, type JobRunnerPort } from '#shared/runner/job-plan.js';
import type { SecretFile } from '#shared/runner/secret-files.js';
import type { AirlockYaml } from '#shared/schemas/airlock-yaml.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import type { AuditLog, JsonValue } from '../../audit/audit-log.js';
import { argv, grantFor, type SecretsPolicy } from '../../policy/secrets.js';
import type { LeakSource } from '../../secrets/leak-check.js';
import type { SecretStore } from '../../secrets/secret-store.js';
import { lockedHandlers } from './locked-packages.js';
import { Stop, type Lane, type ProvenanceStep } from './lane.js';

export interface TestsPort {
  runner: JobRunnerPort;
  jobPolicy: JobPolicy;
  secretsPolicy: Readonly<SecretsPolicy>;
  secrets: Pick<SecretStore, 'read' | 'kind'>;
  /** Where each granted secret's read is recorded (both lanes). */
  audit: Pick<AuditLog, 'append'>;
}

export interface TestsOutcome {
  /** The test steps, as the provenance names them. */
  steps: ProvenanceStep[];
  /** The jobs' logs and artifacts, for the leak check. */
  logs: LeakSource[];
}

export async function runTests(p: TestsPort, l: Lane, cfg: AirlockYaml, envImage: string, sourceTar: string): Promise<TestsOutcome> {
  const { project, commit } = l;
  const steps: ProvenanceStep[] = [];
  const logs: LeakSource[] = [];
  const compiled = compileJobs(cfg, {
    buildId: 0,
    attempt: 1,
    pipeline: 'gate',
    image: envImage,
    budget: { jobs: p.jobPolicy.build.jobs, timeMs: p.jobPolicy.build.time, defaultTimeoutMs: p.jobPolicy.limits.timeout },
    vars: { project: project.name, branch: l.branch, change: commit.slice(0, 12), patchset: 1, commit },
  });
  if (compiled.issues.length > 0) throw new Stop('refused', 'config', `${AIRLOCK_YAML}: ${compiled.issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
  // One job at a time, in plan order (the CI runs them as a graph): the provenance lists the test
  // steps and the audit log the secret reads in the order they ran, which must be the same for every
  // rebuild of a commit; and the builder host has no executor slots or capacity of its own to keep
  // concurrent test containers within its memory next to the image build.
  const { failedVoting: failed } = await runJobPlan(compiled.jobs, {
    concurrency: 1,
    run: async (job, index) => {
      const chunks: Buffer[] = [];
      const secretFiles = await grantedFiles(p, l, job.name, job.spec.command);
      // Artifacts are taken out as in the CI, only to be searched for secrets with the logs.
      const artifactsDir = join(l.work, 'artifacts', String(index));
      if (job.spec.artifacts.length > 0) await mkdir(artifactsDir, { recursive: true, mode: 0o700 });
      // network: packages — only the lane's verified lockfile files answer (stages/locked-packages.ts).
      const unserved: string[] = [];
      const packages = job.spec.network === 'packages' ? lockedHandlers(l, 'tests', unserved) : undefined;
      const r = await p.runner.run(
        { ...job.spec, id: l.names.job(job.name, index) },
        {
          source: { tar: sourceTar }, includeLog: false, onLog: (c) => chunks.push(c.data),
          ...(job.spec.artifacts.length > 0 ? { artifactsDir } : {}), ...(secretFiles.length > 0 ? { secretFiles } : {}), ...(packages ? { packages } : {}),
        },
      );
      if (unserved.length > 0) chunks.push(Buffer.from(`[airlock] not in the verified lockfile files, so not served: ${unserved.slice(0, 10).join(', ')}${unserved.length > 10 ? ', …' : ''}\n`));
      const data = Buffer.concat(chunks);
      logs.push({ name: `log of ${job.name}`, data });
      for (const a of r.artifacts) logs.push({ name: `artifact ${a.path} of ${job.name}`, data: createReadStream(join(artifactsDir, a.path)) });
      await l.onJobLog?.(job.name, data, r.passed);
      // A step that held secrets controls its own result: it could spell them out in its exit code.
      // The public provenance says the step ran, not how it ended (a voting failure still stops all).
      steps.push({ name: `test:${job.name}`, command: job.spec.command, ...(secretFiles.length > 0 ? {} : { exitCode: r.exitCode ?? -1 }) });
      return r.passed ? 'passed' : 'failed';
    },
  });
  if (failed.length > 0) {
    await l.record('tests-failed', { jobs: failed });
    throw new Stop('failed', 'tests', `tests failed on the trusted rebuild: ${failed.join(', ')}`);
  }
  // The test containers are removed before the image build starts, so that the build does
  // not compete with their teardown (and a test's cost is counted as the tests').
  await p.runner.drain?.();
  l.phase('tests');
  await l.record('tests-passed', { jobs: compiled.jobs.map((j) => j.name) });
  return { steps, logs };
}

/**
 * The secrets policy grants step `job` of the lane's project, as files for /run/secrets: one file
 * per field, `<path>/<field>` (e.g. `team/app/npm/token`). Only if the step runs exactly the
 * command the grant names: otherwise the promotion is refused (the repository wrote that command;
 * the grant was for another). Each read is an audit record (the path, never the value); the values
 * join the leak check's list by being read through the store.
 */
async function grantedFiles(p: TestsPort, l: Lane, job: string, command: readonly string[]): Promise<SecretFile[]> {
  const files: SecretFile[] = [];
  const grant = grantFor(p.secretsPolicy, l.project.name, job);
  if (!grant) return files;
  if (JSON.stringify(argv(grant.command)) !== JSON.stringify([...command])) {
    throw new Stop('refused', 'secrets', `step ${job} does not run the command the secrets policy grants its secrets to: it is not given them, and nothing is published`);
  }
  for (const path of grant.secrets) {
    const value = await p.secrets.read(path).catch((e: unknown) => {
      throw new Stop('failed', 'secrets', `step ${job}: ${isAirlockError(e) ? e.message : `cannot read granted secret ${path}`}`);
    });
    const fields: Record<string, JsonValue> = { path, store: p.secrets.kind, purpose: `step ${job}`, ...l.secretReadFields };
    await p.audit.append('secret-read', fields);
    for (const [field, text] of Object.entries(value)) files.push({ path: `${path}/${field}`, data: Buffer.from(text, 'utf8') });
  }
  return files;
}
