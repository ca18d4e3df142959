/**
 * StatusFeed: the status page's live snapshots. Whatever may change the page (a build's state, a
 * job's, the gate's queues) calls `notify()`; the feed takes one snapshot a little later
 * (debounced: a burst of changes is one snapshot, and a steady stream of them still gives one at
 * least every `maxWaitMs`) and hands the same JSON to every subscriber, unless nothing but the
 * clock changed.
 *
 * Costs nothing while nobody watches: `notify()` with no subscriber does no work. Subscribers are
 * bounded (`maxSubscribers`; one more is refused with RateLimitedError, a 429), since each holds a
 * connection. `close()` ends them all (the service is stopping).
 */
import { createHash } from 'node:crypto';
import { RateLimitedError } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import type { StatusView } from '../api/schemas/status.js';

export const MAX_STATUS_SUBSCRIBERS = 100;
const DEBOUNCE_MS = 200;
const MAX_WAIT_MS = 1_000;
/** A snapshot is reused this long when nothing changed (`GET /api/status` and new streams under load). */
const SNAPSHOT_REUSE_MS = 1_000;

/** One open stream: `send` gets each snapshot's JSON; `end` closes it from the server side. */
export interface StatusSubscriber {
  send(json: string): void;
  end(): void;
}

export interface StatusFeedOptions {
  snapshot: () => StatusView | Promise<StatusView>;
  logger?: Logger;
  maxSubscribers?: number;
  debounceMs?: number;
  maxWaitMs?: number;
}

export class StatusFeed {
  /** Each subscriber → a hash of the last snapshot it got, without its clock: an unchanged one is not sent again. */
  private readonly subscribers = new Map<StatusSubscriber, string>();
  /** The last snapshot made, reused until something changes or a second has passed. */
  private cached: { at: number; view: StatusView } | undefined;
  /** The snapshot being made: callers meanwhile share it. */
  private making: Promise<StatusView> | undefined;
  /** Bumped by notify(): a snapshot begun before a change is not cached as current after it. */
  private generation = 0;
  private timer: NodeJS.Timeout | undefined;
  /** When the oldest change not yet sent was notified. */
  private pendingSince: number | undefined;
  private closed = false;

  constructor(private readonly o: StatusFeedOptions) {}

  /** A fresh snapshot (`GET /api/status`, and the first event of each stream). */
  async current(): Promise<StatusView> {
    const now = Date.now();
    if (this.cached && now - this.cached.at < SNAPSHOT_REUSE_MS) return this.cached.view;
    if (!this.making) {
      const generation = this.generation;
      this.making = Promise.resolve()
        .then(() => this.o.snapshot())
        .then((view) => {
          if (generation === this.generation) this.cached = { at: now, view };
          return view;
        })
        .finally(() => (this.making = undefined));
    }
    return this.making;
  }

  get size(): number {
    return this.subscribers.size;
  }

  /**
   * Adds a subscriber and answers the snapshot to send it first, and the function that removes it
   * (call it when its connection closes). Throws RateLimitedError when the feed is full.
   */
  async subscribe(s: StatusSubscriber): Promise<{ first: string; unsubscribe: () => void }> {
    const max = this.o.maxSubscribers ?? MAX_STATUS_SUBSCRIBERS;
    if (this.closed) throw new RateLimitedError('the service is stopping');
    if (this.subscribers.size >= max) throw new RateLimitedError(`the live status has its ${max} subscribers; try again later, or read GET /api/status`);
    // The place is taken before the snapshot is read (another subscribe meanwhile counts it).
    this.subscribers.set(s, '');
    const unsubscribe = (): void => {
      this.subscribers.delete(s);
      if (this.subscribers.size === 0) this.cancelTimer();
    };
    try {
      const view = await this.current();
      if (this.subscribers.has(s)) this.subscribers.set(s, withoutClock(view));
      return { first: JSON.stringify(view), unsubscribe };
    } catch (e) {
      unsubscribe();
      throw e;
    }
  }

  /** Something the page shows may have changed. */
  notify(): void {
    this.cached = undefined;
    this.generation++;
    if (this.closed || this.subscribers.size === 0) return;
    const now = Date.now();
    this.pendingSince ??= now;
    const deadline = this.pendingSince + (this.o.maxWaitMs ?? MAX_WAIT_MS);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.flush(), Math.max(0, Math.min(this.o.debounceMs ?? DEBOUNCE_MS, deadline - now)));
    this.timer.unref();
  }

  /** Ends every subscriber and takes no more. */
  close(): void {
    this.closed = true;
    this.cancelTimer();
    for (const s of [...this.subscribers.keys()]) s.end();
    this.subscribers.clear();
  }

  private cancelTimer(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pendingSince = undefined;
  }

  private async flush(): Promise<void> {
    this.cancelTimer();
    if (this.closed || this.subscribers.size === 0) return;
    let view: StatusView;
    try {
      view = await this.current();
    } catch (e) {
      this.o.logger?.error({ err: e }, 'the status snapshot failed');
      return;
    }
    const content = withoutClock(view);
    let json: string | undefined;
    if (this.closed) return;
    for (const [s, last] of this.subscribers) {
      if (last === content) continue;
      json ??= JSON.stringify(view);
      this.subscribers.set(s, content);
      s.send(json);
    }
  }
}

/** A digest of the snapshot without its clock (what is kept per subscriber: not the snapshot itself). */
function withoutClock(view: StatusView): string {
  return createHash('sha256').update(JSON.stringify({ ...view, generatedAt: 0 })).digest('base64');
}
