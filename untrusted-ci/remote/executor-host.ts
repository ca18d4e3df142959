/**
 * ExecutorHost: `airlock executor serve`, one per Docker host. It registers its capacity with the
 * CI, claims jobs that fit what it has free (protocol.ts), runs each with the hardened runner
 * (shared/runner/job-runner.ts) on its own engine, and sends the log (as it comes), the artifacts
 * and the result back. It holds only its own token: no database, no storage credential, no other
 * host's runs (the CI checks every call against the claim).
 *
 * - **One claim at a time**, saying what is free after the running jobs' limits (as the CI's own
 *   slots count them, scheduler/slots.ts), so two claims never count the same room.
 * - **Claims ahead.** With every slot busy, the host claims up to `claimAhead` jobs more, makes
 *   each ready (image, source, container created) while the slots run, and starts it when a slot
 *   frees, after the CI's word (`start`): the CI may have moved it meanwhile to a host with a free
 *   slot, and then it is dropped here unstarted. The next wave of jobs then costs a container
 *   start, not a whole setup, at the moment the slots free up. Claims ahead wait until every
 *   slot's container has started, so that making them ready does not slow those starts.
 * - **The lease.** A heartbeat every third of the lease. A job is stopped here when the CI says it
 *   was cancelled, when the CI no longer knows the run (409: taken back, or another leader), or
 *   when no heartbeat has succeeded for two thirds of the lease, counted on a monotonic clock from
 *   when the last good one was sent. The CI takes a job back only after a whole lease without one,
 *   so by then this host has stopped it: a job never runs on two hosts at once. A job stopped for
 *   its lease is not reported (the CI runs it elsewhere).
 * - **The runtime** is the CI's: the spec names it, and a runsc job comes with the CI's self-test
 *   verdict on its image (this host has none for the CI's image ids). A runtime this host does
 *   not offer, or that its own policy forbids, refuses the job: it never runs under another.
 * - **The image** is the environment the CI built (or pinned), named by id. A host that lacks it
 *   loads it from the CI (`docker save` of that id) and checks the id is there after. The
 *   `imagesKept` least recently used images it loaded stay; older ones are removed when no job
 *   uses them (per-host image GC). Images it did not load are never touched.
 * - **The source** is capped at the job's workspace size from this host's own policy, while it is
 *   received; a larger one fails the job.
 * - An engine failure (retryable) gives the job back: the host stops renewing its lease and the CI
 *   queues it again when the lease ends.
 * - The CI not answering, or answering 5xx (a follower replica without a leader answers 503), is
 *   the CI's failure, never the job's: the artifacts and the result are sent again while the lease
 *   holds (for at most one lease), and a download that fails gives the job back. A job is never
 *   reported failed because the CI could not be reached.
 */

import { createWriteStream } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type Docker from 'dockerode';
import { CancelledError, ExecutorFailedError, InvalidInputError, isAirlockError } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import { parseRetryAfter } from '#shared/retry.js';
import { resolveLimits } from '#shared/policy/job-policy.js';
import type { JobRunnerPort } from '#shared/runner/job-plan.js';
import type { JobResult } from '#shared/runner/result.js';
import { packDirectory } from '#shared/runner/tar-pack.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import type { JobSpec } from '#shared/schemas/job-spec.js';
import { RUNTIMES, type Runtime } from '#shared/schemas/limits.js';
import { runscWorksHere } from '#shared/runner/runsc-compat.js';
import { formatBytes } from '#shared/units.js';
import { loadImage } from '../environments/build-sandbox.js';
import { Slots } from '../scheduler/slots.js';
import type { Sentinel } from './sentinel.js';
import { Assignment, EXECUTOR_API, LOG_CHUNK_MAX, RegisterAnswer, RunAnswer, type Capacity } from './protocol.js';

export interface ExecutorHostOptions {
  name: string;
  /** The CI's base URL. */
  ciUrl: string;
  token: string;
  docker: Docker;
  runner: JobRunnerPort;
  policy: JobPolicy;
  /** Jobs at once, and the memory (bytes) and CPUs they may hold together. */
  capacity: { slots: number; memory: number; cpus: number };
  runtimes: Runtime[];
  workDir: string;
  logger: Logger;
  imagesKept?: number;
  version?: string;
  /** How long a claim waits at the CI for work (default 20 s). */
  claimWaitMs?: number;
  /** Jobs claimed and made ready while every slot is busy (default 0: none). */
  claimAhead?: number;
  /** Stops a job's containers when this process cannot (sentinel.ts). */
  sentinel?: Sentinel;
}

/** Log pieces are sent at least this often while a job writes. */
const LOG_FLUSH_MS = 200;
const IMAGES_FILE = 'images.json';

class LeaseLost extends Error {}
/** The CI gave a job claimed ahead to another host before it started here. */
class Moved extends LeaseLost {}

export class ExecutorHost {
  private readonly slots: Slots;
  private readonly stopping = new AbortController();
  private readonly running = new Map<string, { controller: AbortController; done: Promise<void> }>();
  /** Images being loaded: id → the load, and the run it is fetched under. */
  private readonly loading = new Map<string, { run: string; p: Promise<void> }>();
  /** The claim loop, waiting for a slot (slotFreed). */
  private readonly freedWaiters = new Set<() => void>();
  /** Jobs claimed ahead that hold no slot yet: how many, and their memory and CPUs. */
  private ahead = { count: 0, memory: 0, cpus: 0 };
  /** Jobs that hold a slot and whose container has not started yet. */
  private starting = 0;
  /** Images the runs here use (from before their image is looked up until they end): id → runs. */
  private readonly using = new Map<string, number>();
  /** Images this host loaded: id → last use (ms since the epoch). */
  private images = new Map<string, number>();
  private leaseMs = 15_000;
  private loop?: Promise<void>;
  private lastWarn = 0;

  constructor(private readonly o: ExecutorHostOptions) {
    this.slots = new Slots(o.capacity.slots, { memory: o.capacity.memory, cpus: o.capacity.cpus, overtakes: 0 });
  }

  get capacity(): Capacity {
    return { ...this.o.capacity, runtimes: this.o.runtimes };
  }
  get runningRuns(): string[] {
    return [...this.running.keys()];
  }

  /** Register (retrying until the CI answers), then claim jobs until `close`. */
  async start(): Promise<void> {
    await mkdir(this.o.workDir, { recursive: true, mode: 0o700 });
    this.images = new Map(Object.entries(await readJson(join(this.o.workDir, IMAGES_FILE))).filter((e): e is [string, number] => typeof e[1] === 'number'));
    this.loop = this.claimLoop();
  }

  /** Stop claiming and stop the running jobs (not reported: the CI takes them back at their lease's end). */
  async close(): Promise<void> {
    this.stopping.abort();
    for (const r of this.running.values()) r.controller.abort(new LeaseLost('the executor host is stopping'));
    await this.loop;
    await Promise.all([...this.running.values()].map((r) => r.done));
  }

  private async register(): Promise<void> {
    const res = await this.call('POST', EXECUTOR_API.register, { json: { capacity: this.capacity, ...(this.o.version ? { version: this.o.version } : {}) } });
    this.leaseMs = RegisterAnswer.parse(await res.json()).leaseMs;
    this.o.logger.info({ ci: this.o.ciUrl, capacity: this.capacity, leaseMs: this.leaseMs }, 'registered with the CI');
  }

  private async claimLoop(): Promise<void> {
    const stop = this.stopping.signal;
    let registered = false;
    let backoff = 250;
    while (!stop.aborted) {
      try {
        if (!registered) {
          await this.register();
          registered = true;
        }
        const cap = this.o.capacity;
        // The jobs claimed ahead take the next slots that free up: they count as holding them.
        const freeSlots = cap.slots - this.slots.busy - this.ahead.count;
        const ahead = freeSlots <= 0;
        // Claimed ahead only once every slot's container runs: a job made ready while others start
        // would take the CPU from their start, the moment the ahead claim is meant to spare.
        if (ahead && (this.ahead.count >= (this.o.claimAhead ?? 0) || this.starting > 0)) {
          await this.slotFreed();
          continue;
        }
        const usage = this.slots.usage;
        const free = ahead
          ? { slots: (this.o.claimAhead ?? 0) - this.ahead.count, memory: Math.max(0, cap.memory - this.ahead.memory), cpus: Math.max(0, cap.cpus - this.ahead.cpus) }
          : { slots: freeSlots, memory: Math.max(0, cap.memory - usage.memory - this.ahead.memory), cpus: Math.max(0, cap.cpus - usage.cpus - this.ahead.cpus) };
        const res = await this.call('POST', EXECUTOR_API.claim, { json: { free, waitMs: this.o.claimWaitMs ?? 20_000, ...(ahead ? { ahead } : {}) }, timeoutMs: (this.o.claimWaitMs ?? 20_000) + 15_000, ok: [200, 204, 409] });
        if (res.status === 409) {
          // The CI does not know this host (a new leader): register again.
          registered = false;
          continue;
        }
        backoff = 250;
        if (res.status === 204) continue;
        // The lease runs from when the CI gave the job: counted from its answer, not from when it starts here.
        const received = performance.now();
        const a = Assignment.parse(await res.json());
        await this.begin(a, received, ahead);
      } catch (e) {
        if (stop.aborted) break;
        if (Date.now() - this.lastWarn > 10_000) {
          this.lastWarn = Date.now();
          this.o.logger.warn({ err: (e as Error).message }, 'the CI did not answer a claim; trying again (said once per 10 s)');
        }
        // A Retry-After (a follower replica with no leader says 2 s) lengthens the wait, up to a minute.
        const asked = e instanceof HttpStatusError ? (e.retryAfterMs ?? 0) : 0;
        await sleep(Math.max(backoff, Math.min(asked, RETRY_AFTER_MAX_MS)), stop);
        backoff = Math.min(backoff * 2, 5_000);
      }
    }
  }

  /**
   * Take the slot the claim counted (a job claimed ahead takes one once it is ready), then run
   * the job in the background.
   */
  private async begin(a: Assignment, received: number, ahead: boolean): Promise<void> {
    const controller = new AbortController();
    let release: () => void = () => undefined;
    let need = { memory: 0, cpus: 0 };
    let refused: string | undefined;
    try {
      // The runtime is the CI's decision (in the spec): run under it, or refuse; never another.
      const { limits, runtime } = resolveLimits(a.spec.limits, a.spec.runtime, this.o.policy, `job ${a.spec.id}`);
      if (!this.o.runtimes.includes(runtime)) throw new Error(`runtime ${runtime} is not one this host offers (${this.o.runtimes.join(', ')})`);
      need = { memory: limits.memory, cpus: limits.cpus };
    } catch (e) {
      refused = (e as Error).message;
    }
    let holdsAhead = false;
    if (!refused && ahead) {
      this.holdAhead(need, 1);
      holdsAhead = true;
    } else if (!refused) {
      try {
        release = await this.slots.acquire(this.stopping.signal, need);
      } catch (e) {
        refused = (e as Error).message;
      }
    }
    let starting = false;
    const startingEnds = (): void => {
      if (!starting) return;
      starting = false;
      this.starting -= 1;
      this.wakeClaimLoop();
    };
    if (!refused && !ahead) {
      starting = true;
      this.starting += 1;
    }
    const leaveAhead = (): void => {
      if (!holdsAhead) return;
      holdsAhead = false;
      this.holdAhead(need, -1);
    };
    const freeSlot = (): void => {
      release();
      leaveAhead();
      startingEnds();
      this.wakeClaimLoop();
    };
    // A job claimed ahead: the slot, once its container is ready. (The claim loop may claim
    // another ahead then.)
    const takeSlot = holdsAhead
      ? async (signal: AbortSignal): Promise<void> => {
          release = await this.slots.acquire(signal, need);
          starting = true;
          this.starting += 1;
          leaveAhead();
          this.wakeClaimLoop();
        }
      : undefined;
    const done = this.runOne(a, controller, refused, received, freeSlot, takeSlot, startingEnds)
      .catch((e: unknown) => this.o.logger.error({ err: e, run: a.run }, 'a job could not be run or reported'))
      .finally(() => {
        freeSlot();
        this.running.delete(a.run);
      });
    this.running.set(a.run, { controller, done });
  }

  /** The claim loop looks again at what it may claim (a slot freed, a container started, a job took its slot). */
  private wakeClaimLoop(): void {
    for (const w of this.freedWaiters) w();
  }

  private holdAhead(need: { memory: number; cpus: number }, sign: 1 | -1): void {
    this.ahead = { count: this.ahead.count + sign, memory: this.ahead.memory + sign * need.memory, cpus: this.ahead.cpus + sign * need.cpus };
  }

  private async runOne(
    a: Assignment,
    controller: AbortController,
    refused: string | undefined,
    received: number,
    freeSlot: () => void,
    takeSlot: ((signal: AbortSignal) => Promise<void>) | undefined,
    started: () => void,
  ): Promise<void> {
    const log = this.o.logger.child({ run: a.run, build: a.build, job: a.job });
    const dir = join(this.o.workDir, 'runs', a.run);
    const signal = controller.signal;
    const leaseMs = a.leaseMs;
    // No heartbeat went while the job waited for its slot (begin): the lease may be over already.
    let lastOk = received;
    const fence = (2 * leaseMs) / 3;
    const fenced = (): boolean => {
      if (performance.now() - lastOk <= fence) return false;
      controller.abort(new LeaseLost('no heartbeat reached the CI for two thirds of the lease'));
      return true;
    };
    this.o.sentinel?.renew(a.spec.id, fence - (performance.now() - lastOk));
    // The fence is watched more often than the heartbeats go: the job stops at two thirds of the
    // lease, not at the next round (the sentinel would stop its containers then anyway).
    const watch = setInterval(fenced, Math.max(20, Math.min(250, Math.floor(fence / 8))));
    this.using.set(a.imageId, (this.using.get(a.imageId) ?? 0) + 1);
    const onAnswer = (answer: RunAnswer): void => {
      if (answer.cancel) controller.abort(new CancelledError(answer.reason ?? 'cancelled by the CI'));
    };
    // The lease: renewed every third of it; stopped here at two thirds without a good renewal.
    const beat = setInterval(() => {
      if (fenced()) return;
      const sent = performance.now();
      void this.call('POST', EXECUTOR_API.run(a.run, 'heartbeat'), { json: {}, timeoutMs: leaseMs / 3 })
        .then(async (res) => {
          onAnswer(RunAnswer.parse(await res.json()));
          lastOk = Math.max(lastOk, sent);
          this.o.sentinel?.renew(a.spec.id, fence - (performance.now() - lastOk));
        })
        .catch((e: unknown) => {
          if (e instanceof HttpStatusError && e.status === 409) controller.abort(new LeaseLost(e.message));
        });
    }, Math.max(50, Math.floor(leaseMs / 3)));
    const sender = new LogSender((seq, data) => this.call('POST', `${EXECUTOR_API.run(a.run, 'log')}?seq=${seq}`, { body: data, type: 'application/octet-stream', timeoutMs: leaseMs / 3 }).then(async (res) => onAnswer(RunAnswer.parse(await res.json()))), (e) => {
      if (e instanceof HttpStatusError && e.status === 409) controller.abort(new LeaseLost(e.message));
    });
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      let result: JobResult;
      try {
        if (refused) throw new InvalidInputError([{ file: `job ${a.spec.id}`, path: '', message: `this executor host refuses it: ${refused}`, severity: 'error' }]);
        await this.ensureImage(a, signal);
        const tar = a.sourceBytes !== undefined ? await this.fetchSource(a, join(dir, 'source.tar'), signal) : undefined;
        const artifactsDir = join(dir, 'out', 'artifacts');
        // Checked last before the job starts (the image and the source may have taken long).
        if (fenced() || signal.aborted) throw signal.reason;
        result = await this.o.runner.run(a.spec, {
          signal,
          ...(tar ? { source: { tar } } : {}),
          includeLog: false,
          ...(a.spec.artifacts.length > 0 ? { artifactsDir } : {}),
          // The CI's self-test verdict on its image (this host has none for the CI's image ids).
          ...(a.runscPassed ? { runscPassed: a.imageId } : {}),
          // Claimed ahead: ready now; a slot, then the CI's word that the job is still this host's.
          ...(takeSlot
            ? {
                beforeStart: async () => {
                  await takeSlot(signal);
                  try {
                    const sent = performance.now();
                    const res = await this.deliver(signal, leaseMs, () => this.call('POST', EXECUTOR_API.run(a.run, 'start'), { json: {}, timeoutMs: leaseMs / 3 }));
                    onAnswer(RunAnswer.parse(await res.json()));
                    // The CI renewed the lease with its answer, as with a heartbeat.
                    lastOk = Math.max(lastOk, sent);
                    this.o.sentinel?.renew(a.spec.id, fence - (performance.now() - lastOk));
                  } catch (e) {
                    if (e instanceof HttpStatusError && e.status === 409) controller.abort(new Moved(e.message));
                    else if (!signal.aborted) controller.abort(new LeaseLost(`the CI did not answer its start: ${(e as Error).message}`));
                  }
                  if (signal.aborted) throw signal.reason;
                },
              }
            : {}),
          onStarted: started,
          onLog: (chunk) => sender.push(chunk.data),
        });
        // The container has ended (its removal goes on in the background): its room is free for the
        // next claim while this one's log, artifacts and result go to the CI.
        freeSlot();
        await sender.flush();
        if (signal.reason instanceof LeaseLost) throw signal.reason;
        if (result.artifacts.length > 0) {
          // Packed anew for each try: a try that failed consumed its stream.
          await this.deliver(signal, leaseMs, () => this.call('PUT', EXECUTOR_API.run(a.run, 'artifacts'), { body: packDirectory(join(dir, 'out'), { uid: 0, gid: 0 }), type: 'application/x-tar', timeoutMs: 10 * 60_000, ok: [200, 422] }));
        }
      } catch (e) {
        if (signal.reason instanceof Moved) {
          log.info({ why: signal.reason.message }, 'job dropped before it started: the CI gave it to a host with a free slot');
          return;
        }
        if (signal.reason instanceof LeaseLost) {
          log.warn({ why: signal.reason.message }, 'job stopped: this host no longer holds its lease (the CI runs it elsewhere)');
          return;
        }
        if (signal.aborted) {
          log.info('job cancelled by the CI');
          return;
        }
        if (e instanceof HttpStatusError && e.status === 409) {
          // The CI no longer holds the run for this host (taken back, another leader).
          controller.abort(new LeaseLost(e.message));
          log.warn({ why: e.message }, 'job stopped: this host no longer holds its lease (the CI runs it elsewhere)');
          return;
        }
        if (transient(e)) {
          // The CI could not be reached: not the job's failure. Given back (its lease left to run out).
          log.error({ err: (e as Error).message }, 'the CI did not take a part of the job; its lease is left to run out so that it runs again');
          controller.abort(new LeaseLost('given back'));
          return;
        }
        if (isAirlockError(e) && e.retryable) {
          // Not the job's fault: given back (the CI queues it again when the lease ends).
          log.error({ err: e }, 'job could not be run here; its lease is left to run out so another host takes it');
          controller.abort(new LeaseLost('given back'));
          return;
        }
        result = refusedResult(a.spec, this.o.policy, (e as Error).message);
        await sender.flush();
      }
      await this.deliver(signal, leaseMs, () => this.call('POST', EXECUTOR_API.run(a.run, 'result'), { json: result, timeoutMs: leaseMs }));
      log.info({ passed: result.passed, reason: result.reason }, 'job done');
    } finally {
      clearInterval(beat);
      clearInterval(watch);
      const n = (this.using.get(a.imageId) ?? 1) - 1;
      if (n > 0) this.using.set(a.imageId, n);
      else this.using.delete(a.imageId);
      this.o.sentinel?.done(a.spec.id);
      sender.close();
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  /** The image by id in this engine, loaded from the CI when missing (one load per image at a time). */
  private async ensureImage(a: Assignment, signal: AbortSignal): Promise<void> {
    const id = a.imageId;
    const present = await this.o.docker
      .getImage(id)
      .inspect()
      .then(
        () => true,
        () => false,
      );
    // A load that another run started may fail for that run's reasons (moved to another host,
    // cancelled, taken back): then this run loads the image itself, once.
    for (let attempt = 0; !present; attempt++) {
      let load = this.loading.get(id);
      if (!load) {
        const p = (async () => {
          const res = await this.call('GET', EXECUTOR_API.run(a.run, 'image'), { timeoutMs: 30 * 60_000, signal });
          if (!res.body) throw new ExecutorFailedError('the CI sent no image');
          await loadImage(this.o.docker, Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>));
          const got = await this.o.docker.getImage(id).inspect().catch(() => undefined);
          if (got?.Id !== id) throw new ExecutorFailedError(`the image the CI sent is not ${id}`);
          this.images.set(id, Date.now());
        })().finally(() => {
          if (this.loading.get(id) === load) this.loading.delete(id);
        });
        load = { run: a.run, p };
        this.loading.set(id, load);
      }
      try {
        await load.p;
        break;
      } catch (e) {
        if (signal.aborted || this.stopping.signal.aborted) throw e;
        if (load.run !== a.run && attempt === 0) continue;
        if (e instanceof HttpStatusError || e instanceof CallFailed || (isAirlockError(e) && e.retryable)) throw e;
        // The body broke off (the way to the CI, or the CI), or the load was another run's, which
        // ended: the environment's image is the CI's, never the job's fault. Given back.
        throw new CallFailed(`the image ${id} could not be loaded from the CI: ${(e as Error).message}`);
      }
    }
    if (this.images.has(id) || !present) this.images.set(id, Date.now());
    await this.imageGc();
  }

  /** Images this host loaded beyond `imagesKept`, least recently used first, unless a job uses them. */
  private async imageGc(): Promise<void> {
    const keep = this.o.imagesKept ?? 20;
    // Not an image being loaded, nor one a run here uses (its container may not exist yet).
    const inUse = new Set<string>([...this.loading.keys(), ...this.using.keys()]);
    const byAge = [...this.images.entries()].sort((x, y) => x[1] - y[1]);
    for (const [id] of byAge.slice(0, Math.max(0, byAge.length - keep))) {
      if (inUse.has(id)) continue;
      try {
        await this.o.docker.getImage(id).remove({ noprune: false });
        this.images.delete(id);
      } catch (e) {
        const status = (e as { statusCode?: number }).statusCode;
        if (status === 404) this.images.delete(id);
        // 409: a container still uses it; tried again after the next job
      }
    }
    await writeFile(join(this.o.workDir, IMAGES_FILE), JSON.stringify(Object.fromEntries(this.images)), { mode: 0o600 });
  }

  /** The source tar, refused once it passes the job's workspace size under this host's policy. */
  private async fetchSource(a: Assignment, file: string, signal: AbortSignal): Promise<string> {
    const { limits } = resolveLimits(a.spec.limits, a.spec.runtime, this.o.policy, `job ${a.spec.id}`);
    const cap = limits.workspace;
    if ((a.sourceBytes ?? 0) > cap) throw new InvalidInputError([{ file: `job ${a.spec.id}`, path: 'source', message: `the source is ${formatBytes(a.sourceBytes ?? 0)}, more than the workspace's ${formatBytes(cap)}`, severity: 'error' }]);
    const res = await this.call('GET', EXECUTOR_API.run(a.run, 'source'), { timeoutMs: 10 * 60_000, signal });
    if (!res.body) throw new ExecutorFailedError('the CI sent no source');
    let n = 0;
    const count = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        n += chunk.length;
        if (n > cap) cb(new InvalidInputError([{ file: `job ${a.spec.id}`, path: 'source', message: `the source passed the workspace's ${formatBytes(cap)} while it was received`, severity: 'error' }]));
        else cb(null, chunk);
      },
    });
    try {
      await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>), count, createWriteStream(file, { mode: 0o600 }));
    } catch (e) {
      // The cap is the job's; a body that broke off is the CI's (or the way to it).
      if (e instanceof InvalidInputError || signal.aborted || this.stopping.signal.aborted) throw e;
      throw new CallFailed(`GET ${EXECUTOR_API.run(a.run, 'source')}: the body broke off: ${(e as Error).message}`);
    }
    return file;
  }

  /** Resolves when a running job frees its slot (or ends), or after a second. */
  private slotFreed(): Promise<void> {
    const freed = new Promise<void>((res) => this.freedWaiters.add(res));
    return Promise.race([freed, ...[...this.running.values()].map((r) => r.done), sleep(1000, this.stopping.signal)]).then(() => {
      this.freedWaiters.clear();
    });
  }

  /**
   * `send`, again while it fails for the CI's reasons (no answer, 5xx) and the run's lease holds,
   * for at most one lease from the first try: a follower replica answers 503 while no replica
   * leads, and a leader that took over no longer knows the run (409, not retried).
   */
  private async deliver(signal: AbortSignal, leaseMs: number, send: () => Promise<Response>): Promise<Response> {
    const until = performance.now() + leaseMs;
    for (let wait = 200; ; wait = Math.min(wait * 2, Math.max(50, Math.floor(leaseMs / 3)))) {
      if (signal.aborted) throw signal.reason;
      try {
        return await send();
      } catch (e) {
        if (signal.aborted || this.stopping.signal.aborted || !transient(e) || performance.now() + wait > until) throw e;
        this.o.logger.warn({ err: (e as Error).message }, 'the CI did not take a call; sending it again');
        await sleep(wait, AbortSignal.any([signal, this.stopping.signal]));
      }
    }
  }

  private async call(
    method: string,
    path: string,
    o: { json?: unknown; body?: Buffer | Readable; type?: string; timeoutMs?: number; ok?: number[]; signal?: AbortSignal } = {},
  ): Promise<Response> {
    const signals = [this.stopping.signal, AbortSignal.timeout(o.timeoutMs ?? 30_000), ...(o.signal ? [o.signal] : [])];
    const headers: Record<string, string> = { authorization: `Bearer ${this.o.token}` };
    let body: RequestInit['body'] | undefined;
    if (o.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(o.json);
    } else if (o.body) {
      headers['content-type'] = o.type ?? 'application/octet-stream';
      body = Buffer.isBuffer(o.body) ? o.body : (Readable.toWeb(o.body) as ReadableStream<Uint8Array>);
    }
    let res: Response;
    try {
      res = await fetch(new URL(path, this.o.ciUrl), { method, headers, ...(body !== undefined ? { body } : {}), signal: AbortSignal.any(signals), ...(o.body && !Buffer.isBuffer(o.body) ? { duplex: 'half' } : {}) } as RequestInit);
    } catch (e) {
      if (this.stopping.signal.aborted || o.signal?.aborted) throw e;
      throw new CallFailed(`${method} ${path}: ${(e as Error).message}`);
    }
    if (!(o.ok ?? [200]).includes(res.status)) {
      const text = await res.text().catch(() => '');
      throw new HttpStatusError(res.status, `${method} ${path}: ${res.status} ${text.slice(0, 500)}`, parseRetryAfter(res.headers.get('retry-after')));
    }
    return res;
  }
}

/** The longest a Retry-After makes the claim loop wait. */
const RETRY_AFTER_MAX_MS = 60_000;

/** A call the CI did not answer (refused, reset, timed out). */
class CallFailed extends Error {}

/** The CI's failure, not the job's: no answer, or a 5xx (a follower replica with no leader answers 503). */
function transient(e: unknown): boolean {
  return e instanceof CallFailed || (e instanceof HttpStatusError && e.status >= 500);
}

class HttpStatusError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** The answer's Retry-After, in ms. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/**
 * The job's log to the CI, in order: pieces of at most LOG_CHUNK_MAX bytes, numbered from 0, sent
 * one at a time at least every LOG_FLUSH_MS. A piece that fails is sent again under the same number
 * (the CI ignores a number it has); what the CI refuses (409) stops the job (`onError`).
 */
class LogSender {
  private pending: Buffer[] = [];
  private size = 0;
  private seq = 0;
  private chain: Promise<void> = Promise.resolve();
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly send: (seq: number, data: Buffer) => Promise<void>,
    private readonly onError: (e: unknown) => void,
  ) {
    this.timer = setInterval(() => void this.flush(), LOG_FLUSH_MS);
  }

  push(data: Buffer): void {
    if (this.closed) return;
    this.pending.push(data);
    this.size += data.length;
    if (this.size >= LOG_CHUNK_MAX / 2) void this.flush();
  }

  /** Send what is pending; resolves when everything pushed so far was sent (or given up on). */
  flush(): Promise<void> {
    while (this.size > 0) {
      const all = Buffer.concat(this.pending);
      const piece = all.subarray(0, LOG_CHUNK_MAX);
      const rest = all.subarray(piece.length);
      this.pending = rest.length > 0 ? [rest] : [];
      this.size = rest.length;
      const seq = this.seq++;
      this.chain = this.chain.then(() => this.sendWithRetry(seq, piece));
    }
    return this.chain;
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
  }

  private async sendWithRetry(seq: number, data: Buffer): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.send(seq, data);
        return;
      } catch (e) {
        if ((e instanceof HttpStatusError && e.status < 500) || attempt >= 4 || this.closed) {
          this.onError(e);
          return;
        }
        await sleep(200 * 2 ** attempt);
      }
    }
  }
}

/**
 * The runtimes this host offers: those its job policy allows that its engine has (runc always),
 * and runsc only where it passed this host's own self-test on some image (`<stateDir>/
 * runsc-compat.json`): an engine that lists runsc and cannot run it offers runc alone.
 */
export function offeredRuntimes(policy: JobPolicy, engineRuntimes: readonly string[], stateDir: string): Runtime[] {
  return RUNTIMES.filter((r): r is Runtime => policy.runtime.allowed.includes(r) && (r === 'runc' || (engineRuntimes.includes(r) && (r !== 'runsc' || runscWorksHere(stateDir)))));
}

/** A result for a job this host would not or could not start (its own policy, a source too large). */
function refusedResult(spec: JobSpec, policy: JobPolicy, reason: string): JobResult {
  return {
    version: 1,
    jobId: spec.id,
    image: spec.image,
    imageId: spec.image,
    runtime: spec.runtime ?? policy.runtime.default,
    passed: false,
    exitCode: -1,
    oomKilled: false,
    timedOut: false,
    cancelled: false,
    logTruncated: false,
    logBytes: 0,
    limits: policy.limits,
    durations: { setupMs: 0, runMs: 0, teardownMs: 0, totalMs: 0 },
    reason: `refused by the executor host: ${reason}`,
    artifacts: [],
  };
}

async function readJson(file: string): Promise<Record<string, unknown>> {
  try {
    const v = JSON.parse(await readFile(file, 'utf8')) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      res();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

