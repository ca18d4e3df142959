/**
 * Authentication of promotion hints (untrusted CI → trusted builder, `POST /v1/hints`).
 *
 * Wire contract, both tiers:
 * - `x-airlock-timestamp`: the sender's clock in whole unix seconds, ASCII digits only;
 * - `x-airlock-signature`: `sha256=` + lowercase hex of HMAC-SHA256(secret, `<timestamp>.<raw body>`),
 *   computed over the exact bytes sent, so the receiver verifies the raw body before parsing it
 *   (fastify: a `parseAs: 'buffer'` content-type parser).
 *
 * `verifyHint` answers `{ ok: true }` or a typed `HintRefusal` whose `reason` is one of
 * `HintRefusalReason`. It never throws on what a client sent and its `detail` never contains the
 * secret or an echo of a header value (those go to an audit log; hostile bytes must not).
 * The signature is checked before the clock: a `stale-timestamp` refusal therefore means a hint that
 * was genuinely signed with our secret but is outside the ±`maxSkewSeconds` replay window (a replay,
 * or a clock that drifted), which an operator wants to tell apart from a forgery (`bad-signature`).
 *
 * A byte-identical resend *inside* the window passes `verifyHint`; `ReplayGuard` catches it. The
 * guard lives in one process's memory: several builder replicas each have their own, and a restart
 * forgets. That is acceptable because a hint is only a trigger the builder re-verifies, and the
 * builder deduplicates by commit anyway (the sender delivers at least once and signs each attempt
 * afresh, so honest retries never look like replays).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const HINT_TIMESTAMP_HEADER = 'x-airlock-timestamp';
export const HINT_SIGNATURE_HEADER = 'x-airlock-signature';

/** The replay window: a hint is accepted within ±5 minutes of the receiver's clock. */
export const DEFAULT_MAX_SKEW_SECONDS = 300; // 5 min

/** The headers `signHint` produces, to send along with the exact body it signed. */
export interface HintHeaders {
  'x-airlock-timestamp': string;
  'x-airlock-signature': string;
}

export type HintRefusalReason =
  /** A header is absent. */
  | 'missing-header'
  /** A header is present but not in the expected form (repeated, not digits, not `sha256=<64 hex>`). */
  | 'malformed-header'
  /** The signature does not match the body and timestamp under our secret. */
  | 'bad-signature'
  /** Correctly signed, but the timestamp is outside the replay window. */
  | 'stale-timestamp'
  /** (ReplayGuard) the same signed hint was already accepted inside the window. */
  | 'replayed'
  /** (ReplayGuard) too many hints inside one window; refuse (fail closed) and let the sender retry. */
  | 'replay-guard-full';

/** Why a hint was refused. `detail` is safe to log: it holds no secret and no client-sent bytes. */
export interface HintRefusal {
  ok: false;
  reason: HintRefusalReason;
  detail: string;
}

/** A hint whose signature and timestamp are good; `signature` is the hex digest (for ReplayGuard). */
export interface HintAccepted {
  ok: true;
  timestamp: number;
  signature: string;
}

export type HintVerdict = HintAccepted | HintRefusal;

/** Header values as node's `IncomingMessage.headers` (and fastify) give them: lowercase names. */
export type HintRequestHeaders = Readonly<Record<string, string | readonly string[] | undefined>>;

const TIMESTAMP_RE = /^[0-9]{1,12}$/;
const SIGNATURE_RE = /^sha256=([0-9a-f]{64})$/;

/**
 * The headers for sending `body` at `timestampSeconds`. Throws (a programming or configuration
 * error, not input) if the secret is empty or the timestamp is not a non-negative integer.
 */
export function signHint(secret: Buffer, body: Buffer, timestampSeconds: number): HintHeaders {
  requireSecret(secret);
  if (!Number.isSafeInteger(timestampSeconds) || timestampSeconds < 0 || timestampSeconds > 999_999_999_999) {
    throw new RangeError('a hint timestamp is a non-negative integer number of unix seconds');
  }
  const timestamp = String(timestampSeconds);
  return {
    [HINT_TIMESTAMP_HEADER]: timestamp,
    [HINT_SIGNATURE_HEADER]: `sha256=${mac(secret, timestamp, body).toString('hex')}`,
  };
}

/**
 * Check a received hint's signature over `rawBody` and its timestamp against `nowSeconds`.
 * Throws only if `secret` is empty (configuration); every client-controlled input yields a verdict.
 */
export function verifyHint(
  secret: Buffer,
  rawBody: Uint8Array,
  headers: HintRequestHeaders,
  nowSeconds: number,
  options: { maxSkewSeconds?: number } = {},
): HintVerdict {
  requireSecret(secret);
  const maxSkew = options.maxSkewSeconds ?? DEFAULT_MAX_SKEW_SECONDS;
  try {
    const ts = header(headers, HINT_TIMESTAMP_HEADER);
    const sig = header(headers, HINT_SIGNATURE_HEADER);
    if (ts === undefined || sig === undefined) {
      return refuse('missing-header', `${ts === undefined ? HINT_TIMESTAMP_HEADER : HINT_SIGNATURE_HEADER} is missing`);
    }
    if (ts === null || !TIMESTAMP_RE.test(ts)) return refuse('malformed-header', `${HINT_TIMESTAMP_HEADER} is not unix seconds`);
    const hex = sig === null ? undefined : SIGNATURE_RE.exec(sig)?.[1];
    if (hex === undefined) return refuse('malformed-header', `${HINT_SIGNATURE_HEADER} is not sha256=<64 lowercase hex digits>`);
    if (!(rawBody instanceof Uint8Array)) return refuse('bad-signature', 'the body is not bytes');

    const expected = mac(secret, ts, rawBody);
    if (!timingSafeEqual(expected, Buffer.from(hex, 'hex'))) return refuse('bad-signature', 'the signature does not match');

    const timestamp = Number(ts);
    const skew = nowSeconds - timestamp;
    if (!(Math.abs(skew) <= maxSkew)) {
      return refuse('stale-timestamp', `the timestamp is ${Math.round(Math.abs(skew))} s ${skew > 0 ? 'old' : 'ahead'}, outside the ±${maxSkew} s replay window`);
    }
    return { ok: true, timestamp, signature: hex };
  } catch {
    // Not reachable with the checks above; kept so that a hostile input can never become a 500.
    return refuse('malformed-header', 'the request could not be read');
  }
}

/**
 * Remembers the signatures of accepted hints until their timestamp leaves the replay window, and
 * refuses a second use of one. Per process (see the module comment); memory is bounded by
 * `maxEntries`: when that many hints are live inside one window, new ones are refused with
 * `replay-guard-full` (the sender retries later) rather than forgetting one that could then be replayed.
 * Only hints that passed `verifyHint` should be admitted, so a client without the secret cannot fill it.
 */
export class ReplayGuard {
  /** signature hex → the unix second after which its timestamp is outside the window. */
  private readonly seen = new Map<string, number>();
  private readonly maxSkew: number;
  private readonly maxEntries: number;
  private lastSweep = Number.NaN;

  constructor(options: { maxSkewSeconds?: number; maxEntries?: number } = {}) {
    this.maxSkew = options.maxSkewSeconds ?? DEFAULT_MAX_SKEW_SECONDS;
    this.maxEntries = options.maxEntries ?? 10_000;
  }

  get size(): number {
    return this.seen.size;
  }

  /** Record an accepted hint. `{ ok: true }` the first time; a refusal for a replay or when full. */
  admit(hint: Pick<HintAccepted, 'signature' | 'timestamp'>, nowSeconds: number): { ok: true } | HintRefusal {
    if (nowSeconds !== this.lastSweep || this.seen.size >= this.maxEntries) this.sweep(nowSeconds);
    if (this.seen.has(hint.signature)) return refuse('replayed', 'this signed hint was already accepted inside the replay window');
    if (this.seen.size >= this.maxEntries) return refuse('replay-guard-full', `more than ${this.maxEntries} hints inside one replay window`);
    this.seen.set(hint.signature, hint.timestamp + this.maxSkew);
    return { ok: true };
  }

  /** Drop entries whose timestamp can no longer pass verifyHint. */
  private sweep(nowSeconds: number): void {
    this.lastSweep = nowSeconds;
    for (const [sig, expires] of this.seen) if (expires < nowSeconds) this.seen.delete(sig);
  }
}

function mac(secret: Buffer, timestamp: string, body: Uint8Array): Buffer {
  return createHmac('sha256', secret).update(`${timestamp}.`).update(body).digest();
}

function requireSecret(secret: Buffer): void {
  if (!Buffer.isBuffer(secret) || secret.length === 0) throw new RangeError('the hint secret is empty');
}

/** A single header value; `null` when present but unusable (repeated, or not a string). */
function header(headers: HintRequestHeaders, name: string): string | null | undefined {
  const v = headers[name];
  if (v === undefined) return undefined;
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && v.length === 1 && typeof v[0] === 'string') return v[0];
  return null;
}

function refuse(reason: HintRefusalReason, detail: string): HintRefusal {
  return { ok: false, reason, detail };
}
