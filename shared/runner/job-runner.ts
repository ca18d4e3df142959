/**
 * JobRunner: runs one hardened job step on a Docker engine and returns a typed JobResult, streaming
 * the log while the job runs. One runner serves many concurrent jobs; everything it creates is
 * labelled with its owner id and removed when the job ends (and by the reaper after a crash).
 *
 * Order of one run:
 *   resolve limits against policy → check image (and runsc compatibility) → workspace →
 *   source into it (mounted on the host for a moment, see source-extract.ts) → create →
 *   [source through the engine's archive API instead, where the workspace cannot be mounted] →
 *   [a parent cgroup and its OOM watch, oom-cgroups.ts] → attach → start → (log, stats, timeout
 *   timer) → wait → inspect [→ the watch's count] → artifacts → result; then, off the caller's
 *   path, remove container → release workspace → remove the parent cgroup.
 */
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import {
  AirlockError,
  CancelledError,
  EngineUnavailableError,
  ExecutorFailedError,
  ImageNotFoundError,
  InvalidInputError,
  PolicyViolationError,
  RuntimeUnavailableError,
} from '../errors.js';
import type { Logger } from '../logging.js';
import { resolveLimits } from '../policy/job-policy.js';
import type { JobPolicy } from '../schemas/job-policy.js';
import type { JobSpec } from '../schemas/job-spec.js';
import { formatDuration } from '../units.js';
import type { Limits, Runtime } from '../schemas/limits.js';
import { extractArtifacts, globBase, moveInto, type ArtifactFile } from './artifacts.js';
import { toCreateOptions, WORKSPACE_PATH } from './convert.js';
import { DockerDemuxer, LogCapture, type LogChunk } from './log-capture.js';
import { newOwnerId } from './owner.js';
import { engineRulesOut, localCgroupMounts, OomCgroups, type JobCgroup } from './oom-cgroups.js';
import { reap, type ReapReport } from './reaper.js';
import { describeOutcome, type JobResult } from './result.js';
import { runscPassed } from './runsc-compat.js';
import { extractSource } from './source-extract.js';
import { checkSecretFiles, DEFAULT_SECRETS_TMPFS, removeSecretFiles, writeSecretFiles, type SecretFile } from './secret-files.js';
import { packDirectory, repackTar } from './tar-pack.js';
import { MountFailedError, WorkspaceManager, type Workspace } from './workspace.js';
import { isNotFound } from '../docker/client.js';
import { DEFAULT_HOLDER_IMAGE, openPackageNetwork, packageEnv, type PackageHandlers, type PackageNetwork } from '../egress/package-network.js';

export interface JobRunnerOptions {
  docker: Docker;
  policy: JobPolicy;
  /** Where workspaces and the runsc self-test results live (the bootstrap writes the latter). */
  stateDir: string;
  logger?: Logger;
  /** Formatted workspaces kept ready per size (default 2; 0: format each on demand). */
  workspacePool?: number;
  /** Read memory statistics while a job runs, for peakMemoryBytes (default true). */
  collectStats?: boolean;
  /** How often the reaper runs after the one at start; 0 turns the periodic pass off (default 60 s). */
  reapEveryMs?: number;
  /**
   * How a job's source gets into /workspace. 'mount' (default): written by this process into the
   * workspace filesystem, mounted on the host for a moment before the container exists (measured
   * here: jobs with a source run about as fast as jobs without one, 'archive' loses 20-35%
   * of throughput); after MOUNT_FAILURES_BEFORE_ARCHIVE
   * failed mounts in a row it falls back to 'archive' for good. 'archive': the engine's archive
   * API (putArchive into the created container).
   */
  sourceVia?: 'mount' | 'archive';
  /** The host tmpfs for steps' secret files (default DEFAULT_SECRETS_TMPFS); see secret-files.ts. */
  secretsTmpfs?: string;
  /** The image of a package network's holder container: local, with `sleep` (default DEFAULT_HOLDER_IMAGE). */
  holderImage?: string;
  /**
   * Watch each runc job's memory cgroup for OOM kills itself where it can (oom-cgroups.ts; default
   * true). Where it cannot, or false, a job's OOM kill is what the engine reports.
   */
  oomCgroups?: boolean;
  /** Tests only: how long a container may wait in RunOptions.beforeStart before it is made again (default RECREATE_AFTER_MS). */
  recreateAfterMs?: number;
}

export interface RunOptions {
  signal?: AbortSignal;
  /** Called with each kept piece of log, in order, while the job runs. */
  onLog?: (chunk: LogChunk) => void;
  /** Where artifacts go; required when the spec names artifact globs. */
  artifactsDir?: string;
  /**
   * What goes into /workspace before the command runs: a directory or a tar file on this host,
   * re-packed as a normalised tar stream and written into the workspace (never bind-mounted). The caller names it — the merger's work dir, the CLI's
   * --workspace — not the job spec, so nothing a patch writes can point the runner at a host path.
   */
  source?: { dir: string } | { tar: string };
  /** Include the kept log in the result (default true). */
  includeLog?: boolean;
  /**
   * Files for /run/secrets (a host tmpfs, read-only in the container): the trusted builder's
   * granted secrets. The untrusted tier never passes any: it holds none.
   */
  secretFiles?: readonly SecretFile[];
  /**
   * Who answers a `network: packages` job's two loopback ports (shared/egress/package-network.ts):
   * the CI's egress front, or the trusted builder's verified files. A job that asks for packages
   * without them is refused.
   */
  packages?: PackageHandlers;
  /**
   * Awaited once the job's container is ready (image checked, workspace filled, container
   * created) and before it starts: the CI takes its executor slot here, so a job is made ready
   * while it waits for one and a slot is held only while a container runs. Rejecting (e.g.
   * CancelledError) ends the job before it started, and everything made for it is removed. The
   * wait counts in no duration and no timeout; a container that waited longer than
   * RECREATE_AFTER_MS is made again, so that none outlives what the reaper allows a job.
   */
  beforeStart?: () => Promise<void>;
  /** Called once the job's container has started. */
  onStarted?: () => void;
  /**
   * An image id that passed the runsc self-test where the caller's word is trusted: an executor
   * host passes the CI host's verdict, sent with the job (untrusted-ci/remote/). Counted as this
   * runner's own table's for that id only; any other image still needs this table.
   */
  runscPassed?: string;
}

/** Waits that must never hang a runner, whatever the engine or the job does. */
const STREAM_DRAIN_MS = 5_000;
/**
 * Memory statistics are followed only once a job has run this long: the engine samples about once
 * a second, so a shorter job would get no figure anyway, and the stream costs the engine work.
 */
const STATS_AFTER_MS = 500;
/** How long past its timeout and kill grace a job may take before the runner gives up on the engine. */
const ENGINE_GRACE_MS = 60_000;
/** How often, and how far apart, the engine is asked again whether an unexplained SIGKILL was an OOM kill. */
const OOM_RECHECKS = 5;
const OOM_RECHECK_MS = 100;
/**
 * A container that waited longer than this for its start (RunOptions.beforeStart) is removed and
 * made again: the reaper removes any container older than a job's whole lifetime plus twice
 * ENGINE_GRACE_MS, counted from its creation.
 */
const RECREATE_AFTER_MS = ENGINE_GRACE_MS;
/** Failed workspace mounts in a row after which sources go through the archive API for good. */
const MOUNT_FAILURES_BEFORE_ARCHIVE = 3;

export class JobRunner {
  private reaperTimer: NodeJS.Timeout | undefined;
  private readonly pendingCleanups = new Set<Promise<void>>();
  private sourceVia: 'mount' | 'archive';
  private mountFailures = 0;
  private cgroups: OomCgroups | undefined;
  /** Why jobs' OOM kills are the engine's word alone, when they are. */
  private cgroupsOff: string | undefined;

  private constructor(
    /** This runner's owner id: on every container and workspace it makes. */
    readonly owner: string,
    private readonly opts: JobRunnerOptions,
    private readonly workspaces: WorkspaceManager,
    private readonly hostUid: number,
    private readonly hostGid: number,
  ) {
    this.sourceVia = opts.sourceVia ?? 'mount';
  }

  /** Connects, learns the engine's user-namespace mapping and reaps leftovers of dead runners. */
  static async create(opts: JobRunnerOptions): Promise<JobRunner> {
    let info: { SecurityOptions?: string[]; CgroupDriver?: string; CgroupVersion?: string };
    try {
      info = (await opts.docker.info()) as typeof info;
    } catch (e) {
      throw new EngineUnavailableError(`cannot reach the Docker engine: ${(e as Error).message}`, { cause: e });
    }
    const remapped = (info.SecurityOptions ?? []).some((o) => o.includes('name=userns'));
    const base = remapped ? subordinateIdStart('dockremap') : 0;
    const { uid, gid } = opts.policy.user;
    const owner = newOwnerId();
    const workspaces = new WorkspaceManager({
      docker: opts.docker,
      stateDir: opts.stateDir,
      owner,
      hostUid: base + uid,
      hostGid: base + gid,
      poolSize: opts.workspacePool ?? 2,
      poolBytes: opts.policy.limits.workspace,
    });
    const runner = new JobRunner(owner, opts, workspaces, base + uid, base + gid);
    await runner.reap();
    await runner.setUpCgroups(info);
    if ((opts.reapEveryMs ?? 60_000) > 0) runner.startReaper(opts.reapEveryMs ?? 60_000);
    return runner;
  }

  /** The host uid the job user maps to (100000 + uid under userns-remap). */
  get jobHostUid(): number {
    return this.hostUid;
  }

  /** How a job's OOM kill is known: 'cgroup' (its runc jobs' own cgroups are watched, oom-cgroups.ts) or 'engine'. */
  get oomWatch(): 'cgroup' | 'engine' {
    return this.cgroups && this.cgroupsOff === undefined ? 'cgroup' : 'engine';
  }

  /** This runner's directory under the job cgroups' parent (oom-cgroups.ts), when it watches them. */
  get oomCgroupsName(): string | undefined {
    return this.cgroups?.runnerName;
  }

  /** How sources get into /workspace now: 'mount' until mounting failed repeatedly (see JobRunnerOptions.sourceVia). */
  get sourceInjection(): 'mount' | 'archive' {
    return this.sourceVia;
  }

  /** Remove leftovers: of dead runners, containers past any job's lifetime, and this runner's own leaks. */
  reap(): Promise<ReapReport> {
    const { policy } = this.opts;
    return reap({
      docker: this.opts.docker,
      workspacesDir: this.workspaces.workspacesDir,
      logger: this.opts.logger,
      self: { owner: this.owner, held: () => this.workspaces.heldVolumes(), heldCgroups: () => this.cgroups?.heldNames() ?? new Set<string>() },
      cgroupRecordsDir: this.cgroupRecordsDir,
      maxAgeMs: policy.limits.timeout + policy.killGrace + 2 * ENGINE_GRACE_MS,
    });
  }

  /** Reap periodically (unref'd: it never keeps the process alive). */
  startReaper(intervalMs = 60_000): void {
    this.reaperTimer ??= setInterval(() => void this.reap().catch((e: unknown) => this.opts.logger?.warn({ err: e }, 'reaper failed')), intervalMs);
    this.reaperTimer.unref();
  }

  async close(): Promise<void> {
    if (this.reaperTimer) clearInterval(this.reaperTimer);
    await this.drain();
    await this.workspaces.close();
    const cgroups = this.cgroups;
    this.cgroups = undefined;
    await cgroups?.close().catch((e: unknown) => this.opts.logger?.warn({ err: e }, 'cannot remove the runner\'s job cgroups; the reaper will'));
  }

  private get cgroupRecordsDir(): string {
    return join(this.opts.stateDir, 'cgroups');
  }

  /** Turns the runner's own OOM watch on where this host and engine allow it; otherwise says why not, once. */
  private async setUpCgroups(info: { CgroupDriver?: string; CgroupVersion?: string }): Promise<void> {
    const mounts = localCgroupMounts();
    const off =
      this.opts.oomCgroups === false ? 'turned off'
      : engineRulesOut(info) ?? (!mounts ? 'no cgroup v1 memory hierarchy is mounted here' : process.getuid?.() !== 0 ? 'the runner is not root' : undefined);
    if (off === undefined && mounts) {
      try {
        this.cgroups = await OomCgroups.create({ mounts, recordsDir: this.cgroupRecordsDir, owner: this.owner, ...(this.opts.logger ? { logger: this.opts.logger } : {}) });
        return;
      } catch (e) {
        this.cgroupsOff = `cannot watch a cgroup: ${(e as Error).message}`;
      }
    } else this.cgroupsOff = off;
    this.opts.logger?.info({ reason: this.cgroupsOff }, 'OOM kills are as the engine reports them');
  }

  /** A parent cgroup for a runc job, or undefined (the engine's word alone) where there is none. */
  private async openCgroup(memory: number, runtime: Runtime, log: Logger | undefined): Promise<JobCgroup | undefined> {
    if (!this.cgroups || this.cgroupsOff !== undefined || runtime !== 'runc') return undefined;
    try {
      return await this.cgroups.open(memory);
    } catch (e) {
      log?.warn({ err: e }, 'cannot set up the job\'s cgroup; its OOM kill is as the engine reports it');
      return undefined;
    }
  }

  /** Run one job. Throws AirlockError for bad requests and airlock's own failures; a failing job is a result. */
  async run(spec: JobSpec, ro: RunOptions = {}): Promise<JobResult> {
    let t0 = performance.now();
    const { limits, runtime } = resolveLimits(spec.limits, spec.runtime, this.opts.policy, `job ${spec.id}`);
    if (spec.artifacts.length > 0 && !ro.artifactsDir) throw new ExecutorFailedError('artifact globs given without an artifacts directory');
    const image = await this.inspectImage(spec.image);
    if (runtime === 'runsc' && ro.runscPassed !== image.id && !runscPassed(this.opts.stateDir, image.id)) {
      throw new RuntimeUnavailableError(`image ${spec.image} has not passed the runsc (gVisor) self-test; run it with runc or use an image that passes`);
    }
    if (ro.source) await checkSource(ro.source, spec.id);
    if (ro.secretFiles?.length) checkSecretFiles(ro.secretFiles, spec.id);
    if (spec.network === 'packages') {
      if (!ro.packages) throw new PolicyViolationError([{ file: `job ${spec.id}`, path: 'network', message: 'asks for network: packages, and no package sources are served to this job', severity: 'error' }]);
      if (runtime === 'runsc') throw new RuntimeUnavailableError(`job ${spec.id} asks for network: packages, which runs under runc only (gVisor keeps a network stack of its own)`);
    }
    const cancelledBeforeStart = () => new CancelledError(`job ${spec.id} cancelled before it started`);
    if (ro.signal?.aborted) throw cancelledBeforeStart();

    const log = this.opts.logger?.child({ jobId: spec.id });
    let ws: Workspace | undefined;
    let container: Docker.Container | undefined;
    let secretsDir: string | undefined;
    let net: PackageNetwork | undefined;
    let cg: JobCgroup | undefined;
    try {
      if (spec.network === 'packages' && ro.packages) {
        net = await openPackageNetwork({
          docker: this.opts.docker, image: this.opts.holderImage ?? DEFAULT_HOLDER_IMAGE, dir: join(this.opts.stateDir, 'pn'),
          owner: this.owner, runId: spec.id, handlers: ro.packages, ...(log ? { logger: log } : {}),
        });
      }
      if (ro.secretFiles?.length) secretsDir = await writeSecretFiles(this.opts.secretsTmpfs ?? DEFAULT_SECRETS_TMPFS, ro.secretFiles, { uid: this.hostUid, gid: this.hostGid });
      // The job's cgroup and its watch are set up while the workspace is taken (openCgroup never throws).
      const [took, opened] = await Promise.allSettled([this.workspaces.take(limits.workspace), this.openCgroup(limits.memory, runtime, log)]);
      if (opened.status === 'fulfilled') cg = opened.value;
      if (took.status === 'rejected') throw took.reason;
      ws = took.value;
      const workspace = ws;
      const create = (): Promise<Docker.Container> =>
        this.opts.docker.createContainer(
          toCreateOptions({
            spec, limits, runtime, imageId: image.id, imageVolumes: image.volumes,
            user: this.opts.policy.user, owner: this.owner, name: `airlock-${spec.id}-${randomBytes(4).toString('hex')}`,
            workspaceVolume: workspace.volume, createdAt: Date.now(),
            ...(secretsDir ? { secretsDir } : {}),
            ...(net ? { packages: { networkMode: net.networkMode, env: packageEnv() } } : {}),
            ...(cg ? { cgroup: { parent: cg.parent, containerMemory: cg.containerMemory } } : {}),
          }),
        );
      // The source is written while the engine creates the container: creating does not mount
      // the workspace volume (NoCopy; the engine mounts it at start), so the two do not meet.
      const writing = ro.source ? this.writeSource(ws, ro.source, limits.workspace, log) : Promise.resolve(true);
      const [written, created] = await Promise.allSettled([writing, create()]);
      if (written.status === 'rejected') {
        if (created.status === 'fulfilled') container = created.value; // for the cleanup below
        throw written.reason;
      }
      if (created.status === 'rejected') throw created.reason;
      container = created.value;
      if (ro.signal?.aborted) throw cancelledBeforeStart();
      if (ro.beforeStart) {
        const waitFrom = performance.now();
        await ro.beforeStart();
        const waited = performance.now() - waitFrom;
        t0 += waited; // the wait is no part of the job's setup
        if (ro.signal?.aborted) throw cancelledBeforeStart();
        if (waited > (this.opts.recreateAfterMs ?? RECREATE_AFTER_MS)) {
          await container.remove({ force: true, v: true }); // if this fails, the cleanup below tries again
          container = undefined;
          container = await create();
        }
      }
      if (ro.source && !written.value) await container.putArchive(this.sourceTar(ro.source, limits.workspace), { path: WORKSPACE_PATH });
      if (ro.signal?.aborted) throw cancelledBeforeStart();
      const run = await this.execute(container, limits, ro, cg, log);
      const t1 = performance.now();
      let artifacts: ArtifactFile[] = [];
      let artifactError: JobResult['artifactError'];
      if (spec.artifacts.length > 0 && ro.artifactsDir) {
        try {
          artifacts = await this.collectArtifacts(container, spec.artifacts, ro.artifactsDir, limits);
        } catch (e) {
          artifactError = e instanceof AirlockError ? { code: e.code, message: e.message } : { code: 'AIRLOCK_E_ARTIFACT_REJECTED', message: (e as Error).message };
        }
      }
      // Removal runs after the result is returned: the caller need not wait for the engine to
      // unmount and delete. drain() waits for it; the reaper covers a crash in between.
      this.cleanupLater(container, ws, log, secretsDir, net, cg);
      container = undefined;
      ws = undefined;
      secretsDir = undefined;
      net = undefined;
      cg = undefined;
      const t2 = performance.now();
      const facts = {
        exitCode: run.exitCode,
        oomKilled: run.oomKilled,
        timedOut: run.timedOut,
        cancelled: run.cancelled,
        logTruncated: run.capture.truncated,
        logBytes: run.capture.totalBytes,
        limits,
        artifactError,
      };
      const result: JobResult = {
        version: 1,
        jobId: spec.id,
        image: spec.image,
        imageId: image.id,
        runtime,
        passed: run.exitCode === 0 && !run.oomKilled && !run.timedOut && !run.cancelled && !artifactError,
        ...facts,
        ...(run.peakMemoryBytes !== undefined ? { peakMemoryBytes: run.peakMemoryBytes } : {}),
        durations: { setupMs: round(run.startedAt - t0), runMs: round(t1 - run.startedAt), teardownMs: round(t2 - t1), totalMs: round(t2 - t0) },
        reason: describeOutcome({ ...facts, runMs: t1 - run.startedAt }),
        artifacts,
        ...(ro.includeLog === false ? {} : { log: run.capture.bytes().toString('utf8') }),
      };
      log?.info({ passed: result.passed, reason: result.reason, durations: result.durations }, 'job finished');
      return result;
    } catch (e) {
      throw wrapEngineError(e, `job ${spec.id}`);
    } finally {
      if (container || ws || secretsDir || net || cg) this.cleanupLater(container, ws, log, secretsDir, net, cg);
    }
  }

  /** Resolves once every container and workspace of finished jobs has been removed or released. */
  async drain(): Promise<void> {
    while (this.pendingCleanups.size > 0) await Promise.allSettled([...this.pendingCleanups]);
  }

  private cleanupLater(container: Docker.Container | undefined, ws: Workspace | undefined, log: Logger | undefined, secretsDir?: string, net?: PackageNetwork, cg?: JobCgroup): void {
    const p: Promise<void> = this.destroy(container, ws, secretsDir, net, cg)
      .catch((e: unknown) => log?.warn({ err: e }, 'cleanup failed; the reaper will retry'))
      .finally(() => this.pendingCleanups.delete(p));
    this.pendingCleanups.add(p);
  }

  private async execute(container: Docker.Container, limits: Limits, ro: RunOptions, cg: JobCgroup | undefined, log: Logger | undefined) {
    const capture = new LogCapture(limits.logCap);
    const demux = new DockerDemuxer();
    const stream = (await container.attach({ stream: true, stdout: true, stderr: true, logs: false })) as NodeJS.ReadableStream & { destroy?: () => void };
    const ended = new Promise<void>((resolve) => {
      stream.on('end', resolve);
      stream.on('close', resolve);
      stream.on('error', () => resolve());
    });
    let onLog = ro.onLog;
    stream.on('data', (buf: Buffer) =>
      demux.push(buf, (chunk) => {
        const kept = capture.add(chunk);
        if (!kept || !onLog) return;
        try {
          onLog(kept);
        } catch (e) {
          onLog = undefined; // a broken consumer loses the live view, not the job or the runner
          this.opts.logger?.warn({ err: e }, 'onLog threw; live log stopped for this job');
        }
      }),
    );

    let timedOut = false;
    let cancelled = false;
    let killTimer: NodeJS.Timeout | undefined;
    const stop = (): void => {
      if (killTimer) return;
      void container.kill({ signal: 'SIGTERM' }).catch(() => undefined);
      killTimer = setTimeout(() => void container.kill({ signal: 'SIGKILL' }).catch(() => undefined), this.opts.policy.killGrace);
    };
    // The listener goes on before start: the job's first output (and a caller reacting to it)
    // can arrive before start() returns. A kill is only sent to a started container.
    let started = false;
    const onAbort = (): void => {
      cancelled = true;
      if (started) stop();
    };
    ro.signal?.addEventListener('abort', onAbort, { once: true });
    if (ro.signal?.aborted) cancelled = true; // aborted before the listener was there: it never fires
    try {
      await container.start();
    } catch (e) {
      ro.signal?.removeEventListener('abort', onAbort);
      stream.destroy?.();
      throw e;
    }
    started = true;
    const startedAt = performance.now();
    ro.onStarted?.();
    if (cancelled) stop();
    const timeout = setTimeout(() => {
      timedOut = true;
      stop();
    }, limits.timeout);
    const stats = this.opts.collectStats === false ? undefined : watchPeakMemory(container, STATS_AFTER_MS);
    try {
      // The job is killed at its timeout; if the engine still has not reported its end well after
      // that, the runner gives up on this container rather than hang (cleanup force-removes it).
      const deadline = limits.timeout + this.opts.policy.killGrace + ENGINE_GRACE_MS;
      const status = (await withDeadline(container.wait(), deadline, `the engine did not report the end of the job within ${formatDuration(deadline)}`)) as { StatusCode: number };
      await Promise.race([ended, sleep(STREAM_DRAIN_MS)]);
      stream.destroy?.();
      const info = await container.inspect();
      let oomKilled = Boolean(info.State.OOMKilled);
      // The job's own cgroup, where there is one, says for sure (oom-cgroups.ts): the engine's
      // OOM event can be lost when the container ends at once.
      const watched = cg ? await this.oomEventsOf(cg, log) : undefined;
      if (watched !== undefined) oomKilled ||= watched > 0;
      // Without it: the engine's event can also come after the exit it reported. A SIGKILL the
      // runner did not send is asked about again, briefly.
      for (let i = 0; watched === undefined && !oomKilled && status.StatusCode === 137 && !timedOut && !cancelled && i < OOM_RECHECKS; i++) {
        await sleep(OOM_RECHECK_MS);
        oomKilled = Boolean((await container.inspect()).State.OOMKilled);
      }
      return {
        imageId: info.Image,
        exitCode: status.StatusCode,
        oomKilled,
        timedOut: timedOut && !cancelled,
        cancelled,
        capture,
        startedAt,
        peakMemoryBytes: stats?.stop(),
      };
    } finally {
      clearTimeout(timeout);
      if (killTimer) clearTimeout(killTimer);
      ro.signal?.removeEventListener('abort', onAbort);
      stats?.stop();
    }
  }

  /** The OOMs the kernel signalled in the job's cgroup; undefined when the watch cannot say (then it is turned off if the engine did not use the cgroup). */
  private async oomEventsOf(cg: JobCgroup, log: Logger | undefined): Promise<number | undefined> {
    try {
      const { oomEvents, charged } = await cg.finish();
      if (charged) return oomEvents;
      // The container was not charged to the parent: the engine does not see the cgroups this
      // process sees. Its jobs would get the headroom and no watch: stop asking for it.
      if (this.cgroupsOff === undefined) {
        this.cgroupsOff = 'a job\'s memory was not charged to the parent cgroup the runner made for it';
        log?.warn({ reason: this.cgroupsOff }, 'OOM kills are as the engine reports them from now on');
      }
    } catch (e) {
      log?.warn({ err: e }, 'the job\'s OOM watch failed; its OOM kill is as the engine reports it');
    }
    return undefined;
  }

  private async collectArtifacts(container: Docker.Container, globs: readonly string[], dest: string, limits: Limits): Promise<ArtifactFile[]> {
    // One archive per distinct glob base, so a job with `dist/**` does not send its whole workspace;
    // a base inside another base (out/sub under out) is already in the outer archive.
    const bases = [...new Set(globs.map(globBase))];
    const outer = bases.filter((b) => !bases.some((o) => o !== b && (o === '' || b.startsWith(`${o}/`))));
    // Everything lands in one staging directory first and moves into `dest` only when every
    // archive was taken: a refused second archive leaves nothing of the first behind.
    await mkdir(dest, { recursive: true });
    const staging = await mkdtemp(join(dest, '.airlock-job-'));
    try {
      const all: ArtifactFile[] = [];
      let bytes = 0;
      for (const base of outer) {
        let archive: Readable;
        try {
          archive = (await container.getArchive({ path: base ? `${WORKSPACE_PATH}/${base}` : WORKSPACE_PATH })) as unknown as Readable;
        } catch (e) {
          if (isNotFound(e)) continue; // nothing there: no artifacts from this glob
          throw e;
        }
        const files = await extractArtifacts(archive, staging, {
          globs,
          archivedDir: base,
          maxBytes: limits.artifacts - bytes,
          maxFiles: limits.artifactFiles - all.length,
        });
        for (const f of files) bytes += f.bytes;
        all.push(...files);
      }
      await moveInto(staging, dest);
      return all;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  /**
   * Write the source into the workspace through a host mount, before the container exists. false:
   * the workspace could not be mounted (nothing was written), so the caller uses the archive API.
   * The same normalised stream goes either way; the extractor re-checks every entry of it.
   */
  private async writeSource(ws: Workspace, source: NonNullable<RunOptions['source']>, maxBytes: number, log: Logger | undefined): Promise<boolean> {
    if (this.sourceVia !== 'mount') return false;
    const label = 'dir' in source ? source.dir : source.tar;
    try {
      await this.workspaces.withMounted(ws, (root) =>
        extractSource(this.sourceTar(source, maxBytes), { root, owner: { uid: this.hostUid, gid: this.hostGid }, maxBytes, label }),
      );
      this.mountFailures = 0;
      return true;
    } catch (e) {
      if (!(e instanceof MountFailedError)) throw e;
      if (++this.mountFailures >= MOUNT_FAILURES_BEFORE_ARCHIVE) this.sourceVia = 'archive';
      log?.warn({ err: e, fallback: this.sourceVia === 'archive' ? 'for good' : 'this job' }, 'cannot mount the workspace; the source goes through the archive API');
      return false;
    }
  }

  private sourceTar(source: NonNullable<RunOptions['source']>, maxBytes: number): Readable {
    const owner = this.opts.policy.user;
    return 'dir' in source ? packDirectory(source.dir, owner, { maxBytes }) : repackTar(source.tar, owner, { maxBytes });
  }

  /** The image's id (the container is created from it, so what was checked is what runs) and its declared VOLUMEs. */
  private async inspectImage(image: string): Promise<{ id: string; volumes: string[] }> {
    try {
      const info = await this.opts.docker.getImage(image).inspect();
      return { id: info.Id, volumes: Object.keys(info.Config?.Volumes ?? {}) };
    } catch (e) {
      if (isNotFound(e)) throw new ImageNotFoundError(image);
      throw wrapEngineError(e, `image ${image}`);
    }
  }


  private async destroy(container: Docker.Container | undefined, ws: Workspace | undefined, secretsDir?: string, net?: PackageNetwork, cg?: JobCgroup): Promise<void> {
    try {
      if (container) {
        try {
          // v: true also removes anonymous volumes; the workspace is a named volume and survives it.
          await container.remove({ force: true, v: true });
        } catch (e) {
          if (!isNotFound(e)) throw e;
        }
      }
      if (ws) await this.workspaces.release(ws);
    } finally {
      try {
        if (secretsDir) await removeSecretFiles(secretsDir);
      } finally {
        try {
          await net?.close(); // after the job's container: it was in the holder's namespace
        } finally {
          await cg?.remove(); // after the job's container: its cgroup was inside
        }
      }
    }
  }
}

/** After `delayMs`, follow the engine's stats stream; stop() ends it and returns the highest memory use seen. */
function watchPeakMemory(container: Docker.Container, delayMs: number): { stop: () => number | undefined } {
  let peak: number | undefined;
  let stream: (NodeJS.ReadableStream & { destroy?: () => void }) | undefined;
  let stopped = false;
  let buf = '';
  const timer = setTimeout(() => follow(), delayMs);
  const follow = () => container
    .stats({ stream: true })
    .then((s) => {
      stream = s as NodeJS.ReadableStream & { destroy?: () => void };
      if (stopped) return stream.destroy?.();
      stream.on('error', () => undefined);
      stream.on('data', (d: Buffer) => {
        buf += d.toString('utf8');
        if (buf.length > 1 << 20) buf = ''; // a runaway line is not worth memory
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          try {
            const m = (JSON.parse(line) as { memory_stats?: { max_usage?: number; usage?: number } }).memory_stats;
            const v = Math.max(m?.max_usage ?? 0, m?.usage ?? 0);
            if (v > 0) peak = Math.max(peak ?? 0, v);
          } catch {
            // partial or odd line: skip
          }
        }
      });
    })
    .catch(() => undefined);
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
      stream?.destroy?.();
      return peak;
    },
  };
}

/** The source must be there before anything is created: a missing one is the caller's error, named. */
async function checkSource(source: NonNullable<RunOptions['source']>, jobId: string): Promise<void> {
  const [key, path] = 'dir' in source ? (['dir', source.dir] as const) : (['tar', source.tar] as const);
  let ok = false;
  try {
    const st = await stat(path);
    ok = key === 'dir' ? st.isDirectory() : st.isFile();
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new InvalidInputError([{ file: `job ${jobId}`, path: `source.${key}`, message: `${JSON.stringify(path)} is not a readable ${key === 'dir' ? 'directory' : 'file'}`, severity: 'error' }]);
  }
}

function subordinateIdStart(user: string): number {
  try {
    const line = readFileSync('/etc/subuid', 'utf8').split('\n').find((l) => l.startsWith(`${user}:`));
    const start = Number(line?.split(':')[1]);
    if (Number.isSafeInteger(start)) return start;
  } catch {
    // fall through
  }
  throw new EngineUnavailableError(`the engine remaps user namespaces but /etc/subuid has no range for ${user}`);
}

function wrapEngineError(e: unknown, what: string): AirlockError {
  if (e instanceof AirlockError) return e;
  const err = e as NodeJS.ErrnoException & { statusCode?: number; json?: { message?: string } };
  if (err.syscall === 'connect' && (err.code === 'ECONNREFUSED' || err.code === 'ENOENT' || err.code === 'EACCES')) {
    return new EngineUnavailableError(`cannot reach the Docker engine: ${err.message}`, { cause: e });
  }
  return new ExecutorFailedError(`${what}: ${err.json?.message ?? err.message}`, { cause: e });
}

/** `p`, or an ExecutorFailedError after `ms`. */
function withDeadline<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ExecutorFailedError(message)), ms);
    timer.unref();
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
const round = (ms: number) => Math.round(ms * 10) / 10;
