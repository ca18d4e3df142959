/**
 * `executor.yaml`: one executor host's config (`airlock executor serve --config FILE`). It names the
 * CI to claim jobs from and the file of this host's own token; nothing else of the CI's (no
 * database, no review system, no other host's token). Relative paths resolve against the file.
 *
 *   name: exec-1                       # as the CI's executors.hosts lists it
 *   ci: {url: http://ci.internal:8080, tokenFile: executor.token}
 *   docker: unix:///var/run/docker.sock   # this host's engine (default: DOCKER_HOST, else that socket)
 *   slots: 4                           # jobs at once
 *   claimAhead: 4                      # jobs made ready while every slot is busy (default: slots)
 *   capacity: {reserve: 1GiB}          # memory and CPUs for jobs (default: the machine's, less reserve)
 *   stateDir: /var/lib/airlock         # the runner's workspaces (as the CI's runnerStateDir)
 *   workDir: /var/lib/airlock-executor # sources, artifacts, the images it loaded
 *   imagesKept: 20                     # environment images kept loaded (least recently used go first)
 *   policies: {job: policies/untrusted-job.yaml}  # this host's own ceiling for every job
 */
import { dirname, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { readConfigFile, readSecretFile } from '#shared/config-file.js';
import { InvalidInputError, type Issue } from '#shared/errors.js';
import { zodIssues } from '#shared/schemas/issues.js';
import { Size } from '#shared/schemas/limits.js';
import { ExecutorName } from './protocol.js';

export const ExecutorConfig = z
  .object({
    name: ExecutorName,
    ci: z.object({ url: z.url({ protocol: /^https?$/ }).max(2048), tokenFile: z.string().min(1) }).strict(),
    docker: z.string().min(1).max(1024).optional(),
    slots: z.number().int().min(1).max(256).default(2),
    claimAhead: z.number().int().min(0).max(256).optional(),
    capacity: z
      .object({
        memory: Size.optional(),
        reserve: Size.default(1024 ** 3),
        cpus: z.number().min(0.01).max(4096).optional(),
      })
      .strict()
      .default({ reserve: 1024 ** 3 }),
    stateDir: z.string().min(1).default('/var/lib/airlock'),
    workDir: z.string().min(1).default('/var/lib/airlock-executor'),
    imagesKept: z.number().int().min(1).max(10_000).default(20),
    policies: z.object({ job: z.string().min(1).optional() }).strict().default({}),
  })
  .strict();
export type ExecutorConfig = z.infer<typeof ExecutorConfig>;
export type ExecutorConfigInput = z.input<typeof ExecutorConfig>;

export interface LoadedExecutorConfig {
  readonly config: ExecutorConfig;
  readonly token: string;
  readonly file?: string;
}

/** Validate a config value; relative paths resolve against `baseDir`. */
export function buildExecutorConfig(input: unknown, file: string, baseDir = process.cwd()): LoadedExecutorConfig {
  const r = ExecutorConfig.safeParse(input);
  if (!r.success) throw new InvalidInputError(zodIssues(r.error, file));
  const config = r.data;
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(baseDir, p));
  config.stateDir = abs(config.stateDir);
  config.workDir = abs(config.workDir);
  if (config.policies.job) config.policies.job = abs(config.policies.job);
  const issues: Issue[] = [];
  const token = readSecretFile(config.ci.tokenFile, 'ci.tokenFile', file, baseDir, issues)?.toString('utf8') ?? '';
  if (issues.length > 0) throw new InvalidInputError(issues);
  return { config, token, file };
}

export function loadExecutorConfig(file: string): LoadedExecutorConfig {
  return buildExecutorConfig(readConfigFile(file), file, dirname(resolve(file)));
}
