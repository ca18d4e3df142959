/**
 * Retention of build logs and artifacts, by `policies/retention.yaml`. Split as docs/conventions.md "Pure mapping, thin I/O" says:
 * `planRetention` and `planOrphans` are pure (builds + policy + clock in, keys out) and tested as
 * tables; `scanBuilds` and `applyRetention` do the store I/O.
 *
 * A retention run, as the CI's housekeeping loop does it:
 *   plan = planRetention(finishedBuilds, policy, now)
 *   plan.orphans = planOrphans(await scanBuilds(store), allKnownBuildIds, policy, now)
 *   await applyRetention(store, plan)
 *
 * Expiry is `now - finishedAt >= period`: at exactly the period the object is gone. Plans are
 * idempotent (deleting what is already gone deletes nothing), so a run that fails part way is
 * simply run again. `builds/<id>/result.json` is not subject to the periods: it lives as long as
 * the CI remembers the build, and goes with the orphan sweep once it does not.
 */
import { fileURLToPath } from 'node:url';
import { loadPolicyFile, parsePolicyText } from '#shared/policy/policy-file.js';
import { StorageFailedError, type Issue } from '#shared/errors.js';
import { RetentionPolicy } from '../schemas/retention-policy.js';
import type { ArtifactStore } from '../storage/artifact-store.js';
import { BUILDS_PREFIX, artifactPrefix, buildIdOf, buildPrefix, logsPrefix } from '../storage/keys.js';

export const DEFAULT_RETENTION_POLICY_FILE = fileURLToPath(new URL('../../policies/retention.yaml', import.meta.url));

/** A build's final result, as retention sees it. */
export type BuildResult = 'passed' | 'failed' | 'error' | 'cancelled';

/** What retention needs to know of one finished build. */
export interface FinishedBuild {
  buildId: string;
  result: BuildResult;
  /** Epoch milliseconds. */
  finishedAt: number;
  /** The job names that ran (and may have logs and artifacts). */
  jobs: string[];
}

/** What to delete. `orphans` (build ids whose whole tree goes) is filled by `planOrphans`, when a run sweeps them. */
export interface RetentionPlan {
  /** Builds whose `builds/<id>/logs/` expire. */
  logs: string[];
  /** Jobs whose `builds/<id>/artifacts/<job>/` expire. */
  artifacts: { buildId: string; job: string }[];
  /** Unknown builds whose whole `builds/<id>/` goes. */
  orphans?: string[];
}

/** Parse policy text, collecting every problem. */
export function parseRetentionPolicy(text: string, file: string): { value?: RetentionPolicy; issues: Issue[] } {
  return parsePolicyText(RetentionPolicy, text, file);
}

/** Load the policy file or throw PolicyInvalidError listing every problem. */
export function loadRetentionPolicy(file: string = DEFAULT_RETENTION_POLICY_FILE): RetentionPolicy {
  return loadPolicyFile(RetentionPolicy, file);
}

/** Which period a result gets: failures and errors are kept longer; a cancelled (or superseded) build counts as passed. */
export function periodClass(result: BuildResult): 'passed' | 'failed' {
  return result === 'failed' || result === 'error' ? 'failed' : 'passed';
}

/** The longest period anywhere in the policy: how long an object of an unknown build is kept. */
export function longestPeriod(policy: RetentionPolicy): number {
  const overrides = Object.values(policy.artifacts.jobs).flatMap((j) => [j.passed ?? 0, j.failed ?? 0]);
  return Math.max(policy.logs.passed, policy.logs.failed, policy.artifacts.passed, policy.artifacts.failed, ...overrides);
}

/** What of `builds` has expired at `now`. Pure; output in input order. */
export function planRetention(builds: readonly FinishedBuild[], policy: RetentionPolicy, now: number): RetentionPlan {
  const plan: RetentionPlan = { logs: [], artifacts: [] };
  for (const b of builds) {
    const cls = periodClass(b.result);
    const age = now - b.finishedAt;
    if (age >= policy.logs[cls]) plan.logs.push(b.buildId);
    for (const job of b.jobs) {
      const period = policy.artifacts.jobs[job]?.[cls] ?? policy.artifacts[cls];
      if (age >= period) plan.artifacts.push({ buildId: b.buildId, job });
    }
  }
  return plan;
}

/**
 * Build trees to sweep: those not in `knownBuildIds` whose newest object (epoch ms, from
 * `scanBuilds`) is at least `longestPeriod` old. `knownBuildIds` must hold every build the CI
 * still knows, running ones included: a running build has no `finishedAt` but already has logs.
 * Pure; output sorted.
 */
export function planOrphans(newestByBuild: ReadonlyMap<string, number>, knownBuildIds: ReadonlySet<string>, policy: RetentionPolicy, now: number): string[] {
  const longest = longestPeriod(policy);
  return [...newestByBuild]
    .filter(([id, newest]) => !knownBuildIds.has(id) && now - newest >= longest)
    .map(([id]) => id)
    .sort();
}

/**
 * The newest object time (epoch ms) of every build tree in the store, by build id. Objects under
 * `builds/` outside a `builds/<valid id>/` folder are not counted (nothing airlock writes lands there).
 */
export async function scanBuilds(store: ArtifactStore): Promise<Map<string, number>> {
  const newest = new Map<string, number>();
  for await (const o of store.list(BUILDS_PREFIX)) {
    const id = buildIdOf(o.key);
    if (id === undefined) continue;
    newest.set(id, Math.max(newest.get(id) ?? -Infinity, o.modifiedAt.getTime()));
  }
  return newest;
}

/**
 * Delete what `plan` names, one prefix at a time. Every id is checked first (InvalidInputError,
 * nothing deleted). Every prefix is then attempted even if one fails; if any failed,
 * StorageFailedError says how many (its cause an AggregateError of all).
 */
export async function applyRetention(store: ArtifactStore, plan: RetentionPlan): Promise<{ deletedObjects: number }> {
  const prefixes = [
    ...plan.logs.map((id) => logsPrefix(id)),
    ...plan.artifacts.map((a) => artifactPrefix(a.buildId, a.job)),
    ...(plan.orphans ?? []).map((id) => buildPrefix(id)),
  ];
  let deletedObjects = 0;
  const errors: unknown[] = [];
  for (const prefix of prefixes) {
    try {
      deletedObjects += await store.deletePrefix(prefix);
    } catch (e) {
      errors.push(e);
    }
  }
  if (errors.length > 0) {
    const first = errors[0] as Error;
    throw new StorageFailedError(`retention: ${errors.length} of ${prefixes.length} deletions failed (${deletedObjects} objects deleted); first: ${first.message}`, {
      cause: new AggregateError(errors),
    });
  }
  return { deletedObjects };
}
