/**
 * The gate's wire formats: the change queues as the status page shows them
 * (Zuul's view: each item, what it is tested on, its jobs, the window) and the gate's outbox.
 */
import { z } from 'zod';

export const GateItemView = z.object({
  project: z.string(),
  change: z.string(),
  patchset: z.number().int(),
  /** The change this item is tested on top of (null: the branch tip). */
  ahead: z.string().nullable(),
  active: z.boolean(),
  live: z.boolean(),
  /** The speculative state, `change,patchset` labels from the root to this item; empty until prepared. */
  state: z.array(z.string()),
  /** Why the item is failing, if it is. */
  failing: z.array(z.string()),
  jobs: z.array(z.object({ name: z.string(), voting: z.boolean(), result: z.string().nullable() })),
  /** The build running this item's build set, when there is one. */
  build: z.number().int().optional(),
  enqueuedAt: z.number(),
});
export type GateItemView = z.infer<typeof GateItemView>;

export const GateQueueView = z.object({ name: z.string(), window: z.number().int(), items: z.array(GateItemView) });
export type GateQueueView = z.infer<typeof GateQueueView>;

export const GateView = z.object({ queues: z.array(GateQueueView) });
export type GateView = z.infer<typeof GateView>;
