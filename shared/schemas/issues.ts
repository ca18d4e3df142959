/**
 * Turning zod's failures into airlock `Issue`s that name the file and the path, and parsing at
 * the edge: `parseOrThrow` is how untrusted values become typed values.
 */
import type { z } from 'zod';
import { InvalidInputError, type Issue } from '../errors.js';

/** `jobs[2].limits.memory` from zod's `['jobs', 2, 'limits', 'memory']`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out;
}

/** Issues listed at most for one input; the rest are counted in one more (a hostile file can have thousands). */
export const MAX_LISTED_ISSUES = 100;

export function zodIssues(error: z.ZodError, file: string): Issue[] {
  const all = error.issues;
  const listed = all.slice(0, MAX_LISTED_ISSUES).map((i) => ({ file, path: formatPath(i.path), message: describe(i), severity: 'error' as const }));
  if (all.length > MAX_LISTED_ISSUES) listed.push({ file, path: '', message: `and ${all.length - MAX_LISTED_ISSUES} more problems`, severity: 'error' as const });
  return listed;
}

/** zod's own words, except where they hide the reason: a bad record key says which key and why. */
function describe(i: z.core.$ZodIssue): string {
  if (i.code === 'invalid_key') {
    const key = i.path[i.path.length - 1];
    const why = i.issues.map((n) => n.message).join('; ');
    return `invalid name ${JSON.stringify(String(key))}${why ? `: ${why}` : ''}`;
  }
  if (i.code === 'invalid_union' && i.errors.length > 0) {
    // zod says only "Invalid input" for a union: say what was expected, or that it is missing.
    const first = i.errors.map((alt) => alt[0]).filter((x): x is z.core.$ZodIssue => x !== undefined && x.path.length === 0);
    if (first.length === i.errors.length && first.every((x) => x.code === 'invalid_type')) {
      if (first.every((x) => x.message.endsWith('received undefined'))) return 'required';
      return `expected ${first.map((x) => (x as z.core.$ZodIssueInvalidType).expected).join(' or ')}`;
    }
  }
  return i.message;
}

/** Parse `input` or throw one InvalidInputError that lists every problem. */
export function parseOrThrow<S extends z.ZodType>(schema: S, input: unknown, file: string): z.infer<S> {
  const r = schema.safeParse(input);
  if (!r.success) throw new InvalidInputError(zodIssues(r.error, file));
  return r.data;
}
