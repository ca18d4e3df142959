/**
 * Shared setup for the environment tests against real Docker: a builder and cache per test file,
 * contexts from small file maps, and removal of everything a file's projects made.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type Docker from 'dockerode';
import { createDocker } from '#shared/docker/client.js';
import { createLogger } from '#shared/logging.js';
import type { EnvironmentPolicy } from '../../../untrusted-ci/schemas/environment-policy.js';
import { contextFromDirectory } from '#shared/docker/build-context.js';
import { EnvironmentBuilder, type EnsureInput, type EnvironmentBuilderOptions } from '../../../untrusted-ci/environments/environment-builder.js';
import { STATE_DIR } from '../../support/docker.js';
import { ImageCache, LABEL_ENV, LABEL_ENV_PROJECT, type ImageCacheOptions } from '../../../untrusted-ci/environments/image-cache.js';
import { loadEnvironmentPolicy } from '../../../untrusted-ci/environments/policy.js';

export const logger = createLogger({ level: 'silent' });

export function testPolicy(over: { build?: Partial<EnvironmentPolicy['build']>; cache?: Partial<EnvironmentPolicy['cache']> } = {}): EnvironmentPolicy {
  const p = loadEnvironmentPolicy();
  return { ...p, build: { ...p.build, timeout: 60_000, ...over.build }, cache: { ...p.cache, keepRecent: 0, minIdle: 0, ...over.cache } };
}

export interface Rig {
  docker: Docker;
  policy: EnvironmentPolicy;
  cache: ImageCache;
  builder: EnvironmentBuilder;
  dir: string;
}

export function makeRig(policy = testPolicy(), cacheOpts: Partial<ImageCacheOptions> = {}, builderOpts: Partial<EnvironmentBuilderOptions> = {}): Rig {
  const docker = createDocker();
  const dir = mkdtempSync(join(tmpdir(), 'airlock-env-test-'));
  const cache = new ImageCache({ docker, policy, logger, usageFile: join(dir, 'state', 'usage.json'), ...cacheOpts });
  return { docker, policy, cache, builder: new EnvironmentBuilder({ docker, policy, logger, cache, stateDir: STATE_DIR, ...builderOpts }), dir };
}

let seq = 0;
/** An ensure() input whose context holds `files` (plus the Dockerfile). */
export async function input(rig: Rig, project: string, dockerfile: string, files: Record<string, string> = {}, extra: Partial<EnsureInput> = {}): Promise<EnsureInput> {
  const ctx = join(rig.dir, `ctx-${++seq}`);
  for (const [name, text] of Object.entries({ Dockerfile: dockerfile, ...files })) {
    mkdirSync(dirname(join(ctx, name)), { recursive: true });
    writeFileSync(join(ctx, name), text);
  }
  const c = await contextFromDirectory(ctx, 1024 * 1024);
  return { project, dockerfilePath: 'Dockerfile', dockerfileText: dockerfile, ...c, ...extra };
}

/** Environment images of projects starting with `prefix`, by tag. */
export async function envImages(docker: Docker, prefix: string): Promise<Docker.ImageInfo[]> {
  const images = await docker.listImages({ filters: { label: [`${LABEL_ENV}=1`] } });
  return images.filter((i) => (i.Labels?.[LABEL_ENV_PROJECT] ?? '').startsWith(prefix));
}

export async function exists(docker: Docker, ref: string): Promise<boolean> {
  return docker
    .getImage(ref)
    .inspect()
    .then(
      () => true,
      () => false,
    );
}

/**
 * Remove every image of the prefix's projects, the given leftover image ids if they are untagged
 * (a build log's ` ---> id` lines also name the tagged base image, which must stay), and the rig's files.
 */
export async function cleanup(rig: Rig, prefix: string, leftovers: Iterable<string> = []): Promise<void> {
  for (const img of await envImages(rig.docker, prefix)) await rig.docker.getImage(img.Id).remove({ force: true }).catch(() => {});
  for (const id of leftovers) {
    const info = await rig.docker.getImage(id).inspect().catch(() => undefined);
    if (!info || (info.RepoTags ?? []).length > 0) continue;
    await rig.docker.getImage(info.Id).remove().catch(() => {});
  }
  rmSync(rig.dir, { recursive: true, force: true });
}
