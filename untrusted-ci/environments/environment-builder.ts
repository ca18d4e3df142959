/**
 * Project build environments: the image a project's jobs run in, built from the project's own
 * Dockerfile (ARCHITECTURE principle 3) within SRE's bounds from policies/environments.yaml.
 *
 * `ensure()` contract:
 * - The Dockerfile text is checked first (allowlisted base images, no downloads, no network
 *   flags); a violation is a PolicyViolationError and nothing is built.
 * - The tag is a content address: `airlock-env/<project>:<32 hex>` over BUILDER_VERSION, the
 *   project, the caller's context digest, the Dockerfile path and text, and the image ids the base
 *   references resolve to now. An unchanged environment is found by one image inspect
 *   (`cached: true`); a rebuilt base image changes the tag.
 * - Builds run on the classic builder with `--network none`, the policy's memory and CPU bounds,
 *   a wall-clock timeout, a capped context and a capped log. The Dockerfile built is the checked
 *   text itself (appended to the context under a reserved name), never a file the context holds.
 * - A failed build is an EnvironmentBuildFailedError whose message ends with the last log lines;
 *   an engine failure is an ExecutorFailedError (retryable); a cancelled wait is a CancelledError.
 * - Concurrent ensure() calls for one tag in this process share one build. Each waiter may leave
 *   (its signal) without disturbing the others; the build is cancelled when the last one leaves.
 * - The result's image is pinned in the ImageCache until the caller calls `release()`: call it
 *   once the job's containers exist (GC skips images any container uses) or when done.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { isNotFound } from '../../shared/docker/client.js';
import { AirlockError, CancelledError, EnvironmentBuildFailedError, ExecutorFailedError, ImageNotFoundError, InvalidInputError, PolicyViolationError, type Issue } from '../../shared/errors.js';
import type { Logger } from '../../shared/logging.js';
import type { EnvironmentPolicy } from '../../shared/schemas/environment-policy.js';
import { formatDuration } from '../../shared/units.js';
import { CHECKED_DOCKERFILE, withCheckedDockerfile } from '../../shared/docker/build-context.js';
import { BuildLog, followBuildStream } from '../../shared/docker/build-log.js';
import { checkDockerfile, checkImageAllowed, normalizeImageRef } from '../../shared/docker/dockerfile.js';
import { LABEL_ENV, LABEL_ENV_PROJECT, type ImageCache } from './image-cache.js';

/** Bump when the way images are built changes, so every environment is rebuilt once. */
export const BUILDER_VERSION = 'airlock-env-builder/1';
export const ENV_REPOSITORY_PREFIX = 'airlock-env/';

export interface EnsureInput {
  /** The project the environment belongs to (any string; sanitised for the tag). */
  project: string;
  /** The Dockerfile's path relative to the context, as the repo names it (for messages and the tag). */
  dockerfilePath: string;
  /** The Dockerfile's text: this, after the policy check, is what is built. */
  dockerfileText: string;
  /** The caller's content hash of the context (e.g. a git tree id): equal digests mean equal contexts. */
  contextDigest: string;
  /** A new tar stream of the build context on each call; only called when a build is needed. */
  openContext: () => Readable;
  /** Build output, line by line, up to the policy's log cap. */
  onLog?: (line: string) => void;
  signal?: AbortSignal;
}

export interface EnsuredEnvironment {
  /** The tag to run: `airlock-env/<project>:<hash>`. */
  image: string;
  imageId: string;
  /** True when the image existed and nothing was built. */
  cached: boolean;
  /** Milliseconds this call took (the lookup alone when cached). */
  buildMs: number;
  /** Unpin the image (idempotent). Until then GC never removes it. */
  release: () => void;
}

export interface EnvironmentBuilderOptions {
  docker: Docker;
  policy: EnvironmentPolicy;
  logger: Logger;
  cache: ImageCache;
}

/** A project name as a Docker repository component: lower case, `[a-z0-9-]`, at most 64 characters. */
export function sanitizeProject(project: string): string {
  const s = project.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 64).replace(/-+$/, '');
  return s === '' ? 'project' : s;
}

/** The content-addressed tag of an environment (pure). */
export function environmentTag(project: string, parts: { contextDigest: string; dockerfilePath: string; dockerfileText: string; baseImageIds: readonly string[] }): string {
  const h = createHash('sha256')
    .update(JSON.stringify([BUILDER_VERSION, project, parts.contextDigest, parts.dockerfilePath, parts.dockerfileText, parts.baseImageIds]))
    .digest('hex');
  return `${ENV_REPOSITORY_PREFIX}${sanitizeProject(project)}:${h.slice(0, 32)}`;
}

/** An `environment: {image}` environment: allowlisted and present on this engine. */
export async function resolveImageEnvironment(docker: Docker, image: string, policy: EnvironmentPolicy, file = '.airlock.yaml'): Promise<{ image: string; imageId: string }> {
  const issues = checkImageAllowed(image, policy.baseImages, file, 'environment.image');
  if (issues.length > 0) throw new PolicyViolationError(issues);
  const ref = normalizeImageRef(image);
  return { image: ref, imageId: await imageId(docker, ref) };
}

async function imageId(docker: Docker, ref: string): Promise<string> {
  try {
    return (await docker.getImage(ref).inspect()).Id;
  } catch (e) {
    if (isNotFound(e)) throw new ImageNotFoundError(ref);
    throw new ExecutorFailedError(`cannot inspect image ${ref}: ${(e as Error).message}`, { cause: e });
  }
}

/** One build shared by every ensure() waiting for its tag. */
interface Flight {
  done: Promise<string>;
  listeners: Set<(line: string) => void>;
  waiters: number;
  settled: boolean;
  cancel: (e: Error) => void;
}

export class EnvironmentBuilder {
  private readonly inflight = new Map<string, Flight>();

  constructor(private readonly opts: EnvironmentBuilderOptions) {}

  async ensure(input: EnsureInput): Promise<EnsuredEnvironment> {
    const started = performance.now();
    const { docker, policy, cache, logger } = this.opts;
    if (input.signal?.aborted) throw new CancelledError('environment ensure cancelled');
    const bad = (path: string, message: string): Issue => ({ file: 'environment', path, message, severity: 'error' });
    if (input.project === '') throw new InvalidInputError([bad('project', 'empty')]);
    if (input.contextDigest === '' || input.contextDigest.length > 256) throw new InvalidInputError([bad('contextDigest', 'empty or longer than 256 characters')]);

    const check = checkDockerfile(input.dockerfileText, input.dockerfilePath, policy.baseImages);
    if (check.issues.some((i) => i.severity === 'error')) throw new PolicyViolationError(check.issues);
    for (const w of check.issues) input.onLog?.(`[airlock] warning: ${w.path}: ${w.message}`);

    const baseImageIds = await Promise.all(check.baseImages.map((b) => imageId(docker, b)));
    const tag = environmentTag(input.project, { ...input, baseImageIds });
    const log = logger.child({ project: input.project, image: tag });
    // Pinned before the lookup: GC (under the same lock) either ran before and the lookup misses,
    // or sees the pin. The pin then covers the build and the caller's use, until release().
    const release = cache.pin(tag, `ensure ${input.project}`);
    try {
      const hit = await cache.withLock(async () => {
        try {
          return await docker.getImage(tag).inspect();
        } catch (e) {
          if (isNotFound(e)) return undefined;
          throw new ExecutorFailedError(`cannot inspect image ${tag}: ${(e as Error).message}`, { cause: e });
        }
      });
      if (hit) {
        await cache.touch(tag);
        return { image: tag, imageId: hit.Id, cached: true, buildMs: Math.round(performance.now() - started), release };
      }
      const id = await this.join(tag, input, log);
      await cache.touch(tag);
      const buildMs = Math.round(performance.now() - started);
      log.info({ buildMs }, 'environment built');
      return { image: tag, imageId: id, cached: false, buildMs, release };
    } catch (e) {
      release();
      throw e;
    }
  }

  /** Wait for the build of `tag`, starting it if none is under way. */
  private async join(tag: string, input: EnsureInput, log: Logger): Promise<string> {
    let flight = this.inflight.get(tag);
    if (!flight) {
      const f = this.start(tag, input, log);
      this.inflight.set(tag, f);
      f.done.then(
        () => this.inflight.delete(tag),
        () => this.inflight.delete(tag),
      );
      flight = f;
    }
    const f = flight;
    f.waiters++;
    if (input.onLog) f.listeners.add(input.onLog);
    try {
      return await waitOrCancel(f.done, input.signal);
    } finally {
      f.waiters--;
      if (input.onLog) f.listeners.delete(input.onLog);
      if (f.waiters === 0 && !f.settled) f.cancel(new CancelledError(`environment build of ${tag} cancelled: nobody waits for it`));
    }
  }

  private start(tag: string, input: EnsureInput, log: Logger): Flight {
    const { docker, policy } = this.opts;
    const controller = new AbortController();
    let failure: Error | undefined;
    const flight: Flight = {
      done: Promise.resolve(''),
      listeners: new Set(),
      waiters: 0,
      settled: false,
      cancel: (e) => {
        failure ??= e;
        controller.abort(e);
      },
    };
    const buildLog = new BuildLog(policy.build.logCap, (line) => {
      for (const l of flight.listeners) {
        try {
          l(line);
        } catch (e) {
          log.warn({ err: e }, 'environment build log listener threw');
        }
      }
    });
    const withTail = (message: string): string => {
      const tail = buildLog.tail();
      return tail.length === 0 ? message : `${message}\n--- last lines of the build log ---\n${tail.join('\n')}`;
    };
    flight.done = (async () => {
      const { build } = policy;
      const timer = setTimeout(() => flight.cancel(new EnvironmentBuildFailedError(withTail(`the environment build took longer than ${formatDuration(build.timeout)}`))), build.timeout);
      try {
        const context = withCheckedDockerfile(input.openContext(), input.dockerfileText, { maxBytes: build.contextMax, file: input.dockerfilePath });
        // A context that fails (too large, unreadable) aborts the upload: a piped body would otherwise hang.
        context.on('error', (e) => flight.cancel(e));
        log.info('environment build starting');
        const stream = await docker.buildImage(context, {
          t: tag,
          dockerfile: CHECKED_DOCKERFILE,
          version: '1', // the classic builder: honours networkmode for every RUN, fetches no frontend
          networkmode: 'none',
          labels: { [LABEL_ENV]: '1', [LABEL_ENV_PROJECT]: input.project },
          rm: true,
          forcerm: true,
          pull: false,
          memory: build.memory,
          memswap: build.memory, // no swap
          cpuperiod: 100_000,
          cpuquota: Math.max(1000, Math.round(build.cpus * 100_000)),
          abortSignal: controller.signal,
        });
        const outcome = await followBuildStream(stream, buildLog);
        if (failure) throw failure;
        if (!outcome.ok) throw new EnvironmentBuildFailedError(withTail(`the environment build failed: ${outcome.error}`));
        return await imageId(docker, tag);
      } catch (e) {
        if (failure) throw failure;
        if (e instanceof AirlockError) throw e;
        throw new ExecutorFailedError(`environment build of ${tag}: the engine failed: ${(e as Error).message}`, { cause: e });
      } finally {
        clearTimeout(timer);
        flight.settled = true;
      }
    })();
    flight.done.catch(() => {}); // every waiter gets the error; a build nobody waits for any more must not be unhandled
    return flight;
  }
}

/** `p`, or a CancelledError as soon as `signal` aborts. */
function waitOrCancel<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(new CancelledError('environment ensure cancelled'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new CancelledError('environment ensure cancelled'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
