/**
 * Property: whatever bytes arrive, parseGerritEvent returns a value that its published schema
 * accepts, or throws an AirlockError (InvalidInputError, PayloadTooLargeError); never a TypeError,
 * RangeError or a half-validated object. Seeded from the real payloads (docs/conventions.md "Webhooks", after
 * Woodpecker's fuzz_test.go), mutated with arbitrary JSON, odd keys, random bytes and deep nesting.
 */
import { readFileSync, readdirSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isAirlockError } from '#shared/errors.js';
import { Ignored, TriggerEvent } from '#shared/schemas/events/trigger.js';
import { parseGerritEvent } from '../../../../untrusted-ci/sources/gerrit/parse.js';

const DIR = new URL('../../../fixtures/gerrit/', import.meta.url);
const SEEDS: unknown[] = readdirSync(DIR)
  .filter((f) => f.endsWith('.json'))
  .map((f) => JSON.parse(readFileSync(new URL(f, DIR), 'utf8')) as unknown);
const RUNS = 500;
/** Every field the parser reads, as paths into an event. */
const READ = [
  'type', 'eventCreatedOn', 'change', 'change.project', 'change.branch', 'change.id', 'change.number', 'change.subject',
  'change.status', 'change.private', 'change.wip', 'patchSet', 'patchSet.number', 'patchSet.revision', 'patchSet.ref',
  'patchSet.uploader', 'patchSet.uploader.username', 'patchSet.uploader.email', 'patchSet.uploader.name',
  'patchSet.createdOn', 'patchSet.isDraft', 'uploader', 'uploader.username', 'uploader.email', 'uploader.name', 'author',
  'author.username', 'author.email', 'author.name', 'approvals', 'approvals.0', 'approvals.0.type', 'approvals.0.value',
  'approvals.0.oldValue', 'comment', 'newRev', 'refUpdate', 'refUpdate.oldRev', 'refUpdate.newRev', 'refUpdate.refName',
  'refUpdate.project',
].map((p) => p.split('.').map((k) => (/^[0-9]+$/.test(k) ? Number(k) : k)));
const ALLOWED_CODES = new Set(['AIRLOCK_E_INVALID_INPUT', 'AIRLOCK_E_PAYLOAD_TOO_LARGE']);
const ODD_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'type', 'number', 'ref', ''];

/** Calls the parser and checks the property; returns what happened, for assertions on coverage. */
function check(body: Buffer): 'ok' | 'ignored' | 'error' {
  let result: unknown;
  try {
    result = parseGerritEvent(body);
  } catch (e) {
    if (!isAirlockError(e) || !ALLOWED_CODES.has(e.code)) throw e;
    return 'error';
  }
  const asEvent = TriggerEvent.safeParse(result);
  const asIgnored = Ignored.safeParse(result);
  if (!asEvent.success && !asIgnored.success) throw new Error(`unvalidated result: ${JSON.stringify(result)}`);
  // Nothing beyond the schema's keys: parsing again yields the same object.
  expect(asEvent.success ? asEvent.data : asIgnored.data).toEqual(result);
  return asIgnored.success ? 'ignored' : 'ok';
}

/** Every path to a value inside `v` (objects and arrays), the root included. */
function paths(v: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  const out = [prefix];
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...paths(x, [...prefix, i])));
  else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...prefix, k]));
  return out;
}

/** Own-property set, so `__proto__` becomes a key in the JSON and not a prototype. */
function setAt(root: unknown, path: (string | number)[], value: unknown): unknown {
  if (path.length === 0) return value;
  const node = path.slice(0, -1).reduce((n, k) => n[k] as Record<string | number, unknown>, root as Record<string | number, unknown>);
  const last = path[path.length - 1]!;
  if (value === undefined) delete node[last];
  else Object.defineProperty(node, last, { value, enumerable: true, writable: true, configurable: true });
  return root;
}

const seed = fc.constantFrom(...SEEDS).map((s) => structuredClone(s));

/**
 * One edit at a random path of a seed: replace with any JSON value, delete, or add an odd key.
 * Half the edits pick among the top two levels (`patchSet`, `change.project`), where the fields
 * the parser reads live, so that deleting one of them is not a one-in-a-hundred event.
 */
const mutation = fc.tuple(fc.nat(), fc.oneof(fc.jsonValue(), fc.constant(undefined)), fc.constantFrom(...ODD_KEYS), fc.boolean(), fc.boolean());
const mutated = fc.tuple(seed, fc.array(mutation, { minLength: 1, maxLength: 4 })).map(([doc, edits]) => {
  let root: unknown = doc;
  for (const [pick, value, oddKey, addKey, shallow] of edits) {
    const all = paths(root).filter((p) => !shallow || p.length <= 2);
    const path = all[pick % all.length]!;
    const target = path.reduce<unknown>((n, k) => (n as Record<string | number, unknown>)[k], root);
    if (addKey && target !== null && typeof target === 'object' && !Array.isArray(target)) root = setAt(root, [...path, oddKey], value ?? null);
    else root = setAt(root, path, value);
  }
  return Buffer.from(JSON.stringify(root) ?? 'null');
});

describe('parseGerritEvent fuzz', () => {
  it('every fixture itself satisfies the property', () => {
    for (const s of SEEDS) check(Buffer.from(JSON.stringify(s)));
  });

  it('seeds mutated with arbitrary JSON values and odd keys', () => {
    const seen = new Set<string>();
    fc.assert(fc.property(mutated, (body) => void seen.add(check(body))), { numRuns: RUNS });
    // The mutations are mild enough that some still parse; otherwise the property proves little.
    expect(seen.has('error')).toBe(true);
    expect(seen.size).toBeGreaterThan(1);
  });

  it('seeds with any subset of the fields the parser reads deleted or blanked', () => {
    const blank = fc.constantFrom(undefined, null, '', 0, -1, 1.5, false, {}, [], 'x');
    const arb = fc.tuple(seed, fc.subarray(READ, { minLength: 1 }), blank).map(([doc, del, value]) => {
      for (const p of del) {
        const parent = p.slice(0, -1).reduce<unknown>((n, k) => (n as Record<string | number, unknown> | undefined)?.[k], doc);
        if (parent !== null && typeof parent === 'object') setAt(doc, p, structuredClone(value));
      }
      return Buffer.from(JSON.stringify(doc));
    });
    fc.assert(fc.property(arb, (body) => void check(body)), { numRuns: RUNS });
  });

  it('seeds with one string value replaced by hostile text', () => {
    const hostile = fc.oneof(fc.string({ unit: 'binary', maxLength: 300 }), fc.constantFrom('../x', 'a..b', '-rf', 'refs/meta/config', '0'.repeat(40), 'refs/heads/x.lock', '@{', '\u0000'));
    const arb = fc.tuple(seed, fc.nat(), hostile).map(([doc, pick, text]) => {
      const strings = paths(doc).filter((p) => typeof p.reduce<unknown>((n, k) => (n as Record<string | number, unknown>)[k], doc) === 'string');
      return Buffer.from(JSON.stringify(setAt(doc, strings[pick % strings.length] ?? [], text)));
    });
    fc.assert(fc.property(arb, (body) => void check(body)), { numRuns: RUNS });
  });

  it('random bytes, and random bytes spliced into a seed', () => {
    const spliced = fc.tuple(seed, fc.nat(), fc.uint8Array({ maxLength: 64 })).map(([doc, at, bytes]) => {
      const b = Buffer.from(JSON.stringify(doc));
      const i = at % (b.length + 1);
      return Buffer.concat([b.subarray(0, i), Buffer.from(bytes), b.subarray(i)]);
    });
    fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 2048 }).map((a) => Buffer.from(a)), spliced), (body) => void check(body)), { numRuns: RUNS });
  });

  it('arbitrary JSON documents, with and without a known type', () => {
    const types = fc.constantFrom('patchset-created', 'comment-added', 'change-merged', 'ref-updated', 'x');
    const doc = fc.oneof(
      fc.jsonValue(),
      fc.tuple(types, fc.dictionary(fc.string(), fc.jsonValue())).map(([type, rest]) => ({ ...rest, type })),
    );
    fc.assert(fc.property(doc, (d) => void check(Buffer.from(JSON.stringify(d)))), { numRuns: RUNS });
  });

  it('deep nesting anywhere in a seed', () => {
    const arb = fc.tuple(seed, fc.nat(), fc.integer({ min: 1, max: 20_000 }), fc.boolean()).map(([doc, pick, depth, arrays]) => {
      const all = paths(doc);
      const open = arrays ? '[' : '{"a":';
      const close = arrays ? ']' : '}';
      const nested = JSON.parse(`${open.repeat(Math.min(depth, 30))}1${close.repeat(Math.min(depth, 30))}`) as unknown;
      const text = JSON.stringify(setAt(doc, all[pick % all.length]!, nested));
      // Past 30 levels, nest in the text itself (JSON.stringify of 20 000 levels would be slow to build).
      return Buffer.from(depth <= 30 ? text : text.replace(/^\{/, `{"deep":${open.repeat(depth)}1${close.repeat(depth)},`));
    });
    fc.assert(fc.property(arb, (body) => void check(body)), { numRuns: 200 });
  });
});
