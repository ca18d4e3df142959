/**
 * The plain-git reporter: a finished build's record (the BuildView the API serves, with its jobs and
 * every config issue) is written as `builds/<id>/result.json` next to its logs, so the result
 * outlives the database row and travels with the logs to S3. Idempotent: a re-report overwrites.
 * A Gerrit REST reporter (a review with a `Verified` vote) implements the same interface later.
 */
import type { ArtifactStore } from '../storage/artifact-store.js';
import { resultKey } from '../storage/keys.js';
import type { BuildView } from '#shared/schemas/api/builds.js';
import type { Reporter } from '../scheduler/scheduler.js';

export function createStoreReporter(store: ArtifactStore): Reporter {
  return {
    async report(build: BuildView): Promise<void> {
      await store.put(resultKey(String(build.id)), `${JSON.stringify(build, null, 2)}\n`, { contentType: 'application/json' });
    },
  };
}
