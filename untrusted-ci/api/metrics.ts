/**
 * Prometheus metrics of the CI service, on a registry of its own (never prom-client's global one,
 * so two services in one test process do not collide). Names follow Prometheus conventions: the
 * `airlock_ci_` prefix, base units in the name (`_seconds`), `_total` on counters. Queue depth,
 * slot use and the gate's queues are read when scraped; build and job results and durations are
 * counted as they finish; gate resets and resident times come from the gate runtime
 * (`GateMetricsPort`).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BuildEvent, BuildView } from '#shared/schemas/api/builds.js';
import type { GateMetricsPort } from '../pipelines/gate-metrics.js';

export interface CiMetrics {
  registry: Registry;
  /** Feed every build state change (Scheduler's onChange). */
  onBuild(build: BuildView): void;
  /** Feed every build event (BuildEvents' watch): jobs are counted as they start. */
  onEvent(buildId: number, e: BuildEvent): void;
  webhook(outcome: 'accepted' | 'ignored' | 'rejected' | 'duplicate'): void;
  /** What the gate runtime reports. */
  gate: GateMetricsPort;
  /** One request of a `network: packages` run (untrusted-ci/egress/front.ts). */
  egress(kind: 'environments' | 'jobs', source: string, outcome: 'hit' | 'miss' | 'refused' | 'error'): void;
}

const DURATION_BUCKETS = [0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800];

export function createCiMetrics(read: {
  queued: () => Promise<{ check: number; gate: number }> | { check: number; gate: number };
  busy: () => number;
  slots: number;
  /** The promotion hints' backlog (absent: no hints configured). */
  hints?: () => Promise<{ pending: number; failing?: { at: number } }> | { pending: number; failing?: { at: number } };
  /** Messages and votes waiting for the review system (absent: no review system). */
  reviewOutbox?: () => Promise<number> | number;
  /** The gate's queues: window size (0: unlimited) and items in each (absent: no gate). */
  gateQueues?: () => { queue: string; window: number; items: number }[];
  /** Executor hosts heard from lately, and the jobs waiting for one or running on one (absent: none configured). */
  executors?: () => { hosts: number; queued: number; running: number; waiting: number };
}): CiMetrics {
  const registry = new Registry();
  // prom-client's names already start with `process_` / `nodejs_`: the prefix is the service's only.
  collectDefaultMetrics({ register: registry, prefix: 'airlock_ci_' });
  new Gauge({
    name: 'airlock_ci_queue_depth',
    help: 'Builds waiting for a slot, per pipeline',
    labelNames: ['pipeline'],
    registers: [registry],
    async collect() {
      const q = await read.queued();
      this.set({ pipeline: 'check' }, q.check);
      this.set({ pipeline: 'gate' }, q.gate);
    },
  });
  new Gauge({
    name: 'airlock_ci_slots_busy',
    help: 'Executor slots running a build',
    registers: [registry],
    collect() {
      this.set(read.busy());
    },
  });
  new Gauge({ name: 'airlock_ci_slots', help: 'Executor slots on this host', registers: [registry] }).set(read.slots);
  const executors = read.executors;
  if (executors) {
    new Gauge({
      name: 'airlock_ci_executor_hosts',
      help: 'Executor hosts heard from in the last three leases',
      registers: [registry],
      collect() {
        this.set(executors().hosts);
      },
    });
    new Gauge({
      name: 'airlock_ci_remote_jobs',
      help: 'Jobs for executor hosts on this replica: queued for a host, running on one, or claimed ahead by a busy one and waiting there for a slot',
      labelNames: ['state'],
      registers: [registry],
      collect() {
        const e = executors();
        this.set({ state: 'queued' }, e.queued);
        this.set({ state: 'running' }, e.running);
        this.set({ state: 'waiting' }, e.waiting);
      },
    });
  }
  const hints = read.hints;
  if (hints) {
    new Gauge({
      name: 'airlock_ci_hint_backlog',
      help: 'Merges not yet delivered to the trusted builder as promotion hints',
      registers: [registry],
      async collect() {
        this.set((await hints()).pending);
      },
    });
    new Gauge({
      name: 'airlock_ci_hint_failing',
      help: '1 when the last attempt to deliver a hint failed (the service log says why), else 0',
      registers: [registry],
      async collect() {
        this.set((await hints()).failing ? 1 : 0);
      },
    });
    new Gauge({
      name: 'airlock_ci_hint_last_failure_timestamp_seconds',
      help: 'When the failing delivery attempt was made (unix seconds); 0 while the last attempt succeeded',
      registers: [registry],
      async collect() {
        const f = (await hints()).failing;
        this.set(f ? Math.floor(f.at / 1000) : 0);
      },
    });
  }
  const outbox = read.reviewOutbox;
  if (outbox) {
    new Gauge({
      name: 'airlock_ci_review_outbox_pending',
      help: 'Votes and messages waiting to be posted to the review system',
      registers: [registry],
      async collect() {
        this.set(await outbox());
      },
    });
  }
  const gateQueues = read.gateQueues;
  if (gateQueues) {
    new Gauge({
      name: 'airlock_ci_gate_window',
      help: 'Items of the gate queue that may run builds at once (its window; 0 is unlimited)',
      labelNames: ['queue'],
      registers: [registry],
      collect() {
        this.reset();
        for (const q of gateQueues()) this.set({ queue: q.queue }, q.window);
      },
    });
    new Gauge({
      name: 'airlock_ci_gate_queue_items',
      help: 'Items in the gate queue',
      labelNames: ['queue'],
      registers: [registry],
      collect() {
        this.reset();
        for (const q of gateQueues()) this.set({ queue: q.queue }, q.items);
      },
    });
  }
  const resets = new Counter({
    name: 'airlock_ci_gate_resets_total',
    help: 'Build sets started over because the changes ahead of them changed, by pipeline and project',
    labelNames: ['pipeline', 'project'],
    registers: [registry],
  });
  const resident = new Histogram({
    name: 'airlock_ci_gate_resident_seconds',
    help: 'Enqueue to dequeue of a gate item (merged, reported or dequeued), by pipeline and project',
    labelNames: ['pipeline', 'project'],
    buckets: [1, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400],
    registers: [registry],
  });
  const jobsStarted = new Counter({ name: 'airlock_ci_jobs_started_total', help: 'Jobs started, by pipeline', labelNames: ['pipeline'], registers: [registry] });
  const jobsFinished = new Counter({
    name: 'airlock_ci_jobs_finished_total',
    help: 'Jobs that reached a final state, by pipeline and result (passed, failed, error, cancelled, skipped)',
    labelNames: ['pipeline', 'result'],
    registers: [registry],
  });
  const jobDurations = new Histogram({
    name: 'airlock_ci_job_duration_seconds',
    help: 'Start to finish of a job that ran, by pipeline and result',
    labelNames: ['pipeline', 'result'],
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
  const results = new Counter({ name: 'airlock_ci_builds_total', help: 'Finished builds by pipeline and result', labelNames: ['pipeline', 'result'], registers: [registry] });
  const durations = new Histogram({
    name: 'airlock_ci_build_duration_seconds',
    help: 'Start to finish of a build that ran, by pipeline and result',
    labelNames: ['pipeline', 'result'],
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
  const waits = new Histogram({
    name: 'airlock_ci_queue_wait_seconds',
    help: 'Enqueue to start of a build',
    labelNames: ['pipeline'],
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800],
    registers: [registry],
  });
  const hooks = new Counter({ name: 'airlock_ci_webhooks_total', help: 'Webhook deliveries by outcome', labelNames: ['outcome'], registers: [registry] });
  const counted = new Set<number>();
  /** The pipeline of each running build (job events do not name it); bounded. */
  const running = new Map<number, string>();
  const egressRequests = new Counter({
    name: 'airlock_ci_egress_requests_total',
    help: 'Requests of network: packages runs, by kind of run, source and outcome (hit: from the cache; miss: fetched; refused: off the allowlist; error: the cache failed)',
    labelNames: ['kind', 'source', 'outcome'],
    registers: [registry],
  });
  return {
    registry,
    egress(kind, source, outcome) {
      egressRequests.inc({ kind, source, outcome });
    },
    onBuild(b) {
      // Remembers which builds were counted (a finished build is announced again when reported); bounded.
      if (counted.size > 50_000) counted.delete(counted.values().next().value!);
      if (running.size > 10_000) running.delete(running.keys().next().value!);
      if (b.state === 'running') running.set(b.id, b.pipeline);
      if (b.state === 'running' && b.startedAt !== undefined && !counted.has(-b.id)) {
        counted.add(-b.id);
        waits.observe({ pipeline: b.pipeline }, (b.startedAt - b.enqueuedAt) / 1000);
      }
      if (b.state !== 'finished' || !b.result || counted.has(b.id)) return;
      counted.add(b.id);
      counted.delete(-b.id);
      running.delete(b.id);
      results.inc({ pipeline: b.pipeline, result: b.result });
      if (b.startedAt !== undefined && b.finishedAt !== undefined) durations.observe({ pipeline: b.pipeline, result: b.result }, (b.finishedAt - b.startedAt) / 1000);
      // A build's jobs are final once it is: each is counted once, with the times the store recorded.
      for (const j of b.jobs) {
        if (j.state === 'waiting' || j.state === 'running') continue;
        jobsFinished.inc({ pipeline: b.pipeline, result: j.state });
        if (j.startedAt !== undefined && j.finishedAt !== undefined) jobDurations.observe({ pipeline: b.pipeline, result: j.state }, Math.max(0, j.finishedAt - j.startedAt) / 1000);
      }
    },
    onEvent(buildId, e) {
      if (e.type !== 'job' || e.state !== 'running') return;
      const pipeline = running.get(buildId);
      if (pipeline !== undefined) jobsStarted.inc({ pipeline });
    },
    gate: {
      reset(o) {
        resets.inc(o);
      },
      resident(o, seconds) {
        resident.observe(o, seconds);
      },
    },
    webhook(outcome) {
      hooks.inc({ outcome });
    },
  };
}
