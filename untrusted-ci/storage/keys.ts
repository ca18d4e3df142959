/**
 * Where each thing a build leaves behind lives in an ArtifactStore. One tree per build, so a whole
 * build (or its logs, or one job's artifacts) is removed with one `deletePrefix`:
 *
 *   builds/<buildId>/
 *     result.json                    the build's reported result
 *     logs/<job>.log                 one log per job
 *     artifacts/<job>/<path…>        the files the job declared as artifacts
 *
 * Ids are checked here (InvalidInputError), so a key is never built from an unchecked string.
 * Retention (untrusted-ci/policy/retention.ts) relies on this layout.
 */
import { z } from 'zod';
import { JobName } from '#shared/schemas/airlock-yaml.js';
import { parseOrThrow } from '#shared/schemas/issues.js';

/** A build id: one path segment of letters, digits and `. _ -`, starting with a letter or digit (so never `.` or `..`). */
export const BuildId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'build ids are 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit');
export type BuildId = z.infer<typeof BuildId>;

/** The folder every build lives under. */
export const BUILDS_PREFIX = 'builds/';

const build = (buildId: string): string => parseOrThrow(BuildId, buildId, 'buildId');
const job = (jobName: string): string => parseOrThrow(JobName, jobName, 'jobName');

/** `builds/<buildId>/`: everything of one build. */
export function buildPrefix(buildId: string): string {
  return `${BUILDS_PREFIX}${build(buildId)}/`;
}

/** `builds/<buildId>/logs/`: every job log of one build. */
export function logsPrefix(buildId: string): string {
  return `${buildPrefix(buildId)}logs/`;
}

/** `builds/<buildId>/logs/<job>.log` */
export function logKey(buildId: string, jobName: string): string {
  return `${logsPrefix(buildId)}${job(jobName)}.log`;
}

/** `builds/<buildId>/artifacts/<job>/`: the files of one job, under their paths relative to the job's output. */
export function artifactPrefix(buildId: string, jobName: string): string {
  return `${buildPrefix(buildId)}artifacts/${job(jobName)}/`;
}

/** `builds/<buildId>/result.json` */
export function resultKey(buildId: string): string {
  return `${buildPrefix(buildId)}result.json`;
}

/** The build id a key belongs to (`builds/<id>/…`), or undefined for a key outside that layout. */
export function buildIdOf(key: string): string | undefined {
  if (!key.startsWith(BUILDS_PREFIX)) return undefined;
  const rest = key.slice(BUILDS_PREFIX.length);
  const slash = rest.indexOf('/');
  if (slash <= 0) return undefined;
  const id = rest.slice(0, slash);
  return BuildId.safeParse(id).success ? id : undefined;
}
