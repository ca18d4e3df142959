/**
 * The SQLite engine of the CI database (better-sqlite3, WAL, one file): the embedded default.
 * better-sqlite3 is synchronous; this wraps it in the asynchronous `Db` the stores use. There is
 * one connection, so a transaction holds it: while one is open (its function awaiting between
 * statements), every other statement and transaction waits for it to end rather than slip into it.
 *
 * `synchronous = FULL`: a committed write survives power loss as well as a process crash — the
 * fsync per commit costs about a millisecond, which the queue can afford.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Db, Sql, SqlValue } from './sql.js';

/** Prepared statements kept per connection (the stores use a few dozen distinct ones). */
const STATEMENT_CACHE = 256;

export class SqliteDb implements Db {
  readonly engine = 'sqlite' as const;
  private readonly statements = new Map<string, Database.Statement>();
  /** Set while a transaction holds the connection; resolves when it ends. */
  private held: Promise<void> | undefined;

  constructor(
    private readonly db: Database.Database,
    readonly where: string,
  ) {}

  static open(file: string): SqliteDb {
    if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    return new SqliteDb(db, file === ':memory:' ? 'sqlite::memory:' : `sqlite:${file}`);
  }

  /** The schema version (`user_version`) and a way to run migration text: for migrate(). */
  get version(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }
  migrateTo(version: number, ddl: string): void {
    this.db.transaction(() => {
      this.db.exec(ddl);
      this.db.pragma(`user_version = ${version}`);
    })();
  }

  async all<T>(sql: string, params: readonly SqlValue[] = []): Promise<T[]> {
    while (this.held) await this.held;
    return this.stmt(sql).all(...params) as T[];
  }
  async get<T>(sql: string, params: readonly SqlValue[] = []): Promise<T | undefined> {
    while (this.held) await this.held;
    return this.stmt(sql).get(...params) as T | undefined;
  }
  async run(sql: string, params: readonly SqlValue[] = []): Promise<{ changes: number }> {
    while (this.held) await this.held;
    return { changes: this.stmt(sql).run(...params).changes };
  }

  async tx<T>(fn: (t: Sql) => Promise<T>): Promise<T> {
    while (this.held) await this.held;
    let release!: () => void;
    this.held = new Promise<void>((r) => (release = r));
    let open = true;
    const check = (): void => {
      if (!open) throw new Error('a statement on a transaction that has ended');
    };
    const t: Sql = {
      engine: 'sqlite',
      all: async <R>(sql: string, params: readonly SqlValue[] = []) => (check(), this.stmt(sql).all(...params) as R[]),
      get: async <R>(sql: string, params: readonly SqlValue[] = []) => (check(), this.stmt(sql).get(...params) as R | undefined),
      run: async (sql: string, params: readonly SqlValue[] = []) => (check(), { changes: this.stmt(sql).run(...params).changes }),
    };
    try {
      this.db.exec('BEGIN IMMEDIATE');
      const out = await fn(t);
      this.db.exec('COMMIT');
      return out;
    } catch (e) {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
      throw e;
    } finally {
      open = false;
      this.held = undefined;
      release();
    }
  }

  async close(): Promise<void> {
    while (this.held) await this.held;
    if (this.db.open) this.db.close();
  }

  private stmt(sql: string): Database.Statement {
    let s = this.statements.get(sql);
    if (!s) {
      if (this.statements.size >= STATEMENT_CACHE) this.statements.delete(this.statements.keys().next().value!);
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }
}
