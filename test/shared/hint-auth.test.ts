/**
 * Promotion-hint authentication: the wire format is pinned against an independent HMAC, every
 * tampering and every garbled header is a typed refusal (never a throw, never an echo of the secret
 * or of the hostile header), the ±5 min window is exact, and the ReplayGuard refuses a second use
 * of a signed hint inside the window while staying bounded.
 */
import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_SKEW_SECONDS,
  ReplayGuard,
  signHint,
  verifyHint,
  type HintRequestHeaders,
} from '#shared/hints/hint-auth.js';
import { PromotionHint } from '#shared/schemas/promotion-hint.js';

const secret = Buffer.from('s3cr3t-hint-key-for-tests-only-0123456789');
const now = 1_700_000_000;
const body = Buffer.from(JSON.stringify({ version: 1, project: 'tools/airlock', branch: 'main', commit: 'a'.repeat(40), ciRun: '7' }));

function signed(b: Buffer = body, ts = now): HintRequestHeaders {
  return { ...signHint(secret, b, ts) };
}

function refusal(headers: HintRequestHeaders, b: Uint8Array = body, at = now, key = secret): string {
  const v = verifyHint(key, b, headers, at);
  expect(v.ok).toBe(false);
  const text = JSON.stringify(v);
  expect(text).not.toContain(secret.toString());
  expect(text).not.toContain(secret.toString('hex'));
  return v.ok ? '' : v.reason;
}

describe('signHint', () => {
  it('signs "<timestamp>.<raw body>" with HMAC-SHA256 and sends the timestamp in unix seconds', () => {
    const h = signHint(secret, body, now);
    const expected = createHmac('sha256', secret).update(`${now}.${body.toString()}`).digest('hex');
    expect(h).toEqual({ 'x-airlock-timestamp': String(now), 'x-airlock-signature': `sha256=${expected}` });
  });

  it('refuses an empty secret and a timestamp that is not whole non-negative seconds', () => {
    expect(() => signHint(Buffer.alloc(0), body, now)).toThrow(RangeError);
    expect(() => verifyHint(Buffer.alloc(0), body, signed(), now)).toThrow(RangeError);
    for (const ts of [1.5, -1, Number.NaN, Infinity]) expect(() => signHint(secret, body, ts)).toThrow(RangeError);
  });
});

describe('verifyHint', () => {
  it('accepts a hint signed with the same secret, and returns the signature digest', () => {
    const h = signed();
    expect(verifyHint(secret, body, h, now)).toEqual({ ok: true, timestamp: now, signature: String(h['x-airlock-signature']).slice(7) });
    // node gives a header once as an array when a framework collects them that way
    expect(verifyHint(secret, body, { 'x-airlock-timestamp': [String(now)], 'x-airlock-signature': [String(h['x-airlock-signature'])] }, now).ok).toBe(true);
  });

  it('refuses a tampered body', () => {
    const tampered = Buffer.from(body.toString().replace('"7"', '"8"'));
    expect(refusal(signed(), tampered)).toBe('bad-signature');
    expect(refusal(signed(), Buffer.concat([body, Buffer.from(' ')]))).toBe('bad-signature');
  });

  it('refuses a tampered timestamp (the signature covers it)', () => {
    const h = signed();
    expect(refusal({ ...h, 'x-airlock-timestamp': String(now + 1) })).toBe('bad-signature');
    expect(refusal({ ...h, 'x-airlock-timestamp': `0${now}` })).toBe('bad-signature');
  });

  it('refuses a hint signed with another secret', () => {
    expect(refusal(signed(), body, now, Buffer.from('another secret'))).toBe('bad-signature');
  });

  it('accepts exactly ±300 s of skew and refuses ±301 s as outside the replay window', () => {
    expect(DEFAULT_MAX_SKEW_SECONDS).toBe(300);
    expect(verifyHint(secret, body, signed(body, now - 300), now).ok).toBe(true);
    expect(verifyHint(secret, body, signed(body, now + 300), now).ok).toBe(true);
    expect(refusal(signed(body, now - 301))).toBe('stale-timestamp');
    expect(refusal(signed(body, now + 301))).toBe('stale-timestamp');
    const v = verifyHint(secret, body, signed(body, now - 301), now);
    expect(v.ok === false && v.detail).toMatch(/301 s old, outside the ±300 s replay window/);
    expect(verifyHint(secret, body, signed(body, now - 301), now, { maxSkewSeconds: 400 }).ok).toBe(true);
  });

  it('refuses missing and garbled headers with a typed reason', () => {
    const h = signed();
    const sig = String(h['x-airlock-signature']);
    const ts = String(h['x-airlock-timestamp']);
    expect(refusal({})).toBe('missing-header');
    expect(refusal({ 'x-airlock-signature': sig })).toBe('missing-header');
    expect(refusal({ 'x-airlock-timestamp': ts })).toBe('missing-header');
    for (const bad of ['', ' 1700000000', '1700000000 ', '+1700000000', '-1700000000', '1.7e9', '1700000000.5', '9'.repeat(13), 'now']) {
      expect(refusal({ 'x-airlock-timestamp': bad, 'x-airlock-signature': sig }), bad).toBe('malformed-header');
    }
    for (const bad of ['', sig.slice(7), `sha1=${sig.slice(7)}`, sig.toUpperCase(), `SHA256=${sig.slice(7)}`, sig.slice(0, -1), `${sig}0`, `sha256=${'z'.repeat(64)}`, `${sig}, ${sig}`]) {
      expect(refusal({ 'x-airlock-timestamp': ts, 'x-airlock-signature': bad }), bad).toBe('malformed-header');
    }
    expect(refusal({ 'x-airlock-timestamp': [ts, ts], 'x-airlock-signature': sig })).toBe('malformed-header');
    expect(refusal({ 'x-airlock-timestamp': ts, 'x-airlock-signature': [] })).toBe('malformed-header');
    // what a JavaScript caller might hand over despite the types
    const hostile = (v: unknown) => ({ 'x-airlock-timestamp': v, 'x-airlock-signature': sig }) as unknown as HintRequestHeaders;
    for (const v of [1700000000, null, {}, [1700000000]]) expect(refusal(hostile(v))).toBe('malformed-header');
    expect(refusal(null as unknown as HintRequestHeaders)).toBe('malformed-header');
    expect(refusal(h, 'not bytes' as unknown as Uint8Array)).toBe('bad-signature');
  });

  it('never throws, never accepts, and never echoes the header it was sent, whatever the headers are', () => {
    const text = fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.constantFrom(String(now), `sha256=${'0'.repeat(64)}`));
    const value = fc.oneof(text, fc.array(text, { maxLength: 3 }), fc.constant(undefined));
    fc.assert(
      fc.property(value, value, fc.uint8Array({ maxLength: 64 }), (ts, sig, raw) => {
        const v = verifyHint(secret, raw, { 'x-airlock-timestamp': ts, 'x-airlock-signature': sig }, now);
        if (v.ok) return false;
        const detail = v.detail;
        // Under 8 characters a value may be a word of the fixed text by chance ("con" of "seconds").
        return (typeof ts !== 'string' || ts.length < 8 || !detail.includes(ts)) && (typeof sig !== 'string' || sig.length < 8 || !detail.includes(sig));
      }),
      { numRuns: 500 },
    );
  });

  it('verifies the raw bytes, so the receiver checks before it parses the PromotionHint', () => {
    const v = verifyHint(secret, body, signed(), now);
    expect(v.ok).toBe(true);
    expect(PromotionHint.parse(JSON.parse(body.toString()))).toEqual({ version: 1, project: 'tools/airlock', branch: 'main', commit: 'a'.repeat(40), ciRun: '7' });
  });
});

describe('ReplayGuard', () => {
  const accept = (b: Buffer, ts: number, at = now) => {
    const v = verifyHint(secret, b, signed(b, ts), at);
    if (!v.ok) throw new Error(v.reason);
    return v;
  };

  it('refuses the same signed hint a second time inside the window, and accepts a fresh signature of the same body', () => {
    const guard = new ReplayGuard();
    const first = accept(body, now);
    expect(guard.admit(first, now)).toEqual({ ok: true });
    expect(guard.admit(first, now + 10)).toMatchObject({ ok: false, reason: 'replayed' });
    expect(guard.admit(accept(body, now + 1, now + 1), now + 1)).toEqual({ ok: true }); // an honest retry is signed afresh
  });

  it('forgets a signature once its timestamp is outside the window (verifyHint refuses it from then on)', () => {
    const guard = new ReplayGuard();
    const first = accept(body, now);
    guard.admit(first, now);
    expect(guard.admit(first, now + 300)).toMatchObject({ reason: 'replayed' });
    expect(verifyHint(secret, body, signed(body, now), now + 301)).toMatchObject({ ok: false, reason: 'stale-timestamp' });
    guard.admit(accept(body, now + 301, now + 301), now + 301);
    expect(guard.size).toBe(1);
  });

  it('is bounded: when full inside one window it refuses (fail closed) instead of forgetting, and frees space as entries expire', () => {
    const guard = new ReplayGuard({ maxEntries: 2 });
    const hints = [0, 1, 2].map((i) => accept(Buffer.from(`{"n":${i}}`), now));
    expect(guard.admit(hints[0]!, now).ok).toBe(true);
    expect(guard.admit(hints[1]!, now).ok).toBe(true);
    expect(guard.admit(hints[2]!, now)).toMatchObject({ ok: false, reason: 'replay-guard-full' });
    expect(guard.admit(hints[0]!, now)).toMatchObject({ reason: 'replayed' }); // still remembered
    expect(guard.size).toBe(2);
    expect(guard.admit(accept(Buffer.from('{"n":3}'), now + 301, now + 301), now + 301).ok).toBe(true);
    expect(guard.size).toBe(1);
  });
});
