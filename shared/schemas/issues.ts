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

/**
 * What the value was parsed from, for better messages: with `input`, a key that is not there at
 * all says `required` whatever its type; with `schema`, a key the schema does not know says which
 * known key it is a near miss of (`did you mean "needs"?`).
 */
export interface IssueContext {
  input?: unknown;
  schema?: z.ZodType;
}

export function zodIssues(error: z.ZodError, file: string, ctx: IssueContext = {}): Issue[] {
  const all = error.issues.flatMap((i) => (i.code === 'unrecognized_keys' && i.keys.length > 1 ? i.keys.map((k) => ({ ...i, keys: [k], message: `Unrecognized key: ${JSON.stringify(k)}` })) : [i]));
  const listed = all.slice(0, MAX_LISTED_ISSUES).map((i) => ({ file, path: formatPath(i.path), message: describe(i, ctx), severity: 'error' as const }));
  if (all.length > MAX_LISTED_ISSUES) listed.push({ file, path: '', message: `and ${all.length - MAX_LISTED_ISSUES} more problems`, severity: 'error' as const });
  return listed;
}

/**
 * zod's own words, except where they hide the reason: a bad record key says which key and why, a
 * missing one says `required`, an unknown one that is a near miss of a known one says which.
 */
function describe(i: z.core.$ZodIssue, ctx: IssueContext): string {
  if ('input' in ctx && i.code !== 'unrecognized_keys' && i.code !== 'invalid_key' && isMissing(ctx.input, i.path)) return 'required';
  if (i.code === 'unrecognized_keys' && ctx.schema) {
    const known = knownKeys(ctx.schema, i.path);
    const near = i.keys.length === 1 ? nearMiss(i.keys[0]!, known) : undefined;
    if (near !== undefined) return `${i.message}; did you mean ${JSON.stringify(near)}?`;
  }
  if (i.code === 'invalid_key') {
    const key = i.path[i.path.length - 1];
    const why = i.issues.map((n) => n.message).join('; ');
    return `invalid name ${JSON.stringify(String(key))}${why ? `: ${why}` : ''}`;
  }
  if (i.code === 'invalid_union' && i.errors.length > 0 && ctx.schema) {
    // A map that fits no alternative: name its unknown keys (with the nearest known one), or the
    // keys each alternative lacks, rather than zod's "Invalid input".
    const value = valueAt(ctx.input, i.path);
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      const known = knownKeys(ctx.schema, i.path);
      const unknown = Object.keys(value).filter((k) => !known.includes(k));
      if (known.length > 0 && unknown.length > 0) {
        return unknown
          .slice(0, 10)
          .map((k) => {
            const near = nearMiss(k, known);
            return `Unrecognized key: ${JSON.stringify(k)}${near !== undefined ? `; did you mean ${JSON.stringify(near)}?` : ''}`;
          })
          .join('; ');
      }
      const lacks = i.errors.map((alt) => alt.filter((x) => x.path.length === 1 && x.code === 'invalid_type' && x.message.endsWith('received undefined')).map((x) => JSON.stringify(String(x.path[0]))));
      if (lacks.every((l, k) => l.length > 0 && l.length === i.errors[k]!.length)) return `required: ${lacks.map((l) => l.join(' and ')).join(' or ')}`;
    }
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

/** The value at `path` of `input`, or undefined. */
function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = input;
  for (const part of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[part as string];
  }
  return v;
}

/** True when the last key of `path` is absent from an object that is there (it was not written). */
function isMissing(input: unknown, path: readonly PropertyKey[]): boolean {
  if (path.length === 0) return false;
  let v: unknown = input;
  for (const part of path.slice(0, -1)) {
    if (v === null || typeof v !== 'object') return false;
    v = (v as Record<PropertyKey, unknown>)[part as string];
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  return !Object.prototype.hasOwnProperty.call(v, path[path.length - 1]!);
}

/** The keys an object schema knows at `path` (through records, arrays, unions, defaults, pipes); [] when unknown. */
export function knownKeys(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let cur: z.core.$ZodType[] = [schema as z.core.$ZodType];
  const unwrap = (s: z.core.$ZodType): z.core.$ZodType[] => {
    const out: z.core.$ZodType[] = [];
    const stack = [s];
    for (let n = 0; stack.length > 0 && n < 64; n++) {
      const t = stack.pop()!;
      const def = t._zod.def as z.core.$ZodTypeDef & Record<string, unknown>;
      if (def.type === 'optional' || def.type === 'default' || def.type === 'nullable' || def.type === 'prefault' || def.type === 'readonly' || def.type === 'catch') stack.push(def.innerType as z.core.$ZodType);
      else if (def.type === 'pipe') stack.push(def.in as z.core.$ZodType);
      else if (def.type === 'union') stack.push(...(def.options as z.core.$ZodType[]));
      else out.push(t);
    }
    return out;
  };
  for (const part of path) {
    const next: z.core.$ZodType[] = [];
    for (const t of cur.flatMap(unwrap)) {
      const def = t._zod.def as z.core.$ZodTypeDef & Record<string, unknown>;
      if (def.type === 'object' && typeof part === 'string') {
        const child = (def.shape as Record<string, z.core.$ZodType>)[part];
        if (child) next.push(child);
      } else if (def.type === 'record' && typeof part === 'string') next.push(def.valueType as z.core.$ZodType);
      else if (def.type === 'array' && typeof part === 'number') next.push(def.element as z.core.$ZodType);
    }
    cur = next;
  }
  const keys = new Set<string>();
  for (const t of cur.flatMap(unwrap)) {
    const def = t._zod.def as z.core.$ZodTypeDef & Record<string, unknown>;
    if (def.type === 'object') for (const k of Object.keys(def.shape as object)) keys.add(k);
  }
  return [...keys];
}

/**
 * The known key `key` is most likely a misspelling of: one that differs only in case, else the
 * nearest within 2 edits (a swap of neighbours is one), shorter than the key itself; undefined if none.
 */
export function nearMiss(key: string, known: readonly string[]): string | undefined {
  if (key.length > 64) return undefined;
  const same = known.find((k) => k.toLowerCase() === key.toLowerCase());
  if (same !== undefined) return same;
  let best: { k: string; d: number } | undefined;
  for (const k of known) {
    const d = editDistance(key, k);
    if (d <= 2 && d < key.length && (!best || d < best.d)) best = { k, d };
  }
  return best?.k;
}

/** Optimal string alignment distance: insertions, deletions, substitutions, swaps of neighbours. */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}
