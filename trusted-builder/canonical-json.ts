/**
 * The builder's one canonical JSON: RFC 8785 (JSON Canonicalization Scheme) via the `canonicalize`
 * package. Both byte strings the builder commits to go through it: the audit log's record hashes
 * (trusted-builder/audit/audit-log.ts) and the signed provenance statement
 * (trusted-builder/sign/provenance.ts).
 *
 * RFC 8785: object keys sorted by UTF-16 code unit, no whitespace, strings escaped as
 * `JSON.stringify` escapes them, numbers written as ECMAScript writes them (which is what
 * `JSON.stringify` does for every finite number; -0 is written `0`).
 *
 * Input must be JSON data: `null`, booleans, strings, finite numbers, arrays without holes, and
 * plain objects (prototype `Object.prototype` or `null`). Object members whose value is `undefined`
 * are left out, as `JSON.stringify` leaves them out. Anything else — NaN, ±Infinity, `undefined`
 * at the top or inside an array, a hole, a Date, a Map, a class instance, a function, a bigint, a
 * cycle — throws InternalError instead of being written some way a verifier might not reproduce.
 *
 * The one input RFC 8785 has no encoding for is a string holding a lone UTF-16 surrogate
 * (`canonicalize` refuses it). Hostile input can carry one (a hint field parsed from `"\ud800"`),
 * the audit log must still record it, and records written before this module existed hashed it as
 * `JSON.stringify` writes it (`"\ud800"`, escaped). So a value holding such a string anywhere —
 * key or value — is written by the same rules with that escape; every other value is exactly
 * RFC 8785 (test/trusted-builder/canonical-json.test.ts checks both against the earlier encoders).
 */
import canonicalize from 'canonicalize';
import { InternalError } from '#shared/errors.js';

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** RFC 8785 canonical JSON of `value` (see the module comment for the lone-surrogate case). */
export function canonicalJson(value: unknown): string {
  const loneSurrogate = checkJsonData(value);
  if (loneSurrogate) return withLoneSurrogates(value);
  const out = canonicalize(value);
  if (out === undefined) throw new InternalError('canonical JSON: the value has no JSON encoding');
  return out;
}

/** True when `s` holds a UTF-16 surrogate that is not half of a pair. */
export function hasLoneSurrogate(s: string): boolean {
  return /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

/** Throws InternalError unless `value` is JSON data; returns whether some string has a lone surrogate. */
function checkJsonData(value: unknown): boolean {
  const open = new Set<object>();
  let lone = false;
  const walk = (v: unknown, path: string): void => {
    if (v === null || typeof v === 'boolean') return;
    if (typeof v === 'string') {
      if (hasLoneSurrogate(v)) lone = true;
      return;
    }
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) throw new InternalError(`canonical JSON: ${path || 'the value'} is ${v}, not a JSON number`);
      return;
    }
    if (typeof v !== 'object') throw new InternalError(`canonical JSON: ${path || 'the value'} is a ${typeof v}, not JSON`);
    if (open.has(v)) throw new InternalError(`canonical JSON: ${path || 'the value'} refers to itself`);
    open.add(v);
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        if (!(i in v) || v[i] === undefined) throw new InternalError(`canonical JSON: ${path}[${i}] is missing or undefined`);
        walk(v[i], `${path}[${i}]`);
      }
    } else {
      const proto: unknown = Object.getPrototypeOf(v);
      if (proto !== Object.prototype && proto !== null) throw new InternalError(`canonical JSON: ${path || 'the value'} is a ${v.constructor?.name ?? 'object'}, not a plain object`);
      for (const [k, x] of Object.entries(v)) {
        if (hasLoneSurrogate(k)) lone = true;
        if (x !== undefined) walk(x, path ? `${path}.${k}` : k);
      }
    }
    open.delete(v);
  };
  walk(value, '');
  return lone;
}

/** RFC 8785's rules, with `JSON.stringify`'s escape for lone surrogates; only for checked JSON data. */
function withLoneSurrogates(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(withLoneSurrogates).join(',')}]`;
  const record = value as Record<string, unknown>;
  const keys = Object.keys(record).filter((k) => record[k] !== undefined).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${withLoneSurrogates(record[k])}`).join(',')}}`;
}
