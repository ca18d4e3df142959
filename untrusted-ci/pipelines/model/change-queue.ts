/**
 * A change queue (Zuul's `ChangeQueue`, docs/gate.md "Vocabulary"): an ordered list of items plus a tree
 * over them. The list (enqueue order) drives processing order and the window; the tree (`ahead`
 * pointers) decides what each item is tested on top of. Re-parenting (`moveItem`) changes only the
 * tree, never the list.
 *
 * A dependent (gate) queue serves every project configured to share it and keeps its own window; an
 * independent (check) queue is made for one change and dropped once empty (`dynamic`).
 */
import { z } from 'zod';
import { QueueItem, QueueItemJson } from './queue-item.js';

export const ChangeQueueJson = z.strictObject({
  name: z.string().min(1).max(300),
  projects: z.array(z.string()),
  dynamic: z.boolean(),
  window: z.number().int().min(0),
  items: z.array(QueueItemJson),
});
export type ChangeQueueJson = z.infer<typeof ChangeQueueJson>;

export class ChangeQueue {
  private readonly list: QueueItem[] = [];

  constructor(
    readonly name: string,
    readonly projects: readonly string[],
    readonly dynamic: boolean,
    public window: number,
  ) {}

  /** Items in list order (a copy: callers may dequeue while they walk it). */
  get items(): QueueItem[] {
    return [...this.list];
  }
  get length(): number {
    return this.list.length;
  }
  item(id: number | null): QueueItem | undefined {
    return id === null ? undefined : this.list.find((i) => i.id === id);
  }
  contains(item: QueueItem): boolean {
    return this.list.includes(item);
  }
  tail(): QueueItem | undefined {
    return this.list[this.list.length - 1];
  }
  /** Items whose `ahead` is `item`, in list order. */
  itemsBehind(item: QueueItem): QueueItem[] {
    return this.list.filter((i) => i.ahead === item.id);
  }
  /** Items between `item` and the root of its tree, nearest first (Zuul `items_ahead`). */
  itemsAhead(item: QueueItem): QueueItem[] {
    const out: QueueItem[] = [];
    for (let a = this.item(item.ahead); a; a = this.item(a.ahead)) out.push(a);
    return out;
  }
  /** Items before `item` in list order. */
  listAhead(item: QueueItem): QueueItem[] {
    return this.list.slice(0, this.list.indexOf(item));
  }

  /** Append at the end of the list, behind the current tail (Zuul `enqueueItem`). */
  enqueue(item: QueueItem): void {
    item.ahead = this.tail()?.id ?? null;
    this.list.push(item);
  }

  /** Remove from the list; its children move up to its parent (Zuul `dequeueItem`). */
  dequeue(item: QueueItem): void {
    const i = this.list.indexOf(item);
    if (i >= 0) this.list.splice(i, 1);
    for (const b of this.list) if (b.ahead === item.id) b.ahead = item.ahead;
    item.ahead = null;
  }

  /** Re-parent `item` behind `ahead` (null: make it a root); its children stay with its old parent (Zuul `moveItem`). */
  moveItem(item: QueueItem, ahead: QueueItem | null): boolean {
    const target = ahead?.id ?? null;
    if (item.ahead === target) return false;
    if (item.ahead !== null) for (const b of this.list) if (b.ahead === item.id) b.ahead = item.ahead;
    item.ahead = target;
    return true;
  }

  /** Inside the window (Zuul `isActionable`): list position below `window`, or no window. */
  isActionable(item: QueueItem): boolean {
    if (this.window === 0) return true;
    const i = this.list.indexOf(item);
    return i >= 0 && i < this.window;
  }

  toJSON(): ChangeQueueJson {
    return { name: this.name, projects: [...this.projects], dynamic: this.dynamic, window: this.window, items: this.list.map((i) => i.toJSON()) };
  }

  static fromJSON(json: unknown): ChangeQueue {
    const j = ChangeQueueJson.parse(json);
    const q = new ChangeQueue(j.name, j.projects, j.dynamic, j.window);
    for (const i of j.items) q.list.push(QueueItem.fromJSON(i));
    return q;
  }
}
