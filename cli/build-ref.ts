/**
 * One way to name a CI build on the command line, parsed and resolved here only (`status`, `logs`):
 *
 *   #17 or 17                      the CI's own build id (what `submit` prints, shown as `#17` everywhere)
 *   --change N [--project P]       the latest build of change N's current patch set
 *   --change N,PS [--project P]    the latest build of patch set PS of change N
 *
 * N is the change's id in the review system (an API check's own name); the part after the last
 * comma, when it is a number, is the patch set. The current patch set is the newest this CI has
 * recorded. "Latest build" is the highest build id of any pipeline (check or gate).
 *
 * Never a silent pick: a change in several projects without `--project`, a change or patch set the
 * CI does not know, and `--change N` whose current patch set has no build (only outdated ones have)
 * are errors (exit 2) that name the reference and the fix. Asking for an outdated patch set by
 * number works, with a note. Pure: parsing takes strings, resolving takes the API's ChangeLookup.
 */
import { InvalidInputError, NotFoundError } from '#shared/errors.js';
import { ChangeName, type ChangeLookup } from '#shared/schemas/api/builds.js';

/** `project` with an id: the build must be of that project (checked, never ignored). */
export type BuildRef = { kind: 'id'; id: number; project?: string } | { kind: 'change'; change: string; patchset?: number; project?: string };

/** A build id as the CLI shows it: `#17`. */
export const buildName = (id: number): string => `#${id}`;

const MAX_ID = Number.MAX_SAFE_INTEGER;
const MAX_PATCHSET = 1_000_000;

const bad = (path: string, message: string): InvalidInputError => new InvalidInputError([{ file: 'command line', path, message, severity: 'error' }]);

/**
 * The reference from a command's arguments: the positional `build` (`#17` or `17`) or `--change`
 * (with `--project`), exactly one of them. `required`: whether no reference at all is an error
 * (`logs`) or undefined (`status` shows the overview, `--project` filtering it).
 */
export function parseBuildRef(a: { build?: string; change?: string; project?: string }, required: boolean): BuildRef | undefined {
  if (a.build !== undefined && a.change !== undefined) {
    throw bad('build', `give a build id (${a.build}) or --change ${a.change}, not both: each names a build on its own`);
  }
  if (a.build !== undefined) return { kind: 'id', id: parseBuildId(a.build), ...(a.project !== undefined ? { project: a.project } : {}) };
  if (a.change !== undefined) return { kind: 'change', ...parseChange(a.change), ...(a.project !== undefined ? { project: a.project } : {}) };
  if (required) throw bad('build', 'name a build: its id (#17 or 17, as submit and status print it), or --change N[,PS] with --project P');
  return undefined;
}

/** `#17` or `17`. */
export function parseBuildId(value: string): number {
  const m = /^#?(\d{1,16})$/.exec(value);
  const id = m ? Number(m[1]) : NaN;
  if (!m || id < 1 || id > MAX_ID) {
    const hint = /^\d+,\d+$/.test(value) ? ` (a change and patch set? say --change ${value})` : '';
    throw bad('build', `${JSON.stringify(value)} is not a build id: the CI's id of a build, #17 or 17${hint}`);
  }
  return id;
}

/** `N` or `N,PS`: the part after the last comma, when it is a number, is the patch set. */
export function parseChange(value: string): { change: string; patchset?: number } {
  const m = /^(.+),(\d{1,7})$/.exec(value);
  const change = m ? m[1]! : value;
  if (!ChangeName.safeParse(change).success || change.startsWith(',') || change.endsWith(',')) {
    throw bad('change', `${JSON.stringify(value)} is not a change: N or N,PS (the change's id in the review system, then its patch set number)`);
  }
  if (!m) return { change };
  const patchset = Number(m[2]);
  if (patchset < 1 || patchset > MAX_PATCHSET) throw bad('change', `${JSON.stringify(value)}: the patch set must be a number from 1 to ${MAX_PATCHSET}`);
  return { change, patchset };
}

/** How the reference was written, for messages: `--change 3,2 --project app`. */
export function describeRef(r: BuildRef): string {
  if (r.kind === 'id') return `${buildName(r.id)}${r.project !== undefined ? ` --project ${r.project}` : ''}`;
  return `--change ${r.change}${r.patchset !== undefined ? `,${r.patchset}` : ''}${r.project !== undefined ? ` --project ${r.project}` : ''}`;
}

/** A build named by id with `--project` must be of that project: an error otherwise, naming both. */
export function checkBuildProject(r: BuildRef, b: { id: number; project: string }): void {
  if (r.kind === 'id' && r.project !== undefined && b.project !== r.project) {
    throw bad('project', `${describeRef(r)}: build ${buildName(b.id)} is of project ${b.project}, not ${r.project}; check the build id, or name the build by --change N --project ${r.project}`);
  }
}

/**
 * The build a `--change` reference names, from the API's answer to the same question (asked with
 * the reference's change, project and patch set). `note`: said on stderr (an outdated patch set
 * asked for by number).
 */
export function resolveChangeRef(r: Extract<BuildRef, { kind: 'change' }>, lookup: ChangeLookup): { id: number; note?: string } {
  const ref = describeRef(r);
  const where = r.project !== undefined ? ` in project ${r.project}` : '';
  const [found, ...others] = lookup.changes;
  if (!found) {
    throw new NotFoundError(`${ref}: this CI has no change ${r.change}${where}; check the number and the project (airlock status${r.project !== undefined ? ` --project ${r.project}` : ''} lists recent builds with their changes)`);
  }
  if (others.length > 0) {
    const projects = lookup.changes.map((c) => c.project).join(', ') + (lookup.more ? ', …' : '');
    throw bad('change', `${ref}: change ${r.change} is in several projects (${projects}); say which with --project P`);
  }
  const c = found;
  const name = `change ${c.change} of ${c.project}`;
  const again = (ps: number): string => `--change ${c.change},${ps} --project ${c.project}`;
  if (r.patchset !== undefined) {
    const ps = c.patchsets.find((p) => p.patchset === r.patchset);
    if (!ps) throw new NotFoundError(`${ref}: ${name} has no patch set ${r.patchset} on this CI; it is at patch set ${c.current} (say ${again(c.current)}, or --change ${c.change})`);
    if (ps.build === undefined) throw new NotFoundError(`${ref}: patch set ${r.patchset} of ${name} has no build yet`);
    return { id: ps.build, ...(r.patchset < c.current ? { note: `patch set ${r.patchset} is outdated: ${name} is at patch set ${c.current}; build ${buildName(ps.build)} is of the old one` } : {}) };
  }
  const current = c.patchsets.find((p) => p.patchset === c.current);
  if (current?.build !== undefined) return { id: current.build };
  const older = c.patchsets.find((p) => p.build !== undefined);
  if (older?.build !== undefined) {
    throw bad(
      'change',
      `${ref}: ${name} is at patch set ${c.current}, which has no build yet; patch set ${older.patchset} is outdated — say ${again(older.patchset)} to see its build ${buildName(older.build)} anyway`,
    );
  }
  throw new NotFoundError(`${ref}: ${name} (patch set ${c.current}) has no build yet`);
}
