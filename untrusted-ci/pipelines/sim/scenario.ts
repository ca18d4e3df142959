/**
 * A gate or check scenario for `airlock gate-sim` (issue 4's format). Parsed once here, with every
 * problem reported by path; cross-references (a change id in `dependsOn`, `events`, `failRules`,
 * a project in two shared queues) are checked too. Everything after this takes a `Scenario`.
 *
 * ```yaml
 * pipeline: gate                      # gate | check
 * window: {initial: 20, floor: 3, increase: 1, decreaseFactor: 2}   # optional (and ceiling)
 * queues: {integrated: [org/p1, org/p2]}                            # optional shared queues
 * jobs: {org/p1: [{name: test1}, {name: test2, voting: false, duration: 5}]}  # default [{name: test}]
 * duration: 10                        # simulated minutes per build
 * changes:
 *   - {id: A, project: org/p1}
 *   - {id: B, project: org/p1, dependsOn: [A], conflictsWith: [], duration: 5}
 * events:                             # in order, at t=0 unless `at` (minutes) is given
 *   - {approve: A}                    # gate; for check use {submit: A}
 *   - {abandon: B, at: 4}             # also: {newPatchset: X}, {unapprove: X}
 * failRules:                          # a build of `job` fails iff its state contains ALL of these
 *   - {job: test1, whenStateContains: [A]}
 * ```
 */
import { z } from 'zod';
import type { Issue } from '#shared/errors.js';
import { InvalidInputError } from '#shared/errors.js';
import { zodIssues } from '#shared/schemas/issues.js';
import { parseYaml } from '#shared/yaml.js';
import { WindowConfig } from '../model/window.js';

const Id = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'a change id is 1-64 of A-Z a-z 0-9 . _ -');
const Name = z.string().min(1).max(200);
const Minutes = z.number().min(0).max(1_000_000);

const Job = z.strictObject({
  name: Name,
  voting: z.boolean().default(true),
  duration: Minutes.optional(),
  /** Jobs of the same project this one waits for (skipped if one does not succeed). */
  needs: z.array(Name).max(100).default([]),
});

const Change = z.strictObject({
  id: Id,
  project: Name,
  branch: Name.default('master'),
  dependsOn: z.array(Id).max(100).default([]),
  conflictsWith: z.array(Id).max(100).default([]),
  duration: Minutes.optional(),
});

const at = { at: Minutes.default(0) };
const Event = z.union([
  z.strictObject({ approve: Id, ...at }),
  z.strictObject({ unapprove: Id, ...at }),
  z.strictObject({ abandon: Id, ...at }),
  z.strictObject({ newPatchset: Id, ...at }),
  z.strictObject({ submit: Id, ...at }),
  /** The next submit of this change is refused (the branch moved): MERGE_FAILURE. */
  z.strictObject({ rejectSubmit: Id, ...at }),
]);

export const Scenario = z.strictObject({
  pipeline: z.enum(['gate', 'check']).default('gate'),
  window: WindowConfig.default(WindowConfig.parse({})),
  queues: z.record(Name, z.array(Name).min(1).max(1000)).default({}),
  jobs: z.record(Name, z.array(Job).min(1).max(100)).default({}),
  duration: Minutes.default(10),
  changes: z.array(Change).min(1).max(10_000),
  events: z.array(Event).max(100_000).default([]),
  failRules: z.array(z.strictObject({ job: Name, whenStateContains: z.array(Id).max(1000) })).max(10_000).default([]),
});
export type Scenario = z.infer<typeof Scenario>;
export type ScenarioEvent = z.infer<typeof Event>;
export type ScenarioJob = z.infer<typeof Job>;

/** Parse scenario YAML, or throw InvalidInputError listing every problem. */
export function parseScenario(text: string, file: string): Scenario {
  const y = parseYaml(text, file);
  if (y.issues.length > 0) throw new InvalidInputError(y.issues);
  const r = Scenario.safeParse(y.value);
  if (!r.success) throw new InvalidInputError(zodIssues(r.error, file));
  const issues = crossCheck(r.data, file);
  if (issues.length > 0) throw new InvalidInputError(issues);
  return r.data;
}

/** The event's change and what it asks. */
export function eventChange(e: ScenarioEvent): { kind: string; change: string } {
  const [kind, change] = Object.entries(e).find(([k]) => k !== 'at') as [string, string];
  return { kind, change };
}

function crossCheck(s: Scenario, file: string): Issue[] {
  const issues: Issue[] = [];
  const bad = (path: string, message: string) => issues.push({ file, path, message, severity: 'error' });
  const ids = new Set<string>();
  s.changes.forEach((c, i) => {
    if (ids.has(c.id)) bad(`changes[${i}].id`, `change ${c.id} is listed twice`);
    ids.add(c.id);
  });
  s.changes.forEach((c, i) => {
    c.dependsOn.forEach((d, j) => {
      if (!ids.has(d)) bad(`changes[${i}].dependsOn[${j}]`, `no change ${d}`);
      if (d === c.id) bad(`changes[${i}].dependsOn[${j}]`, `change ${c.id} depends on itself`);
    });
    c.conflictsWith.forEach((d, j) => {
      if (!ids.has(d)) bad(`changes[${i}].conflictsWith[${j}]`, `no change ${d}`);
    });
  });
  s.events.forEach((e, i) => {
    const { kind, change } = eventChange(e);
    if (!ids.has(change)) bad(`events[${i}].${kind}`, `no change ${change}`);
    if (s.pipeline === 'check' && (kind === 'approve' || kind === 'unapprove')) bad(`events[${i}].${kind}`, `the check pipeline is triggered by submit, not ${kind}`);
    if (s.pipeline === 'gate' && kind === 'submit') bad(`events[${i}].submit`, 'the gate is triggered by approve, not submit');
  });
  s.failRules.forEach((r, i) => {
    r.whenStateContains.forEach((d, j) => {
      if (!ids.has(d)) bad(`failRules[${i}].whenStateContains[${j}]`, `no change ${d}`);
    });
  });
  const owner = new Map<string, string>();
  for (const [q, projects] of Object.entries(s.queues)) {
    for (const p of projects) {
      const o = owner.get(p);
      if (o !== undefined) bad(`queues.${q}`, `project ${p} is already in queue ${o}`);
      owner.set(p, q);
    }
  }
  for (const [project, jobs] of Object.entries(s.jobs)) {
    const names = new Set(jobs.map((j) => j.name));
    if (names.size !== jobs.length) bad(`jobs.${project}`, 'job names must be unique');
    jobs.forEach((j, i) => {
      j.needs.forEach((n, k) => {
        if (!names.has(n)) bad(`jobs.${project}[${i}].needs[${k}]`, `no job ${n} in ${project}`);
      });
    });
  }
  if (s.window.ceiling !== null && s.window.ceiling < s.window.floor) bad('window.ceiling', `ceiling ${s.window.ceiling} is below floor ${s.window.floor}`);
  return issues;
}
