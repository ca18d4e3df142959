/**
 * The queue's project heads, kept between the scheduler's picks instead of read for each one.
 *
 * Reading which projects have queued builds is a skip scan, one index seek per project waiting:
 * with hundreds of projects it was most of a dispatch. Between two picks, few projects change.
 * So the list is kept, with each project's oldest queued build, and read again only where it may
 * have changed:
 * - a pick's project: the build chosen is about to start;
 * - a project the store says got a build queued (`BuildStore.onQueueChange`);
 * - the whole pipeline, or everything, when the store says so (a cancel, a build queued again,
 *   recovery; these are rare);
 * - everything, every `maxAgeMs`: another process may have written (a replica that has not yet
 *   learnt that it lost the lead), and the store tells only of its own writes.
 *
 * A stale head never starts anything on its own: the build chosen is read again, and `start`
 * claims only a queued build. When a pick made from kept heads finds nothing, everything is read
 * again and the pick made once more, so "nothing queued" is only ever said from a fresh read.
 * What a stale head can cost is a turn: fairness is exact again within `maxAgeMs`.
 *
 * A project's uploaders' heads (for check work, each uploader's oldest build) are kept the same way,
 * once the project has been chosen: read again for the uploader just served and the uploaders the
 * store names. Uploaders are anybody with an account: one project with thousands of them would
 * otherwise cost thousands of index seeks at each of its picks.
 */
import type { Pipeline } from '#shared/schemas/api/builds.js';
import type { BuildStore, QueueChange, QueuedBuild } from '../store/build-store.js';
import { pickNextFrom, type QueueHeads, type ServedView } from './fair-queue.js';

/** What the cache reads of the store. */
export type HeadsSource = QueueHeads & Pick<BuildStore, 'queuedHead' | 'queuedAuthorHead' | 'onQueueChange'>;

/** Group → its oldest queued build, and the groups to read again before the next use. */
interface Heads {
  heads: Map<string, number>;
  dirty: Set<string>;
}

interface Kept extends Heads {
  readAt: number;
  /** Per project, its uploaders' heads, once read. */
  uploaders: Map<string, Heads>;
}

export class QueueHeadsCache implements QueueHeads {
  readonly #kept = new Map<Pipeline, Kept>();
  readonly #unsubscribe: () => void;
  /** Whether the current pick used a kept list (then "nothing" is checked by a fresh read). */
  #usedKept = false;
  /** Reads made: of a pipeline's projects, of a project's uploaders, of one group's head (tests, the benchmark). */
  readonly reads = { full: 0, uploaders: 0, head: 0 };

  constructor(
    private readonly store: HeadsSource,
    private readonly o: { maxAgeMs?: number; now?: () => number } = {},
  ) {
    this.#unsubscribe = store.onQueueChange((c) => this.invalidate(c));
  }

  /** Forget what may have changed: a project of a pipeline, a whole pipeline, or (neither) all. */
  invalidate(c: QueueChange = {}): void {
    if (c.pipeline === undefined) return this.#kept.clear();
    if (c.project === undefined) return void this.#kept.delete(c.pipeline);
    const k = this.#kept.get(c.pipeline);
    if (!k) return;
    k.dirty.add(c.project);
    if (c.author === undefined) k.uploaders.delete(c.project);
    else k.uploaders.get(c.project)?.dirty.add(c.author);
  }

  close(): void {
    this.#unsubscribe();
    this.#kept.clear();
  }

  /**
   * The fair queue's next build (fair-queue.ts `pickNextFrom`) from the kept heads; undefined only
   * when a fresh read finds nothing queued. The chosen build's project is read again next time.
   */
  async pick(served: ServedView): Promise<QueuedBuild | undefined> {
    this.#usedKept = false;
    let next = await pickNextFrom(this, served);
    if (!next && this.#usedKept) {
      this.invalidate();
      this.#usedKept = false;
      next = await pickNextFrom(this, served);
    }
    if (next) this.invalidate({ pipeline: next.pipeline, project: next.project, author: next.author });
    return next;
  }

  async queuedProjects(pipeline: Pipeline): Promise<{ project: string; id: number }[]> {
    const now = (this.o.now ?? Date.now)();
    let k = this.#kept.get(pipeline);
    if (k && now - k.readAt >= (this.o.maxAgeMs ?? 2000)) k = undefined;
    if (!k) {
      // Marked before the read: a change told while it runs marks the new entry dirty.
      const fresh: Kept = { heads: new Map(), readAt: now, dirty: new Set(), uploaders: new Map() };
      this.#kept.set(pipeline, fresh);
      this.reads.full++;
      for (const h of await this.store.queuedProjects(pipeline)) fresh.heads.set(h.project, h.id);
      k = fresh;
    } else {
      this.#usedKept = true;
      await this.#refresh(k, (project) => this.store.queuedHead(pipeline, project));
    }
    return [...k.heads].map(([project, id]) => ({ project, id }));
  }

  async queuedUploaders(pipeline: Pipeline, project: string): Promise<{ author: string; id: number }[]> {
    const k = this.#kept.get(pipeline);
    if (!k) return this.store.queuedUploaders(pipeline, project);
    let u = k.uploaders.get(project);
    if (!u) {
      const fresh: Heads = { heads: new Map(), dirty: new Set() };
      k.uploaders.set(project, fresh);
      this.reads.uploaders++;
      for (const h of await this.store.queuedUploaders(pipeline, project)) fresh.heads.set(h.author, h.id);
      u = fresh;
    } else {
      this.#usedKept = true;
      await this.#refresh(u, (author) => this.store.queuedAuthorHead(pipeline, project, author));
    }
    return [...u.heads].map(([author, id]) => ({ author, id }));
  }

  /** Reads again each dirty group's head (one index seek each); a group with none left goes. */
  async #refresh(h: Heads, head: (group: string) => Promise<number | undefined>): Promise<void> {
    while (h.dirty.size > 0) {
      const [group] = h.dirty;
      h.dirty.delete(group!);
      this.reads.head++;
      const id = await head(group!);
      if (id === undefined) h.heads.delete(group!);
      else h.heads.set(group!, id);
    }
  }

  queuedBuild(id: number): Promise<QueuedBuild | undefined> {
    return this.store.queuedBuild(id);
  }
}
