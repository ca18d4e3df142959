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
  private readonly now: () => number;

  constructor(private readonly o: LeadershipOptions) {
    this.now = o.now ?? Date.now;
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** Try once now (a single replica leads before this returns), then every third of the lease. */
  async start(): Promise<void> {
    await this.tick();
    this.timer = setInterval(() => void this.tick(), Math.max(50, Math.floor(this.o.ttlMs / 3)));
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
    await this.ticking;
    if (this.leading) await this.o.lease.release().catch((err: unknown) => this.o.logger.warn({ err }, 'the leader lease could not be released; another replica takes it when it expires'));
    this.leading = false;
  }

  private tick(): Promise<void> {
    this.ticking ??= this.step().finally(() => (this.ticking = undefined));
    return this.ticking;
  }

  private async step(): Promise<void> {
    if (this.closed || this.lost) return;
    if (this.leading) {
      let renewed = false;
      try {
        renewed = await this.o.lease.renew();
        if (!renewed) return await this.lose('another replica holds the leader lease (this one let it expire)');
        this.lastRenewed = this.now();
      } catch (err) {
        const silent = this.now() - this.lastRenewed;
        this.o.logger.warn({ err, sinceRenewedMs: silent }, 'the leader lease could not be renewed');
        if (silent > (this.o.ttlMs * 2) / 3) await this.lose(`the leader lease could not be renewed for ${silent} ms (the database is unreachable)`);
      }
      return;
    }
    let won = false;
    try {
      won = await this.o.lease.acquire(this.o.address());
    } catch (err) {
      this.o.logger.warn({ err }, 'the leader lease could not be asked for; this replica stays a follower for now');
      return;
    }
    if (!won || this.closed) return;
    this.leading = true;
    this.lastRenewed = this.now();
    this.o.logger.info({ epoch: this.o.lease.epoch, holder: this.o.lease.holder }, 'this replica leads: it runs the gate and the scheduler');
    try {
      await this.o.onAcquired();
    } catch (err) {
      this.o.logger.error({ err }, 'this replica could not start leading');
      await this.lose('its leader parts did not start');
    }
  }

  private async lose(why: string): Promise<void> {
    if (this.lost) return;
    this.lost = true;
    this.leading = false;
    if (this.timer) clearInterval(this.timer);
    this.o.logger.error({ why }, 'this replica no longer leads');
    await this.o.lease.release().catch(() => undefined);
    await this.o.onLost(why);
  }
}
