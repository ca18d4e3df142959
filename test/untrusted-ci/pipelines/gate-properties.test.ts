/**
 * Property tier: random gate scenarios (2-8 changes in 1-2 projects, dependencies on earlier
 * changes only, conflicts, fail rules, approvals at random times, now and then an abandon, an
 * unapproval, a new patchset, a re-approval or a refused submit) replayed by `simulate()`, plain
 * and with the manager saved and restored after every batch. The invariants are the gate's
 * promises: what was tested is what landed, dependencies land first, a change lands once,
 * non-voting jobs never block, and nothing is left half-done when nobody interfered.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { eventChange, parseScenario, type Scenario } from '../../../untrusted-ci/pipelines/sim/scenario.js';
import { simulate, type SimResult } from '../../../untrusted-ci/pipelines/sim/simulate.js';

const IDS = ['A', 'B', 'C', 'D', 'E', 'F', 'G', 'H'];
const PROJECTS = ['org/p1', 'org/p2'];
/** Disturbances that take a change out of the gate's hands (a re-approval and a refused submit do not). */
const DISTURBING = new Set(['abandon', 'unapprove', 'newPatchset']);

interface Input {
  text: string;
  scenario: Scenario;
}

const arbJobs = fc.record({
  lint: fc.boolean(),
  lintNeedsUnit: fc.boolean(),
  experimental: fc.boolean(),
  unitDuration: fc.integer({ min: 1, max: 10 }),
  experimentalDuration: fc.integer({ min: 1, max: 12 }),
});

/** A random gate scenario, as the YAML text `airlock gate-sim` would read (JSON is YAML). */
const arbScenario: fc.Arbitrary<Input> = fc
  .record({
    n: fc.integer({ min: 2, max: 8 }),
    twoProjects: fc.boolean(),
    shared: fc.boolean(),
    window: fc.option(fc.record({ initial: fc.integer({ min: 1, max: 4 }), floor: fc.integer({ min: 1, max: 2 }) }), { freq: 3 }),
    jobs: fc.tuple(arbJobs, arbJobs),
  })
  .chain(({ n, twoProjects, shared, window, jobs }) => {
    const ids = IDS.slice(0, n);
    const change = (i: number) =>
      fc.record({
        project: twoProjects ? fc.constantFrom(...PROJECTS) : fc.constant(PROJECTS[0]!),
        dependsOn: fc.oneof({ weight: 3, arbitrary: fc.constant<string[]>([]) }, { weight: 2, arbitrary: fc.subarray(ids.slice(0, i), { maxLength: Math.min(2, i) }) }),
        conflictsWith: fc.oneof({ weight: 5, arbitrary: fc.constant<string[]>([]) }, { weight: 1, arbitrary: fc.subarray(ids.filter((x) => x !== ids[i]), { maxLength: 1 }) }),
        duration: fc.integer({ min: 1, max: 10 }),
        /** null: never approved. */
        approveAt: fc.option(fc.integer({ min: 0, max: 30 }), { freq: 8 }),
      });
    return fc.record({
      changes: fc.tuple(...ids.map((_, i) => change(i))),
      disturbances: fc.array(
        fc.record({
          kind: fc.constantFrom('abandon', 'unapprove', 'newPatchset', 'approve', 'rejectSubmit'),
          change: fc.constantFrom(...ids),
          at: fc.integer({ min: 0, max: 40 }),
        }),
        { maxLength: 2 },
      ),
      failRules: fc.array(fc.record({ job: fc.constantFrom('unit', 'lint', 'experimental'), whenStateContains: fc.subarray(ids, { minLength: 1, maxLength: 2 }) }), {
        maxLength: 3,
      }),
    }).map(({ changes, disturbances, failRules }) => {
      const doc = {
        pipeline: 'gate',
        ...(window ? { window: { initial: Math.max(window.initial, window.floor), floor: window.floor } } : {}),
        ...(twoProjects && shared ? { queues: { integrated: [...PROJECTS] } } : {}),
        jobs: Object.fromEntries(
          PROJECTS.map((p, k) => {
            const j = jobs[k]!;
            return [
              p,
              [
                { name: 'unit', duration: j.unitDuration },
                ...(j.lint ? [{ name: 'lint', needs: j.lintNeedsUnit ? ['unit'] : [] }] : []),
                // Nothing needs the non-voting job: its failure cannot skip anything or move the clock.
                ...(j.experimental ? [{ name: 'experimental', voting: false, duration: j.experimentalDuration }] : []),
              ],
            ];
          }),
        ),
        changes: changes.map((c, i) => ({ id: ids[i]!, project: c.project, dependsOn: c.dependsOn, conflictsWith: c.conflictsWith, duration: c.duration })),
        events: [
          ...changes.flatMap((c, i) => (c.approveAt === null ? [] : [{ approve: ids[i]!, at: c.approveAt }])),
          ...disturbances.map((d) => ({ [d.kind]: d.change, at: d.at })),
        ],
        failRules,
      };
      const text = JSON.stringify(doc);
      return { text, scenario: parseScenario(text, 'property.yaml') };
    });
  });

function queueOf(s: Scenario, id: string): string {
  const project = s.changes.find((c) => c.id === id)!.project;
  return Object.entries(s.queues).find(([, ps]) => ps.includes(project))?.[0] ?? project;
}

/** Approved at some point, never abandoned, unapproved or re-patched; and so is everything it needs. */
function cleanChanges(s: Scenario): Set<string> {
  const approved = new Set<string>();
  const disturbed = new Set<string>();
  for (const e of s.events) {
    const { kind, change } = eventChange(e);
    if (kind === 'approve') approved.add(change);
    if (DISTURBING.has(kind)) disturbed.add(change);
  }
  const clean = new Set<string>();
  for (const c of s.changes) {
    // Needs are earlier changes only, so one pass in order is enough.
    if (approved.has(c.id) && !disturbed.has(c.id) && c.dependsOn.every((d) => clean.has(d))) clean.add(c.id);
  }
  return clean;
}

function checkInvariants(s: Scenario, r: SimResult): void {
  const dependsOn = new Map(s.changes.map((c) => [c.id, c.dependsOn]));

  // A change merges at most once, and a merged change is not also reported as something else.
  expect(new Set(r.merged).size, `merged twice: ${r.merged.join(' ')}`).toBe(r.merged.length);
  for (const c of r.merged) expect(r.reported[c], `${c} merged and reported`).toBeUndefined();

  // Dependencies land first.
  r.merged.forEach((c, k) => {
    for (const d of dependsOn.get(c) ?? []) {
      const j = r.merged.indexOf(d);
      expect(j >= 0 && j < k, `${c} merged before its dependency ${d} (merged: ${r.merged.join(' ')})`).toBe(true);
    }
  });

  // What was tested is what landed: a merged change's final state is, in order, exactly the
  // changes of its queue that merged just before it, and nothing of its queue merged after the
  // state was fixed without being in it.
  const mergeTime = new Map<string, number>();
  for (const b of r.buildsets) if (b.fate === 'merged') mergeTime.set(b.change, b.end);
  r.merged.forEach((c, k) => {
    const finals = r.buildsets.filter((b) => b.change === c && b.fate === 'merged');
    expect(finals, `${c}: one merged build set`).toHaveLength(1);
    const bs = finals[0]!;
    expect(bs.state.at(-1)).toBe(c);
    const others = bs.state.slice(0, -1);
    const q = queueOf(s, c);
    const mergedBefore = r.merged.slice(0, k).filter((x) => queueOf(s, x) === q);
    expect(others, `${c} was tested on [${bs.state.join(' ')}] but its queue merged [${mergedBefore.join(' ')}] before it`).toEqual(
      mergedBefore.slice(mergedBefore.length - others.length),
    );
    for (const y of mergedBefore) {
      if (mergeTime.get(y)! > bs.start) expect(others, `${y} merged after ${c}'s state [${bs.state.join(' ')}] was fixed at t=${bs.start}`).toContain(y);
    }
    // A voting failure never lands.
    const failedVoting = Object.entries(bs.builds).filter(([job, res]) => res !== 'SUCCESS' && res !== 'SKIPPED' && job !== 'experimental');
    expect(failedVoting, `${c} merged with failed voting jobs`).toEqual([]);
  });

  // Nothing is left half-done for a change nobody interfered with.
  const clean = cleanChanges(s);
  for (const b of r.buildsets) {
    if (b.fate === 'unfinished') expect(clean.has(b.change), `${b.change} left unfinished: ${JSON.stringify(b)}`).toBe(false);
  }
}

describe('gate properties (fast-check over simulate())', () => {
  it('holds the gate invariants on random scenarios, with and without a save/restore after every batch', () => {
    fc.assert(
      fc.property(arbScenario, ({ scenario }) => {
        const r = simulate(scenario);
        checkInvariants(scenario, r);
        expect(simulate(scenario, { roundTrip: true })).toEqual(r);
      }),
      { numRuns: 300 },
    );
  });

  // Regression (shrunk from a fast-check counterexample): a merged change once took a new
  // patchset as a reopening, and a re-approval merged it a second time.
  it('a change that merged is never merged again, even after a (bogus) new patchset and a re-approval', () => {
    const text = `
      pipeline: gate
      changes: [{id: A, project: org/p1}, {id: B, project: org/p1}]
      events: [{approve: B}, {newPatchset: B, at: 11}, {approve: B, at: 12}]`;
    const r = simulate(parseScenario(text, 'merged-twice.yaml'));
    expect(r.merged).toEqual(['B']);
  });

  it('a non-voting job failure never changes the outcome', () => {
    fc.assert(
      fc.property(arbScenario, ({ scenario }) => {
        const withFailures = simulate(scenario);
        const without = simulate({ ...scenario, failRules: scenario.failRules.filter((f) => f.job !== 'experimental') });
        expect(withFailures.merged).toEqual(without.merged);
        expect(withFailures.reported).toEqual(without.reported);
        expect(withFailures.window).toEqual(without.window);
        const strip = (r: SimResult) => r.buildsets.map((b) => ({ ...b, builds: Object.fromEntries(Object.entries(b.builds).filter(([j]) => j !== 'experimental')) }));
        expect(strip(withFailures)).toEqual(strip(without));
      }),
      { numRuns: 300 },
    );
  });
});
