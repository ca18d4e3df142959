/**
 * The CI database's engines, for tests that run the same cases on each (the store conformance
 * suite, and any file that wants both): SQLite in memory or in a temp file, and PostgreSQL on the
 * run's shared server (test/support/postgres-shared.ts), a fresh database per call.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDatabase, openPostgres, type Db } from '../../untrusted-ci/store/database.js';
import type { Engine } from '../../untrusted-ci/store/sql.js';
import { sharedPostgres } from './postgres-shared.js';

export interface FreshDb {
  db: Db;
  /** Open the same database again (another connection, as after a restart of the service). */
  reopen(): Promise<Db>;
  /** Close what is open and remove what the engine made (a temp file). */
  dispose(): Promise<void>;
}

export interface StoreEngine {
  name: Engine;
  /** Why this engine cannot run here (PostgreSQL's tests skipped as an ordinary user without it). */
  skip: string | undefined;
  fresh(): Promise<FreshDb>;
}

export async function storeEngines(): Promise<StoreEngine[]> {
  const pg = await sharedPostgres();
  return [
    {
      name: 'sqlite',
      skip: undefined,
      fresh: async () => {
        const dir = mkdtempSync(join(tmpdir(), 'airlock-store-'));
        const file = join(dir, 'ci.sqlite');
        const opened: Db[] = [openDatabase(file)];
        return {
          db: opened[0]!,
          reopen: async () => {
            const d = openDatabase(file);
            opened.push(d);
            return d;
          },
          dispose: async () => {
            for (const d of opened) await d.close();
            rmSync(dir, { recursive: true, force: true });
          },
        };
      },
    },
    {
      name: 'postgres',
      skip: pg.skip,
      fresh: async () => {
        const url = await pg.createDatabase();
        const opened: Db[] = [await openPostgres(url)];
        return {
          db: opened[0]!,
          reopen: async () => {
            const d = await openPostgres(url);
            opened.push(d);
            return d;
          },
          dispose: async () => {
            for (const d of opened) await d.close().catch(() => undefined);
          },
        };
      },
    },
  ];
}

/**
 * The database a test of the service's parts runs on: SQLite in memory, or — with
 * `AIRLOCK_TEST_DATABASE=postgres` (`npm run test:postgres`) — a fresh database on the run's
 * PostgreSQL server, so the same tests run on the other engine.
 */
export async function testDatabase(): Promise<Db> {
  if (process.env.AIRLOCK_TEST_DATABASE !== 'postgres') return openDatabase(':memory:');
  const pg = await sharedPostgres();
  if (pg.skip) throw new Error(`AIRLOCK_TEST_DATABASE=postgres, but PostgreSQL cannot run here: ${pg.skip}`);
  return openPostgres(await pg.createDatabase());
}
