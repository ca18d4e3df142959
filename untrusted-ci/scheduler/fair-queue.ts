/**
 * Which queued build gets the next free slot. Pure, so it is tested as a table.
 *
 * Rules, in order: gate work before check work (a gate build holds up merges for everybody);
 * then round-robin across projects — the project served longest ago goes first, so one project
 * with 500 queued checks cannot starve another with one; within a project, first come first served.
 */
import type { QueuedBuild } from '../store/build-store.js';

export function pickNext(queued: readonly QueuedBuild[], lastServed: ReadonlyMap<string, number>): QueuedBuild | undefined {
  const gate = queued.filter((b) => b.pipeline === 'gate');
  const pool = gate.length > 0 ? gate : queued;
  let best: QueuedBuild | undefined;
  let bestServed = Infinity;
  const seen = new Set<string>();
  for (const b of pool) {
    if (seen.has(b.project)) continue; // only each project's oldest build competes
    seen.add(b.project);
    const served = lastServed.get(b.project) ?? -1;
    if (served < bestServed || (served === bestServed && best !== undefined && b.id < best.id)) {
      best = b;
      bestServed = served;
    }
  }
  return best;
}
