/**
 * push: the very export the leak check searched, to the lane's repository of the private
 * registry, with retries; the digest the registry serves is kept. A registry error is a failure.
 */
import { isAirlockError } from '#shared/errors.js';
import { pushImage, type PushOptions, type PushResult, type RegistryCredentials } from '../../publish/registry.js';
import { Stop, type Lane } from './lane.js';

export interface PushPort {
  /** The registry's host[:port], from the promotion policy. */
  registry: string;
  credentials: RegistryCredentials;
  options?: PushOptions;
}

export async function push(p: PushPort, l: Lane, imageId: string, imageTar: string): Promise<PushResult> {
  const pushed = await pushImage(imageId, { registry: p.registry, repository: l.repository, tag: l.commit }, p.credentials, {
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
