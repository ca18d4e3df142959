/**
 * RemoteJobs: the leader's side of executor hosts. A build's job that is ready to run (its needs
 * passed) is put here instead of on the local runner; an executor host claims it over HTTP
 * (protocol.ts), runs it on its own Docker engine and sends its log, artifacts and result back.
 * `run` resolves to the JobResult, as JobRunner.run does, so the build executor does not care where
 * a job ran.
 *
 * The queue lives in the leader's memory, not in the database: a job only exists while the build
 * that runs it does, and a build outlives a leader only as a database row that the next leader
 * runs again from the start (scheduler.ts, `recover`). What a claim holds is a lease:
 * - each claim gets a new random run id; the host renews the lease with heartbeats (and with every
 *   log piece) at least every third of `leaseMs`;
 * - a lease not renewed in `leaseMs` (the host died, or lost its network) is taken back: the job is
 *   queued again, first in line, and the next host that claims it gets a new run id. What the first
 *   host still sends under its old id is refused (409), and it has stopped the job by then: an
 *   executor host stops a job itself when it could not renew for two thirds of the lease
 *   (executor-host.ts). So a job never runs on two hosts at once, as long as the two machines'
 *   clocks run at the same rate. A lease that ran out is refused at once, swept or not;
 * - a leader that starts (`open`: this process after a restart, or another replica) hands nothing
 *   out for one lease: the hosts of the leader before may still run its jobs, which the new
 *   leader runs again from the start;
 * - what a host sent under a run taken back (artifacts, downloads under way) goes with it;
 * - a job taken back `maxClaims` times fails its build with a retryable error (the scheduler runs
 *   the build again, up to its attempts);
 * - cancelled (its build's signal): `run` throws CancelledError at once, queued or claimed; the host
 *   is told at its next heartbeat or log piece (at most a third of the lease later) and stops the
 *   job then. Its result after that is taken and dropped.
 *
 * The runtime is this host's decision, as for a job run here: the job's runtime or the policy's
 * default, and runsc only on an image this host's self-test passed (`runsc-compat.json`; else the
 * job fails at once, as it would here). The assignment names the runtime and, for runsc, says the
 * image passed: the host runs it under that runtime or refuses it, never under a weaker one.
 *
 * Placement: a claim says what the host has free (slots, memory, CPUs) and which runtimes it has;
 * it gets the first queued job that fits. A host whose slots are all busy may claim **ahead**, to
 * make a job ready while they run (protocol.ts): such a claim is served only while more jobs are
 * queued than other hosts wait for with a free slot, and a claim with a free slot that finds the
 * queue empty takes over a job another host claimed ahead and has not started (the oldest such
 * that fits): the job is not held behind a busy host while another is idle. The first host learns
 * it at its next call of that run (409) and drops the job; a move does not count as a claim. A job that does not fit a host's free room now is passed
 * over, but at most `overtakes` times: then that host gets nothing until the job fits (its running
 * jobs end), as scheduler/capacity.ts does on one host. A job that fits no registered host's whole
 * capacity fails at once, naming the figures.
 *
 * What an executor host sends is hostile: one waiting claim per host, one artifacts upload and one
 * download of each kind per run at a time, the result's reason clipped; the log of each run is capped at the job's `logCap`
 * (plus a margin for the runner's own lines; a run taken back keeps its log, and the next run starts
 * a cap of its own: at most `maxClaims` caps in all), artifacts go through the same extraction as a container's
 * (shared/runner/artifacts.ts: the job's globs, its byte and file caps), the result is validated.
 * A host only ever reaches the runs it claimed: every call names its run id and is checked
 * against the host's name.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { ArtifactRejectedError, ArtifactTooLargeError, CancelledError, ConflictError, ExecutorFailedError, ImageNotFoundError, InvalidInputError, NoLeaderError, NotFoundError, PolicyViolationError, RuntimeUnavailableError, isAirlockError, type Issue } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import { resolveLimits } from '#shared/policy/job-policy.js';
import { extractArtifacts, type ArtifactFile } from '#shared/runner/artifacts.js';
import { JobResult } from '#shared/runner/result.js';
import { runscPassed } from '#shared/runner/runsc-compat.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import type { JobSpec } from '#shared/schemas/job-spec.js';
import type { Runtime } from '#shared/schemas/limits.js';
import { formatBytes } from '#shared/units.js';
import type { Assignment, Capacity, ClaimRequest, RunAnswer } from './protocol.js';

export interface RemoteRunRequest {
  build: number;
  job: string;
  spec: JobSpec;
  /** The source tar on this host; absent: none. */
  source?: string;
  /** Where the artifacts go on this host; required when the spec names artifact globs. */
  artifactsDir?: string;
  signal?: AbortSignal;
  onLog?: (data: Buffer) => void;
  /**
   * A host claimed the job (called for each claim: a job taken back, or moved, is claimed again).
   * `ahead`: the host's slots are busy; it makes the job ready and starts it later (`onStarted`).
   */
  onClaimed?: (executor: string, ahead: boolean) => void | Promise<void>;
  /** A host that claimed the job ahead starts it now (no other host can take it from here on). */
  onStarted?: (executor: string) => void | Promise<void>;
}

export interface RemoteJobsOptions {
  /** This host's engine: where the jobs' images are (environments are built here). */
  docker: Docker;
  policy: JobPolicy;
  /**
   * This host's runner state directory (`runnerStateDir`): its `runsc-compat.json` says which
   * images may run under runsc, as it does for a job run here; absent: none may.
   */
  runnerStateDir?: string;
  leaseMs: number;
  logger: Logger;
  /** How often a job may be claimed before its build fails (default 3). */
  maxClaims?: number;
  /** How often a job may be passed over by hosts it does not fit before they wait for it (default 4). */
  overtakes?: number;
  /**
   * Whether this replica surely still leads (leadership.ts `holds`): when not, no job is handed out
   * and no run's lease renewed (503). A leader paused past its lease that wakes would otherwise
   * hand a host a job, or renew the lease of one, that the next leader runs again elsewhere.
   */
  holds?: () => boolean;
  /** Monotonic milliseconds (tests). */
  now?: () => number;
}

export interface ExecutorView {
  name: string;
  capacity: Capacity;
  version?: string;
  /** Milliseconds since the host was last heard from. */
  idleMs: number;
  running: number;
  /** Jobs it claimed ahead and has not started (they wait there for a slot). */
  waiting: number;
}

/** A claim as `claim` takes it: `ahead` absent is a claim with a free slot. */
export type Claim = Omit<ClaimRequest, 'ahead'> & { ahead?: boolean };

interface Need {
  memory: number;
  cpus: number;
  runtime: Runtime;
}

interface Entry {
  req: RemoteRunRequest;
  spec: JobSpec;
  imageId: string;
  sourceBytes?: number;
  need: Need;
  logCap: number;
  artifactCaps: { maxBytes: number; maxFiles: number };
  run?: string;
  executor?: string;
  /** Claimed ahead (the host's slots were busy), and whether the host has started it since. */
  ahead?: boolean;
  started?: boolean;
  leaseUntil: number;
  claims: number;
  overtaken: number;
  logSeq: number;
  logBytes: number;
  logCapped: boolean;
  artifacts?: ArtifactFile[];
  artifactError?: { code: string; message: string };
  /** An artifacts upload under way (one at a time), and its extraction. */
  receiving?: { archive: Readable; done: Promise<unknown> };
  /** The artifacts directory being emptied of a run taken back (the next run's upload waits for it). */
  clearing?: Promise<void>;
  /** The image and source being sent to the host: one of each per run at a time, ended with the run. */
  downloads?: { image?: Readable; source?: Readable };
  cancelled?: boolean;
  resolve: (r: JobResult) => void;
  reject: (e: unknown) => void;
  settled: boolean;
}

/** Room for the runner's own lines (timeouts, truncation notes) on top of a job's log cap. */
const LOG_MARGIN = 64 * 1024;
/** A tar entry's room beyond its data: its header, a long-name header, the padding of its last block. */
const TAR_ENTRY_MAX = 4096;
/** The most of a host's result reason (or artifact error) that is kept: a line for a person, not a file. */
const REASON_MAX = 2000;
const clip = (s: string): string => (s.length > REASON_MAX ? `${s.slice(0, REASON_MAX - 1)}…` : s);

/** The most an artifacts tar may be for artifacts of `maxBytes` in `maxFiles` files: their data, each entry's headers, the end. */
export function artifactsTarBound(maxBytes: number, maxFiles: number): number {
  return maxBytes + (2 * maxFiles + 16) * TAR_ENTRY_MAX + 1024 * 1024;
}

export class RemoteJobs {
  private readonly queue: Entry[] = [];
  private readonly runs = new Map<string, Entry>();
  private readonly hosts = new Map<string, { capacity: Capacity; version?: string; seen: number }>();
  private readonly waiters = new Set<() => void>();
  /** Each host's one waiting claim: a new claim of the host ends the one before. */
  private readonly claiming = new Map<string, { controller: AbortController; ahead: boolean; capacity: Capacity; free: ClaimRequest['free'] }>();
  private sweeper: NodeJS.Timeout;
  private readonly now: () => number;
  private closed = false;
  /** Nothing is handed out before this (`open`). */
  private holdUntil = -Infinity;

  constructor(private readonly o: RemoteJobsOptions) {
    this.now = o.now ?? (() => performance.now());
    this.sweeper = this.startSweeper();
  }

  /**
   * Leading (again): jobs are taken and handed out. Nothing is handed out for one lease: the
   * hosts of the leader before (another replica, or this process before a restart) may still run
   * its jobs until their own fence stops them (executor-host.ts), and the next leader runs those
   * builds again from the start. Closed by `close` when leading ends.
   */
  open(): void {
    this.holdUntil = this.now() + this.o.leaseMs;
    if (!this.closed) return;
    this.closed = false;
    this.sweeper = this.startSweeper();
  }

  private startSweeper(): NodeJS.Timeout {
    const t = setInterval(() => this.sweep(), Math.max(50, Math.min(1000, Math.floor(this.o.leaseMs / 4))));
    t.unref();
    return t;
  }

  get leaseMs(): number {
    return this.o.leaseMs;
  }

  /** The most any job's artifacts tar may be under this CI's job policy (its ceilings): what an upload's time is measured by. */
  get uploadBound(): number {
    return artifactsTarBound(this.o.policy.limits.artifacts, this.o.policy.limits.artifactFiles);
  }

  /** Jobs waiting for a host, jobs running on one, and jobs a host claimed ahead and has not started. */
  get counts(): { queued: number; running: number; waiting: number } {
    let waiting = 0;
    for (const e of this.runs.values()) if (e.ahead && !e.started) waiting += 1;
    return { queued: this.queue.length, running: this.runs.size - waiting, waiting };
  }

  /** The hosts heard from in the last three leases. */
  executors(): ExecutorView[] {
    const now = this.now();
    const running = new Map<string, number>();
    const waiting = new Map<string, number>();
    for (const e of this.runs.values()) {
      if (!e.executor) continue;
      const count = e.ahead && !e.started ? waiting : running;
      count.set(e.executor, (count.get(e.executor) ?? 0) + 1);
    }
    return [...this.hosts.entries()]
      .filter(([, h]) => now - h.seen <= 3 * this.o.leaseMs)
      .map(([name, h]) => ({ name, capacity: h.capacity, ...(h.version ? { version: h.version } : {}), idleMs: Math.round(now - h.seen), running: running.get(name) ?? 0, waiting: waiting.get(name) ?? 0 }))
      .sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  /** Run a job on an executor host; resolves to its result (the artifacts already in `artifactsDir`). */
  async run(req: RemoteRunRequest): Promise<JobResult> {
    if (this.closed) throw new CancelledError('the CI is stopping');
    if (req.signal?.aborted) throw new CancelledError(`job ${req.spec.id} cancelled before it was queued`);
    if (req.spec.network !== 'none') throw new PolicyViolationError([{ file: `job ${req.spec.id}`, path: 'network', message: 'executor hosts serve no package sources: a network: packages job runs on the CI host', severity: 'error' }]);
    if (req.spec.artifacts.length > 0 && !req.artifactsDir) throw new ExecutorFailedError('artifact globs given without an artifacts directory');
    const { limits, runtime } = resolveLimits(req.spec.limits, req.spec.runtime, this.o.policy, `job ${req.spec.id}`);
    const need: Need = { memory: limits.memory, cpus: limits.cpus, runtime };
    const refusal = this.unplaceable(need);
    if (refusal) throw new PolicyViolationError([refusal]);
    let imageId: string;
    try {
      imageId = (await this.o.docker.getImage(req.spec.image).inspect()).Id;
    } catch {
      throw new ImageNotFoundError(req.spec.image);
    }
    // The runtime is decided here, as the runner on this host would decide it, and the host gets
    // the decision: the job's runtime (the policy's default filled in) and, for runsc, this host's
    // self-test verdict on the image. A host has no verdicts on this host's image ids.
    if (runtime === 'runsc' && !(this.o.runnerStateDir !== undefined && runscPassed(this.o.runnerStateDir, imageId)))
      throw new RuntimeUnavailableError(`image ${req.spec.image} has not passed the runsc (gVisor) self-test; run it with runc or use an image that passes`);
    const sourceBytes = req.source ? (await stat(req.source)).size : undefined;
    return new Promise<JobResult>((resolve, reject) => {
      // Cancelled during the lookups above: its abort event is gone, and the job would run anyway.
      if (req.signal?.aborted) {
        reject(new CancelledError(`job ${req.spec.id} cancelled before it was queued`));
        return;
      }
      const entry: Entry = {
        req,
        spec: { ...req.spec, image: imageId, runtime },
        imageId,
        ...(sourceBytes !== undefined ? { sourceBytes } : {}),
        need,
        logCap: limits.logCap + LOG_MARGIN,
        artifactCaps: { maxBytes: limits.artifacts, maxFiles: limits.artifactFiles },
        leaseUntil: 0,
        claims: 0,
        overtaken: 0,
        logSeq: 0,
        logBytes: 0,
        logCapped: false,
        resolve,
        reject,
        settled: false,
      };
      req.signal?.addEventListener('abort', () => this.cancel(entry), { once: true });
      this.queue.push(entry);
      this.wake();
    });
  }

  /** A host says what it has. Called at its start and whenever it likes; refreshes "last heard from". */
  register(executor: string, capacity: Capacity, version?: string): void {
    this.hosts.set(executor, { capacity, ...(version ? { version } : {}), seen: this.now() });
    this.wake(); // jobs that fit no host so far may fit this one
  }

  /**
   * The first queued job that fits what the host has free, waiting up to `waitMs` for one; for a
   * claim with a free slot and nothing queued, a job claimed ahead elsewhere and not started.
   */
  async claim(executor: string, req: Claim, signal?: AbortSignal): Promise<Assignment | undefined> {
    const host = this.hosts.get(executor);
    if (!host) throw new ConflictError(`executor host ${executor} has not registered (POST /api/executor/register first)`);
    const deadline = this.now() + req.waitMs;
    // One waiting claim per host (an executor host makes one at a time): thousands of them would
    // each hold a socket and a waiter here.
    const mine = new AbortController();
    const ahead = req.ahead === true;
    this.claiming.get(executor)?.controller.abort();
    const waiting = { controller: mine, ahead, capacity: host.capacity, free: req.free };
    this.claiming.set(executor, waiting);
    try {
      for (;;) {
        host.seen = this.now();
        if (this.closed || signal?.aborted || mine.signal.aborted) return undefined;
        this.mustHold();
        const now = this.now();
        const entry = now < this.holdUntil ? undefined : ahead ? this.pickAhead(executor, host.capacity, req.free) : (this.pick(host.capacity, req.free) ?? this.takeOver(executor, host.capacity, req.free));
        if (entry) return this.assign(entry, executor, ahead);
        const left = deadline - now;
        if (left <= 0) return undefined;
        await new Promise<void>((res) => {
          const done = (): void => {
            clearTimeout(t);
            this.waiters.delete(done);
            signal?.removeEventListener('abort', done);
            mine.signal.removeEventListener('abort', done);
            res();
          };
          const t = setTimeout(done, now < this.holdUntil ? Math.min(left, this.holdUntil - now) : left);
          this.waiters.add(done);
          signal?.addEventListener('abort', done, { once: true });
          mine.signal.addEventListener('abort', done, { once: true });
        });
      }
    } finally {
      // An ahead claim held back for this one is served at the next job queued, or claims again
      // after its wait. (No wake here: a host could make every waiting claim run with each of its own.)
      if (this.claiming.get(executor) === waiting) this.claiming.delete(executor);
    }
  }

  /** A host that claimed the run ahead starts it: from here on it is that host's to run. */
  start(executor: string, run: string): RunAnswer {
    const e = this.claimed(executor, run);
    // Cancelled meanwhile: the answer says so, and the job is not marked running.
    if (e.ahead && !e.started && !e.settled) {
      e.started = true;
      void Promise.resolve(e.req.onStarted?.(executor)).catch((err: unknown) => this.o.logger.warn({ err, run }, 'recording a started job failed'));
    }
    return this.answer(e);
  }

  heartbeat(executor: string, run: string): RunAnswer {
    const e = this.claimed(executor, run);
    return this.answer(e);
  }

  /** The next piece of the job's log; `seq` counts the pieces from 0 (a piece sent again is ignored). */
  log(executor: string, run: string, seq: number, data: Buffer): RunAnswer {
    const e = this.claimed(executor, run);
    if (seq < e.logSeq) return this.answer(e);
    if (seq > e.logSeq) throw new ConflictError(`log piece ${seq} of run ${run} came before piece ${e.logSeq}`);
    e.logSeq += 1;
    // Cancelled: the job's log is closed, nobody reads what comes after.
    if (!e.logCapped && !e.settled) {
      const room = e.logCap - e.logBytes;
      const kept = data.length <= room ? data : data.subarray(0, Math.max(0, room));
      e.logBytes += kept.length;
      if (kept.length > 0) e.req.onLog?.(kept);
      if (kept.length < data.length) {
        e.logCapped = true;
        e.req.onLog?.(Buffer.from(`\n[airlock] the executor host sent more log than the job's cap of ${formatBytes(e.logCap - LOG_MARGIN)}: the rest is dropped\n`));
      }
    }
    return this.answer(e);
  }

  /** The job's image, as `docker save` writes it: only the image of a run the host holds. */
  async image(executor: string, run: string): Promise<Readable> {
    const e = this.claimed(executor, run);
    const stream = (await this.o.docker.getImage(e.imageId).get()) as Readable;
    if (e.run !== run) {
      stream.destroy();
      this.claimed(executor, run); // taken back meanwhile: the 409
    }
    return this.download(e, 'image', stream);
  }

  /** The job's source tar: only of a run the host holds. */
  source(executor: string, run: string): Readable {
    const e = this.claimed(executor, run);
    if (!e.req.source) throw new NotFoundError(`run ${run} has no source`);
    return this.download(e, 'source', createReadStream(e.req.source));
  }

  /**
   * A download of a run: a new one of the same thing ends the one before (a host that asks again
   * after a broken transfer gets it anew; one that asks a thousand times holds one `docker save`
   * of this engine, not a thousand), and every one ends with the run (`endDownloads`).
   */
  private download(e: Entry, what: 'image' | 'source', stream: Readable): Readable {
    const d = (e.downloads ??= {});
    d[what]?.destroy(new ConflictError(`a newer download of the ${what} of run ${e.run ?? ''} ended this one`));
    d[what] = stream;
    // Its errors go to the request sending it (a 409 when ended here); none is unhandled before that.
    stream.on('error', () => undefined);
    stream.once('close', () => {
      if (d[what] === stream) delete d[what];
    });
    return stream;
  }

  private endDownloads(e: Entry): void {
    for (const stream of Object.values(e.downloads ?? {})) stream.destroy(new ConflictError('the run ended (finished, taken back, or moved to another host): its downloads with it'));
    e.downloads = undefined;
  }

  /** The job's artifacts as a tar whose entries sit under one top directory; extracted with the job's globs and caps. */
  async artifacts(executor: string, run: string, archive: Readable): Promise<ArtifactFile[]> {
    const e = this.claimed(executor, run);
    if (e.ahead && !e.started) throw new ConflictError(`run ${run} was claimed ahead and has not started (it starts with POST start): it has no artifacts`);
    if (!e.req.artifactsDir || e.spec.artifacts.length === 0) throw new InvalidInputError([{ file: 'request', path: 'artifacts', message: `job ${e.spec.id} names no artifacts`, severity: 'error' }]);
    if (e.artifacts || e.artifactError || e.receiving) throw new ConflictError(`the artifacts of run ${run} were sent already`);
    const dir = e.req.artifactsDir;
    // The caps are checked from each entry's header, and entries no glob takes are skipped
    // unread: the tar as a whole is bounded too, by what the caps can hold.
    const bound = artifactsTarBound(e.artifactCaps.maxBytes, e.artifactCaps.maxFiles);
    const { maxBytes, maxFiles } = e.artifactCaps;
    // Its errors reach the extraction through the reading below; until that starts, none is unhandled.
    archive.on('error', () => undefined);
    const counted = Readable.from(
      (async function* () {
        let seen = 0;
        for await (const chunk of archive as AsyncIterable<Buffer>) {
          seen += chunk.length;
          if (seen > bound) throw new ArtifactTooLargeError(`the artifacts tar passed ${formatBytes(bound)}, more than artifacts of ${formatBytes(maxBytes)} in ${maxFiles} files can take`);
          yield chunk;
        }
      })(),
      { objectMode: false },
    );
    // Marked before the first await: two uploads at once would each fill a staging directory.
    const done = (async () => {
      await e.clearing;
      return extractArtifacts(counted, dir, { globs: e.spec.artifacts, archivedDir: '', ...e.artifactCaps });
    })();
    e.receiving = { archive, done };
    try {
      const files = await done;
      if (e.run !== run) throw new ConflictError(`run ${run} was taken back while its artifacts were received: stop it`);
      e.artifacts = files;
      return files;
    } catch (caught) {
      // What the tar reader says of a body that is no tar is the host's fault, a 422: never a 500.
      const err = isAirlockError(caught) ? caught : new ArtifactRejectedError(`the artifacts tar cannot be read: ${clip((caught as Error).message)}`);
      if (e.run === run) e.artifactError = { code: err instanceof ArtifactRejectedError ? err.code : 'AIRLOCK_E_ARTIFACT_REJECTED', message: err.message };
      throw err;
    } finally {
      if (e.receiving?.done === done) e.receiving = undefined;
    }
  }

  /** The run's result: the job is done. */
  result(executor: string, run: string, body: unknown): void {
    const e = this.claimed(executor, run);
    const parsed = JobResult.safeParse(body);
    if (!parsed.success) throw new InvalidInputError(parsed.error.issues.slice(0, 20).map((i): Issue => ({ file: 'result', path: i.path.join('.'), message: i.message, severity: 'error' })));
    const r = parsed.data;
    if (r.jobId !== e.spec.id) throw new InvalidInputError([{ file: 'result', path: 'jobId', message: `is ${clip(r.jobId)}, and run ${run} is job ${e.spec.id}`, severity: 'error' }]);
    if (e.receiving) throw new ConflictError(`the artifacts of run ${run} are still being received: the result comes after them`);
    this.runs.delete(run);
    this.endDownloads(e);
    if (e.settled) return; // cancelled meanwhile: nobody waits for it
    const { log: _log, ...rest } = r;
    // What this side extracted is what counts, not what the host says it took.
    const missing = r.artifacts.length > 0 && !e.artifacts && !e.artifactError;
    const sent = r.artifactError ? { code: clip(r.artifactError.code), message: clip(r.artifactError.message) } : undefined;
    const artifactError = e.artifactError ?? (missing ? { code: 'AIRLOCK_E_ARTIFACT_REJECTED', message: 'the executor host reported artifacts and did not send them' } : sent);
    const result: JobResult = {
      ...rest,
      reason: clip(r.reason),
      artifacts: e.artifacts ?? [],
      passed: r.passed && !artifactError && !e.req.signal?.aborted,
      cancelled: r.cancelled || (e.req.signal?.aborted ?? false),
      ...(artifactError ? { artifactError } : {}),
    };
    this.settle(e, () => e.resolve(result));
    this.o.logger.debug({ executor, run, build: e.req.build, job: e.req.job, passed: result.passed }, 'remote job finished');
  }

  /** Stop: every job not finished fails with CancelledError (the builds stay for the next leader). */
  close(): void {
    this.closed = true;
    clearInterval(this.sweeper);
    for (const e of [...this.queue, ...this.runs.values()]) {
      this.endDownloads(e);
      this.settle(e, () => e.reject(new CancelledError('the CI is stopping')));
    }
    this.queue.length = 0;
    this.runs.clear();
    this.wake();
  }

  private answer(e: Entry): RunAnswer {
    // Cancelled: the host is told, and the run is not kept for it (it is dropped when its lease ends).
    if (!e.settled) e.leaseUntil = this.now() + this.o.leaseMs;
    return e.cancelled ? { cancel: true, reason: 'the build was cancelled' } : { cancel: false };
  }

  /** The entry of a run this host holds, or a 409 (another host's, or taken back, or finished). */
  private claimed(executor: string, run: string): Entry {
    this.mustHold();
    const e = this.runs.get(run);
    // A lease that ran out is over now, whether or not the sweeper has taken the job back yet.
    if (!e || e.executor !== executor || this.now() > e.leaseUntil) throw new ConflictError(`run ${run} is not held by executor host ${executor} (finished, taken back after its lease ran out, moved to another host before it started, or never claimed): stop it`);
    const host = this.hosts.get(executor);
    if (host) host.seen = this.now();
    return e;
  }

  /** NoLeaderError (503) unless this replica surely still leads (`holds`). */
  private mustHold(): void {
    if (this.o.holds && !this.o.holds()) throw new NoLeaderError('this replica cannot tell that it still leads (its lease was not renewed in time); try again shortly');
  }

  private pick(capacity: Capacity, free: ClaimRequest['free']): Entry | undefined {
    const found = this.find(capacity, free);
    return found ? this.take(found) : undefined;
  }

  /** The queued job a claim would get (its index), and the jobs it would pass over. */
  private find(capacity: Capacity, free: ClaimRequest['free']): { at: number; passed: Entry[] } | undefined {
    if (free.slots < 1) return undefined;
    const passed: Entry[] = [];
    for (const [i, e] of this.queue.entries()) {
      if (!fits(e.need, capacity)) continue; // never on this host: no waiting for it here
      if (fitsFree(e.need, capacity, free)) {
        if (passed.some((p) => p.overtaken >= (this.o.overtakes ?? 4))) return undefined; // this host drains until it fits
        return { at: i, passed };
      }
      passed.push(e);
    }
    return undefined;
  }

  /**
   * The job `find` found, out of the queue. Passing over is counted only when a later job is
   * handed out past it: a claim that takes nothing (a host with no room, claiming again and
   * again) overtakes nothing.
   */
  private take(found: { at: number; passed: Entry[] }): Entry {
    for (const p of found.passed) p.overtaken += 1;
    return this.queue.splice(found.at, 1)[0]!;
  }

  /**
   * An ahead claim's job: the one `pick` would give, while more jobs are queued than other hosts
   * wait for with a free slot that job fits.
   */
  private pickAhead(executor: string, capacity: Capacity, free: ClaimRequest['free']): Entry | undefined {
    const found = this.find(capacity, free);
    if (!found) return undefined;
    const need = this.queue[found.at]!.need;
    let waitingWithRoom = 0;
    for (const [host, c] of this.claiming) if (host !== executor && !c.ahead && fitsFree(need, c.capacity, c.free)) waitingWithRoom += 1;
    return this.queue.length > waitingWithRoom ? this.take(found) : undefined;
  }

  /**
   * For a claim with a free slot that found nothing queued: the oldest job another host claimed
   * ahead and has not started, that fits here. Its run ends (that host's next call of it is a 409)
   * and the job is assigned anew; the move does not count as a claim.
   */
  private takeOver(executor: string, capacity: Capacity, free: ClaimRequest['free']): Entry | undefined {
    if (free.slots < 1) return undefined;
    for (const [run, e] of this.runs) {
      if (!e.ahead || e.started || e.settled || e.executor === executor) continue;
      if (!fitsFree(e.need, capacity, free)) continue;
      this.runs.delete(run);
      this.endDownloads(e);
      this.dropArtifacts(e, run); // none can have come (refused before `start`): kept clean all the same
      if (!e.logCapped) e.req.onLog?.(Buffer.from(`[airlock] moved to another executor host: ${e.executor} had not started it (its slots were busy)\n`));
      e.claims -= 1;
      // The next host numbers its log pieces from 0; the job's log cap goes on (a move gives no new one).
      e.logSeq = 0;
      return e;
    }
    return undefined;
  }

  private assign(e: Entry, executor: string, ahead = false): Assignment {
    const run = randomBytes(16).toString('hex');
    e.run = run;
    e.executor = executor;
    e.ahead = ahead;
    e.started = false;
    e.claims += 1;
    e.overtaken = 0;
    e.leaseUntil = this.now() + this.o.leaseMs;
    this.runs.set(run, e);
    void Promise.resolve(e.req.onClaimed?.(executor, ahead)).catch((err: unknown) => this.o.logger.warn({ err, run }, 'recording a claimed job failed'));
    return {
      run,
      build: e.req.build,
      job: e.req.job,
      spec: e.spec,
      imageId: e.imageId,
      ...(e.sourceBytes !== undefined ? { sourceBytes: e.sourceBytes } : {}),
      ...(e.need.runtime === 'runsc' ? { runscPassed: true } : {}),
      leaseMs: this.o.leaseMs,
    };
  }

  private cancel(e: Entry): void {
    const i = this.queue.indexOf(e);
    if (i >= 0) this.queue.splice(i, 1);
    // Claimed: the host is told at its next heartbeat (the run stays known until then, or until its lease ends).
    else e.cancelled = true;
    this.settle(e, () => e.reject(new CancelledError(`job ${e.spec.id} cancelled`)));
  }

  /** Leases that ran out: the job is queued again (first in line), or fails after `maxClaims`. */
  private sweep(): void {
    const now = this.now();
    for (const [run, e] of this.runs) {
      if (now <= e.leaseUntil) continue;
      this.runs.delete(run);
      this.endDownloads(e);
      const host = e.executor;
      e.run = undefined;
      e.executor = undefined;
      if (e.settled) continue; // cancelled, and the host never asked again
      this.dropArtifacts(e, run);
      this.o.logger.warn({ executor: host, run, build: e.req.build, job: e.req.job, claims: e.claims }, 'an executor host stopped renewing its lease on a job: it is taken back');
      if (e.claims >= (this.o.maxClaims ?? 3)) {
        this.settle(e, () => e.reject(new ExecutorFailedError(`job ${e.spec.id} was claimed ${e.claims} times and no executor host finished it (the last, ${host}, stopped answering)`)));
        continue;
      }
      // The run taken back keeps its log (it may say why its host stopped: the job itself, often),
      // and the next run gets the job's whole cap anew: at most maxClaims caps in all.
      e.req.onLog?.(
        Buffer.from(
          `\n[airlock] executor host ${host} stopped answering: run ${e.claims} of this job was taken back (the log above is that run's).` +
            ` The job runs again from the start on the next host that claims it, with a log cap of its own\n`,
        ),
      );
      e.logSeq = 0;
      e.logBytes = 0;
      e.logCapped = false;
      this.queue.unshift(e);
      this.wake();
    }
  }

  /**
   * What a run that ended unfinished sent of its artifacts is not the next run's: an upload under
   * way is cut, and the directory is emptied before the next host's upload is extracted into it.
   */
  private dropArtifacts(e: Entry, run: string): void {
    const receiving = e.receiving;
    const artifactsDir = e.req.artifactsDir;
    receiving?.archive.destroy();
    if (artifactsDir && (receiving || e.artifacts || e.artifactError)) {
      e.clearing = (async () => {
        await receiving?.done.catch(() => undefined);
        await rm(artifactsDir, { recursive: true, force: true });
      })().catch((err: unknown) => this.o.logger.warn({ err, run }, 'emptying the artifacts of a run taken back failed'));
    }
    e.receiving = undefined;
    e.artifacts = undefined;
    e.artifactError = undefined;
  }

  private unplaceable(need: Need): Issue | undefined {
    const hosts = this.executors();
    if (hosts.length === 0 || hosts.some((h) => fits(need, h.capacity))) return undefined;
    return {
      file: 'ci.yaml',
      path: 'executors',
      message: `the job's limits ask for ${formatBytes(need.memory)} of memory and ${need.cpus} CPUs under ${need.runtime}, which no executor host has (${hosts.map((h) => `${h.name}: ${formatBytes(h.capacity.memory)}, ${h.capacity.cpus} CPUs, ${h.capacity.runtimes.join('/')}`).join('; ')})`,
      severity: 'error',
    };
  }

  private settle(e: Entry, f: () => void): void {
    if (e.settled) return;
    e.settled = true;
    f();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }
}

function fits(need: Need, c: Capacity): boolean {
  return c.runtimes.includes(need.runtime) && need.memory <= c.memory && need.cpus <= c.cpus + 1e-9 && c.slots > 0;
}

/** The job fits the host, and what the claim says is free now. */
function fitsFree(need: Need, c: Capacity, free: ClaimRequest['free']): boolean {
  return fits(need, c) && free.slots >= 1 && need.memory <= free.memory && need.cpus <= free.cpus + 1e-9;
}
