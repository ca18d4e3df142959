/**
 * Authenticating a Gerrit event delivery: an HMAC-SHA256 of the raw body, GitHub style.
 *
 * Why our own header: Gerrit's webhooks plugin (https://gerrit.googlesource.com/plugins/webhooks)
 * signs nothing. Its HttpSession POSTs `GSON.toJson(event)` with `Content-Type: application/json;
 * charset=UTF-8` plus whatever its processor adds (the Gerrit processor: `X-Origin-Url: <canonical
 * web URL>` in recent versions, nothing in older ones), and `remote.NAME.*` in webhooks.config only
 * sets url, event, connectionTimeout, socketTimeout, maxTries, retryInterval and sslVerify: no
 * secret, no token, no custom header. There is no `X-Gerrit-Signature`; some third-party receivers
 * check one, but Gerrit never sends it. A shared token in the webhook URL would not help either:
 * webhooks.config lives in refs/meta/config, readable by every project owner.
 *
 * So airlock accepts `X-Airlock-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`, added by
 * whatever delivers the event: a small signing relay beside Gerrit (or a Gerrit hook script),
 * airlock's CLI and demo (`signWebhookBody`). It is computed over the raw bytes, before any JSON
 * parsing, so a re-serialised body cannot pass. The secret only lets its holder announce events,
 * which are hints: the scheduler re-reads the change from Gerrit before it votes or merges.
 * A replayed delivery carries the same body, so it gets the same `eventId` (a hash of the body)
 * and is deduplicated downstream.
 *
 * Messages never contain the secret or the expected digest.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { UnauthorizedError } from '../../../shared/errors.js';

/** The header, lower-cased as Node and fastify present it. HTTP header names are case-insensitive. */
export const WEBHOOK_SIGNATURE_HEADER = 'x-airlock-signature';

const PREFIX = 'sha256=';
const DIGEST_BYTES = 32;

/** `sha256=<64 lowercase hex>`: the header value for `raw` under the shared `secret`. */
export function signWebhookBody(raw: Buffer, secret: Buffer): string {
  return PREFIX + createHmac('sha256', secret).update(raw).digest('hex');
}

/**
 * Returns if `headerValue` is `sha256=` + the hex HMAC-SHA256 of `raw` under `secret` (hex digits in
 * either case); throws `UnauthorizedError` otherwise: header missing, repeated (an array), not of
 * that form, or not matching. The digests are compared in constant time. An empty `secret` rejects
 * everything, so a missing configuration fails closed.
 */
export function verifyWebhookSignature(raw: Buffer, headerValue: string | readonly string[] | undefined, secret: Buffer): void {
  if (secret.length === 0) throw new UnauthorizedError('webhook verification has no key configured');
  if (headerValue === undefined || headerValue === '') throw new UnauthorizedError(`missing ${WEBHOOK_SIGNATURE_HEADER} header`);
  if (typeof headerValue !== 'string') throw new UnauthorizedError(`${WEBHOOK_SIGNATURE_HEADER} header given more than once`);

  const value = headerValue.trim();
  if (value.length !== PREFIX.length + DIGEST_BYTES * 2 || !value.startsWith(PREFIX) || !/^[0-9a-fA-F]+$/.test(value.slice(PREFIX.length))) {
    throw new UnauthorizedError(`malformed ${WEBHOOK_SIGNATURE_HEADER} header: expected sha256=<64 hex digits>`);
  }
  const given = Buffer.from(value.slice(PREFIX.length), 'hex');
  const expected = createHmac('sha256', secret).update(raw).digest();
  // Lengths are equal by construction above; timingSafeEqual would throw if they were not.
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new UnauthorizedError(`${WEBHOOK_SIGNATURE_HEADER} does not match the body`);
  }
}
