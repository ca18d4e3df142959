/**
 * Project build environments: the image a project's jobs run in, built from the project's own
 * Dockerfile (docs/architecture.md "Environments come from the repository") within SRE's bounds from policies/environments.yaml.
 *
 * `ensure()` contract:
 * - The Dockerfile text is checked first (allowlisted base images, no downloads, no network
 *   flags); a violation is a PolicyViolationError and nothing is built.
 * - The tag is a content address: `airlock-env/<project>:<32 hex>` over BUILDER_VERSION, the
 *   project, the caller's context digest, the Dockerfile path and text, and the image ids the base
 *   references resolve to now. An unchanged environment is found by one image inspect
 *   (`cached: true`); a rebuilt base image changes the tag.
 * - Builds run on the classic builder with `--network none`, a wall-clock timeout, a capped context
 *   and a capped log, in a throwaway engine of their own (build-sandbox.ts): the base images are
 *   copied into it by id, the built image is copied back to the main engine under its tag, and the
 *   sandbox is removed. Its RUN steps are bounded together by the policy's pids, memory and CPU
 *   limits (one cgroup), and everything the build writes by its disk limit (the engine's own
 *   filesystem); they run without network, with no-new-privileges and without the capabilities
 *   they do without, under runc or (policy `runtime: runsc`) gVisor. The Dockerfile built is the
 *   checked text itself (appended to the context under a reserved name), never a file the context holds.
 * - A build holds an executor slot (`slots`, shared with the jobs) from before its sandbox exists
 *   until it is gone; the timeout counts from when it has one.
 * - A failed build is an EnvironmentBuildFailedError whose message says why in one line (a limit:
 *   "a RUN step exceeded the process limit of 256", "the build wrote more than 8 GiB (its disk
 *   limit)", "a RUN step exceeded the memory limit of 2 GiB"; or the engine's error) and ends with
 *   the last log lines. A RUN step refused a fork ends the build at once. An engine failure is an
 *   ExecutorFailedError (retryable); a cancelled wait is a CancelledError.
 * - Concurrent ensure() calls for one tag in this process share one build. Each waiter may leave
 *   (its signal) without disturbing the others; the build is cancelled when the last one leaves.
 * - The result's image is pinned in the ImageCache until the caller calls `release()`: call it
 *   once the job's containers exist (GC skips images any container uses) or when done.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { isNotFound } from '#shared/docker/client.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AirlockError, CancelledError, EnvironmentBuildFailedError, ExecutorFailedError, ImageNotFoundError, InvalidInputError, PolicyViolationError, RuntimeUnavailableError, type Issue } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import type { EnvironmentPolicy } from '../schemas/environment-policy.js';
import { formatBytes, formatDuration } from '#shared/units.js';
import { CHECKED_DOCKERFILE, withCheckedDockerfile } from '#shared/docker/build-context.js';
import { BuildLog, followBuildStream } from '#shared/docker/build-log.js';
import { checkDockerfile, normalizeImageRef } from '#shared/docker/dockerfile.js';
import { imageEnvironmentIssues } from '../executor/config-check.js';
import { LABEL_ENV, LABEL_ENV_PROJECT, type ImageCache } from './image-cache.js';
import { DEFAULT_HOLDER_IMAGE, openPackageNetwork, packageBuildArgs, type PackageHandlers, type PackageNetwork } from '#shared/egress/package-network.js';
import { BuildSandboxes, copyImages, moveImage, type BuildSandbox, type SandboxLimits, type SandboxSample } from './build-sandbox.js';

/** Bump when the way images are built changes, so every environment is rebuilt once. */
export const BUILDER_VERSION = 'airlock-env-builder/2';
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
  /**
   * `network: packages`: who answers the RUN steps' two package ports (the egress front of this
   * run; shared/egress/package-network.ts). Absent: no network. Part of the tag: an environment
   * built with packages is not the one built without.
   */
  packages?: PackageHandlers;
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
  /** The runner's state directory: build sandboxes live in `<stateDir>/envbuild`, and runsc-compat.json is read here. */
  stateDir: string;
  /** Executor slots shared with the jobs (untrusted-ci/scheduler/slots.ts): a build holds one while it runs. */
  slots?: { acquire(signal?: AbortSignal): Promise<() => void> };
  /** Injected for tests (e.g. another owner, to play a crashed process). */
  sandboxes?: BuildSandboxes;
}

/** How often a running build's limits are read. */
const SAMPLE_MS = 100;

/** A project name as a Docker repository component: lower case, `[a-z0-9-]`, at most 64 characters. */
export function sanitizeProject(project: string): string {
  const s = project.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 64).replace(/-+$/, '');
  return s === '' ? 'project' : s;
}

/** The content-addressed tag of an environment (pure). */
export function environmentTag(project: string, parts: { contextDigest: string; dockerfilePath: string; dockerfileText: string; baseImageIds: readonly string[]; network?: 'packages' }): string {
  const h = createHash('sha256')
    .update(JSON.stringify([BUILDER_VERSION, project, parts.contextDigest, parts.dockerfilePath, parts.dockerfileText, parts.baseImageIds, ...(parts.network ? [parts.network] : [])]))
    .digest('hex');
  return `${ENV_REPOSITORY_PREFIX}${sanitizeProject(project)}:${h.slice(0, 32)}`;
}

/** An `environment: {image}` environment: allowlisted and present on this engine. */
export async function resolveImageEnvironment(docker: Docker, image: string, policy: EnvironmentPolicy, file = '.airlock.yaml'): Promise<{ image: string; imageId: string }> {
  const issues = imageEnvironmentIssues(image, policy, file);
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
  /** The throwaway engines builds run in (see build-sandbox.ts). */
  readonly sandboxes: BuildSandboxes;
  private remap: Promise<boolean> | undefined;
  private reaper: NodeJS.Timeout | undefined;

  constructor(private readonly opts: EnvironmentBuilderOptions) {
    this.sandboxes = opts.sandboxes ?? new BuildSandboxes({ stateDir: opts.stateDir, logger: opts.logger });
  }

  /** Remove build sandboxes that dead processes (or this one) left behind. */
  reap(): ReturnType<BuildSandboxes['reap']> {
    return this.sandboxes.reap(this.opts.policy.build.timeout + 10 * 60_000);
  }

  /** Reap now and then (unref'd). */
  startReaper(everyMs = 60_000): void {
    this.reaper ??= setInterval(() => void this.reap().catch((e: unknown) => this.opts.logger.warn({ err: e }, 'build sandbox reaper failed')), everyMs);
    this.reaper.unref();
  }

  /** Stop reaping and wait for running builds' sandboxes to go (cancel their callers first). */
  async close(): Promise<void> {
    if (this.reaper) clearInterval(this.reaper);
    await Promise.allSettled([...this.inflight.values()].map((f) => f.done));
  }

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
    const tag = environmentTag(input.project, { ...input, baseImageIds, ...(input.packages ? { network: 'packages' as const } : {}) });
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
      const id = await this.join(tag, input, log, refsById(check.baseImages, baseImageIds));
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
  private async join(tag: string, input: EnsureInput, log: Logger, bases: Map<string, string[]>): Promise<string> {
    let flight = this.inflight.get(tag);
    if (!flight) {
      const f = this.start(tag, input, log, bases);
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

  /**
   * One build: slot → sandbox → base images in → build (limits watched) → image out → sandbox
   * gone → slot back. `bases`: image id → the references the Dockerfile names it by.
   */
  private start(tag: string, input: EnsureInput, log: Logger, bases: Map<string, string[]>): Flight {
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
    const { build } = policy;
    const limits: SandboxLimits = { memory: build.memory, cpus: build.cpus, pids: build.pids, disk: build.disk, runtime: build.runtime };
    flight.done = (async () => {
      let timer: NodeJS.Timeout | undefined;
      let watch: NodeJS.Timeout | undefined;
      let releaseSlot: (() => void) | undefined;
      let sandbox: BuildSandbox | undefined;
      let net: PackageNetwork | undefined;
      // Cancelled (timeout, a limit, nobody waiting): the sandbox goes at once, and every request to its engine with it.
      const onAbort = (): void => void sandbox?.destroy().catch(() => undefined);
      controller.signal.addEventListener('abort', onAbort, { once: true });
      try {
        if (build.runtime === 'runsc') this.checkRunsc(bases);
        releaseSlot = await this.opts.slots?.acquire(controller.signal);
        timer = setTimeout(() => flight.cancel(new EnvironmentBuildFailedError(withTail(`the environment build took longer than ${formatDuration(build.timeout)}`))), build.timeout);
        let baseBytes = 0;
        for (const id of bases.keys()) baseBytes += (await docker.getImage(id).inspect()).Size ?? 0;
        log.info('environment build starting');
        sandbox = await this.sandboxes.start(limits, baseBytes, { usernsRemap: await this.usernsRemap() });
        if (failure) throw failure;
        const sb = sandbox;
        const network = input.packages ? 'network: packages only (the allowed package sources, through the CI host\'s cache)' : 'no network';
        buildLog.write(`[airlock] building in a sandbox of its own: ${network}, at most ${limits.pids} processes, ${formatBytes(limits.memory)} of memory, ${limits.cpus} CPUs, ${formatBytes(limits.disk)} written, ${formatDuration(build.timeout)}, runtime ${limits.runtime}\n`);
        await copyImages(docker, sb.docker, bases);
        if (input.packages) {
          // The RUN steps join a holder's namespace in the build's own engine (networkmode container:…).
          const holder = await imageId(docker, DEFAULT_HOLDER_IMAGE);
          if (!bases.has(holder)) await copyImages(docker, sb.docker, new Map([[holder, [DEFAULT_HOLDER_IMAGE]]]));
          net = await openPackageNetwork({ docker: sb.docker, image: DEFAULT_HOLDER_IMAGE, dir: join(this.opts.stateDir, 'pn'), owner: this.sandboxes.owner, runId: tag, handlers: input.packages, logger: log });
        }
        watch = setInterval(() => {
          const s = sb.sample();
          if (!s.limitsIntact) flight.cancel(new ExecutorFailedError(`environment build of ${tag}: its cgroup limits are gone`));
          else if (s.pidsRefused > 0) flight.cancel(new EnvironmentBuildFailedError(withTail(`the environment build failed: ${limitReason(s, '', limits)}`)));
        }, SAMPLE_MS);
        const context = withCheckedDockerfile(input.openContext(), input.dockerfileText, { maxBytes: build.contextMax, file: input.dockerfilePath });
        // A context that fails (too large, unreadable) aborts the upload: a piped body would otherwise hang.
        context.on('error', (e) => flight.cancel(e));
        const stream = await sb.docker.buildImage(context, {
          t: tag,
          dockerfile: CHECKED_DOCKERFILE,
          version: '1', // the classic builder: honours networkmode for every RUN, fetches no frontend
          networkmode: net?.networkMode ?? 'none',
          // http_proxy, no_proxy: Docker's predefined build arguments (kept out of the image's history);
          // npm_config_registry reaches a RUN step that declares `ARG npm_config_registry`.
          ...(net ? { buildargs: packageBuildArgs() } : {}),
          labels: { [LABEL_ENV]: '1', [LABEL_ENV_PROJECT]: input.project },
          rm: true,
          forcerm: true,
          pull: false,
          abortSignal: controller.signal,
        });
        const outcome = await followBuildStream(stream, buildLog);
        if (failure) throw failure;
        if (!outcome.ok) {
          const why = limitReason(sb.sample(), `${outcome.error}\n${buildLog.tail().join('\n')}`, limits) ?? outcome.error;
          throw new EnvironmentBuildFailedError(withTail(`the environment build failed: ${why}`));
        }
        const built = (await sb.docker.getImage(tag).inspect()).Id;
        await moveImage(sb.docker, docker, tag);
        if (failure) throw failure;
        const id = await imageId(docker, tag);
        if (id !== built) throw new ExecutorFailedError(`environment build of ${tag}: the engine holds ${id} under the tag, not the image built (${built})`);
        return id;
      } catch (e) {
        if (failure) throw failure;
        if (e instanceof AirlockError) throw e;
        throw new ExecutorFailedError(`environment build of ${tag}: the engine failed: ${(e as Error).message}`, { cause: e });
      } finally {
        clearTimeout(timer);
        clearInterval(watch);
        controller.signal.removeEventListener('abort', onAbort);
        await net?.close().catch((e: unknown) => log.warn({ err: e }, 'package network teardown failed'));
        if (sandbox) await sandbox.destroy().catch((e: unknown) => log.warn({ err: e }, 'build sandbox teardown failed; the reaper retries'));
        releaseSlot?.();
        flight.settled = true;
      }
    })();
    flight.done.catch(() => {}); // every waiter gets the error; a build nobody waits for any more must not be unhandled
    return flight;
  }

  /** Does the main engine remap user namespaces? The sandboxes do what it does. */
  private usernsRemap(): Promise<boolean> {
    this.remap ??= this.opts.docker.info().then(
      (info: { SecurityOptions?: string[] }) => (info.SecurityOptions ?? []).some((o) => o.includes('name=userns')),
      (e: unknown) => {
        this.remap = undefined;
        throw new ExecutorFailedError(`cannot reach the Docker engine: ${(e as Error).message}`, { cause: e });
      },
    );
    return this.remap;
  }

  /** gVisor builds only on base images that passed the bootstrap's runsc self-test (as jobs). */
  private checkRunsc(bases: Map<string, string[]>): void {
    let table: Record<string, unknown> = {};
    try {
      table = JSON.parse(readFileSync(join(this.opts.stateDir, 'runsc-compat.json'), 'utf8')) as Record<string, unknown>;
    } catch {
      // no self-test results: nothing passed
    }
    const failed = [...bases].filter(([id]) => table[id] !== true).map(([id, refs]) => refs[0] ?? id);
    if (failed.length > 0) throw new RuntimeUnavailableError(`environment builds run under runsc (gVisor) here, and ${failed.join(', ')} has not passed the runsc self-test`);
  }
}

/** Image id → the references that resolved to it (two tags may name one image). */
function refsById(refs: readonly string[], ids: readonly string[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  refs.forEach((ref, i) => {
    const id = ids[i] as string;
    out.set(id, [...(out.get(id) ?? []), ref]);
  });
  return out;
}

/** The limit a failed build ran into, in one plain line; undefined when none did. */
function limitReason(s: SandboxSample, text: string, limits: SandboxLimits): string | undefined {
  if (s.pidsRefused > 0 || s.pidsAtLimit) return `a RUN step exceeded the process limit of ${limits.pids}`;
  // An OOM kill is counted in the RUN container's cgroup, which may be gone by now: then its exit status (137, SIGKILL) at a peak at the limit.
  if (s.oomKills > 0 || (s.memoryAtLimit && /non-zero code: 137\b/.test(text))) return `a RUN step exceeded the memory limit of ${formatBytes(limits.memory)}`;
  if (s.diskFull || /no space left on device/i.test(text)) return `the build wrote more than ${formatBytes(limits.disk)} (its disk limit)`;
  return undefined;
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
