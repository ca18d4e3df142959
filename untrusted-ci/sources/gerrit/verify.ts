/**
 * Authenticating a Gerrit event delivery. Three ways, each with the same shared secret
 * (`webhooks.gerritSecretFile`):
 * - **the secret in the URL path** (`POST /hooks/gerrit/<secret>`): what Gerrit's webhooks plugin
 *   can do on its own (`remote.NAME.url` in webhooks.config);
 * - **HTTP basic authentication** with the secret as the password (`https://airlock:<secret>@ci/hooks/gerrit`;
 *   the plugin's HTTP client sends it after our 401 challenge);
 * - **an HMAC-SHA256 of the raw body**, GitHub style, added by a signing relay beside Gerrit:
 *   the only one that also protects the body in transit, and needs no secret in Gerrit's config.
 *
 * The first two put the secret in webhooks.config, in refs/meta/config, which every project owner
 * can read: anyone who reads it can announce events. That is acceptable because an event is only
 * a hint: the CI re-reads a change from the review system's REST API (with its own account)
 * before it votes the gate's +2 or asks for a submit, and the review system's rules decide the
 * merge. A forged event can make the CI test something; it cannot merge or sign anything.
 *
 * About the HMAC: Gerrit's webhooks plugin (https://gerrit.googlesource.com/plugins/webhooks)
 * signs nothing. It POSTs `GSON.toJson(event)` with `Content-Type: application/json;
 * charset=UTF-8` and `X-Origin-Url`, and `remote.NAME.*` in webhooks.config only sets url, event,
 * connectionTimeout, socketTimeout, maxTries, retryInterval and sslVerify: no secret, no custom
 * header. So `X-Airlock-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>` is added by
 * whatever delivers the event: a small signing relay beside Gerrit, airlock's CLI
 * (`signWebhookBody`). It is computed over the raw bytes, before any JSON parsing, so a
 * re-serialised body cannot pass. A replayed delivery carries the same body, so it gets the same
 * `eventId` (a hash of the body) and is deduplicated downstream.
 *
 * Messages never contain the secret or the expected digest.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { UnauthorizedError } from '#shared/errors.js';

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

/** Constant-time equality of a presented secret and ours (both as UTF-8); an empty secret matches nothing. */
function sameSecret(given: string, secret: Buffer): boolean {
  const a = createHmac('sha256', 'airlock-webhook').update(given, 'utf8').digest();
  const b = createHmac('sha256', 'airlock-webhook').update(secret).digest();
  return secret.length > 0 && given.length > 0 && timingSafeEqual(a, b);
}

/**
 * One delivery authenticated by any of the three ways (see the module comment): `token` from the
 * URL path, `authorization` (HTTP basic, the password is the secret), or the signature header.
 * Throws UnauthorizedError naming what was wrong (never the secret); `challenge` is true when no
 * credential came at all (the caller answers with a Basic challenge).
 */
export function verifyWebhook(raw: Buffer, h: { token?: string; authorization?: string; signature?: string | readonly string[] }, secret: Buffer): void {
  if (secret.length === 0) throw new UnauthorizedError('webhook verification has no key configured');
  if (h.token !== undefined) {
    if (!sameSecret(h.token, secret)) throw new UnauthorizedError('the secret in the webhook URL does not match');
    return;
  }
  const basic = /^Basic ([A-Za-z0-9+/=]{1,4096})$/.exec(h.authorization ?? '');
  if (basic) {
    const decoded = Buffer.from(basic[1]!, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0 || !sameSecret(decoded.slice(colon + 1), secret)) throw new UnauthorizedError('the webhook password does not match');
    return;
  }
  verifyWebhookSignature(raw, h.signature, secret);
}
