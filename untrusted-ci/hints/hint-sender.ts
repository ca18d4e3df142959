/**
 * HintSender: delivers a promotion hint to the trusted builder (`POST <url>/v1/hints`) for every
 * `merged` event in the gate's durable outbox (`gate_events`), in id order, signed with
 * `shared/hints/hint-auth.ts`.
 *
 * Contract:
 * - **Cursor.** `hint_cursor` holds the id of the last `merged` event the sender is done with; it
 *   moves forward only in the same transaction that records the event's final state in
 *   `hint_deliveries`. A restart (new sender, same database) resumes after it.
 * - **Outcomes**, per event: a 2xx answer → `delivered`, next event. 401 and 404 (our secret or
 *   URL is wrong, not the hint), 429, 408, 5xx, a redirect, a
 *   network error or a timeout → the same event again after an exponential backoff with equal
 *   jitter (`initialMs` doubling up to `maxMs`, each wait drawn from [d/2, d]; a `Retry-After` in
 *   seconds lengthens it), so order is preserved and nothing is skipped while the builder is
 *   down; each failed attempt is recorded as `retrying`. Any other 4xx → `refused` with the status
 *   and the builder's reason, logged as an error, and skipped: a request the builder rejects will
 *   not get better by resending it. An event no valid `PromotionHint` can be made of (no commit,
 *   a name the schema refuses) → `invalid`, logged, skipped.
 * - **At least once.** The cursor moves after the 2xx arrives, so a crash or `close()` between the
 *   builder accepting a hint and the cursor moving sends it again. Each attempt is signed afresh
 *   (new timestamp), so the builder's ReplayGuard does not mistake it for a replay; the builder
 *   deduplicates by commit. There is one sender per database: two would send everything twice.
 * - **Waking.** `kick()` (call it after the gate writes a merge) wakes an idle sender at once; an
 *   idle sender also looks again every `pollIntervalMs`. A kick does not cut a backoff short.
 * - **Stopping.** `close()` aborts the request in flight and any wait, and resolves when the loop
 *   has stopped; the interrupted event is sent again by the next start.
 *
 * The secret grants nothing but asking the builder to look at a commit it re-verifies itself,
 * review included (docs/review.md). It is kept in a private field and never logged or stored.
 */
import type { Logger } from '#shared/logging.js';
import { parseRetryAfter } from '#shared/retry.js';
import { signHint } from '#shared/hints/hint-auth.js';
import { PROMOTION_HINT_VERSION, PromotionHint } from '#shared/schemas/promotion-hint.js';
import { greatest, type Db, type Sql } from '../store/sql.js';
import type { GateEventView, GateStore } from '../store/gate-store.js';
import { DeliveryLoop, type Step } from '../delivery-loop.js';

export type HintDeliveryState = 'delivered' | 'refused' | 'invalid' | 'retrying';

/** What became of one `merged` event (a row of `hint_deliveries`). */
export interface HintDelivery {
  eventId: number;
  state: HintDeliveryState;
  /** The builder's HTTP status of the last attempt, when it answered. */
  status?: number;
  reason?: string;
  attempts: number;
  updatedAt: number;
}

export interface HintSenderOptions {
  gateStore: Pick<GateStore, 'events'>;
  /** The CI database (migrated by openDatabase): holds the cursor and the delivery records. */
  db: Db;
  /** The builder's base URL (`http://builder:8443`); hints go to `<url>/v1/hints`. */
  url: string;
  /** The HMAC key shared with the builder. */
  secret: Buffer;
  logger: Logger;
  fetch?: typeof fetch;
  /** Waits between retries; must settle promptly when `signal` aborts. Default: a real timer. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** Wall clock in ms (signing timestamps, records). */
  now?: () => number;
  /** In [0, 1): the jitter. */
  random?: () => number;
  backoff?: { initialMs?: number; maxMs?: number };
  pollIntervalMs?: number;
  requestTimeoutMs?: number;
  /** The cursor's key, should one database ever feed two builders. */
  sink?: string;
  /** Told after each delivery record is written (the status page shows the backlog). */
  onChange?: () => void;
}

const DEFAULTS = {
  requestTimeoutMs: 30_000, // 30 s
  sink: 'trusted-builder',
};
const MAX_REASON_CHARS = 500;
const CONFIG_401 =
  "the builder refused the hint's signature: the CI's hints.secretFile and the builder's hint secret (the SecretStore path at builder.hintSecret of policies/secrets.yaml, field `secret`) must hold the same key";
const CONFIG_404 = 'no hint endpoint there: hints.url must be the builder\'s base URL (hints go to <hints.url>/v1/hints)';

export class HintSender {
  readonly #secret: Buffer;
  private readonly endpoint: string;
  private readonly o: HintSenderOptions;
  private readonly fetch: typeof fetch;
  private readonly now: () => number;
  private readonly sink: string;
  private readonly loop: DeliveryLoop;
  private cursorId = 0;
  private started = false;

  constructor(options: HintSenderOptions) {
    const base = new URL(options.url);
    if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new TypeError(`the hint URL must be http(s), not ${base.protocol}`);
    if (options.secret.length === 0) throw new RangeError('the hint secret is empty');
    this.o = options;
    this.#secret = Buffer.from(options.secret);
    this.endpoint = `${options.url.replace(/\/+$/, '')}/v1/hints`;
    this.fetch = options.fetch ?? globalThis.fetch;
    this.now = options.now ?? Date.now;
    this.sink = options.sink ?? DEFAULTS.sink;
    this.loop = new DeliveryLoop(
      {
        logger: options.logger,
        what: 'hint sender',
        ...(options.backoff ? { backoff: options.backoff } : {}),
        ...(options.pollIntervalMs !== undefined ? { pollIntervalMs: options.pollIntervalMs } : {}),
        ...(options.sleep ? { sleep: options.sleep } : {}),
        ...(options.random ? { random: options.random } : {}),
      },
      () => this.step(),
    );
  }

  /** Start the delivery loop (once). Throws if the cursor cannot be read. */
  async start(): Promise<void> {
    if (this.loop.signal.aborted) throw new Error('the hint sender is closed');
    if (this.started) return;
    this.started = true;
    this.cursorId = await this.cursor();
    this.loop.start();
  }

  /** A merge was written: look now instead of at the next poll. */
  kick(): void {
    this.loop.kick();
  }

  /** Stop promptly: aborts the request in flight and any wait. */
  async close(): Promise<void> {
    await this.loop.close();
  }

  /** The id of the last `merged` event handled (delivered, refused or invalid); 0 before the first. */
  async cursor(): Promise<number> {
    const row = await this.o.db.get<{ id: number }>('SELECT last_event_id AS id FROM hint_cursor WHERE sink = ?', [this.sink]);
    return row?.id ?? 0;
  }

  /** Delivery records, oldest event first. */
  async deliveries(q: { after?: number; limit?: number } = {}): Promise<HintDelivery[]> {
    return (
      await this.o.db.all<{ event_id: number; state: HintDeliveryState; status: number | null; reason: string | null; attempts: number; updated_at: number }>(
        'SELECT * FROM hint_deliveries WHERE sink = ? AND event_id > ? ORDER BY event_id LIMIT ?',
        [this.sink, q.after ?? 0, Math.min(q.limit ?? 100, 1000)],
      )
    ).map((r) => ({
        eventId: r.event_id,
        state: r.state,
        ...(r.status !== null ? { status: r.status } : {}),
        ...(r.reason !== null ? { reason: r.reason } : {}),
        attempts: r.attempts,
        updatedAt: r.updated_at,
      }));
  }

  /** Handle the next `merged` event after the cursor, if any. */
  private async step(): Promise<Step> {
    const [event] = await this.o.gateStore.events({ kind: 'merged', after: this.cursorId, limit: 1 });
    if (!event) return 'idle';
    const log = this.o.logger.child({ gateEvent: event.id, project: event.project, change: `${event.change},${event.patchset}` });

    const hint = PromotionHint.safeParse({
      version: PROMOTION_HINT_VERSION,
      project: event.project,
      branch: event.branch,
      commit: event.commit,
      ...(event.build !== undefined ? { ciRun: String(event.build) } : {}),
    });
    if (!hint.success) {
      const reason = clip(`no valid promotion hint: ${hint.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
      await this.finish(event, 'invalid', undefined, reason, 0);
      log.error({ reason }, 'a merge cannot be sent as a promotion hint; skipped');
      return 'progress';
    }

    const body = Buffer.from(JSON.stringify(hint.data));
    const headers = signHint(this.#secret, body, Math.floor(this.now() / 1000));
    const timeout = AbortSignal.timeout(this.o.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs);
    const signal = AbortSignal.any([this.loop.signal, timeout]);
    let res: Response;
    let text: string;
    try {
      res = await this.fetch(this.endpoint, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, signal, redirect: 'manual' });
      text = await readCapped(res, 2048);
    } catch (err) {
      if (this.loop.signal.aborted) return 'progress'; // closing: the next start sends it again
      const reason = `${this.endpoint}: ${timeout.aborted ? 'the request timed out' : `network error: ${describeError(err)}`}`;
      await this.retrying(event, undefined, reason);
      log.warn({ reason, url: this.endpoint }, 'the trusted builder is unreachable; the hint will be retried');
      return {};
    }

    const status = res.status;
    if (status >= 200 && status < 300) {
      await this.finish(event, 'delivered', status, undefined, 1);
      log.info({ commit: hint.data.commit, status }, 'promotion hint delivered');
      return 'progress';
    }
    const reason = reasonOf(status, text);
    // 401/404: the CI's secret or URL is wrong, not the hint: a configuration error, said as one
    // (with the fix), and the same hint tried again (with backoff) until an operator fixes it,
    // rather than dropping every merge meanwhile.
    const misconfigured = status === 401 ? CONFIG_401 : status === 404 ? CONFIG_404 : undefined;
    if (misconfigured) {
      const why = `${this.endpoint}: ${reason}: ${misconfigured}`;
      await this.retrying(event, status, why);
      log.error({ status, reason: why, url: this.endpoint }, 'promotion hints cannot be delivered: a configuration error; the hint is kept and tried again');
      return { retryAfterMs: parseRetryAfter(res.headers.get('retry-after')) };
    }
    if (status === 408 || status === 429 || status >= 500 || status < 400) {
      await this.retrying(event, status, `${this.endpoint}: ${reason}`);
      log.warn({ status, reason, url: this.endpoint }, 'the trusted builder did not take the hint; it will be retried');
      return { retryAfterMs: parseRetryAfter(res.headers.get('retry-after')) };
    }
    await this.finish(event, 'refused', status, `${this.endpoint}: ${reason}`, 1);
    log.error({ status, reason, url: this.endpoint, commit: hint.data.commit }, 'the trusted builder refused a promotion hint; skipped');
    return 'progress';
  }

  /** Merged events not yet delivered (or given up), and the last failed attempt, if the newest attempt failed. */
  async backlog(): Promise<{ pending: number; failing?: { status?: number; reason: string; at: number } }> {
    const pending = (await this.o.db.get<{ n: number }>("SELECT COUNT(*) AS n FROM gate_events WHERE kind = 'merged' AND id > ?", [this.cursorId]))?.n ?? 0;
    const last = await this.o.db.get<{ state: HintDeliveryState; status: number | null; reason: string | null; updated_at: number }>(
      'SELECT state, status, reason, updated_at FROM hint_deliveries WHERE sink = ? ORDER BY updated_at DESC, event_id DESC LIMIT 1',
      [this.sink],
    );
    return { pending, ...(last?.state === 'retrying' ? { failing: { ...(last.status !== null ? { status: last.status } : {}), reason: last.reason ?? '', at: last.updated_at } } : {}) };
  }

  /** Record the event's final state and move the cursor past it, atomically. */
  private async finish(event: GateEventView, state: Exclude<HintDeliveryState, 'retrying'>, status: number | undefined, reason: string | undefined, attempt: 0 | 1): Promise<void> {
    await this.o.db.tx(async (t) => {
      await this.record(t, event, state, status, reason, attempt);
      await t.run(
        `INSERT INTO hint_cursor (sink, last_event_id, updated_at) VALUES (?,?,?) ON CONFLICT(sink) DO UPDATE SET last_event_id = ${greatest(t, 'hint_cursor.last_event_id', 'excluded.last_event_id')}, updated_at = excluded.updated_at`,
        [this.sink, event.id, this.now()],
      );
    });
    this.cursorId = Math.max(this.cursorId, event.id);
    this.o.onChange?.();
  }

  private async retrying(event: GateEventView, status: number | undefined, reason: string): Promise<void> {
    await this.record(this.o.db, event, 'retrying', status, reason, 1);
    this.o.onChange?.();
  }

  private async record(on: Sql, event: GateEventView, state: HintDeliveryState, status: number | undefined, reason: string | undefined, attempt: 0 | 1): Promise<void> {
    await on.run(
      `INSERT INTO hint_deliveries (sink, event_id, state, status, reason, attempts, updated_at) VALUES (?,?,?,?,?,?,?)
       ON CONFLICT(sink, event_id) DO UPDATE SET state = excluded.state, status = excluded.status, reason = excluded.reason,
         attempts = hint_deliveries.attempts + excluded.attempts, updated_at = excluded.updated_at`,
      [this.sink, event.id, state, status ?? null, reason ?? null, attempt, this.now()],
    );
  }
}

/** At most `max` characters of the body; the rest is discarded unread. */
async function readCapped(res: Response, max: number): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < max) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.length;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  return Buffer.concat(chunks).subarray(0, max).toString('utf8');
}

/** The builder's reason: `code: message` of an airlock error body, else the start of the text. */
function reasonOf(status: number, text: string): string {
  let detail = text;
  try {
    const body = JSON.parse(text) as { code?: unknown; message?: unknown };
    if (typeof body.message === 'string') detail = typeof body.code === 'string' ? `${body.code}: ${body.message}` : body.message;
  } catch {
    // not JSON: keep the text
  }
  return clip(`HTTP ${status}${detail.trim() ? `: ${detail.trim()}` : ''}`);
}

function describeError(err: unknown): string {
  const e = err as { message?: unknown; cause?: { code?: unknown; message?: unknown } };
  const cause = e.cause?.code ?? e.cause?.message;
  return clip(`${String(e.message ?? err)}${typeof cause === 'string' ? ` (${cause})` : ''}`);
}

/** One line, no control characters, bounded: the reason is stored and logged. */
function clip(s: string): string {
  const line = s.replace(/[\u0000-\u001f\u007f]+/g, ' ');
  return line.length > MAX_REASON_CHARS ? `${line.slice(0, MAX_REASON_CHARS - 1)}…` : line;
}
