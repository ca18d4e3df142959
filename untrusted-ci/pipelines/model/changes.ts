/**
 * What the pipeline model knows about a change: the facts its source (Gerrit, the API, a
 * simulation) last told it. The model never asks a source anything; adapters feed these facts in as
 * `change` events and the managers re-read them on every pass (approval lost, new patchset,
 * abandoned, dependency merged).
 *
 * `needs` are the changes this patchset depends on, each at the patchset it was written against:
 * its git parent when that is another open change, and its `Depends-On:` footers. A need on an
 * outdated patchset cannot be satisfied until the change is rebased (a new patchset with new needs).
 */
import { z } from 'zod';

/** A change id as the model uses it: Gerrit's change number, or a simulation's name. */
export const ChangeKey = z.string().min(1).max(200);
export type ChangeKey = z.infer<typeof ChangeKey>;

/** The model's key for a change of a code-review system: unique across projects (Gerrit's `project~number`). */
export function changeKey(project: string, change: string): string {
  return `${project}~${change}`;
}

/** The inverse of `changeKey`: [project, change]. */
export function splitChangeKey(key: string): [string, string] {
  const i = key.lastIndexOf('~');
  return i < 0 ? ['', key] : [key.slice(0, i), key.slice(i + 1)];
}

export const NeededChange = z.strictObject({ change: ChangeKey, patchset: z.number().int().min(1) });
export type NeededChange = z.infer<typeof NeededChange>;

export const ChangeStatus = z.enum(['open', 'merged', 'abandoned']);
export type ChangeStatus = z.infer<typeof ChangeStatus>;

export const ChangeRecord = z.strictObject({
  id: ChangeKey,
  project: z.string().min(1).max(200),
  branch: z.string().min(1).max(255),
  patchset: z.number().int().min(1),
  needs: z.array(NeededChange).max(1000),
  /** Ready for the gate: approved (Code-Review +2) and not work in progress. */
  approved: z.boolean(),
  status: ChangeStatus,
  /** Opaque to the model: what the merger fetches (a ref or commit), carried into prepare requests. */
  ref: z.string().max(1000).nullable(),
});
export type ChangeRecord = z.infer<typeof ChangeRecord>;

/** The changes the model tracks, by id, in the order it first heard of them (deterministic scans). */
export class ChangeRegistry {
  private readonly byId = new Map<ChangeKey, ChangeRecord>();

  get(id: ChangeKey): ChangeRecord | undefined {
    return this.byId.get(id);
  }

  /** Insert or replace. Returns the previous record. */
  put(c: ChangeRecord): ChangeRecord | undefined {
    const old = this.byId.get(c.id);
    this.byId.set(c.id, c);
    return old;
  }

  all(): IterableIterator<ChangeRecord> {
    return this.byId.values();
  }

  /**
   * Bound memory in a long-running service: forget the oldest closed changes nothing in `keep`
   * names, beyond the newest `closedKept` (which stay, so a late event cannot reopen a merged change).
   */
  prune(keep: ReadonlySet<ChangeKey>, closedKept = 10_000): void {
    const closed = [...this.byId.values()].filter((c) => c.status !== 'open' && !keep.has(c.id));
    for (const c of closed.slice(0, Math.max(0, closed.length - closedKept))) this.byId.delete(c.id);
  }

  toJSON(): ChangeRecord[] {
    return [...this.byId.values()].map((c) => ({ ...c, needs: c.needs.map((n) => ({ ...n })) }));
  }

  static fromJSON(json: unknown): ChangeRegistry {
    const r = new ChangeRegistry();
    for (const c of z.array(ChangeRecord).parse(json)) r.put(c);
    return r;
  }
}
