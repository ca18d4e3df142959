/**
 * The untrusted CI service's composition root: the only place concrete adapters meet (dockerode,
 * SQLite, the git CLI, the artifact store, fastify). Tests, the CLI (`airlock ci serve`), the demo
 * and the benchmark all start the service through `startCiService`.
 */
import { join } from 'node:path';
import { availableParallelism, totalmem } from 'node:os';
import type Docker from 'dockerode';
import { createDocker } from '#shared/docker/client.js';
import { createLogger, type Logger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import type { ArtifactStore } from './storage/artifact-store.js';
import { createArtifactStore } from './storage/config.js';
import { buildApi } from './api/app.js';
import { createCiMetrics } from './api/metrics.js';
import { gateQueues } from './pipelines/gate-metrics.js';
import type { LoadedCiConfig } from './config.js';
import { EnvironmentBuilder } from './environments/environment-builder.js';
import { ImageCache } from './environments/image-cache.js';
import { loadEnvironmentPolicy } from './environments/policy.js';
import { createRepoEnvironments } from './environments/repo-environments.js';
import { Egress, type RunKind } from './egress/egress.js';
import type { EgressEvent } from './egress/front.js';
import { loadEgressPolicy } from './egress/policy.js';
import { CheckBuildExecutor } from './executor/build-executor.js';
import { BuildEvents } from './logs/build-events.js';
import { Merger } from './merger/merger.js';
import { createStoreReporter } from './reporting/store-reporter.js';
import { Scheduler } from './scheduler/scheduler.js';
import { Slots } from './scheduler/slots.js';
import { capacityFor, tooLarge } from './scheduler/capacity.js';
import { BuildStore } from './store/build-store.js';
import { GateStore } from './store/gate-store.js';
import { HintSender } from './hints/hint-sender.js';
import { GateRuntime } from './pipelines/gate-runtime.js';
import { openCiDatabase, type Db } from './store/database.js';
import { statusView } from './status/snapshot.js';
import { startupChecks } from './startup-checks.js';
import { StatusFeed } from './status/status-feed.js';
import type { FastifyInstance } from 'fastify';
import { CatchUp } from './review/catch-up.js';
import { GerritReviewSystem } from './review/gerrit.js';
import type { Links } from './review/review-messages.js';
import { ReviewOutbox } from './review/review-outbox.js';
import { ReviewState } from './review/review-state.js';
import type { ReviewSystem } from './review/review-system.js';
import { Rereads } from './review/rereads.js';
import { hideChange, reconcileChange, resumeApprovals, type TriggerDeps } from './sources/triggers.js';
import { Leadership } from './leadership.js';
import { Lease, holderId } from './store/lease.js';
import { RemoteJobs } from './remote/dispatch.js';

export interface CiService {
  readonly app: FastifyInstance;
  readonly scheduler: Scheduler;
  readonly gate: GateRuntime;
  readonly gateStore: GateStore;
  readonly store: BuildStore;
  readonly artifacts: ArtifactStore;
  readonly imageCache: ImageCache;
  readonly runner: JobRunner;
  readonly docker: Docker;
  /** The review system and what the CI keeps of it (absent when none is configured). */
  readonly review?: { system: ReviewSystem; state: ReviewState; outbox: ReviewOutbox; catchUp: CatchUp; rereads: Rereads };
  /** Listen on the configured address; resolves to the base URL. */
  listen(): Promise<string>;
  /** Whether this replica leads (runs the gate and the scheduler); see leadership.ts. */
  readonly isLeader: boolean;
  /** Stop taking work, abort running builds (they re-run at the next start), close everything. */
  close(): Promise<void>;
}

/** Where the service keeps each kind of state under `dataDir`. */
export function dataPaths(dataDir: string): { db: string; git: string; builds: string; work: string; artifacts: string; imageUsage: string } {
  return {
    db: join(dataDir, 'ci.sqlite'),
    git: join(dataDir, 'git'),
    builds: join(dataDir, 'builds'),
    work: join(dataDir, 'work'),
    artifacts: join(dataDir, 'artifacts'),
    imageUsage: join(dataDir, 'image-usage.json'),
  };
}

export function openArtifactStore(loaded: LoadedCiConfig): ArtifactStore {
  const c = loaded.config;
  return createArtifactStore(c.artifactStore ?? { kind: 'fs', root: dataPaths(c.dataDir).artifacts });
}

export function openImageCache(loaded: LoadedCiConfig, docker: Docker, logger: Logger, store: BuildStore): ImageCache {
  const c = loaded.config;
  return new ImageCache({
    docker,
    policy: loadEnvironmentPolicy(c.policies.environments),
    logger,
    usageFile: dataPaths(c.dataDir).imageUsage,
    externalPins: async () => store.pinnedImages(),
  });
}

export async function startCiService(
  loaded: LoadedCiConfig,
  opts: { logger?: Logger; docker?: Docker; workspacePool?: number; /** This replica stopped leading for good (`airlock ci serve` exits then). */ onLeadershipLost?: (why: string) => void } = {},
): Promise<CiService> {
  const c = loaded.config;
  const logger = opts.logger ?? createLogger({ name: 'airlock-ci' });
  const paths = dataPaths(c.dataDir);
  const docker = opts.docker ?? createDocker();
  const jobPolicy = loadJobPolicy(c.policies.job);
  const envPolicy = loadEnvironmentPolicy(c.policies.environments);
  // Every project URL fetchable and hints.url a builder, before anything is opened (docs/ci.md).
  await startupChecks(c, logger, loaded.file ? { file: loaded.file } : {});
  let db: Db | undefined;
  const cleanups: (() => unknown)[] = [];
  try {
    db = await openCiDatabase(c, loaded.databaseUrl, (err) => logger.warn({ err: err.message }, 'a database connection was lost; a new one is opened for the next statement'));
    logger.info({ database: db.where }, 'database open');
    cleanups.push(() => db?.close());
    const store = new BuildStore(db);
    const artifacts = openArtifactStore(loaded);
    const runner = await JobRunner.create({ docker, policy: jobPolicy, stateDir: c.runnerStateDir, logger, workspacePool: opts.workspacePool ?? 2 });
    cleanups.push(() => runner.close());
    // The package proxies, when policies/egress.yaml gives any run a source (docs/dependencies.md).
    const egressReport: { to?: (kind: RunKind, e: EgressEvent) => void } = {};
    const egress = await Egress.start({ stateDir: c.runnerStateDir, policy: loadEgressPolicy(c.policies.egress), logger, onEvent: (kind, e) => egressReport.to?.(kind, e) });
    cleanups.push(() => egress.stop());
    const imageCache = openImageCache(loaded, docker, logger, store);
    // Jobs are placed by their memory and CPUs within the host's capacity (scheduler/capacity.ts).
    const capacity = capacityFor(c.slots, c.capacity, { memory: totalmem(), cpus: availableParallelism() });
    const slots = new Slots(c.slots, capacity);
    const unplaceable = tooLarge(capacity, jobPolicy.limits);
    if (unplaceable) logger.warn({ capacity }, `the job policy's own limits do not fit this host: every job that does not ask for less fails (${unplaceable.message})`);
    // Environment builds run in sandboxes of their own and hold an executor slot, as jobs do.
    const builder = new EnvironmentBuilder({ docker, policy: envPolicy, logger, cache: imageCache, stateDir: c.runnerStateDir, slots });
    await builder.reap();
    builder.startReaper();
    cleanups.push(() => builder.close());
    const events = new BuildEvents(paths.builds);
    const merger = new Merger({ root: paths.git, logger });
    // Only the leader writes the gate's state: each save checks, in its transaction, that this
    // replica still holds the lease it had (lease.ts), so a deposed leader cannot write over its successor.
    const lease = new Lease(db, 'leader', holderId(), c.replicas.leaseMs);
    const gateStore = new GateStore(db, Date.now, (t) => lease.fenced(t));
    let leadership: Leadership | undefined;
    const hints =
      c.hints && loaded.hintSecret
        ? new HintSender({ gateStore, db, url: c.hints.url, secret: loaded.hintSecret, logger: logger.child({ component: 'hints' }), onChange: () => status?.notify() })
        : undefined;
    // The review system: votes and messages out (a durable outbox), approvals in, merges asked of it.
    const links: Links = { publicUrl: (c.publicUrl ?? `http://${c.listen.host}:${c.listen.port}`).replace(/\/+$/, '') };
    let triggerDeps: TriggerDeps | undefined;
    let review: { system: ReviewSystem; state: ReviewState; outbox: ReviewOutbox; catchUp: CatchUp; rereads: Rereads } | undefined;
    if (c.review && loaded.reviewCredentials) {
      const system = new GerritReviewSystem({ url: c.review.url, credentials: loaded.reviewCredentials, timeoutMs: c.review.timeoutMs });
      const state = new ReviewState(db, { rule: c.review.approval, self: system.account, copyOnKinds: c.review.copyOnKinds });
      const rereads = new Rereads({
        system,
        logger: logger.child({ component: 'review' }),
        apply: async (change) => {
          if (triggerDeps) await reconcileChange(change, triggerDeps);
        },
        hidden: async (project, change) => {
          if (triggerDeps) await hideChange(project, change, triggerDeps);
        },
      });
      const outbox = new ReviewOutbox({ db, system, store, gateStore, votes: c.review.votes, links, logger: logger.child({ component: 'review' }) });
      const catchUp = new CatchUp({
        db,
        system,
        everyMs: c.review.catchUpEveryMs,
        logger: logger.child({ component: 'catch-up' }),
        apply: async (change) => {
          if (triggerDeps) await reconcileChange(change, triggerDeps);
        },
      });
      review = { system, state, outbox, catchUp, rereads };
    }
    // Executor hosts (remote/): the leader hands them the jobs; no host listed, jobs run here.
    const remote =
      c.executors.hosts.length > 0
        ? new RemoteJobs({ docker, policy: jobPolicy, runnerStateDir: c.runnerStateDir, leaseMs: c.executors.leaseMs, logger: logger.child({ component: 'executors' }), holds: () => leadership?.holds ?? false })
        : undefined;
    if (remote) cleanups.push(() => remote.close());
    let scheduler: Scheduler | undefined;
    // The status page's feed: told of every build, job and gate change (created once the scheduler is).
    let status: StatusFeed | undefined;
    const metrics = createCiMetrics({
      queued: async () => {
        const q = await store.queued();
        return { check: q.filter((b) => b.pipeline === 'check').length, gate: q.filter((b) => b.pipeline === 'gate').length };
      },
      busy: () => scheduler?.busy ?? 0,
      slots: c.slots,
      ...(hints ? { hints: () => hints.backlog() } : {}),
      ...(review ? { reviewOutbox: () => review?.outbox.pendingCount() ?? 0 } : {}),
      gateQueues: () => gateQueues(gate.model),
      ...(remote ? { executors: () => ({ hosts: remote.executors().length, ...remote.counts }) } : {}),
    });
    egressReport.to = (kind, e) => metrics.egress(kind, e.source, e.outcome);
    events.watch((build, e) => {
      if (e.type !== 'log') status?.notify();
      metrics.onEvent(build, e);
    });
    const gate = new GateRuntime({
      metrics: metrics.gate,
      store,
      gateStore,
      scheduler: () => {
        if (!scheduler) throw new Error('the scheduler is not started yet');
        return scheduler;
      },
      merger,
      projects: c.projects,
      window: c.gate.window,
      queues: c.gate.queues,
      logger: logger.child({ component: 'gate' }),
      onMerged: () => hints?.kick(),
      onStateLost: (err) => void leadership?.abdicate(`the gate could not save its state: ${(err as Error).message}`),
      onChange: () => {
        status?.notify();
        review?.outbox.kick();
      },
      ...(review && c.review
        ? {
            review: {
              system: review.system,
              outbox: review.outbox,
              rule: c.review.approval,
              votes: c.review.votes,
              links,
              onReread: (change) => {
                if (triggerDeps) void reconcileChange(change, triggerDeps).catch((err: unknown) => logger.error({ err, change: change.change }, 'a change read again could not be applied'));
              },
            },
          }
        : {}),
    });
    const executor = new CheckBuildExecutor({
      store,
      events,
      merger,
      runner,
      environments: createRepoEnvironments({ docker, policy: envPolicy, builder, egress }),
      artifacts,
      policy: jobPolicy,
      environmentPolicy: envPolicy,
      projects: c.projects,
      workDir: paths.work,
      logger,
      slots,
      gate,
      egress,
      ...(remote ? { remote } : {}),
    });
    scheduler = new Scheduler({
      store,
      executor,
      reporters: [createStoreReporter(artifacts), gate, ...(review ? [review.outbox] : [])],
      slots: c.slots,
      executionSlots: slots,
      prepareAhead: c.slots,
      logger,
      onChange: (b) => {
        metrics.onBuild(b);
        status?.notify();
      },
    });
    const sched = scheduler;
    status = new StatusFeed({ snapshot: () => statusView({ store, scheduler: sched, gate, ...(hints ? { hints: () => hints.backlog() } : {}) }), logger: logger.child({ component: 'status' }) });
    const reread = review ? (project: string, change: string) => review?.rereads.request(project, change) : undefined;
    triggerDeps = { config: c, scheduler, store, gate, ...(review ? { reviewState: review.state } : {}), ...(reread ? { reread } : {}) };
    const app = await buildApi({
      forwarding: {
        isLeader: () => leadership?.isReady ?? false,
        leader: async () => (await lease.current())?.address,
        logger: logger.child({ component: 'forward' }),
        // As often as the replicas ask for the lease: a request forwarded to a leader that lost it ends then.
        recheckMs: Math.floor(c.replicas.leaseMs / 3),
      },
      config: c,
      store,
      scheduler,
      gate,
      gateStore,
      events,
      artifacts,
      metrics,
      logger,
      status,
      ...(review ? { reviewState: review.state } : {}),
      ...(reread ? { reread } : {}),
      ...(loaded.gerritSecret ? { gerritSecret: loaded.gerritSecret } : {}),
      ...(loaded.apiToken ? { apiToken: loaded.apiToken } : {}),
      ...(loaded.cancelToken ? { cancelToken: loaded.cancelToken } : {}),
      ...(remote ? { remote } : {}),
      ...(loaded.executorTokens ? { executorTokens: loaded.executorTokens } : {}),
    });
    cleanups.push(() => app.close());
    // Leading (leadership.ts): the gate, the scheduler, the outboxes and the GC run on one replica
    // at a time; a single replica leads as soon as it starts.
    let listened: string | undefined;
    const advertise = (): string => c.replicas.advertiseUrl ?? listened ?? `http://${wildcardToLoopback(c.listen.host)}:${c.listen.port}`;
    const leaderParts: (() => unknown)[] = [];
    let deposed = false;
    // One stop at a time, each after the one before: closing the service while a step-down is
    // stopping the parts waits for them (it closed the database under the catch-up's last round).
    let stopped: Promise<void> = Promise.resolve();
    const stopLeading = (): Promise<void> =>
      (stopped = stopped.then(async () => {
        for (const fn of leaderParts.splice(0).reverse()) await Promise.resolve(fn()).catch((e: unknown) => logger.warn({ err: e }, 'close failed'));
      }));
    leadership = new Leadership({
      lease,
      ttlMs: c.replicas.leaseMs,
      logger: logger.child({ component: 'leadership' }),
      address: advertise,
      onAcquired: async () => {
        // Leading may end while the parts are still starting (leadership.ts does not wait for
        // them): a part started after that is stopped at once rather than left running.
        const part = async (start: () => unknown, stop: () => unknown): Promise<void> => {
          if (deposed) return;
          await start();
          leaderParts.push(stop);
          if (deposed) await stopLeading();
        };
        // A leader that died on this host left its containers: gone before its builds run again here.
        await runner.reap().catch((e: unknown) => logger.warn({ err: e }, 'the reaper failed; it runs again later'));
        // Stopped last: the scheduler's stop cancels the remote jobs first (their hosts are told).
        // Opened on every start of leading (a replica may lead again after it stepped down), and
        // it hands out nothing for a lease: the last leader's hosts may still run its jobs.
        if (remote) await part(() => remote.open(), () => remote.close());
        await part(
          async () => {
            await gate.start();
            // Approvals the last leader recorded but did not save into the gate's state.
            if (triggerDeps) {
              const told = await resumeApprovals(triggerDeps);
              if (told > 0) logger.warn({ changes: told }, 'approved changes the gate had not saved are queued again');
            }
          },
          () => gate.close(),
        );
        await part(() => sched.start(), () => sched.close());
        if (hints) await part(() => hints.start(), () => hints.close());
        if (review) {
          const r = review;
          await part(() => r.outbox.start(), () => r.outbox.close());
          await part(() => r.catchUp.start(), () => r.catchUp.close());
        }
        if (c.imageGcEveryMs > 0) {
          let gcTimer: NodeJS.Timeout | undefined;
          await part(
            () =>
              (gcTimer = setInterval(() => {
                void imageCache.gc().catch((e: unknown) => logger.warn({ err: e }, 'image GC failed'));
                void egress.gc().catch((e: unknown) => logger.warn({ err: e }, 'package cache GC failed'));
              }, c.imageGcEveryMs).unref()),
            () => clearInterval(gcTimer),
          );
        }
      },
      onLost: async (why) => {
        deposed = true;
        // Told first: `airlock ci serve` then bounds how long stopping may take (cli/ci.ts).
        opts.onLeadershipLost?.(why);
        await stopLeading();
      },
    });
    const lead = leadership;
    cleanups.push(() => lead.close());
    // Closing ends leading too: a part that finishes starting after this is stopped at once.
    cleanups.push(async () => {
      deposed = true;
      await stopLeading();
    });
    if (review) {
      const r = review;
      cleanups.push(() => r.rereads.close());
    }
    await lead.start();
    // A single replica has its gate and scheduler running when this returns.
    await lead.started();
    return {
      app,
      scheduler,
      gate,
      gateStore,
      store,
      artifacts,
      imageCache,
      runner,
      docker,
      ...(review ? { review } : {}),
      async listen() {
        const url = await app.listen({ host: c.listen.host, port: c.listen.port });
        if (!c.publicUrl) links.publicUrl = url; // the port the system chose, when the config said 0
        listened = url.replace(/^(https?:\/\/)(0\.0\.0\.0|\[::\])(?=[:/]|$)/, '$1127.0.0.1');
        await lead.readvertise();
        return url;
      },
      get isLeader() {
        return lead.isLeader;
      },
      async close() {
        for (const fn of cleanups.splice(0).reverse()) await Promise.resolve(fn()).catch((e: unknown) => logger.warn({ err: e }, 'close failed'));
      },
    };
  } catch (e) {
    for (const fn of cleanups.reverse()) await Promise.resolve(fn()).catch(() => {});
    throw e;
  }
}

/** A wildcard listen host, as other processes of this host reach it. */
function wildcardToLoopback(host: string): string {
  return host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
}
