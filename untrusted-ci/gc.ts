/**
 * `airlock ci gc`: one housekeeping pass over what the CI leaves behind, safe to run while the
 * service runs (its own process, the same data dir):
 *
 *   1. retention (policies/retention.yaml) over the artifact store: expired logs and artifacts of
 *      finished builds, and build trees the database no longer knows (orphans), plus the local
 *      event files (`<dataDir>/builds/<id>/`) of builds whose logs expired — they hold the log text too;
 *   2. the environment image cache, trimmed to its budget; the images queued and running builds
 *      need are read from the database under the cache's lock (ImageCache's `externalPins`);
 *   3. `git gc --auto` in every project mirror.
 *
 * Why this is safe next to a running service: SQLite is in WAL mode, so reading here never blocks
 * the service's writes; every build id the database holds — queued and running ones included — is
 * "known", so a build that is writing logs right now is never swept as an orphan; and an orphan
 * must also be older than the longest retention period. A build finishing during the pass is only
 * seen by the next one. Every step is idempotent: a pass that fails part way is simply run again.
 */
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pruneCache, type PruneReport } from './egress/cache-gc.js';
import { loadEgressPolicy } from './egress/policy.js';
import { PackageProxies } from './egress/proxies.js';
import type Docker from 'dockerode';
import { createDocker } from '#shared/docker/client.js';
import type { Logger } from '#shared/logging.js';
import { applyRetention, loadRetentionPolicy, planOrphans, planRetention, scanBuilds, type BuildResult as RetentionResult, type FinishedBuild } from './policy/retention.js';
import type { BuildResult } from '#shared/schemas/api/builds.js';
import type { LoadedCiConfig } from './config.js';
import type { GcReport } from './environments/image-cache.js';
import { Merger } from './merger/merger.js';
import { dataPaths, openArtifactStore, openImageCache } from './service.js';
import { BuildStore } from './store/build-store.js';
import { openCiDatabase, type Db } from './store/database.js';

export interface CiGcOptions {
  logger: Logger;
  /** The engine for the image GC (default: the one `createDocker` finds). Not touched when `images` is false. */
  docker?: Docker;
  /** The retention clock, epoch ms (default: now). */
  now?: number;
  /** Trim the environment image cache (default true). */
  images?: boolean;
  /** `git gc --auto` in the project mirrors (default true). */
  git?: boolean;
  /** Prune the package cache to policies/egress.yaml's `cache.maxSize` (default: as `images`). */
  packages?: boolean;
  /** Plan only: report what retention would delete; no image or git GC. */
  dryRun?: boolean;
}

/** What a pass deleted (or, with `dryRun`, would delete). */
export interface CiGcReport {
  /** The package cache (untrusted-ci/egress/cache-gc.ts). */
  packages?: PruneReport;
  retention: {
    /** Builds whose logs expired. */
    logs: string[];
    /** Jobs whose artifacts expired. */
    artifacts: { buildId: string; job: string }[];
    /** Build trees no build in the database owns. */
    orphans: string[];
    /** Objects deleted from the artifact store (0 in a dry run). */
    deletedObjects: number;
    /** Local event directories removed with their builds' logs (0 in a dry run). */
    eventDirs: number;
  };
  /** Absent when images were not collected (`images: false` or a dry run). */
  images?: GcReport;
  /** True when `git gc --auto` ran in the mirrors. */
  git?: boolean;
}

/** Results as retention classes them: a build that never ran a job counts as a failure to look at. */
const RETENTION_CLASS: Record<BuildResult, RetentionResult> = {
  passed: 'passed',
  failed: 'failed',
  'merge-conflict': 'failed',
  'config-error': 'failed',
  error: 'error',
  cancelled: 'cancelled',
  superseded: 'cancelled',
};

/** Every build id the database holds, whatever its state: retention's "known" set. */
export async function allBuildIds(db: Db): Promise<Set<string>> {
  return new Set((await db.all<{ id: number }>('SELECT id FROM builds')).map((r) => String(r.id)));
}

export async function runCiGc(loaded: LoadedCiConfig, opts: CiGcOptions): Promise<CiGcReport> {
  const c = loaded.config;
  const now = opts.now ?? Date.now();
  const log = opts.logger.child({ component: 'gc' });
  const paths = dataPaths(c.dataDir);
  const policy = loadRetentionPolicy(c.policies.retention);
  const db = await openCiDatabase(c, loaded.databaseUrl);
  try {
    const store = new BuildStore(db);
    const artifacts = openArtifactStore(loaded);

    // Known ids are read before the finished builds: a build finishing in between is then known
    // (not an orphan) and simply not yet planned, never the other way round.
    const known = await allBuildIds(db);
    const finished: FinishedBuild[] = (await store.finishedBuilds()).map((b) => ({ buildId: String(b.buildId), result: RETENTION_CLASS[b.result], finishedAt: b.finishedAt, jobs: b.jobs }));
    const plan = planRetention(finished, policy, now);
    plan.orphans = planOrphans(await scanBuilds(artifacts), known, policy, now);
    const report: CiGcReport = { retention: { logs: plan.logs, artifacts: plan.artifacts, orphans: plan.orphans, deletedObjects: 0, eventDirs: 0 } };
    if (opts.dryRun) {
      log.info({ logs: plan.logs.length, artifacts: plan.artifacts.length, orphans: plan.orphans.length }, 'retention planned (dry run)');
      return report;
    }

    report.retention.deletedObjects = (await applyRetention(artifacts, plan)).deletedObjects;
    for (const id of [...plan.logs, ...plan.orphans]) {
      // Ids came from the database or passed BuildId validation in scanBuilds: one safe path segment.
      const dir = join(paths.builds, id);
      if (!existsSync(dir)) continue;
      await rm(dir, { recursive: true, force: true });
      report.retention.eventDirs++;
    }
    log.info({ logs: plan.logs.length, artifacts: plan.artifacts.length, orphans: plan.orphans.length, deletedObjects: report.retention.deletedObjects }, 'retention applied');

    if (opts.images ?? true) {
      report.images = await openImageCache(loaded, opts.docker ?? createDocker(), log, store).gc();
    }
    if (opts.packages ?? opts.images ?? true) {
      // The package cache (the proxies' files), to the egress policy's size, least recently used first.
      const egress = loadEgressPolicy(c.policies.egress);
      report.packages = await pruneCache(PackageProxies.cacheDirsOf(join(c.runnerStateDir, 'egress')), egress.cache.maxSize);
      log.info(report.packages, 'package cache pruned');
    }
    if (opts.git ?? true) {
      // The service's unfinished builds keep their refs: only a dead process's are dropped.
      const live = new Set((await store.builds({ state: 'running', limit: 500 })).map((b) => String(b.id)));
      await new Merger({ root: paths.git, logger: log }).gc({ keep: (id) => live.has(id) });
      report.git = true;
    }
    return report;
  } finally {
    await db.close();
  }
}
