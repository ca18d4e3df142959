/**
 * Private warnings to the security team: an embargoed patch no longer applies on a public commit,
 * or its tests fail there, so no patched image exists for that commit; or it retired itself.
 *
 * The payload says as little as it can: the embargo's id (meaningless outside the team), the
 * public commit and the step that broke. No project name, patch content or message: the team reads
 * those with `airlock embargo show <id>` (encrypted to them). It is signed by the builder's embargo key —
 * a detached OpenPGP signature over the exact body bytes, base64 of the armored text in the
 * `X-Airlock-Signature` header, verifiable with `gpg --verify` and that key's public half — so
 * a receiver can tell a real warning from a forged one.
 *
 * Delivery: POST, JSON, retried with exponential backoff on network errors, timeouts, 429 and
 * 5xx; a 4xx other than 429 is not retried. A warning that cannot be delivered is reported to the
 * caller (who records it in the audit log and the embargo's encrypted log); the next promotion of
 * the project warns again.
 */
import { retry } from '#shared/retry.js';
import type { SigningKey } from '../sign/signer.js';

export interface BreakWarning {
  /** The embargo's id. */
  embargo: string;
  /** The public commit it broke on. */
  commit: string;
  /**
   * What happened: the patch no longer applies (`apply`); another patch of the set does not, so
   * this one got no image either (`blocked`); the patched tests or build failed (`tests`, `build`);
   * the lane failed for another reason (`internal`: the builder's log has it); or the public
   * history now contains the fix and the embargo retired itself (`retired`: not a break, but the
   * team should know the private image no longer carries it).
   */
  step: 'apply' | 'blocked' | 'tests' | 'build' | 'internal' | 'retired';
}

export interface EmbargoNotifier {
  /** Resolves with how it went; never throws. */
  warn(w: BreakWarning): Promise<{ delivered: boolean; attempts: number; error?: string }>;
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

  async warn(w: BreakWarning): Promise<{ delivered: boolean; attempts: number; error?: string }> {
    const now = this.o.now ?? Date.now;
    const body = Buffer.from(JSON.stringify({ version: 1, event: w.step === 'retired' ? 'embargo-retired' : 'embargo-broken', embargo: w.embargo, commit: w.commit, step: w.step, at: new Date(now()).toISOString() }));
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
