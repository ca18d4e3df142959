/**
 * ReviewOutbox: every message and vote airlock owes the review system, durable in the CI database
 * (`review_outbox`) and posted in order, retried until the review system answers.
 *
 * Where rows come from:
 * - check builds: this is a Scheduler `Reporter`; a finished check build of a change that came from
 *   the review system becomes one row (`check:<build>`), written before the build counts as
 *   reported, so a crash loses none;
 * - the gate: its own durable outbox (`gate_events`, kinds `start` and `report`) is read after a
 *   cursor and turned into rows (`gate:<event>`) in the same transaction that moves the cursor.
 *
 * Delivery: one row at a time, oldest first (DeliveryLoop). The review system unreachable, 5xx,
 * 429 or refusing our credentials: the same row again after a backoff (an operator fixes the
 * password; nothing is dropped meanwhile), up to MAX_ATTEMPTS, then it is given up (`refused`,
 * logged as an error) so that one row cannot hold every later one for ever. A refusal about the
 * row itself (a vote on a closed change or an outdated patch set): recorded as `refused`, logged,
 * skipped.
 *
 * `exclusive(project, change, fn)` runs `fn` (the gate's +2 and submit) after every pending row of
 * that change was posted and with no other post for it in between: a queued "Verified 0" must not
 * land between the gate's +2 and its submit.
 */
import type { Logger } from '#shared/logging.js';
import { isAirlockError, ReviewRefusedError } from '#shared/errors.js';
import type { BuildView } from '#shared/schemas/api/builds.js';
import { DeliveryLoop, type DeliveryLoopOptions, type Step } from '../delivery-loop.js';
import { KeyedLock } from '../merger/mirror.js';
import type { Reporter } from '../scheduler/scheduler.js';
import type { BuildStore } from '../store/build-store.js';
import { greatest, type Db, type Sql } from '../store/sql.js';
import type { GateStore } from '../store/gate-store.js';
import { checkMessage, gateMessage, gateStartMessage, type Links, type Said, type VotesConfig } from './review-messages.js';
import type { ReviewSystem } from './review-system.js';

export type OutboxState = 'pending' | 'posted' | 'refused';

export interface OutboxRow {
  id: number;
  dedupe: string;
  project: string;
  change: string;
  patchset: number;
  labels?: Record<string, number>;
  message: string;
  state: OutboxState;
  attempts: number;
  reason?: string;
}

export interface ReviewOutboxOptions {
  db: Db;
  system: ReviewSystem;
  store: Pick<BuildStore, 'build'>;
  gateStore: Pick<GateStore, 'events'>;
  votes: VotesConfig;
  links: Links;
  logger: Logger;
  loop?: Omit<DeliveryLoopOptions, 'logger' | 'what'>;
  now?: () => number;
}

interface Row {
  id: number;
  dedupe: string;
  project: string;
  change: string;
  patchset: number;
  labels: string | null;
  message: string;
  state: OutboxState;
  attempts: number;
  reason: string | null;
}

const GATE_CURSOR = 'gate-events';
/** Tries of one row at most (with the loop's backoff of up to 5 min, about four hours). */
const MAX_ATTEMPTS = 50;
const REASON_MAX = 500;

export class ReviewOutbox implements Reporter {
  private readonly loop: DeliveryLoop;
  private readonly lock = new KeyedLock();
  private readonly now: () => number;

  constructor(private readonly o: ReviewOutboxOptions) {
    this.now = o.now ?? Date.now;
    this.loop = new DeliveryLoop({ ...o.loop, logger: o.logger, what: 'review outbox' }, (signal) => this.step(signal));
  }

  start(): void {
    this.loop.start();
  }

  kick(): void {
    this.loop.kick();
  }

  close(): Promise<void> {
    return this.loop.close();
  }

  /** Scheduler Reporter: a finished check build of a review-system change is said there. */
  async report(build: BuildView): Promise<void> {
    if (build.pipeline !== 'check' || build.change.source !== 'gerrit') return;
    const said = checkMessage(build, this.o.votes, this.o.links);
    if (said) await this.enqueue(`check:${build.id}`, build.change.project, build.change.change, build.change.patchset, said);
  }

  /** Queue a row (once per `dedupe` key) and wake the sender. */
  async enqueue(dedupe: string, project: string, change: string, patchset: number, said: Said): Promise<void> {
    await this.insert(this.o.db, dedupe, project, change, patchset, said);
    this.loop.kick();
  }

  /** Rows, oldest first (tests, operators). */
  async rows(q: { state?: OutboxState; limit?: number } = {}): Promise<OutboxRow[]> {
    const where = q.state ? 'WHERE state = ?' : '';
    const args: (string | number)[] = q.state ? [q.state] : [];
    return (await this.o.db.all<Row>(`SELECT * FROM review_outbox ${where} ORDER BY id LIMIT ?`, [...args, Math.min(q.limit ?? 1000, 10_000)])).map(toView);
  }

  /** Rows waiting to be posted. */
  async pendingCount(): Promise<number> {
    return (await this.o.db.get<{ n: number }>("SELECT COUNT(*) AS n FROM review_outbox WHERE state = 'pending'"))?.n ?? 0;
  }

  /** Run `fn` once every pending row of this change is posted, with no other post for it until it ends. */
  exclusive<T>(project: string, change: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    return this.lock.run(`${project}~${change}`, async () => {
      for (const row of await this.pendingOf(project, change)) await this.deliver(row, signal);
      return fn();
    });
  }

  private async insert(on: Sql, dedupe: string, project: string, change: string, patchset: number, said: Said): Promise<void> {
    await on.run(
      "INSERT INTO review_outbox (dedupe, project, change, patchset, labels, message, state, created_at, updated_at) VALUES (?,?,?,?,?,?,'pending',?,?) ON CONFLICT (dedupe) DO NOTHING",
      [dedupe, project, change, patchset, said.labels ? JSON.stringify(said.labels) : null, said.message, this.now(), this.now()],
    );
  }

  private async pendingOf(project: string, change: string): Promise<OutboxRow[]> {
    return (await this.o.db.all<Row>("SELECT * FROM review_outbox WHERE state = 'pending' AND project = ? AND change = ? ORDER BY id", [project, change])).map(toView);
  }

  /**
   * Turn the gate's new `start` and `report` events into rows, moving the cursor in the same
   * transaction (the messages are made first: they read the builds).
   */
  private async importGateEvents(): Promise<void> {
    const cursor = (await this.o.db.get<{ since: number }>('SELECT since FROM review_cursor WHERE system = ?', [GATE_CURSOR]))?.since ?? 0;
    const events = await this.o.gateStore.events({ after: cursor, limit: 200 });
    if (events.length === 0) return;
    const rows: { e: (typeof events)[number]; said: Said }[] = [];
    for (const e of events) {
      if (e.kind === 'merged') continue;
      const build = e.build !== undefined ? await this.buildOrUndefined(e.build) : undefined;
      const said = e.kind === 'start' ? gateStartMessage(this.o.votes, this.o.links) : gateMessage(e.result ?? '', e.message ?? '', build, this.o.votes, this.o.links);
      if (said) rows.push({ e, said });
    }
    await this.o.db.tx(async (t) => {
      for (const { e, said } of rows) await this.insert(t, `gate:${e.id}`, e.project, e.change, e.patchset, said);
      await t.run(
        `INSERT INTO review_cursor (system, since, updated_at) VALUES (?,?,?) ON CONFLICT(system) DO UPDATE SET since = ${greatest(t, 'review_cursor.since', 'excluded.since')}, updated_at = excluded.updated_at`,
        [GATE_CURSOR, events[events.length - 1]!.id, this.now()],
      );
    });
  }

  private async buildOrUndefined(id: number): Promise<BuildView | undefined> {
    try {
      return await this.o.store.build(id);
    } catch {
      return undefined;
    }
  }

  private async step(signal: AbortSignal): Promise<Step> {
    await this.importGateEvents();
    const next = await this.o.db.get<Row>("SELECT * FROM review_outbox WHERE state = 'pending' ORDER BY id LIMIT 1");
    if (!next) return 'idle';
    const row = toView(next);
    try {
      await this.lock.run(`${row.project}~${row.change}`, () => this.deliver(row, signal));
      return 'progress';
    } catch (e) {
      if (signal.aborted) return 'progress';
      this.o.logger.warn({ err: e, project: row.project, change: row.change, row: row.id }, 'the review system did not take a message; it will be retried');
      return {};
    }
  }

  /**
   * Post one row (if it is still pending) and record the outcome. A refusal about the row is final;
   * anything else is thrown, with the attempt counted, for the caller to retry.
   */
  private async deliver(row: OutboxRow, signal?: AbortSignal): Promise<void> {
    const current = await this.o.db.get<{ state: OutboxState }>('SELECT state FROM review_outbox WHERE id = ?', [row.id]);
    if (current?.state !== 'pending') return;
    try {
      await this.o.system.post({ project: row.project, change: row.change, patchset: row.patchset, message: row.message, ...(row.labels ? { labels: row.labels } : {}) }, signal);
      await this.mark(row.id, 'posted');
    } catch (e) {
      if (e instanceof ReviewRefusedError && e.status === 409 && row.labels) {
        // A closed change takes no vote, but still a message: say why, without the vote.
        const alone = await this.o.system.post({ project: row.project, change: row.change, patchset: row.patchset, message: row.message }, signal).then(
          () => true,
          () => false,
        );
        if (alone) return this.mark(row.id, 'posted', `posted without its vote: ${e.message}`);
      }
      if (e instanceof ReviewRefusedError) {
        await this.mark(row.id, 'refused', e.message);
        this.o.logger.warn({ project: row.project, change: row.change, patchset: row.patchset, reason: e.message }, 'the review system refused a message; skipped');
        return;
      }
      const reason = clip(isAirlockError(e) ? e.message : String(e));
      if (row.attempts + 1 >= MAX_ATTEMPTS) {
        await this.mark(row.id, 'refused', `gave up after ${MAX_ATTEMPTS} attempts: ${reason}`);
        this.o.logger.error({ project: row.project, change: row.change, patchset: row.patchset, reason }, 'a message to the review system was given up');
        return;
      }
      await this.o.db.run('UPDATE review_outbox SET attempts = attempts + 1, reason = ?, updated_at = ? WHERE id = ?', [reason, this.now(), row.id]);
      throw e;
    }
  }

  private async mark(id: number, state: OutboxState, reason?: string): Promise<void> {
    await this.o.db.run('UPDATE review_outbox SET state = ?, attempts = attempts + 1, reason = ?, updated_at = ? WHERE id = ?', [state, reason ? clip(reason) : null, this.now(), id]);
  }
}

function toView(r: Row): OutboxRow {
  return {
    id: r.id,
    dedupe: r.dedupe,
    project: r.project,
    change: r.change,
    patchset: r.patchset,
    ...(r.labels ? { labels: JSON.parse(r.labels) as Record<string, number> } : {}),
    message: r.message,
    state: r.state,
    attempts: r.attempts,
    ...(r.reason !== null ? { reason: r.reason } : {}),
  };
}

function clip(s: string): string {
  // eslint-disable-next-line no-control-regex
  const line = s.replace(/[\u0000-\u001f\u007f]+/g, ' ');
  return line.length > REASON_MAX ? `${line.slice(0, REASON_MAX - 1)}…` : line;
}
