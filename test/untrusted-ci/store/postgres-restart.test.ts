/**
 * The PostgreSQL engine (untrusted-ci/store/postgres.ts) across its server's restart and crash, on a
 * private server (test/support/postgres.ts): while the server is down every statement fails with
 * StorageFailedError (a statement in flight too), the idle connections' errors go to `onIdleError`
 * and never end the process or leave an unhandled rejection, and statements succeed again once the
 * server is back, on new connections.
 */
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { StorageFailedError } from '#shared/errors.js';
import { openPostgres } from '../../../untrusted-ci/store/database.js';
import type { Db } from '../../../untrusted-ci/store/sql.js';
import { sharedPostgres } from '../../support/postgres-shared.js';
import { startPostgres, type PgServer } from '../../support/postgres.js';
import { until } from '../../support/until.js';

const shared = await sharedPostgres();

describe.skipIf(shared.skip)('PostgresDb when its server restarts or crashes', () => {
  let server: PgServer;
  let url: string;
  let db: Db;
  let idleErrors: Error[];
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown): void => void unhandled.push(e);

  beforeAll(async () => {
    server = await startPostgres({ durable: true });
    url = await server.createDatabase();
    process.on('unhandledRejection', onUnhandled);
  });
  afterAll(async () => {
    process.off('unhandledRejection', onUnhandled);
    await server?.stop();
  });
  beforeEach(async () => {
    idleErrors = [];
    db = await openPostgres(url, { max: 4, onIdleError: (err) => idleErrors.push(err) });
    await db.run('CREATE TABLE IF NOT EXISTS kept (n BIGINT NOT NULL)');
    await db.run('DELETE FROM kept');
  });
  afterEach(async () => {
    await db.close();
  });

  /** Several connections open and idle in the pool (each statement at once takes one). */
  async function warm(): Promise<void> {
    await Promise.all(Array.from({ length: 4 }, (_, i) => db.get('SELECT pg_sleep(0.05), ? AS i', [i])));
  }

  /** The statement's rejection, which must be a StorageFailedError (an AirlockError: matched on code across modules). */
  async function failure(p: Promise<unknown>): Promise<StorageFailedError> {
    const e = await p.then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e, 'the statement succeeded while the server was down').toBeDefined();
    expect(e).toBeInstanceOf(StorageFailedError);
    expect((e as StorageFailedError).code).toBe('AIRLOCK_E_STORAGE_FAILED');
    expect((e as Error).message).not.toContain(new URL(url).password);
    return e as StorageFailedError;
  }

  it('a restart while idle: the idle connections are replaced, and the next statements succeed with the data kept', async () => {
    await db.run('INSERT INTO kept (n) VALUES (?)', [1]);
    await warm();
    await server.restart();
    // The idle connections were told the server is shutting down: said to onIdleError, not thrown.
    await until('the pool to hear of its connections ending', () => (idleErrors.length > 0 ? true : undefined), 30_000);
    await db.run('INSERT INTO kept (n) VALUES (?)', [2]);
    expect(await db.all<{ n: number }>('SELECT n FROM kept ORDER BY n')).toEqual([{ n: 1 }, { n: 2 }]);
    await db.tx(async (t) => {
      await t.run('INSERT INTO kept (n) VALUES (?)', [3]);
    });
    expect((await db.get<{ c: number }>('SELECT COUNT(*) AS c FROM kept'))!.c).toBe(3);
    expect(unhandled).toEqual([]);
  });

  it('while the server is down every statement fails with StorageFailedError, and succeeds once it is back', async () => {
    await db.run('INSERT INTO kept (n) VALUES (?)', [1]);
    await warm();
    await server.kill();
    // A statement on a connection the pool still holds, a new one, and a transaction.
    for (let i = 0; i < 6; i++) await failure(db.get('SELECT ? AS i', [i]));
    await failure(db.tx((t) => t.run('INSERT INTO kept (n) VALUES (?)', [9])));
    await server.restart();
    await db.run('INSERT INTO kept (n) VALUES (?)', [2]);
    expect(await db.all<{ n: number }>('SELECT n FROM kept ORDER BY n')).toEqual([{ n: 1 }, { n: 2 }]);
    expect(unhandled).toEqual([]);
  });

  it('a statement in flight when the server restarts fails with StorageFailedError, and the next one succeeds', async () => {
    const slow = db.get('SELECT pg_sleep(30) AS slept');
    const slowTx = db.tx((t) => t.get('SELECT pg_sleep(30) AS slept'));
    // Both statements are running on the server before it is restarted.
    const admin = new pg.Client({ connectionString: server.url });
    await admin.connect();
    try {
      const running = async (): Promise<number> => Number((await admin.query<{ c: string }>("SELECT COUNT(*) AS c FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'")).rows[0]!.c);
      await until('the statements to run', async () => ((await running()) === 2 ? true : undefined), 30_000);
    } finally {
      await admin.end();
    }
    const restarted = server.restart();
    // Both awaited together: awaited one after the other, the second could reject while the test
    // waits for the first, with no handler yet, and count as an unhandled rejection of the test's own.
    await Promise.all([failure(slow), failure(slowTx)]);
    await restarted;
    expect(await db.get<{ one: number }>('SELECT 1 AS one')).toEqual({ one: 1 });
    expect(unhandled).toEqual([]);
  });
});
