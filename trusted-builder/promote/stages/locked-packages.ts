/**
 * `network: packages` in the trusted builder: a run's two package ports (shared/egress/package-network.ts)
 * answered by the lane's verified dependencies only (stages/dependencies.ts, deps/server.ts). The
 * namespace has no route anywhere: what a build or a test reaches is exactly the files of the
 * project's lockfiles, each checked against its digest before it was kept. The CI's cache is never
 * asked.
 */
import type Docker from 'dockerode';
import { DEFAULT_HOLDER_IMAGE, openPackageNetwork, type PackageHandlers, type PackageNetwork } from '#shared/egress/package-network.js';
import { newOwnerId } from '#shared/runner/owner.js';
import { Stop, type Lane } from './lane.js';

/** Where the package networks' sockets are (checked to be this user's alone, 0700). */
export const SOCKET_DIR = '/run/airlock-packages';

/** The owner label of this process's holders (the runner's reaper removes them once it is dead). */
const OWNER = newOwnerId();

/** The handlers of the lane's verified files; `unserved` collects what a run asked for that is not among them. */
export function lockedHandlers(l: Lane, step: string, unserved: string[]): PackageHandlers {
  if (!l.dependencies) {
    throw new Stop('refused', step, 'network: packages asks for packages, and .airlock.yaml lists no lockfiles under dependencies: the trusted builder serves only the files of locked dependencies it fetched and verified itself');
  }
  return l.dependencies.handlers({
    onRequest: (r) => {
      if (!r.served && unserved.length < 1000) unserved.push(`${r.kind} ${r.url}`);
    },
  });
}

/** A package network on the builder's engine for one image build of the lane. */
export async function openLockedPackages(docker: Docker, l: Lane, step: string, unserved: string[]): Promise<PackageNetwork> {
  const handlers = lockedHandlers(l, step, unserved);
  // Sockets live in a directory of root's alone under /run (the lane's work path may be too long
  // for a socket; a shared /tmp would let another local user answer the build's ports).
  return openPackageNetwork({ docker, image: DEFAULT_HOLDER_IMAGE, dir: SOCKET_DIR, owner: OWNER, runId: `${l.project.name}@${l.commit.slice(0, 12)}`.replace(/[^\w.@-]/g, '_'), handlers });
}
