/**
 * dependencies: the lockfiles `.airlock.yaml` names (`dependencies: {npm, debian}`), read from the
 * lane's tree, and every file they lock fetched by the builder itself from the sources the
 * promotion policy allows and verified against its digest (trusted-builder/deps/dependencies.ts),
 * into the lane's work directory. Runs right after config, before anything is built.
 *
 * Outcomes: the `VerifiedDependencies` (what the provenance lists, and the `{npm, apt}` request
 * listeners that serve exactly those files to the lane's containers), set on the lane as
 * `l.dependencies` by pipeline.ts; a lockfile or a package that is not acceptable (missing, a weak
 * or absent digest, a git source, a mismatch, not in the signed index, no policy for it):
 * `Stop('refused', 'dependencies', …)` naming it; the network or the disk: `Stop('failed', …)`.
 */
import { join } from 'node:path';
import type { DependenciesSection } from '#shared/schemas/airlock-yaml.js';
import { DependencyFailed, DependencyRefused } from '../../deps/errors.js';
import { fetchDependencies, NO_DEPENDENCIES, type FetchLimits, type VerifiedDependencies } from '../../deps/dependencies.js';
import { DEBIAN_LOCKFILE_MAX_BYTES } from '../../deps/debian-lockfile.js';
import { NPM_LOCKFILE_MAX_BYTES } from '../../deps/npm-lockfile.js';
import type { DependencyPolicy } from '../../policy/promotion.js';
import { Stop, type Lane } from './lane.js';

export type { VerifiedDependencies } from '../../deps/dependencies.js';

export interface DependenciesPort {
  /** The promotion policy's `dependencies` (absent: nothing may be fetched). */
  policy: DependencyPolicy | undefined;
  limits?: Partial<FetchLimits>;
  now: () => number;
}

export async function dependencies(p: DependenciesPort, l: Lane, section: DependenciesSection | undefined): Promise<VerifiedDependencies> {
  if (!section || (section.npm.length === 0 && section.debian.length === 0)) return NO_DEPENDENCIES;
  const read = async (file: string, max: number): Promise<{ file: string; text: string }> => {
    const text = await l.source.readText(file, max).catch((e: unknown) => {
      // The lane's reader says `config`; a lockfile is this step's.
      if (e instanceof Stop) throw new Stop(e.state, 'dependencies', `lockfile ${e.message}`);
      throw e;
    });
    return { file, text };
  };
  const lockfiles = {
    npm: await Promise.all(section.npm.map((f) => read(f, NPM_LOCKFILE_MAX_BYTES))),
    debian: await Promise.all(section.debian.map((f) => read(f, DEBIAN_LOCKFILE_MAX_BYTES))),
  };
  const out = await fetchDependencies(lockfiles, { policy: p.policy, dir: join(l.work, 'dependencies'), now: p.now, ...(p.limits ? { limits: p.limits } : {}) }).catch((e: unknown) => {
    if (e instanceof DependencyRefused) throw new Stop('refused', 'dependencies', e.message);
    if (e instanceof DependencyFailed) throw new Stop('failed', 'dependencies', e.message);
    throw e;
  });
  l.phase('dependencies');
  await l.record('dependencies-verified', {
    lockfiles: [...section.npm, ...section.debian],
    npm: out.npm.length,
    debian: out.debian.length,
    indexes: out.debianIndexes.map((i) => i.url),
  });
  return out;
}
