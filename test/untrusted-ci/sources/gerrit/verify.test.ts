/** Webhook signature check: HMAC-SHA256 over the raw body, compared in constant time, failing closed. */
import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { UnauthorizedError } from '#shared/errors.js';
import { WEBHOOK_SIGNATURE_HEADER, signWebhookBody, verifyWebhookSignature } from '../../../../untrusted-ci/sources/gerrit/verify.js';

const SECRET = Buffer.from('hunter2-very-distinctive-shared-value');
const BODY = Buffer.from('{"type":"patchset-created","change":{"project":"p"}}');
const GOOD = signWebhookBody(BODY, SECRET);
const EXPECTED_HEX = GOOD.slice('sha256='.length);

function rejects(body: Buffer, header: string | readonly string[] | undefined, message: RegExp, secret = SECRET): void {
  let caught: unknown;
  try {
    verifyWebhookSignature(body, header, secret);
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(UnauthorizedError);
  const err = caught as UnauthorizedError;
  expect(err.code).toBe('AIRLOCK_E_UNAUTHORIZED');
  expect(err.httpStatus).toBe(401);
  expect(err.message).toMatch(message);
  // Neither the secret nor the digest it would take is ever echoed.
  expect(err.message).not.toContain(SECRET.toString());
  expect(err.message).not.toContain(EXPECTED_HEX);
}

describe('signWebhookBody', () => {
  it('is sha256=<hex HMAC-SHA256> (RFC 4231 test case 2)', () => {
    expect(signWebhookBody(Buffer.from('what do ya want for nothing?'), Buffer.from('Jefe'))).toBe(
      'sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
    );
    expect(GOOD).toMatch(/^sha256=[0-9a-f]{64}$/);
  });

  it('names the header in lower case, as Node presents it', () => {
    expect(WEBHOOK_SIGNATURE_HEADER).toBe('x-airlock-signature');
  });
});

describe('verifyWebhookSignature', () => {
  it('accepts the right signature, in either hex case and with surrounding spaces', () => {
    expect(() => verifyWebhookSignature(BODY, GOOD, SECRET)).not.toThrow();
    expect(() => verifyWebhookSignature(BODY, `sha256=${EXPECTED_HEX.toUpperCase()}`, SECRET)).not.toThrow();
    expect(() => verifyWebhookSignature(BODY, ` ${GOOD} `, SECRET)).not.toThrow();
  });

  it('rejects a signature made with another secret', () => {
    rejects(BODY, signWebhookBody(BODY, Buffer.from('other')), /does not match/);
  });

  it('rejects a body changed by one byte, or re-serialised', () => {
    const changed = Buffer.from(BODY);
    const i = changed.length - 2;
    changed.writeUInt8(changed.readUInt8(i) ^ 1, i);
    rejects(changed, GOOD, /does not match/);
    const reserialised = Buffer.from(JSON.stringify(JSON.parse(BODY.toString()), null, 1));
    rejects(reserialised, GOOD, /does not match/);
  });

  it('rejects a missing header', () => {
    rejects(BODY, undefined, /missing x-airlock-signature/);
    rejects(BODY, '', /missing/);
  });

  it('rejects a header sent twice', () => {
    rejects(BODY, [GOOD, GOOD], /more than once/);
  });

  it.each([
    ['too short', `sha256=${EXPECTED_HEX.slice(0, 62)}`],
    ['too long', `sha256=${EXPECTED_HEX}00`],
    ['without the prefix', EXPECTED_HEX],
    ['with another algorithm', `sha1=${EXPECTED_HEX}`],
    ['with an upper-case prefix', `SHA256=${EXPECTED_HEX}`],
    ['with non-hex digits', `sha256=${'z'.repeat(64)}`],
    ['of base64', `sha256=${createHmac('sha256', SECRET).update(BODY).digest('base64')}`],
    ['huge', `sha256=${'a'.repeat(1_000_000)}`],
  ])('rejects a signature %s as malformed', (_, header) => {
    rejects(BODY, header, /malformed/);
  });

  it('fails closed when no secret is configured', () => {
    rejects(BODY, signWebhookBody(BODY, Buffer.alloc(0)), /no key configured/, Buffer.alloc(0));
  });
});
