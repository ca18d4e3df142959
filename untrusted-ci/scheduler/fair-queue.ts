/**
 * Which queued build gets the next free slot. Pure, so it is tested as a table.
 *
 * Rules, in order: gate work before check work (a gate build holds up merges for everybody);
 * then round-robin across projects — the project served longest ago goes first, so one project
 * with 500 queued checks cannot starve another with one; within a project's check work,
 * round-robin across uploaders — the uploader served longest ago goes first, so one contributor's
 * 50 patch sets cannot starve another contributor's one; then first come first served. Gate work
 * within a project stays first come first served (the gate's order is the queue's order).
 */
import type { QueuedBuild } from '../store/build-store.js';

/** When each project and each (project, uploader) was last served: higher is more recent. */
export interface ServedView {
  project(project: string): number;
  author(project: string, author: string): number;
}

export function pickNext(queued: readonly QueuedBuild[], served: ServedView): QueuedBuild | undefined {
  const gate = queued.filter((b) => b.pipeline === 'gate');
  const pool = gate.length > 0 ? gate : queued;
  const project = leastRecent(pool, (b) => b.project, (b) => served.project(b.project));
  if (project === undefined) return undefined;
  const own = pool.filter((b) => b.project === project.project);
  if (gate.length > 0) return oldest(own);
  return leastRecent(own, (b) => b.author, (b) => served.author(b.project, b.author));
}

/** What `pickNextFrom` reads of the queue (BuildStore): group heads, never the whole queue. */
export interface QueueHeads {
  queuedProjects(pipeline: 'check' | 'gate'): Promise<{ project: string; id: number }[]>;
  queuedUploaders(pipeline: 'check' | 'gate', project: string): Promise<{ author: string; id: number }[]>;
  queuedBuild(id: number): Promise<QueuedBuild | undefined>;
}

/**
 * `pickNext`'s choice, read from the store's group heads instead of the whole queue (a deployment's
 * queue holds thousands of builds; the groups waiting are far fewer). The same rules, the same
 * ties: gate before check; the project served longest ago (ties: its oldest build first); for check
 * work, that project's uploader served longest ago (ties: the older build); the group's oldest.
 * Undefined when nothing is queued (or the build chosen stopped being queued meanwhile).
 */
export async function pickNextFrom(q: QueueHeads, served: ServedView): Promise<QueuedBuild | undefined> {
  for (const pipeline of ['gate', 'check'] as const) {
    const projects = await q.queuedProjects(pipeline);
    const project = leastRecentHead(projects, (p) => served.project(p.project));
    if (!project) continue;
    if (pipeline === 'gate') return q.queuedBuild(project.id);
    const uploaders = await q.queuedUploaders(pipeline, project.project);
    const uploader = leastRecentHead(uploaders, (u) => served.author(project.project, u.author));
    return uploader ? q.queuedBuild(uploader.id) : undefined;
  }
  return undefined;
}

function leastRecentHead<T extends { id: number }>(heads: readonly T[], servedAt: (h: T) => number): T | undefined {
  let best: T | undefined;
  let bestServed = Infinity;
  for (const h of heads) {
    const s = servedAt(h);
    if (s < bestServed || (s === bestServed && best !== undefined && h.id < best.id)) {
      best = h;
      bestServed = s;
    }
  }
  return best;
}

/** Of each group's oldest build, the one whose group was served longest ago (ties: the older build). */
function leastRecent(pool: readonly QueuedBuild[], group: (b: QueuedBuild) => string, servedAt: (b: QueuedBuild) => number): QueuedBuild | undefined {
  const first = new Map<string, QueuedBuild>();
  for (const b of pool) {
    const g = group(b);
    const seen = first.get(g);
    if (seen === undefined || b.id < seen.id) first.set(g, b);
  }
  let best: QueuedBuild | undefined;
  let bestServed = Infinity;
  for (const b of first.values()) {
    const s = servedAt(b);
    if (s < bestServed || (s === bestServed && best !== undefined && b.id < best.id)) {
      best = b;
      bestServed = s;
    }
  }
  return best;
}

function oldest(pool: readonly QueuedBuild[]): QueuedBuild {
  return pool.reduce((a, b) => (b.id < a.id ? b : a));
}

/**
 * The scheduler's memory of who was served when. Uploaders are many and come and go, so their
 * table is bounded: past `maxAuthors` entries the half served longest ago is forgotten, and a
 * forgotten or new uploader counts as served at the newest forgotten tick — still ahead of every
 * uploader remembered. A forgotten uploader was served before at least maxAuthors/2 others were,
 * so being taken for a new one costs nobody a turn.
 */
export class Served implements ServedView {
  private tick = 0;
  private floor = -1;
  private readonly projects = new Map<string, number>();
  private readonly authors = new Map<string, number>();

  constructor(private readonly maxAuthors = 10_000) {}

  project(project: string): number {
    return this.projects.get(project) ?? -1;
  }

  author(project: string, author: string): number {
    return this.authors.get(authorKey(project, author)) ?? this.floor;
  }

  /** Record that `b` was just served. */
  mark(b: Pick<QueuedBuild, 'project' | 'author'>): void {
    this.tick++;
    this.projects.set(b.project, this.tick);
    const key = authorKey(b.project, b.author);
    this.authors.delete(key); // re-inserted last: the map's order is the order served
    this.authors.set(key, this.tick);
    if (this.authors.size > this.maxAuthors) {
      let drop = this.authors.size - Math.floor(this.maxAuthors / 2);
      for (const [k, t] of this.authors) {
        if (drop-- <= 0) break;
        this.authors.delete(k);
        this.floor = Math.max(this.floor, t);
      }
    }
  }

  get rememberedAuthors(): number {
    return this.authors.size;
  }
}

function authorKey(project: string, author: string): string {
  return `${project}\n${author}`;
}
