/**
 * Leadership among CI replicas (docs/scaling.md "Replicas"): every replica serves the API and the
 * status page; one at a time — the holder of the `leader` lease (store/lease.ts) — runs the gate,
 * the scheduler, the hint sender, the review outbox and the catch-up. The others forward what only
 * the leader can do (api/forward.ts).
 *
 * The leader renews the lease every third of its time. It stops leading when a renewal is refused
 * or when none has succeeded for two thirds of the lease's time (the database unreachable): well
 * before another replica may take the lease (once it expired), so two leaders never act at once
 * while the clocks' rates agree. Stopping leading is `onLost`: the service stops its leader parts
 * (running builds are aborted and stay `running` for the next leader to run again) and, under
 * `airlock ci serve`, exits so that the supervisor starts it again as a follower.
 */
import type { Logger } from '#shared/logging.js';
import type { Lease } from './store/lease.js';

export interface LeadershipOptions {
  lease: Lease;
  ttlMs: number;
  logger: Logger;
  /** The address other replicas forward to while this one leads. */
  address: () => string | undefined;
  /** Start leading (the leader parts). A throw gives the lease up again. */
  onAcquired: () => Promise<void>;
  /** Stop leading, for good (the leader parts are not restarted in this process). */
  onLost: (why: string) => Promise<void>;
  now?: () => number;
}

export class Leadership {
  private timer: NodeJS.Timeout | undefined;
  private leading = false;
  private lost = false;
  private closed = false;
  private lastRenewed = 0;
  private ticking: Promise<void> | undefined;
  private starting: Promise<void> | undefined;
  private ready = false;
  private readonly now: () => number;

  constructor(private readonly o: LeadershipOptions) {
    // Monotonic: a wall clock set back (NTP) must not stretch the time a leader leads unrenewed.
    this.now = o.now ?? (() => performance.now());
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /**
   * Leading, and the last renewal that succeeded was sent less than two thirds of the lease ago (as
   * the watchdog counts), so that no other replica can have taken the lease. `isLeader` alone says
   * what the watchdog last found: a process that was paused past its lease (SIGSTOP, a stalled VM)
   * and wakes handles the requests that waited before its timers run, and must not vouch for what
   * only the leader may (an executor host's claim or lease) in between.
   */
  get holds(): boolean {
    return this.leading && !this.lost && this.now() - this.lastRenewed < (this.o.ttlMs * 2) / 3;
  }

  /**
   * Leading, and its leader parts have started: what may answer requests only the leader can
   * (until then a takeover's gate has not loaded its snapshot; such requests get 503 meanwhile).
   */
  get isReady(): boolean {
    return this.leading && this.ready;
  }

  /**
   * Try once now (a single replica leads before this returns, its leader parts starting), then
   * every third of the lease. Each round first checks the last renewal's age on its own, so that a
   * renewal that never answers (a database cut off without a reset) still ends the leading in time.
   */
  async start(): Promise<void> {
    await this.tick();
    this.timer = setInterval(() => {
      this.watchdog();
      void this.tick();
    }, Math.max(50, Math.floor(this.o.ttlMs / 3)));
    this.timer.unref();
  }

  /** The lease again with this replica's address (after `listen` learned its port). */
  async readvertise(): Promise<void> {
    if (this.leading) await this.o.lease.acquire(this.o.address());
  }

  /** Stop leading for good, now (a leader part cannot go on: the gate could not save its state). */
  async abdicate(why: string): Promise<void> {
    if (this.leading) await this.lose(why);
  }

  /** Stop trying; give the lease up if held, so another replica takes over at once. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    // A round in flight is waited for, but not for longer than a leader may go unrenewed: one that
    // hangs on the database (no more watchdog once the timer is cleared) must not hold the close.
    const bound = (this.o.ttlMs * 2) / 3;
    if (!this.lost && this.ticking) await within(this.ticking, bound);
    if (this.leading) await within(this.o.lease.release(), bound).catch((err: unknown) => this.o.logger.warn({ err }, 'the leader lease could not be released; another replica takes it when it expires'));
    this.leading = false;
  }

  private tick(): Promise<void> {
    this.ticking ??= this.step().finally(() => (this.ticking = undefined));
    return this.ticking;
  }

  /** Leading, but the last renewal that succeeded was sent too long ago: stop, whatever is in flight. */
  private watchdog(): void {
    if (!this.leading || this.lost) return;
    const silent = this.now() - this.lastRenewed;
    // At two thirds (the second round after a renewal), not after: the round after that is when
    // the lease runs out.
    if (silent >= (this.o.ttlMs * 2) / 3) void this.lose(`the leader lease could not be renewed for ${silent} ms (the database does not answer)`);
  }

  private async step(): Promise<void> {
    if (this.closed || this.lost) return;
    if (this.leading) {
      // The lease runs from when the database ran the renewal, at or after it was sent: counting
      // from the answer would overrate a slow one.
      const sent = this.now();
      let renewed = false;
      try {
        renewed = await this.o.lease.renew();
        if (this.lost) return;
        if (!renewed) return await this.lose('another replica holds the leader lease (this one let it expire)');
        this.lastRenewed = sent;
      } catch (err) {
        const silent = this.now() - this.lastRenewed;
        this.o.logger.warn({ err, sinceRenewedMs: silent }, 'the leader lease could not be renewed');
        if (silent > (this.o.ttlMs * 2) / 3) await this.lose(`the leader lease could not be renewed for ${silent} ms (the database is unreachable)`);
      }
      return;
    }
    const sent = this.now();
    let won = false;
    try {
      won = await this.o.lease.acquire(this.o.address());
    } catch (err) {
      this.o.logger.warn({ err }, 'the leader lease could not be asked for; this replica stays a follower for now');
      return;
    }
    if (!won || this.closed) return;
    this.leading = true;
    this.lastRenewed = sent;
    this.o.logger.info({ epoch: this.o.lease.epoch, holder: this.o.lease.holder }, 'this replica leads: it runs the gate and the scheduler');
    // Not awaited by this round: starting (the reaper, the gate's recovery) may take longer than
    // the lease, and the renewals go on meanwhile.
    this.starting = this.o.onAcquired().then(() => {
      this.ready = true;
    }).catch(async (err: unknown) => {
      this.o.logger.error({ err }, 'this replica could not start leading');
      await this.lose('its leader parts did not start');
    });
  }

  /** Settles once the leader parts have started (or failed to); for tests and a clean close. */
  started(): Promise<void> {
    return this.starting ?? Promise.resolve();
  }

  private async lose(why: string): Promise<void> {
    if (this.lost) return;
    this.lost = true;
    this.leading = false;
    if (this.timer) clearInterval(this.timer);
    this.o.logger.error({ why }, 'this replica no longer leads');
    // The leader parts stop first: given up before, the lease could pass to a successor while they
    // still run. Giving it up is then only quicker than its expiry: not waited for long (the
    // database that cost the lease may not answer).
    await this.o.onLost(why);
    await within(this.o.lease.release(), (this.o.ttlMs * 2) / 3).catch(() => undefined);
  }
}

/** `p`, or nothing once `ms` have passed (what it does then is left to it). */
async function within(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([p, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
