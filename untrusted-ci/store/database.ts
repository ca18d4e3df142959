/**
 * The CI's durable state: the schema and how a database is opened, on either engine (sql.ts).
 * Everything the service accepts is written here before it is answered, so a `kill -9` loses
 * nothing: on restart, builds found `running` are put back in the queue and run again from
 * scratch (see BuildStore.recover).
 *
 * The migrations are written once, in SQLite's words; `forPostgres` turns them into PostgreSQL's
 * (an auto-increment key becomes BIGSERIAL, an INTEGER a BIGINT: ids and millisecond times are
 * 64-bit there). Both engines keep the number of migrations applied (SQLite in `user_version`,
 * PostgreSQL in `airlock_schema`) and refuse a database newer than the code.
 */
import { join } from 'node:path';
import { StorageFailedError } from '#shared/errors.js';
import { PostgresDb } from './postgres.js';
import type { Db } from './sql.js';
import { SqliteDb } from './sqlite.js';

export type { Db } from './sql.js';

/** Each entry migrates from version i to i+1; never edit a shipped one, append. */
export const MIGRATIONS: readonly string[] = [
  `CREATE TABLE changes (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     project TEXT NOT NULL,
     branch TEXT NOT NULL,
     change TEXT NOT NULL,
     patchset INTEGER NOT NULL,
     ref TEXT NOT NULL,
     author TEXT NOT NULL,
     subject TEXT,
     source TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     UNIQUE (project, change, patchset)
   );
   CREATE TABLE builds (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     change_id INTEGER NOT NULL REFERENCES changes(id),
     project TEXT NOT NULL,
     branch TEXT NOT NULL,
     pipeline TEXT NOT NULL,
     state TEXT NOT NULL,
     result TEXT,
     reason TEXT,
     issues TEXT,
     attempt INTEGER NOT NULL DEFAULT 0,
     enqueued_at INTEGER NOT NULL,
     started_at INTEGER,
     finished_at INTEGER,
     commit_sha TEXT,
     env_image TEXT,
     env_cached INTEGER,
     reported_at INTEGER
   );
   CREATE INDEX builds_by_state ON builds (state, pipeline, id);
   CREATE INDEX builds_by_change ON builds (change_id);
   CREATE INDEX builds_by_project ON builds (project, id);
   CREATE TABLE jobs (
     build_id INTEGER NOT NULL REFERENCES builds(id),
     name TEXT NOT NULL,
     seq INTEGER NOT NULL,
     state TEXT NOT NULL,
     voting INTEGER NOT NULL,
     reason TEXT,
     exit_code INTEGER,
     started_at INTEGER,
     finished_at INTEGER,
     log_bytes INTEGER,
     artifacts TEXT,
     PRIMARY KEY (build_id, name)
   );
   CREATE TABLE seen_events (
     event_id TEXT PRIMARY KEY,
     seen_at INTEGER NOT NULL
   );`,
  // The gate (issue 4): a gate build runs one build set of the pipeline model; the model's state is
  // one JSON snapshot per pipeline; merges and reports go to a durable, append-only outbox.
  `ALTER TABLE builds ADD COLUMN gate_buildset INTEGER;
   ALTER TABLE builds ADD COLUMN stack TEXT;
   ALTER TABLE builds ADD COLUMN base_sha TEXT;
   CREATE INDEX builds_by_gate_buildset ON builds (gate_buildset);
   CREATE TABLE pipeline_state (
     pipeline TEXT PRIMARY KEY,
     json TEXT NOT NULL,
     updated_at INTEGER NOT NULL
   );
   CREATE TABLE gate_events (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     kind TEXT NOT NULL,
     project TEXT NOT NULL,
     branch TEXT NOT NULL,
     change TEXT NOT NULL,
     patchset INTEGER NOT NULL,
     result TEXT,
     message TEXT,
     commit_sha TEXT,
     build_id INTEGER,
     created_at INTEGER NOT NULL
   );
   CREATE INDEX gate_events_by_kind ON gate_events (kind, id);`,
  // Promotion hints (issue 5): the hint sender's cursor over gate_events (the last `merged` event it
  // is done with, per destination) and what became of each event it handled: delivered, refused by
  // the builder (4xx: never retried), invalid (no hint can be made of it), or still being retried.
  `CREATE TABLE hint_cursor (
     sink TEXT PRIMARY KEY,
     last_event_id INTEGER NOT NULL,
     updated_at INTEGER NOT NULL
   );
   CREATE TABLE hint_deliveries (
     sink TEXT NOT NULL,
     event_id INTEGER NOT NULL,
     state TEXT NOT NULL,
     status INTEGER,
     reason TEXT,
     attempts INTEGER NOT NULL,
     updated_at INTEGER NOT NULL,
     PRIMARY KEY (sink, event_id)
   );`,
  // The status page (issue 7): each planned job's timeout, and recent passing runs of a job by name
  // (how long it is expected to take).
  `ALTER TABLE jobs ADD COLUMN timeout_ms INTEGER;
   CREATE INDEX jobs_by_name ON jobs (name, state, build_id);`,
  // The review system (issue 14): each change's status and flags as the review system reports
  // them, every reviewer's votes on its current patch set, the catch-up's cursor (the review
  // system's clock, ms), and the outbox of messages and votes airlock posts there, retried until
  // the review system answers.
  `CREATE TABLE review_changes (
     project TEXT NOT NULL,
     change TEXT NOT NULL,
     branch TEXT NOT NULL,
     status TEXT NOT NULL,
     patchset INTEGER NOT NULL,
     ref TEXT NOT NULL,
     wip INTEGER NOT NULL DEFAULT 0,
     private INTEGER NOT NULL DEFAULT 0,
     owner TEXT,
     uploader TEXT,
     updated_at INTEGER NOT NULL,
     PRIMARY KEY (project, change)
   );
   CREATE TABLE review_votes (
     project TEXT NOT NULL,
     change TEXT NOT NULL,
     patchset INTEGER NOT NULL,
     account TEXT NOT NULL,
     label TEXT NOT NULL,
     value INTEGER NOT NULL,
     PRIMARY KEY (project, change, patchset, account, label)
   );
   CREATE TABLE review_cursor (
     system TEXT PRIMARY KEY,
     since INTEGER NOT NULL,
     updated_at INTEGER NOT NULL
   );
   CREATE TABLE review_outbox (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     dedupe TEXT UNIQUE,
     project TEXT NOT NULL,
     change TEXT NOT NULL,
     patchset INTEGER NOT NULL,
     labels TEXT,
     message TEXT NOT NULL,
     state TEXT NOT NULL,
     attempts INTEGER NOT NULL DEFAULT 0,
     reason TEXT,
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL
   );
   CREATE INDEX review_outbox_by_state ON review_outbox (state, id);`,
  // Replicas (issue 18): who leads (runs the gate, the scheduler and the outboxes) until when, on
  // the database's clock; `epoch` counts the changes of leader, and fences a leader that lost it.
  `CREATE TABLE leases (
     name TEXT PRIMARY KEY,
     holder TEXT NOT NULL,
     address TEXT,
     epoch INTEGER NOT NULL,
     expires_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL
   );`,
  // The scheduler's choice at a large queue's size (issue 18): each build carries its uploader, and
  // the queued ones are indexed by the fair queue's groups, so the oldest of each is read without
  // the rest of the queue (BuildStore.queuedHeads).
  `ALTER TABLE builds ADD COLUMN author TEXT;
   UPDATE builds SET author = (SELECT author FROM changes WHERE changes.id = builds.change_id);
   CREATE INDEX builds_queued ON builds (pipeline, project, author, id) WHERE state = 'queued';
   CREATE INDEX builds_queued_age ON builds (pipeline, project, id) WHERE state = 'queued';`,
];

/** A migration in PostgreSQL's words. */
export function forPostgres(ddl: string): string {
  return ddl.replace(/\bINTEGER PRIMARY KEY AUTOINCREMENT\b/g, 'BIGSERIAL PRIMARY KEY').replace(/\bINTEGER\b/g, 'BIGINT');
}

/** Open (creating if needed) and migrate the SQLite database at `file` (':memory:' for tests). */
export function openDatabase(file: string): Db {
  try {
    const db = SqliteDb.open(file);
    const version = db.version;
    if (version > MIGRATIONS.length) throw new Error(`database schema ${version} is newer than this airlock (${MIGRATIONS.length})`);
    for (let v = version; v < MIGRATIONS.length; v++) db.migrateTo(v + 1, MIGRATIONS[v]!);
    return db;
  } catch (e) {
    throw new StorageFailedError(`cannot open the database ${file}: ${(e as Error).message}`, { cause: e });
  }
}

/** Connect to and migrate the PostgreSQL database at `url` (its password is never logged). */
export async function openPostgres(url: string, o: { max?: number; onIdleError?: (err: Error) => void } = {}): Promise<Db> {
  const db = new PostgresDb({ url, ...o });
  try {
    await db.migrate(MIGRATIONS.map(forPostgres));
    return db;
  } catch (e) {
    await db.close().catch(() => undefined);
    throw e instanceof StorageFailedError ? e : new StorageFailedError(`cannot open the database ${db.where}: ${(e as Error).message}`, { cause: e });
  }
}

/** The CI database a loaded config names: its SQLite file in `dataDir`, or its PostgreSQL server. */
export async function openCiDatabase(
  config: { dataDir: string; database: { engine: 'sqlite' } | { engine: 'postgres'; maxConnections: number } },
  databaseUrl: string | undefined,
  onIdleError?: (err: Error) => void,
): Promise<Db> {
  if (config.database.engine === 'sqlite') return openDatabase(join(config.dataDir, 'ci.sqlite'));
  if (!databaseUrl) throw new StorageFailedError('database.engine is postgres but no URL was read from database.urlFile');
  return openPostgres(databaseUrl, { max: config.database.maxConnections, ...(onIdleError ? { onIdleError } : {}) });
}
