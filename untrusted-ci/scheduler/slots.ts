/**
 * Executor slots: at most `size` jobs run containers, or environments are built, on this host at
 * once, and the jobs running together never hold more memory or CPUs (their limits) than the
 * host's capacity. A build holds a slot only while one of its jobs runs (build-executor.ts: one per
 * running job, and a build's independent jobs run at once) or its environment is built
 * (environment-builder.ts, from before its sandbox exists until it is gone), so the next builds'
 * git work (fetch, merge, config, source tar) overlaps the running containers instead of waiting
 * behind them.
 *
 * Waiters are served first come, first served, except that one that does not fit may be passed a
 * bounded number of times by later ones that do (the rule is capacity.ts's `admit`). A need larger
 * than the whole capacity is refused at once with a PolicyViolationError naming the figures (the
 * executor fails that job with it). A waiter whose signal aborts leaves the line with
 * CancelledError.
 */
import { CancelledError, PolicyViolationError } from '#shared/errors.js';
import { admit, hold, NOTHING_HELD, tooLarge, type Held, type HostCapacity, type Need } from './capacity.js';

const NO_NEED: Need = { memory: 0, cpus: 0 };

interface Waiter {
  need: Need;
  overtaken: number;
  grant: () => void;
}

export class Slots {
  private held: Held = NOTHING_HELD;
  private readonly waiters: Waiter[] = [];
  private readonly cap: HostCapacity;

  /** `capacity` absent, or a figure of it absent: not counted (only the slots are). */
  constructor(
    readonly size: number,
    capacity: { memory?: number; cpus?: number; overtakes?: number } = {},
  ) {
    this.cap = { slots: size, memory: capacity.memory ?? Infinity, cpus: capacity.cpus ?? Infinity, overtakes: capacity.overtakes ?? 4 };
  }

  get busy(): number {
    return this.held.count;
  }

  /** The host's capacity and what the running grants hold (memory bytes, CPUs). */
  get usage(): { capacity: Readonly<HostCapacity>; memory: number; cpus: number } {
    return { capacity: this.cap, memory: this.held.memory, cpus: this.held.milliCpus / 1000 };
  }

  /** Throws the PolicyViolationError `acquire` would reject with when `need` is larger than the whole capacity. */
  refuseTooLarge(need: Need): void {
    const refusal = tooLarge(this.cap, need);
    if (refusal) throw new PolicyViolationError([refusal]);
  }

  /** Resolves to the release function (idempotent) once a slot is free and the host has room for `need`. */
  acquire(signal?: AbortSignal, need: Need = NO_NEED): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(new CancelledError('cancelled while waiting for an executor slot'));
    const refusal = tooLarge(this.cap, need);
    if (refusal) return Promise.reject(new PolicyViolationError([refusal]));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        need,
        overtaken: 0,
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          this.held = hold(this.held, need);
          resolve(this.release(need));
        },
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new CancelledError('cancelled while waiting for an executor slot'));
        this.pump(); // the ones it held back may fit now
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
      this.pump();
    });
  }

  private release(need: Need): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.held = hold(this.held, need, -1);
      this.pump();
    };
  }

  /** Grants every waiter the rule admits now. */
  private pump(): void {
    const { admitted, overtaken } = admit(this.cap, this.held, this.waiters);
    overtaken.forEach((n, i) => (this.waiters[i]!.overtaken = n));
    const granted = admitted.map((i) => this.waiters[i]!);
    for (const w of granted) this.waiters.splice(this.waiters.indexOf(w), 1);
    for (const w of granted) w.grant();
  }
}
