/**
 * The one canonical JSON (trusted-builder/canonical-json.ts) against the two encoders it replaced,
 * kept here verbatim as references: the audit log's (whose hashes are already on disk in every
 * audit.jsonl) and the provenance statement's (whose bytes consumers have signatures for).
 */
import canonicalize from 'canonicalize';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InternalError } from '#shared/errors.js';
import { canonicalJson, hasLoneSurrogate, type JsonValue } from '../../trusted-builder/canonical-json.js';

/** The audit log's encoder before this module (trusted-builder/audit/audit-log.ts). */
function auditLogBefore(value: JsonValue): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(auditLogBefore).join(',')}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${auditLogBefore(value[k] as JsonValue)}`).join(',')}}`;
}

/** The provenance encoder before this module (trusted-builder/sign/provenance.ts). */
function provenanceBefore(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new Error(`canonical JSON: ${value} is not a safe integer`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(provenanceBefore).join(',')}]`;
  if (typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${provenanceBefore(v)}`).join(',')}}`;
  }
  throw new Error(`canonical JSON: cannot encode a ${typeof value}`);
}

/** Any code point, or now and then a lone surrogate (which hostile JSON can carry: "\ud800"). */
const anyUnit = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }) },
  { weight: 1, arbitrary: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)) },
);
const doubles = fc.double({ noNaN: true, noDefaultInfinity: true });
/** JSON values as the audit log can hold them: what JSON.parse yields, with every kind of double and string. */
const jsonOf = (unit: fc.Arbitrary<string>) =>
  fc.letrec<{ value: JsonValue }>((tie) => ({
    value: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      fc.constant(null),
      fc.boolean(),
      doubles,
      fc.integer(),
      fc.string({ unit }),
      fc.array(tie('value')),
      fc.dictionary(fc.string({ unit }), tie('value')),
    ),
  })).value;
const jsonValues = jsonOf(anyUnit);

describe('canonical JSON', () => {
  it('writes exactly what the audit log wrote before, for every JSON value (records on disk still verify)', () => {
    fc.assert(
      fc.property(jsonValues, (v) => {
        expect(canonicalJson(v)).toBe(auditLogBefore(v));
        // as a verifier sees it: parsed back from the line the log wrote
        const reparsed = JSON.parse(JSON.stringify(v)) as JsonValue;
        expect(canonicalJson(reparsed)).toBe(auditLogBefore(reparsed));
      }),
      { numRuns: 2000 },
    );
  });

  it('is the canonicalize package (RFC 8785) itself for every value without a lone surrogate', () => {
    fc.assert(
      fc.property(jsonOf(fc.string({ unit: 'binary', minLength: 1, maxLength: 1 })), (v) => {
        expect(canonicalJson(v)).toBe(canonicalize(v));
      }),
      { numRuns: 1000 },
    );
  });

  it('writes exactly what provenance wrote before, for every value that encoder accepted (safe integers only)', () => {
    const provenanceLike = fc.letrec<{ value: unknown }>((tie) => ({
      value: fc.oneof(
        { depthSize: 'small' },
        fc.constant(null),
        fc.boolean(),
        fc.maxSafeInteger(),
        fc.string({ unit: anyUnit }),
        fc.array(tie('value')),
        fc.dictionary(fc.string({ unit: anyUnit }), fc.option(tie('value'), { nil: undefined }), { noNullPrototype: true }),
      ),
    })).value;
    fc.assert(
      fc.property(provenanceLike, (v) => {
        expect(canonicalJson(v)).toBe(provenanceBefore(v));
      }),
      { numRuns: 1000 },
    );
  });

  it('follows RFC 8785: UTF-16 key order, ECMAScript numbers, minimal string escapes', () => {
    // the RFC's own examples (sections 3.2.2 and 3.2.3)
    expect(canonicalJson({ numbers: [333333333.33333329, 1e30, 4.5, 2e-3, 0.000000000000000000000000001], string: '€$\u000f\nA\'B"\\\\"/', literals: [null, true, false] })).toBe(
      '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}',
    );
    const keys = { '\u20ac': 'Euro Sign', '\r': 'Carriage Return', '\ufb33': 'Hebrew Letter Dalet With Dagesh', '1': 'One', '\ud83d\ude00': 'Emoji: Grinning Face', '\u0080': 'Control', '\u00f6': 'Latin Small Letter O With Diaeresis' };
    expect(canonicalJson(keys)).toBe(
      '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign","\ud83d\ude00":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
    );
    expect(canonicalJson(-0)).toBe('0');
    expect(canonicalJson({ b: 1, a: undefined })).toBe('{"b":1}');
    expect(canonicalJson({ s: 'x\ud800y' })).toBe('{"s":"x\\ud800y"}');
  });

  it('refuses what is not JSON data instead of writing something a verifier cannot reproduce', () => {
    const refused: unknown[] = [NaN, Infinity, -Infinity, { x: NaN }, [undefined], undefined, 1n, () => 1, Symbol('s'), new Date(0), new Map(), [1, , 2], { d: new Date(0) }, new (class Thing {})()];
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    refused.push(cyclic);
    for (const v of refused) expect(() => canonicalJson(v), String(typeof v)).toThrow(InternalError);
    // shared (not cyclic) references are fine
    const shared = { a: 1 };
    expect(canonicalJson({ x: shared, y: [shared] })).toBe('{"x":{"a":1},"y":[{"a":1}]}');
    expect(canonicalJson(Object.assign(Object.create(null) as object, { b: 2, a: 1 }))).toBe('{"a":1,"b":2}');
  });

  it('hasLoneSurrogate finds unpaired halves only', () => {
    expect(['\ud800', 'a\udc00', '\udc00\ud800', 'x\ud83d'].map(hasLoneSurrogate)).toEqual([true, true, true, true]);
    expect(['', 'abc', '\ud83d\ude00', 'é€'].map(hasLoneSurrogate)).toEqual([false, false, false, false]);
  });
});
