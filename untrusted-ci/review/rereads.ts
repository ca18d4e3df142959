/**
 * Rereads: the changes events told of, read again from the review system (its REST API, with the
 * CI's own account), and the record applied. An event only names what to read; a burst of events
 * for one change makes one read (and one more if events came while it was being read). A change the
 * review system no longer shows to airlock (made private, deleted) is applied as hidden. A read
 * that fails is logged and left to the next catch-up, which reads every recently updated change.
 */
import type { Logger } from '#shared/logging.js';
import type { ReviewedChange, ReviewSystem } from './review-system.js';

/** Reads at once at most. */
const CONCURRENCY = 4;

export interface RereadsOptions {
  system: Pick<ReviewSystem, 'change'>;
  apply: (c: ReviewedChange) => Promise<void> | void;
  hidden: (project: string, change: string) => Promise<void> | void;
  logger: Logger;
}

export class Rereads {
  /** key → whether another read is wanted after the one running. */
  private readonly pending = new Map<string, boolean>();
  private readonly queue: [string, string][] = [];
  private running = 0;
  private closed = false;
  private readonly idleWaiters = new Set<() => void>();

  constructor(private readonly o: RereadsOptions) {}

  request(project: string, change: string): void {
    if (this.closed) return;
    const key = `${project}~${change}`;
    if (this.pending.has(key)) {
      this.pending.set(key, true);
      return;
    }
    this.pending.set(key, false);
    this.queue.push([project, change]);
    this.pump();
  }

  /** Resolves when no read is queued or running (tests). */
  idle(): Promise<void> {
    if (this.pending.size === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.add(r));
  }

  close(): Promise<void> {
    this.closed = true;
    this.queue.length = 0;
    return this.idle();
  }

  private pump(): void {
    while (this.running < CONCURRENCY && this.queue.length > 0) {
      const [project, change] = this.queue.shift()!;
      this.running++;
      void this.read(project, change).finally(() => {
        this.running--;
        const key = `${project}~${change}`;
        if (this.pending.get(key) === true && !this.closed) {
          this.pending.set(key, false);
          this.queue.push([project, change]);
        } else this.pending.delete(key);
        this.pump();
        if (this.pending.size === 0) for (const w of [...this.idleWaiters]) (this.idleWaiters.delete(w), w());
      });
    }
  }

  private async read(project: string, change: string): Promise<void> {
    try {
      const c = await this.o.system.change(project, change);
      if (this.closed) return;
      if (c) await this.o.apply(c);
      else await this.o.hidden(project, change);
    } catch (err) {
      this.o.logger.warn({ err, project, change }, 'cannot read a change from the review system; the catch-up will');
    }
  }
}
