/**
 * The catch-up: webhooks are fire-and-forget (the review system gives up after a few tries, and
 * posts nothing while airlock is down), so at start and every `everyMs` the CI reads back every
 * change updated since the last thing it heard (`review_cursor`, on the review system's clock)
 * and applies it as if its events had come (`reconcileChange`): a patch set it missed is checked,
 * a missed merge or abandonment leaves the gate, votes move changes in or out of it.
 *
 * The cursor is the newest `updated` time a catch-up read; each read starts `OVERLAP_MS` before
 * it (applying a change twice changes nothing: changes the webhooks already told are read again
 * and left as they are). A read that fails leaves the cursor, so the next one covers the gap. The
 * very first start has no cursor: it begins now, and does not replay the review system's history.
 */
import type { Logger } from '#shared/logging.js';
import { greatest, type Db } from '../store/sql.js';
import type { ReviewedChange, ReviewSystem } from './review-system.js';

/** Read again this long before the cursor: events and reads on the same clock, but not in one transaction. */
export const OVERLAP_MS = 60_000; // 1 min
const CURSOR = 'review';

export interface CatchUpOptions {
  db: Db;
  system: Pick<ReviewSystem, 'changedSince'>;
  apply: (c: ReviewedChange) => Promise<void> | void;
  logger: Logger;
  everyMs: number;
  now?: () => number;
}

export class CatchUp {
  private timer?: NodeJS.Timeout;
  private running?: Promise<number>;
  private closed = false;
  private readonly now: () => number;

  constructor(private readonly o: CatchUpOptions) {
    this.now = o.now ?? Date.now;
  }

  /** Read back what was missed now (in the background), then every `everyMs`. */
  start(): void {
    void this.run();
    if (this.o.everyMs > 0) this.timer = setInterval(() => void this.run(), this.o.everyMs).unref();
  }

  /** One catch-up (joined if one runs); resolves to the number of changes applied. Never throws. */
  run(): Promise<number> {
    if (this.closed) return Promise.resolve(0);
    this.running ??= this.once().finally(() => (this.running = undefined));
    return this.running;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.running?.catch(() => undefined);
  }

  async cursor(): Promise<number | undefined> {
    return (await this.o.db.get<{ since: number }>('SELECT since FROM review_cursor WHERE system = ?', [CURSOR]))?.since;
  }

  private async once(): Promise<number> {
    let cursor: number | undefined;
    try {
      cursor = await this.cursor();
      // The very first start begins now (kept even if this read fails).
      if (cursor === undefined) await this.save((cursor = this.now()));
    } catch (err) {
      this.o.logger.warn({ err }, 'the catch-up could not read its cursor; it tries again at the next round');
      return 0;
    }
    const since = cursor - OVERLAP_MS;
    let changes: ReviewedChange[];
    try {
      changes = await this.o.system.changedSince(since);
    } catch (err) {
      this.o.logger.warn({ err }, 'the catch-up could not read the review system; it tries again at the next round');
      return 0;
    }
    let applied = 0;
    let newest = since + OVERLAP_MS;
    // Oldest first, as the events would have come.
    for (const c of [...changes].sort((a, b) => a.updated - b.updated)) {
      if (this.closed) break;
      try {
        await this.o.apply(c);
        applied++;
      } catch (err) {
        this.o.logger.error({ err, project: c.project, change: c.change }, 'the catch-up could not apply a change');
      }
      newest = Math.max(newest, c.updated);
    }
    try {
      if (newest > ((await this.cursor()) ?? 0)) await this.save(newest);
    } catch (err) {
      this.o.logger.warn({ err }, 'the catch-up could not move its cursor; the next round reads the same changes again');
    }
    if (applied > 0) this.o.logger.info({ changes: applied, since }, 'caught up with the review system');
    return applied;
  }

  private async save(ms: number): Promise<void> {
    await this.o.db.run(
      `INSERT INTO review_cursor (system, since, updated_at) VALUES (?,?,?) ON CONFLICT(system) DO UPDATE SET since = ${greatest(this.o.db, 'review_cursor.since', 'excluded.since')}, updated_at = excluded.updated_at`,
      [CURSOR, Math.floor(ms), this.now()],
    );
  }
}
