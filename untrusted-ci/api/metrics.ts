/**
 * Prometheus metrics of the CI service, on a registry of its own (never prom-client's global one,
 * so two services in one test process do not collide). Queue depth and slot use are read when
 * scraped; build results and durations are counted as builds finish.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BuildView } from '#shared/schemas/api/builds.js';

export interface CiMetrics {
  registry: Registry;
  /** Feed every build state change (Scheduler's onChange). */
  onBuild(build: BuildView): void;
  webhook(outcome: 'accepted' | 'ignored' | 'rejected' | 'duplicate'): void;
}

export function createCiMetrics(read: {
  queued: () => { check: number; gate: number };
  busy: () => number;
  slots: number;
  /** The promotion hints' backlog (absent: no hints configured). */
  hints?: () => { pending: number; failing?: unknown };
  /** Messages and votes waiting for the review system (absent: no review system). */
  reviewOutbox?: () => number;
}): CiMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'airlock_ci_process_' });
  new Gauge({
    name: 'airlock_ci_queue_depth',
    help: 'Builds waiting for a slot, per pipeline',
    labelNames: ['pipeline'],
    registers: [registry],
    collect() {
      const q = read.queued();
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
  const hints = read.hints;
  if (hints) {
    new Gauge({
      name: 'airlock_ci_hint_backlog',
      help: 'Merges not yet delivered to the trusted builder as promotion hints',
      registers: [registry],
      collect() {
        this.set(hints().pending);
      },
    });
    new Gauge({
      name: 'airlock_ci_hint_failing',
      help: '1 when the last attempt to deliver a hint failed (the service log says why), else 0',
      registers: [registry],
      collect() {
        this.set(hints().failing ? 1 : 0);
      },
    });
  }
  const outbox = read.reviewOutbox;
  if (outbox) {
    new Gauge({
      name: 'airlock_ci_review_outbox_pending',
      help: 'Votes and messages waiting to be posted to the review system',
      registers: [registry],
      collect() {
        this.set(outbox());
      },
    });
  }
  const results = new Counter({ name: 'airlock_ci_builds_total', help: 'Finished builds by pipeline and result', labelNames: ['pipeline', 'result'], registers: [registry] });
  const durations = new Histogram({
    name: 'airlock_ci_build_duration_seconds',
    help: 'Start to finish of a build that ran, by pipeline and result',
    labelNames: ['pipeline', 'result'],
    buckets: [0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800],
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
  return {
    registry,
    onBuild(b) {
      // Remembers which builds were counted (a finished build is announced again when reported); bounded.
      if (counted.size > 50_000) counted.delete(counted.values().next().value!);
      if (b.state === 'running' && b.startedAt !== undefined && !counted.has(-b.id)) {
        counted.add(-b.id);
        waits.observe({ pipeline: b.pipeline }, (b.startedAt - b.enqueuedAt) / 1000);
      }
      if (b.state !== 'finished' || !b.result || counted.has(b.id)) return;
      counted.add(b.id);
      counted.delete(-b.id);
      results.inc({ pipeline: b.pipeline, result: b.result });
      if (b.startedAt !== undefined && b.finishedAt !== undefined) durations.observe({ pipeline: b.pipeline, result: b.result }, (b.finishedAt - b.startedAt) / 1000);
    },
    webhook(outcome) {
      hooks.inc({ outcome });
    },
  };
}
