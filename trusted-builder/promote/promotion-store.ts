/**
 * The promoter's durable queue and record, in the builder's own SQLite file (never the CI's):
 * a hint accepted is written before it is answered, so a restart loses none; a commit published is
 * never built again (a rebuild is not bit-for-bit reproducible, so it would sign a second digest
 * under the same tag). A refused or failed promotion may be asked for again (the commit may reach a
 * protected branch later; the registry may be back).
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { StorageFailedError } from '#shared/errors.js';
import { PromotionHint } from '#shared/schemas/promotion-hint.js';

export type PromotionState = 'queued' | 'running' | 'published' | 'refused' | 'failed';

interface Row {
  key: string;
  hint: string;
  state: PromotionState;
  result: string | null;
  updated_at: number;
}

/** Told of each state a promotion is put in, once it is recorded (the builder's metrics). */
export type PromotionListener = (key: string, state: PromotionState) => void;

export class PromotionStore {
  private readonly db: Database.Database;
  private readonly listeners = new Set<PromotionListener>();

  constructor(
    file: string,
    private readonly now: () => number = Date.now,
  ) {
    try {
      if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
      this.db = new Database(file);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.db.exec(`CREATE TABLE IF NOT EXISTS promotions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        state TEXT NOT NULL,
        result TEXT,
        updated_at INTEGER NOT NULL
      )`);
    } catch (e) {
      throw new StorageFailedError(`cannot open the promotion store ${file}: ${(e as Error).message}`, { cause: e });
    }
  }

  state(key: string): PromotionState | undefined {
    return this.db.prepare<[string], { state: PromotionState }>('SELECT state FROM promotions WHERE key = ?').get(key)?.state;
  }

  /** Queue (or queue again, after a refusal or failure). */
  enqueue(key: string, hint: PromotionHint): void {
    this.db
      .prepare("INSERT INTO promotions (key, hint, state, updated_at) VALUES (?,?,'queued',?) ON CONFLICT(key) DO UPDATE SET hint = excluded.hint, state = 'queued', result = NULL, updated_at = excluded.updated_at")
      .run(key, JSON.stringify(hint), this.now());
    this.tell(key, 'queued');
  }

  set(key: string, state: PromotionState, result?: unknown): void {
    this.db.prepare('UPDATE promotions SET state = ?, result = ?, updated_at = ? WHERE key = ?').run(state, result === undefined ? null : JSON.stringify(result), this.now(), key);
    this.tell(key, state);
  }

  /** Calls `fn` after each enqueue and state change from now on, until the returned function is called. */
  watch(fn: PromotionListener): () => void {
    this.listeners.add(fn);
    return () => void this.listeners.delete(fn);
  }

  private tell(key: string, state: PromotionState): void {
    // A listener's failure is its own: the state is recorded whatever it does.
    for (const fn of this.listeners) {
      try {
        fn(key, state);
      } catch {
        /* ignored */
      }
    }
  }

  result<T>(key: string): T | undefined {
    const r = this.db.prepare<[string], Pick<Row, 'result'>>('SELECT result FROM promotions WHERE key = ?').get(key);
    return r?.result ? (JSON.parse(r.result) as T) : undefined;
  }

  /** What was queued or running when the last process stopped, oldest first. */
  unfinished(): { key: string; hint: PromotionHint }[] {
    return this.db
      .prepare<[], Pick<Row, 'key' | 'hint'>>("SELECT key, hint FROM promotions WHERE state IN ('queued','running') ORDER BY seq")
      .all()
      .flatMap((r) => {
        const h = PromotionHint.safeParse(JSON.parse(r.hint) as unknown);
        return h.success ? [{ key: r.key, hint: h.data }] : [];
      });
  }

  /** The `limit` promotions that changed last, newest first (the builder's page lists them). */
  recent(limit: number): { key: string; hint: PromotionHint | undefined; state: PromotionState; result: unknown; updatedAt: number }[] {
    return this.db
      .prepare<[number], Row>('SELECT key, hint, state, result, updated_at FROM promotions ORDER BY updated_at DESC, seq DESC LIMIT ?')
      .all(limit)
      .map((r) => {
        const h = PromotionHint.safeParse(JSON.parse(r.hint) as unknown);
        return { key: r.key, hint: h.success ? h.data : undefined, state: r.state, result: r.result ? (JSON.parse(r.result) as unknown) : undefined, updatedAt: r.updated_at };
      });
  }

  /** The commit of `project` promoted (published) most recently, if any. */
  latestPublished(project: string): string | undefined {
    const prefix = `${project}@`;
    const row = this.db
      .prepare<[number, string], { key: string }>("SELECT key FROM promotions WHERE state = 'published' AND substr(key, 1, ?) = ? ORDER BY updated_at DESC, seq DESC LIMIT 1")
      .get(prefix.length, prefix);
    return row?.key.slice(prefix.length);
  }

  /** The commit of `project` last published from `branch` (the one the next promotion must descend from). */
  latestPublishedOn(project: string, branch: string): string | undefined {
    const prefix = `${project}@`;
    const row = this.db
      .prepare<[number, string, string], { key: string }>(
        "SELECT key FROM promotions WHERE state = 'published' AND substr(key, 1, ?) = ? AND json_extract(result, '$.branch') = ? ORDER BY updated_at DESC, seq DESC LIMIT 1",
      )
      .get(prefix.length, prefix, branch);
    return row?.key.slice(prefix.length);
  }

  count(state: PromotionState): number {
    return this.db.prepare<[string], { n: number }>('SELECT COUNT(*) AS n FROM promotions WHERE state = ?').get(state)?.n ?? 0;
  }

  close(): void {
    this.db.close();
  }
}
