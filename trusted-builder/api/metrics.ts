/**
 * Prometheus metrics of the trusted builder, on a registry of its own, named as Prometheus names
 * things (`airlock_builder_` prefix, base units, `_total` on counters): promotions by outcome and
 * how long they ran, the queue, and when one last published.
 *
 * No process metrics (CPU, heap, event-loop lag, handles): the embargo lane runs in this process,
 * and its work would show in them to anyone with the page's login, who need not be on the security
 * team (a CPU spike after project X publishes says X has an embargoed fix). Only what the store
 * records of public promotions is here, and the process start time. Fed by the
 * promotion store (`PromotionStore.watch`), so they count what the store records. Served at
 * `GET /metrics` behind the builder page's login (trusted-builder/dashboard/routes.ts).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { PromotionState } from '../promote/promotion-store.js';

export interface BuilderMetrics {
  registry: Registry;
  /** Feed every promotion state the store records. */
  onPromotion(key: string, state: PromotionState): void;
}

const OUTCOMES: readonly PromotionState[] = ['published', 'refused', 'failed'];

export function createBuilderMetrics(read: { queued: () => number; running: () => number; now?: () => number }): BuilderMetrics {
  const now = read.now ?? Date.now;
  const registry = new Registry();
  const startedAt = Math.floor(now() / 1000);
  new Gauge({
    name: 'airlock_builder_start_time_seconds',
    help: 'When this builder process started, in seconds since the epoch',
    registers: [registry],
    collect() {
      this.set(startedAt);
    },
  });
  new Gauge({
    name: 'airlock_builder_promotions_queued',
    help: 'Promotions accepted and waiting to run',
    registers: [registry],
    collect() {
      this.set(read.queued());
    },
  });
  new Gauge({
    name: 'airlock_builder_promotions_running',
    help: 'Promotions running',
    registers: [registry],
    collect() {
      this.set(read.running());
    },
  });
  const outcomes = new Counter({
    name: 'airlock_builder_promotions_total',
    help: 'Promotions that ended, by outcome: published (signed and pushed), refused (verification or policy said no), failed (an error)',
    labelNames: ['outcome'],
    registers: [registry],
  });
  for (const outcome of OUTCOMES) outcomes.inc({ outcome }, 0);
  const durations = new Histogram({
    name: 'airlock_builder_promotion_duration_seconds',
    help: 'Start to end of a promotion, by outcome',
    labelNames: ['outcome'],
    buckets: [1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200],
    registers: [registry],
  });
  const lastPublished = new Gauge({
    name: 'airlock_builder_last_publish_timestamp_seconds',
    help: 'When a promotion last published (Unix time; 0 until one did since the builder started)',
    registers: [registry],
  });
  /** key → when it started running (bounded: a promotion that never ends is forgotten eventually). */
  const started = new Map<string, number>();
  return {
    registry,
    onPromotion(key, state) {
      if (state === 'running') {
        if (started.size >= 10_000) started.delete(started.keys().next().value!);
        started.set(key, now());
        return;
      }
      if (!OUTCOMES.includes(state)) return;
      outcomes.inc({ outcome: state });
      const t0 = started.get(key);
      started.delete(key);
      const t = now();
      if (t0 !== undefined) durations.observe({ outcome: state }, Math.max(0, t - t0) / 1000);
      if (state === 'published') lastPublished.set(t / 1000);
    },
  };
}
