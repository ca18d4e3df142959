/**
 * build: the images a lane makes on the engine, hermetically (network off, no cache, pinned bases
 * only). The test environment — a pinned base image as is, or the repository's Dockerfile built
 * here — and the publish image. A Dockerfile the policy does not allow is a refusal; one that does
 * not build, a failure. What was built is named by the lane and added to its `built` list.
 */
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import type Docker from 'dockerode';
import type { NetworkMode } from '#shared/schemas/airlock-yaml.js';
import { isAirlockError } from '#shared/errors.js';
import { AIRLOCK_YAML } from '#shared/repo-config/airlock-yaml.js';
import { buildTrustedImage, checkBases, type BaseImagePin } from '../../build/image-build.js';
import { Stop, type Lane, type ProvenanceStep } from './lane.js';
import { openLockedPackages } from './locked-packages.js';
import { packageBuildArgs } from '#shared/egress/package-network.js';

export const DOCKERFILE_MAX_BYTES = 256 * 1024; // 256 KiB
/** One image build at most (a `RUN sleep infinity` must not hold the builder). */
const BUILD_TIMEOUT_MS = 30 * 60_000; // 30 min

export interface BuildPort {
  docker: Docker;
  /** The policy's pinned base images. */
  pins: readonly BaseImagePin[];
}

export type EnvironmentSpec = { image: string } | { dockerfile: string; context?: string | undefined; network?: NetworkMode | undefined };

export interface BuiltImage {
  imageId: string;
  bases: BaseImagePin[];
  /** The build's log lines (searched for secrets with the rest). */
  log: string[];
  /** How the provenance names this step. */
  step: ProvenanceStep;
}

/** The test environment: a pinned base image as is, or the repo's Dockerfile built here; its image id. */
export async function environment(p: BuildPort, l: Lane, env: EnvironmentSpec): Promise<string> {
  if ('image' in env) {
    const { bases, issues } = await checkBases(p.docker, `FROM ${env.image}\n`, `${AIRLOCK_YAML} environment`, p.pins);
    if (issues.length > 0 || !bases[0]) throw new Stop('refused', 'environment', issues.map((i) => i.message).join('; ') || `${env.image} is not a pinned base image`);
    // By id, not by name: a name can be re-pointed on a shared engine after the check.
    return bases[0].digest;
  }
  const image = await buildFrom(p, l, 'environment', env.dockerfile, env.context ?? '.', 'env-context.tar', l.names.environment(), env.network);
  return image.imageId;
}

/** The publish image, from the Dockerfile and context the `publish` section names. */
export async function publishImage(p: BuildPort, l: Lane, publish: { dockerfile: string; context: string; network?: NetworkMode | undefined }): Promise<BuiltImage> {
  const image = await buildFrom(p, l, 'build', publish.dockerfile, publish.context, 'context.tar', l.names.publishImage(), publish.network);
  l.phase('build');
  await l.record('image-built', { image: image.imageId, bases: image.bases.map((b) => `${b.name}@${b.digest}`) });
  const network = publish.network === 'packages' ? '--network=packages(verified lockfile files only)' : '--network=none';
  return { ...image, step: { name: 'publish-image', command: ['docker', 'build', network, '--no-cache', `--file=${publish.dockerfile}`, publish.context], exitCode: 0 } };
}

async function buildFrom(p: BuildPort, l: Lane, step: 'environment' | 'build', dockerfile: string, context: string, tarName: string, tag: string, network?: NetworkMode): Promise<{ imageId: string; bases: BaseImagePin[]; log: string[] }> {
  const dockerfileText = await l.source.readText(dockerfile, DOCKERFILE_MAX_BYTES);
  const tar = join(l.work, tarName);
  await l.source.archive(tar, context);
  const unserved: string[] = [];
  const net = network === 'packages' ? await openLockedPackages(p.docker, l, step, unserved) : undefined;
  const image = await buildTrustedImage({
    docker: p.docker,
    context: createReadStream(tar),
    dockerfileText,
    file: dockerfile,
    tag,
    pins: p.pins,
    signal: AbortSignal.timeout(BUILD_TIMEOUT_MS),
    ...(net ? { packages: { networkMode: net.networkMode, buildArgs: packageBuildArgs() } } : {}),
  })
    .catch((e: unknown) => {
      const notServed = unserved.length > 0 ? `\n(not in the verified lockfile files, so not served: ${unserved.slice(0, 10).join(', ')}${unserved.length > 10 ? ', …' : ''})` : '';
      if (isAirlockError(e) && e.code === 'AIRLOCK_E_POLICY_VIOLATION') throw new Stop('refused', step, e.message);
      if (isAirlockError(e) && e.code === 'AIRLOCK_E_ENVIRONMENT_BUILD_FAILED') throw new Stop('failed', step, `${e.message}${notServed}`);
      throw e;
    })
    .finally(() => net?.close());
  l.built.push(tag);
  return image;
}
