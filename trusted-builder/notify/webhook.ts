/**
 * Warnings to the security team: something happened to an embargo — a patch no longer applies on a
 * public commit, another patch of its set does not (it is blocked), its patched tests or build
 * failed, or it was retired (by the builder, finding the fix public, or by a member).
 *
 * The body says nothing of which: `{version: 2, event: "embargo-changed", notice, at, nonce}`, where
 * `notice` is always WARNING_NOTICE. The webhook's receiver (a chat bridge, a mail relay, their
 * operators and logs) is not the team, and an embargo id next to a public commit, or the mere
 * step, tells which project has an undisclosed fix and when it changed; the team reads what
 * changed with `airlock embargo list` (encrypted to them). `at` and the random `nonce` are what a
 * receiver needs to refuse a replayed warning; the body is signed by the builder's embargo key — a
 * detached OpenPGP signature over the exact body bytes, base64 of the armored text in the
 * `X-Airlock-Signature` header, verifiable with `gpg --verify` and that key's public half — so a
 * receiver can tell a real warning from a forged one.
 *
 * Delivery: POST, JSON, retried with exponential backoff on network errors, timeouts, 429 and
 * 5xx; a 4xx other than 429 is not retried. A warning that cannot be delivered is reported to the
 * caller (who records it in the audit log); the next private build warns again if it still fails.
 */
import { randomBytes } from 'node:crypto';
import { retry } from '#shared/retry.js';
import type { SigningKey } from '../sign/signer.js';

/** The whole message of every warning. */
export const WARNING_NOTICE = 'something changed: run `airlock embargo list`';
export const WARNING_VERSION = 2;

export interface WarningBody {
  version: typeof WARNING_VERSION;
  event: 'embargo-changed';
  notice: typeof WARNING_NOTICE;
  /** When it was sent (ISO 8601). */
  at: string;
  /** 32 hex digits, random: a receiver keeps the recent ones to refuse a replay. */
  nonce: string;
}

export interface WarnResult {
  delivered: boolean;
  attempts: number;
  error?: string;
}

export interface EmbargoNotifier {
  /** Send one opaque warning; resolves with how it went, never throws. */
  warn(): Promise<WarnResult>;
}

export interface WebhookOptions {
  url: string;
  /** Signs the body (detached, armored): the builder's embargo key, which the team already trusts. */
  signingKey: Pick<SigningKey, 'signDetached'>;
  attempts?: number; // default 4
  baseDelayMs?: number; // default 500
  timeoutMs?: number; // default 10 s
  now?: () => number;
}

export const SIGNATURE_HEADER = 'x-airlock-signature';

export class WebhookNotifier implements EmbargoNotifier {
  constructor(private readonly o: WebhookOptions) {
    const u = new URL(o.url);
    if (u.protocol !== 'https:' && !(u.protocol === 'http:' && ['127.0.0.1', '[::1]', 'localhost'].includes(u.hostname))) {
      throw new TypeError(`the embargo webhook must be https (plain http only to loopback): ${u.origin}`);
    }
  }

  async warn(): Promise<WarnResult> {
    const now = this.o.now ?? Date.now;
    const warning: WarningBody = { version: WARNING_VERSION, event: 'embargo-changed', notice: WARNING_NOTICE, at: new Date(now()).toISOString(), nonce: randomBytes(16).toString('hex') };
    const body = Buffer.from(JSON.stringify(warning));
    const signature = Buffer.from(await this.o.signingKey.signDetached(body)).toString('base64');
    const attempts = this.o.attempts ?? 4;
    if (!(attempts >= 1)) return { delivered: false, attempts: 0, error: '' };
    try {
      return await retry(
        async (attempt) => {
          let res: Response;
          try {
            res = await fetch(this.o.url, {
              method: 'POST',
              body,
              headers: { 'content-type': 'application/json', [SIGNATURE_HEADER]: signature },
              signal: AbortSignal.timeout(this.o.timeoutMs ?? 10_000),
              redirect: 'error',
            });
          } catch (e) {
            const cause = (e as { cause?: { code?: string } }).cause;
            throw new Undelivered(cause?.code ?? (e as Error).name, true, attempt);
          }
          await res.arrayBuffer().catch(() => undefined);
          if (res.ok) return { delivered: true, attempts: attempt };
          throw new Undelivered(`HTTP ${res.status}`, res.status >= 500 || res.status === 429, attempt);
        },
        { attempts, baseDelayMs: this.o.baseDelayMs ?? 500, retryable: (e) => (e as Undelivered).retryable },
      );
    } catch (e) {
      if (e instanceof Undelivered) return { delivered: false, attempts: e.attempt, error: e.message };
      return { delivered: false, attempts, error: (e as Error).message }; // warn never throws
    }
  }
}

/** Why attempt `attempt` did not deliver: the network error's code or `HTTP <status>`. */
class Undelivered extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
    readonly attempt: number,
  ) {
    super(message);
  }
}
