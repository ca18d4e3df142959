/**
 * push: the very export the leak check searched, to the lane's repository in the lane's registry
 * (the public one, or the embargo lane's own) with the builder's login there, with retries; the
 * digest the registry serves is kept. A registry error is a failure.
 */
import { isAirlockError } from '#shared/errors.js';
import { pushImage, type PushOptions, type PushResult } from '../../publish/registry.js';
import { Stop, type Lane } from './lane.js';

export interface PushPort {
  options?: PushOptions;
}

export async function push(p: PushPort, l: Lane, imageId: string, imageTar: string): Promise<PushResult> {
  const pushed = await pushImage(imageId, { registry: l.registry.host, repository: l.repository, tag: l.commit }, l.registry.credentials, {
    ...p.options,
    archive: imageTar,
    ...(l.pushLog ? { logger: l.pushLog } : {}),
  }).catch((e: unknown) => {
    if (isAirlockError(e)) throw new Stop('failed', 'push', e.message);
    throw e;
  });
  l.phase('push');
  await l.record('pushed', { reference: pushed.reference, digest: pushed.digest, attempts: pushed.attempts });
  return pushed;
}
