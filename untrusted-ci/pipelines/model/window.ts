/**
 * The active window of a dependent (gate) change queue, as Zuul's `ChangeQueue` keeps it
 * (model.py `increaseWindowSize` / `decreaseWindowSize`, docs/gate.md "The window"): only the first `window`
 * items of the queue's list prepare and start builds. It grows by `increase` (linear) after a change
 * really merged and shrinks by `decreaseFactor` (exponential) after an item did not succeed, never
 * below `floor` nor above `ceiling`. Window 0 means unlimited and never changes.
 */
import { z } from 'zod';

export const WindowConfig = z.strictObject({
  /** Items active when a queue is created (0 = unlimited). */
  initial: z.number().int().min(0).max(10_000).default(20),
  /** Never shrink below this. */
  floor: z.number().int().min(1).max(10_000).default(3),
  /** Never grow above this; null is no ceiling. */
  ceiling: z.number().int().min(1).max(10_000).nullable().default(null),
  /** Added after each merge. */
  increase: z.number().int().min(0).max(10_000).default(1),
  /** Divided by this after each failure (integer division, Zuul's `int(w / f)`). */
  decreaseFactor: z.number().int().min(1).max(10_000).default(2),
});
export type WindowConfig = z.infer<typeof WindowConfig>;

export const DEFAULT_WINDOW: WindowConfig = WindowConfig.parse({});

/** The window after a merge. */
export function grownWindow(w: number, c: WindowConfig): number {
  if (w === 0) return 0;
  return Math.min(c.ceiling ?? Number.POSITIVE_INFINITY, w + c.increase);
}

/** The window after an item that did not succeed was reported. */
export function shrunkWindow(w: number, c: WindowConfig): number {
  if (w === 0) return 0;
  return Math.max(c.floor, Math.floor(w / c.decreaseFactor));
}

/** Problems with a window configuration that zod's per-field checks cannot see. */
export function windowProblems(c: WindowConfig): string[] {
  const out: string[] = [];
  if (c.ceiling !== null && c.ceiling < c.floor) out.push(`ceiling ${c.ceiling} is below floor ${c.floor}`);
  return out;
}
