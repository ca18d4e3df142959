/**
 * The loop under every durable outbox the CI delivers from (promotion hints, review votes): take
 * the next item, try it, and then go on, wait for news, or back off.
 *
 * `step()` answers `progress` (something was done: look again at once), `idle` (nothing to do:
 * wait for `kick()` or the poll interval) or `{ retryAfterMs? }` (the other side failed: wait with
 * exponential backoff and equal jitter, `initialMs` doubling up to `maxMs`, each wait drawn from
 * [d/2, d], lengthened by a Retry-After). A step that throws is logged and backed off the same way.
 * `close()` aborts a wait and the signal handed to each step, and resolves when the loop stopped.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from '#shared/logging.js';
import { backoffDelay } from '#shared/retry.js';

export type Step = 'progress' | 'idle' | { retryAfterMs?: number };

export interface DeliveryLoopOptions {
  logger: Logger;
  /** What the loop delivers, for its log lines. */
  what: string;
  backoff?: { initialMs?: number; maxMs?: number };
  pollIntervalMs?: number;
  /** Waits between retries; must settle promptly when `signal` aborts. Default: a real timer. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** In [0, 1): the jitter. */
  random?: () => number;
}

const DEFAULTS = { initialMs: 1_000, maxMs: 5 * 60_000, pollIntervalMs: 30_000 }; // 1 s, 5 min, 30 s

export class DeliveryLoop {
  private readonly stop = new AbortController();
  private loop?: Promise<void>;
  private kicked = false;
  private wake?: () => void;

  constructor(
    private readonly o: DeliveryLoopOptions,
    private readonly step: (signal: AbortSignal) => Promise<Step>,
  ) {}

  /** Aborted by close(): hand it to every request a step makes. */
  get signal(): AbortSignal {
    return this.stop.signal;
  }

  start(): void {
    if (this.stop.signal.aborted) throw new Error(`the ${this.o.what} loop is closed`);
    this.loop ??= this.run();
  }

  /** Something new is waiting: look now instead of at the next poll. A kick does not cut a backoff short. */
  kick(): void {
    this.kicked = true;
    this.wake?.();
  }

  async close(): Promise<void> {
    this.stop.abort();
    this.wake?.();
    await this.loop;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stop.signal.aborted) {
      let step: Step;
      this.kicked = false;
      try {
        step = await this.step(this.stop.signal);
      } catch (err) {
        if (this.stop.signal.aborted) break;
        this.o.logger.error({ err }, `the ${this.o.what} loop failed; retrying`);
        step = {};
      }
      if (step === 'idle') await this.idle();
      if (typeof step !== 'object') {
        failures = 0;
        continue;
      }
      failures++;
      await this.sleep(this.backoff(failures, step.retryAfterMs));
    }
  }

  /** Equal jitter: d = min(max, initial·2^(n-1)), wait in [d/2, d]; Retry-After may lengthen it. */
  private backoff(failures: number, retryAfterMs?: number): number {
    const backoff = { baseDelayMs: this.o.backoff?.initialMs ?? DEFAULTS.initialMs, maxDelayMs: this.o.backoff?.maxMs ?? DEFAULTS.maxMs, jitter: 'equal' as const };
    return backoffDelay(failures, this.o.random ? { ...backoff, random: this.o.random } : backoff, retryAfterMs);
  }

  private async sleep(ms: number): Promise<void> {
    const sleep = this.o.sleep ?? ((t: number, signal: AbortSignal) => delay(t, undefined, { signal }));
    await sleep(ms, this.stop.signal).catch(() => undefined);
  }

  /** Wait for a kick, close() or the poll interval, whichever comes first. */
  private idle(): Promise<void> {
    if (this.kicked || this.stop.signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => done(), this.o.pollIntervalMs ?? DEFAULTS.pollIntervalMs);
      const done = (): void => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
      this.wake = done;
    });
  }
}
