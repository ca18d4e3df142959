/**
 * The CI database, whichever engine holds it: SQLite (embedded, the default: one file under the
 * data directory) or PostgreSQL (a deployment with several CI replicas and executor hosts). The
 * stores (BuildStore, GateStore, the review state and outbox, the hint sender) speak this
 * interface only, in the SQL both engines accept:
 *
 * - placeholders are `?` (the PostgreSQL engine numbers them);
 * - a new row's id comes from `RETURNING id`; upserts are `INSERT … ON CONFLICT … DO …`;
 * - the larger of two values is `greatest(sql)` (`MAX(a, b)` in SQLite, `GREATEST` in PostgreSQL);
 * - integers come back as JavaScript numbers on both (ids and millisecond times fit).
 *
 * A transaction (`tx`) sees its own writes and nobody else's half-done work. On PostgreSQL it runs
 * SERIALIZABLE and is retried when the server says two transactions collided, so its function may
 * run more than once: it must touch nothing but the database (results go out through its return).
 */
export type SqlValue = string | number | null;

export type Engine = 'sqlite' | 'postgres';

/** A connection or an open transaction. */
export interface Sql {
  readonly engine: Engine;
  all<T>(sql: string, params?: readonly SqlValue[]): Promise<T[]>;
  get<T>(sql: string, params?: readonly SqlValue[]): Promise<T | undefined>;
  /** A statement without rows; `changes` is the number of rows it inserted, updated or deleted. */
  run(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }>;
}

export interface Db extends Sql {
  /** Run `fn` in one transaction: all of it commits, or none of it (it throws). */
  tx<T>(fn: (t: Sql) => Promise<T>): Promise<T>;
  /** Where the database is, without credentials (for logs and errors). */
  readonly where: string;
  close(): Promise<void>;
}

/** The larger of two SQL expressions, in the engine's words. */
export function greatest(s: Sql, a: string, b: string): string {
  return s.engine === 'postgres' ? `GREATEST(${a}, ${b})` : `MAX(${a}, ${b})`;
}
