/**
 * The PostgreSQL engine of the CI database (node-postgres, a connection pool): for a deployment
 * where several CI replicas share one state. The stores' SQL is written once for both engines
 * (see sql.ts); here `?` placeholders become `$1…`, each statement is prepared once per
 * connection, and 64-bit integers and numerics come back as JavaScript numbers.
 *
 * Transactions run SERIALIZABLE, as SQLite's do in effect (one writer at a time): the stores'
 * read-then-write steps (a newer patch set supersedes an older one, the gate's snapshot and its
 * outbox) need no locking of their own. A transaction the server aborts as a serialization
 * failure or a deadlock is run again, a bounded number of times.
 *
 * A server restart or a dropped connection is survived: the pool discards a broken connection and
 * opens a new one for the next statement; the statement that met the break fails (the caller's
 * retry or the next loop round repeats it), nothing is half-written (its transaction rolled back).
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import { StorageFailedError } from '#shared/errors.js';
import type { Db, Sql, SqlValue } from './sql.js';

/** How often a transaction is run again after the server refused it as colliding with another. */
const TX_ATTEMPTS = 20;
/**
 * SQLSTATEs of a transaction that may succeed when run again: serialization_failure,
 * deadlock_detected, and unique_violation (two transactions inserting the same new row, e.g. one
 * change enqueued by two replicas at once: run again, the second finds the first's row).
 */
const RETRYABLE = new Set(['40001', '40P01', '23505']);

/**
 * SQLSTATEs that say the connection or the server is going or gone, not that the statement was
 * wrong: class 08 (connection exception) and an administrator's or a crash's shutdown, or a
 * server still starting (57P01, 57P02, 57P03). A statement that meets one failed as the database
 * failed, like one whose socket broke.
 */
function connectionLost(state: string): boolean {
  return state.startsWith('08') || state === '57P01' || state === '57P02' || state === '57P03';
}

/** The advisory lock key migrations hold (any constant; 'airl' in ASCII). */
const MIGRATION_LOCK = 0x6169726c;

const INT8 = 20;
const NUMERIC = 1700;

function toNumber(text: string): number {
  const n = Number(text);
  if (!Number.isFinite(n)) throw new StorageFailedError(`PostgreSQL returned a number JavaScript cannot hold: ${text.slice(0, 40)}`);
  return n;
}

const types: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8 || oid === NUMERIC ? toNumber : pg.types.getTypeParser(oid, format ?? 'text')) as pg.CustomTypesConfig['getTypeParser'],
};

export interface PostgresOptions {
  /** postgres://user:password@host:port/database (and `?sslmode=…` as node-postgres reads it). */
  url: string;
  /** Connections at most (default 10). */
  max?: number;
  /** Called with an error of an idle connection (the server went away); the pool replaces it. */
  onIdleError?: (err: Error) => void;
}

export class PostgresDb implements Db {
  readonly engine = 'postgres' as const;
  readonly where: string;
  private readonly pool: pg.Pool;
  private readonly texts = new Map<string, { text: string; name: string }>();
  private readonly guarded = new WeakSet<pg.PoolClient>();

  constructor(o: PostgresOptions) {
    this.where = redact(o.url);
    this.pool = new pg.Pool({
      connectionString: o.url,
      max: o.max ?? 10,
      types,
      connectionTimeoutMillis: 10_000,
      idleTimeoutMillis: 30_000,
      application_name: 'airlock-ci',
      keepAlive: true,
    });
    // Without a listener, an idle connection's error (the server restarted) would end the process.
    this.pool.on('error', (err) => o.onIdleError?.(err));
  }

  async all<T>(sql: string, params: readonly SqlValue[] = []): Promise<T[]> {
    return (await this.query(this.pool, sql, params)).rows as T[];
  }
  async get<T>(sql: string, params: readonly SqlValue[] = []): Promise<T | undefined> {
    return (await this.query(this.pool, sql, params)).rows[0] as T | undefined;
  }
  async run(sql: string, params: readonly SqlValue[] = []): Promise<{ changes: number }> {
    return { changes: (await this.query(this.pool, sql, params)).rowCount ?? 0 };
  }

  /**
   * Bring the schema to `migrations.length`, one transaction per step, holding a session advisory
   * lock so that replicas starting at once migrate one after the other (the second finds the
   * work done). The version is kept in `airlock_schema`.
   */
  async migrate(migrations: readonly string[]): Promise<void> {
    const client = await this.connect();
    let broken: Error | undefined;
    try {
      await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
      try {
        await client.query('CREATE TABLE IF NOT EXISTS airlock_schema (version BIGINT NOT NULL)');
        const row = (await client.query<{ version: number }>('SELECT MAX(version) AS version FROM airlock_schema')).rows[0];
        const version = row?.version ?? 0;
        if (version > migrations.length) throw new StorageFailedError(`the database ${this.where} has schema ${version}, newer than this airlock's (${migrations.length})`);
        for (let v = version; v < migrations.length; v++) {
          await client.query('BEGIN');
          try {
            await client.query(migrations[v]!);
            await client.query('DELETE FROM airlock_schema');
            await client.query('INSERT INTO airlock_schema (version) VALUES ($1)', [v + 1]);
            await client.query('COMMIT');
          } catch (e) {
            await client.query('ROLLBACK').catch(() => undefined);
            throw e;
          }
        }
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch((err: Error) => (broken = err));
      }
    } finally {
      client.release(broken);
    }
  }

  async tx<T>(fn: (t: Sql) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.connect();
      let broken: Error | undefined;
      let open = true;
      const q = async (sql: string, params: readonly SqlValue[]): Promise<pg.QueryResult> => {
        if (!open) throw new Error('a statement on a transaction that has ended');
        return this.query(client, sql, params);
      };
      const t: Sql = {
        engine: 'postgres',
        all: async <R>(sql: string, params: readonly SqlValue[] = []) => (await q(sql, params)).rows as R[],
        get: async <R>(sql: string, params: readonly SqlValue[] = []) => (await q(sql, params)).rows[0] as R | undefined,
        run: async (sql: string, params: readonly SqlValue[] = []) => ({ changes: (await q(sql, params)).rowCount ?? 0 }),
      };
      try {
        await this.control(client, 'BEGIN ISOLATION LEVEL SERIALIZABLE');
        const out = await fn(t);
        await this.control(client, 'COMMIT');
        return out;
      } catch (e) {
        open = false;
        await client.query('ROLLBACK').catch((err: Error) => (broken = err));
        if (attempt < TX_ATTEMPTS && RETRYABLE.has(sqlState(e) ?? '')) {
          await new Promise((r) => setTimeout(r, Math.min(50, attempt * attempt) * Math.random()));
          continue;
        }
        throw e;
      } finally {
        open = false;
        client.release(broken);
      }
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  private async connect(): Promise<pg.PoolClient> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      throw new StorageFailedError(`cannot reach the database ${this.where}: ${(e as Error).message}`, { cause: e });
    }
    // While a connection is checked out the pool does not listen for its errors, and an 'error'
    // event with no listener ends the process: a server that restarts during a transaction would
    // take the service down. The statement that meets the break fails on its own (and the
    // connection is released as broken); the event needs only a listener. Once per connection.
    if (!this.guarded.has(client)) {
      this.guarded.add(client);
      client.on('error', () => undefined);
    }
    return client;
  }

  /** A transaction's own statement (BEGIN, COMMIT): errors as `query`'s. */
  private async control(client: pg.PoolClient, text: string): Promise<void> {
    try {
      await client.query(text);
    } catch (e) {
      throw this.failure(e);
    }
  }

  /** A server's answer to the statement stays as it is (the caller's to handle); a broken or closing connection is StorageFailedError. */
  private failure(e: unknown): unknown {
    const state = sqlState(e);
    if (state !== undefined && !connectionLost(state)) return e;
    return new StorageFailedError(`the database ${this.where} failed: ${(e as Error).message}`, { cause: e });
  }

  private async query(on: pg.Pool | pg.PoolClient, sql: string, params: readonly SqlValue[]): Promise<pg.QueryResult> {
    const { text, name } = this.numbered(sql);
    try {
      // A parameterless statement may hold several (migrations): the simple protocol, unnamed.
      return params.length === 0 && text.includes(';') ? await on.query(text) : await on.query({ text, name, values: params as SqlValue[] });
    } catch (e) {
      throw this.failure(e);
    }
  }

  /** `?` → `$n` outside quoted text, once per distinct statement. */
  private numbered(sql: string): { text: string; name: string } {
    let hit = this.texts.get(sql);
    if (!hit) {
      hit = { text: numberPlaceholders(sql), name: `a${createHash('sha256').update(sql).digest('hex').slice(0, 20)}` };
      this.texts.set(sql, hit);
    }
    return hit;
  }
}

/** The SQLSTATE of a server error (e.g. '23505' unique violation), if `e` is one. */
export function sqlState(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

export function numberPlaceholders(sql: string): string {
  let out = '';
  let n = 0;
  let quote: string | undefined;
  for (const ch of sql) {
    if (quote) {
      if (ch === quote) quote = undefined;
      out += ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      out += ch;
    } else if (ch === '?') out += `$${++n}`;
    else out += ch;
  }
  return out;
}

/** The URL without its password (and without a query that may carry one). */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    u.search = '';
    return u.toString();
  } catch {
    return 'postgres://(an unreadable URL)';
  }
}
