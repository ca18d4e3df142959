/**
 * Placement by resources, as pure functions: which waiting grants of the executor slots
 * (slots.ts) may start now, given what the host has for jobs and what the running ones hold.
 *
 * A grant holds one slot and the memory and CPUs its job's limits give it (`limits.memory`,
 * `limits.cpus` of its JobSpec, shared/schemas/limits.ts): the container cannot use more, so the
 * sum of the running jobs' limits never exceeding the host's capacity means the jobs together
 * cannot push the host into swapping or its OOM killer. The capacity is `ci.yaml`'s `capacity`
 * (`capacityFor`: by default the machine's memory minus a reserve, and its CPUs).
 *
 * The rule (`admit`): waiters are looked at first come, first served. One that fits starts. One
 * that does not fit (a big job while small ones run) may be passed by later waiters that fit, so
 * the host does not idle behind it, but at most `overtakes` times: then nothing behind it starts
 * until it has. Since every running job ends (its timeout) and a waiter never needs more than the
 * whole capacity (`tooLarge` refuses it first), every waiter starts in the end. `overtakes: 0` is
 * strict FIFO. A waiter needing nothing (memory 0, CPUs 0: an environment build) only needs a slot.
 */
import { formatBytes } from '#shared/units.js';
import type { Issue } from '#shared/errors.js';

/** What one grant holds besides its slot: bytes of memory and CPUs (fractional). */
export interface Need {
  memory: number;
  cpus: number;
}

/** What the host has for jobs at once. `memory`/`cpus` may be Infinity (not counted). */
export interface HostCapacity {
  slots: number;
  memory: number;
  cpus: number;
  /** How often a waiter that does not fit may be passed by later ones before they must wait behind it. */
  overtakes: number;
}

/** What the running grants hold together. CPUs in thousandths, so sums of fractions stay exact. */
export interface Held {
  count: number;
  memory: number;
  milliCpus: number;
}

export const NOTHING_HELD: Held = { count: 0, memory: 0, milliCpus: 0 };

export function milliCpus(cpus: number): number {
  return Number.isFinite(cpus) ? Math.round(cpus * 1000) : cpus;
}

export function hold(held: Held, need: Need, sign: 1 | -1 = 1): Held {
  return { count: held.count + sign, memory: held.memory + sign * need.memory, milliCpus: held.milliCpus + sign * milliCpus(need.cpus) };
}

/**
 * Which of `waiting` (first come first) start now, and how often each has been passed after that.
 * Pure: the caller grants `admitted` (indices into `waiting`, ascending) and keeps `overtaken`.
 */
export function admit(cap: HostCapacity, held: Held, waiting: readonly { need: Need; overtaken: number }[]): { admitted: number[]; overtaken: number[] } {
  let free = { count: cap.slots - held.count, memory: cap.memory - held.memory, milliCpus: milliCpus(cap.cpus) - held.milliCpus };
  const overtaken = waiting.map((w) => w.overtaken);
  const admitted: number[] = [];
  const blocked: number[] = [];
  for (const [i, w] of waiting.entries()) {
    if (free.count < 1) break;
    const fits = w.need.memory <= free.memory && milliCpus(w.need.cpus) <= free.milliCpus;
    if (!fits) {
      blocked.push(i);
      if (overtaken[i]! >= cap.overtakes) break; // passed often enough: the ones behind wait for it
      continue;
    }
    admitted.push(i);
    free = { count: free.count - 1, memory: free.memory - w.need.memory, milliCpus: free.milliCpus - milliCpus(w.need.cpus) };
    for (const b of blocked) overtaken[b]! += 1;
    if (blocked.some((b) => overtaken[b]! >= cap.overtakes)) break;
  }
  return { admitted, overtaken };
}

/** A need no emptied host could meet: the problem, naming the figure; undefined when it fits. */
export function tooLarge(cap: HostCapacity, need: Need): Issue | undefined {
  const problems: string[] = [];
  if (need.memory > cap.memory) problems.push(`${formatBytes(need.memory)} of memory, more than the ${formatBytes(cap.memory)} this host has for jobs`);
  if (milliCpus(need.cpus) > milliCpus(cap.cpus)) problems.push(`${need.cpus} CPUs, more than the ${cap.cpus} this host has for jobs`);
  if (problems.length === 0) return undefined;
  return {
    file: 'ci.yaml',
    path: 'capacity',
    message: `the job's limits ask for ${problems.join(' and ')}: it could never start here (ask for less in .airlock.yaml, or the operator raises capacity)`,
    severity: 'error',
  };
}

/** Reserved for the host itself by default: the engine, the CI, git and the page cache. */
export const DEFAULT_RESERVE = 1024 ** 3;

/**
 * The host's capacity from `ci.yaml`'s `capacity` and the machine's figures (os.totalmem(),
 * os.availableParallelism()): memory defaults to the total minus `reserve` (at least half of it),
 * CPUs to the machine's.
 */
export function capacityFor(slots: number, c: { memory?: number | undefined; reserve: number; cpus?: number | undefined; overtakes: number }, machine: { memory: number; cpus: number }): HostCapacity {
  return {
    slots,
    memory: c.memory ?? Math.max(machine.memory - c.reserve, Math.floor(machine.memory / 2)),
    cpus: c.cpus ?? machine.cpus,
    overtakes: c.overtakes,
  };
}
