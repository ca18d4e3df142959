/**
 * Which open changes a patchset needs (model/changes.ts `needs`): its git parent when that parent
 * is the current patchset commit of another open change of the same project, and the changes its
 * `Depends-On:` footers name, in any project, by Gerrit Change-Id or by review URL.
 *
 * Pure apart from the injected `CommitReader` (in the service, `Merger.commitInfo`). Footers are
 * read leniently, as Zuul does: any line `Depends-On: <value>`, not only the last paragraph's.
 * A footer naming no change the caller offers is ignored: the change may have merged already, or
 * be unknown to the gate.
 */
import { changeKey, type NeededChange } from './model/changes.js';

/** A commit as the reader returns it; `message` is the full message (the reader may cap it). */
export interface CommitInfo {
  sha: string;
  parents: string[];
  message: string;
}

/**
 * Reads the commits `refs` of `project` point at, in one call; a ref that does not exist maps to
 * undefined (or is absent). Throws only for trouble reading (network, git), which resolveNeeds
 * passes on.
 */
export type CommitReader = (project: string, refs: string[]) => Promise<ReadonlyMap<string, CommitInfo | undefined>>;

/** An open change at its current patchset; `ref` is what the reader fetches (a ref or commit id). */
export interface OpenChange {
  project: string;
  change: string;
  patchset: number;
  ref: string;
}

/** `needs` are keyed as the model keys changes (`changeKey`); `problems` say what could not be resolved. */
export interface ResolvedNeeds {
  needs: NeededChange[];
  problems: string[];
  /** The commit the target's ref pointed at when it was read (undefined: not found). */
  sha?: string;
  /** The commit each candidate read pointed at, keyed as the model keys changes (`change`). */
  candidates: { change: string; project: string; patchset: number; sha: string }[];
}

/** Depends-On lines read from one message; later ones are ignored. */
export const MAX_DEPENDS_ON = 50;

const DEPENDS_ON = /^Depends-On:[ \t]*(\S+)[ \t]*$/i;
const CHANGE_ID_FOOTER = /^Change-Id:[ \t]*(I[0-9a-f]{40})[ \t]*$/i;
const CHANGE_ID = /^I[0-9a-f]{40}$/;

type Footer = { changeId: string } | { number: string };

/** The message's lines, without a trailing CR. */
function lines(message: string): string[] {
  return message.split('\n').map((l) => l.replace(/\r$/, ''));
}

/**
 * The change number a review URL names: the path segment after `/+/`
 * (`https://review.example.org/c/org/project/+/12345`, with or without a trailing `/` or
 * patchset), else the last all-digit segment of its path or fragment (`https://review.example.org/12345`,
 * `https://review.example.org/#/c/12345/`). Undefined for anything else, or a URL that is not http(s).
 */
function changeNumberOf(value: string): string | undefined {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return undefined;
  const path = `${url.pathname}${url.hash.replace(/^#/, '')}`;
  const afterPlus = /\/\+\/(\d+)(?:\/|$)/.exec(path)?.[1];
  const number = afterPlus ?? path.split('/').filter((s) => /^\d+$/.test(s)).pop();
  return number === undefined ? undefined : number.replace(/^0+(?=\d)/, '');
}

/** Every usable Depends-On footer of the first MAX_DEPENDS_ON, in order, without duplicates. */
function dependsOn(message: string): Footer[] {
  const values = lines(message)
    .map((l) => DEPENDS_ON.exec(l)?.[1])
    .filter((v): v is string => v !== undefined)
    .slice(0, MAX_DEPENDS_ON);
  const seen = new Set<string>();
  const out: Footer[] = [];
  for (const v of values) {
    const number = CHANGE_ID.test(v) ? undefined : changeNumberOf(v);
    const footer: Footer | undefined = CHANGE_ID.test(v) ? { changeId: v } : number !== undefined ? { number } : undefined;
    const id = footer && ('changeId' in footer ? footer.changeId : `#${footer.number}`);
    if (!footer || !id || seen.has(id)) continue;
    seen.add(id);
    out.push(footer);
  }
  return out;
}

/**
 * The changes a commit message's `Depends-On:` lines name: Gerrit Change-Ids (`I` + 40 lowercase hex)
 * and the change numbers of review URLs, each in order of first appearance, without duplicates.
 * Only the first MAX_DEPENDS_ON lines count; a line with anything else (a bare number, two words,
 * a URL naming no number) is ignored. The key is case-insensitive; the line must start with it.
 */
export function parseDependsOn(message: string): { changeIds: string[]; numbers: string[] } {
  const footers = dependsOn(message);
  return {
    changeIds: footers.flatMap((f) => ('changeId' in f ? [f.changeId] : [])),
    numbers: footers.flatMap((f) => ('number' in f ? [f.number] : [])),
  };
}

/** The message's `Change-Id:` footer (the last, if there are several), or undefined. */
export function changeIdOf(message: string): string | undefined {
  return lines(message)
    .map((l) => CHANGE_ID_FOOTER.exec(l)?.[1])
    .filter((v): v is string => v !== undefined)
    .pop();
}

/**
 * The needs of `target` among `candidates` (the open changes the gate knows, each at its current
 * patchset), in order: git parents first, then Depends-On footers in message order; no duplicates,
 * never the target itself.
 * - A parent is needed when it is the commit of a candidate of the target's project.
 * - A Change-Id names every candidate whose commit message carries it as `Change-Id:` (as Zuul, a
 *   Change-Id shared by changes in several projects or branches makes each of them a need).
 * - A URL's number names the candidate with that change number; when candidates of several
 *   projects have it, it is a problem and no need.
 * Reads once per project: the target's project (target and its candidates) always; other projects'
 * candidates only when a Change-Id must be looked up. A missing ref is a problem, not an error: the
 * target's leaves no needs, a candidate's only drops that candidate. Reader errors are passed on.
 */
export async function resolveNeeds(target: OpenChange, candidates: readonly OpenChange[], read: CommitReader): Promise<ResolvedNeeds> {
  const targetKey = changeKey(target.project, target.change);
  const problems: string[] = [];
  const others: OpenChange[] = [];
  const keys = new Set([targetKey]);
  for (const c of candidates) {
    const key = changeKey(c.project, c.change);
    if (keys.has(key)) continue;
    keys.add(key);
    others.push(c);
  }
  const byProject = new Map<string, OpenChange[]>();
  for (const c of others) byProject.set(c.project, [...(byProject.get(c.project) ?? []), c]);

  /** The candidates' commits, by candidate; a missing one is a problem. */
  const commits = new Map<OpenChange, CommitInfo>();
  const readProject = (project: string, extra: string[]): Promise<ReadonlyMap<string, CommitInfo | undefined>> =>
    read(project, [...new Set([...extra, ...(byProject.get(project) ?? []).map((c) => c.ref)])]);
  const record = (project: string, got: ReadonlyMap<string, CommitInfo | undefined>): void => {
    for (const c of byProject.get(project) ?? []) {
      const info = got.get(c.ref);
      if (info) commits.set(c, info);
      else problems.push(`ref ${c.ref} of change ${changeKey(c.project, c.change)} not found`);
    }
  };

  const first = await readProject(target.project, [target.ref]);
  record(target.project, first);
  const own = first.get(target.ref);
  const candidatesRead = () => [...commits].map(([c, info]) => ({ change: changeKey(c.project, c.change), project: c.project, patchset: c.patchset, sha: info.sha }));
  if (!own) {
    problems.push(`ref ${target.ref} of change ${targetKey} not found`);
    return { needs: [], problems, candidates: candidatesRead() };
  }
  const sha = own.sha;

  const needs: NeededChange[] = [];
  const add = (c: OpenChange): void => {
    const change = changeKey(c.project, c.change);
    if (!needs.some((n) => n.change === change)) needs.push({ change, patchset: c.patchset });
  };

  for (const parent of own.parents) {
    for (const c of byProject.get(target.project) ?? []) if (commits.get(c)?.sha === parent) add(c);
  }

  const footers = dependsOn(own.message);
  if (footers.some((f) => 'changeId' in f)) {
    // Read in parallel, recorded in candidate order so problems come out the same every time.
    const rest = [...byProject.keys()].filter((p) => p !== target.project);
    const got = await Promise.all(rest.map((p) => readProject(p, [])));
    rest.forEach((p, i) => record(p, got[i] ?? new Map()));
  }
  for (const f of footers) {
    if ('changeId' in f) {
      for (const c of others) if (commits.has(c) && changeIdOf(commits.get(c)?.message ?? '') === f.changeId) add(c);
      continue;
    }
    const matches = others.filter((c) => c.change.replace(/^0+(?=\d)/, '') === f.number);
    const projects = new Set(matches.map((c) => c.project));
    if (projects.size > 1) problems.push(`Depends-On change ${f.number} is ambiguous: it is open in projects ${[...projects].join(', ')}`);
    else for (const c of matches) add(c);
  }
  return { needs, problems, sha, candidates: candidatesRead() };
}
