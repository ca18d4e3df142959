/**
 * What the gate tells its metrics, and how the runtime works it out. The pure model does no I/O:
 * the runtime looks at the model's queues before and after each batch of events and at the
 * batch's effects, and hands the facts to a `GateMetricsPort` (the service's Prometheus metrics;
 * absent in tests that do not look).
 *
 * - A reset: a build set ended with fate `reset` (the state under it changed, its builds start
 *   over). Counted per pipeline and project, like Zuul's queue resets.
 * - Resident time: an item left its queue (merged, reported, dequeued); from its enqueue to now.
 * Window size and items per queue are read from the model when metrics are scraped (`gateQueues`).
 */
import type { PipelineManager } from './managers/pipeline-manager.js';
import { splitChangeKey } from './model/changes.js';
import type { Effect } from './model/events.js';

export interface GateMetricsPort {
  /** A build set was reset. */
  reset(o: { pipeline: string; project: string }): void;
  /** An item left its queue after `seconds` in it. */
  resident(o: { pipeline: string; project: string }, seconds: number): void;
}

/** The items in a manager's queues, by item id: where they are and since when. */
export type Residents = ReadonlyMap<number, { project: string; enqueuedAt: number }>;

export function residents(manager: PipelineManager): Residents {
  const out = new Map<number, { project: string; enqueuedAt: number }>();
  for (const q of manager.changeQueues) for (const i of q.items) out.set(i.id, { project: splitChangeKey(i.change)[0], enqueuedAt: i.enqueuedAt });
  return out;
}

/** Report one batch: `before` the residents before it, `manager` the model after it, `now` in ms. */
export function observeBatch(port: GateMetricsPort, pipeline: string, before: Residents, manager: PipelineManager, effects: readonly Effect[], now: number): void {
  for (const e of effects) {
    if (e.type === 'build-set-ended' && e.buildSet.fate === 'reset') port.reset({ pipeline, project: splitChangeKey(e.buildSet.change)[0] });
  }
  const after = residents(manager);
  for (const [id, r] of before) {
    if (!after.has(id)) port.resident({ pipeline, project: r.project }, Math.max(0, now - r.enqueuedAt) / 1000);
  }
}

/** The window and item count of each queue, for a scrape. Window 0 is an unlimited window. */
export function gateQueues(manager: PipelineManager): { queue: string; window: number; items: number }[] {
  return manager.changeQueues.map((q) => ({ queue: q.name, window: q.window, items: q.length }));
}
