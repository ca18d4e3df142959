/**
 * Executor slots: at most `size` jobs run containers, or environments are built, on this host at
 * once. A build holds a slot only while one of its jobs runs (build-executor.ts) or its environment
 * is built (environment-builder.ts, from before its sandbox exists until it is gone), so the next
 * builds' git work (fetch, merge, config, source tar) overlaps the running containers instead of
 * waiting behind them. Waiters are served first come,
 * first served; a waiter whose signal aborts leaves the line with CancelledError.
 */
import { CancelledError } from '#shared/errors.js';

export class Slots {
  private held = 0;
  private readonly waiters: { grant: () => void }[] = [];

  constructor(readonly size: number) {}

  get busy(): number {
    return this.held;
  }

  /** Resolves to the release function (idempotent) once a slot is free. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(new CancelledError('cancelled while waiting for an executor slot'));
    const release = (): (() => void) => {
      let done = false;
      return () => {
        if (done) return;
        done = true;
        this.held--;
        this.waiters.shift()?.grant();
      };
    };
    if (this.held < this.size) {
      this.held++;
      return Promise.resolve(release());
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          this.held++;
          resolve(release());
        },
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new CancelledError('cancelled while waiting for an executor slot'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }
}
