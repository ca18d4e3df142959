/**
 * The one place a dockerode client is made. Only a local unix socket is supported: airlock never
 * talks to a remote engine over TCP (DOCKER_HOST=unix:///path is honoured).
 */
import Docker from 'dockerode';
import { InvalidInputError } from '../errors.js';

export const DEFAULT_DOCKER_SOCKET = '/var/run/docker.sock';

export function createDocker(dockerHost: string | undefined = process.env.DOCKER_HOST): Docker {
  let socketPath = DEFAULT_DOCKER_SOCKET;
  if (dockerHost) {
    if (!dockerHost.startsWith('unix://')) {
      throw new InvalidInputError([{ file: 'environment', path: 'DOCKER_HOST', message: 'only unix:// sockets are supported', severity: 'error' }]);
    }
    socketPath = dockerHost.slice('unix://'.length);
  }
  return new Docker({ socketPath });
}

/** The engine answered 404 (no such container, volume or image): for idempotent removals and lookups. */
export function isNotFound(e: unknown): boolean {
  return (e as { statusCode?: number } | null)?.statusCode === 404;
}
