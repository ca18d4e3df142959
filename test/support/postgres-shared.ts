/**
 * The run's shared PostgreSQL server, for a test file (in a vitest worker). The server is started
 * by the first file that asks (`postgres-global-setup.ts`) and stopped at the end of the run; each
 * file makes its own database on it:
 *
 *     const pg = await sharedPostgres();
 *     describe.skipIf(pg.skip)('the store on PostgreSQL', () => {
 *       let url: string;
 *       beforeAll(async () => { url = await pg.createDatabase(); });
 *       it('…', async () => { const c = new Client({ connectionString: url }); … });
 *     });
 *
 * Do not restart, kill or reconfigure the shared server: other files use it at the same time. A
 * test that needs that starts a server of its own (`startPostgres()` in `postgres.ts`).
 */
import { request } from 'node:http';
import { inject } from 'vitest';
import type { BrokerAnswer } from './postgres-global-setup.js';
import { createDatabase } from './postgres.js';

export interface SharedPostgres {
  /** Why the PostgreSQL tests cannot run on this machine (an ordinary user, no PostgreSQL); undefined when they can. */
  readonly skip: string | undefined;
  /** The shared server's superuser URL ('' when `skip` is set). */
  readonly adminUrl: string;
  /** A fresh database with an owner role of its own (`createDatabase` in `postgres.ts`): its owner's URL. Throws when `skip` is set. */
  createDatabase(name?: string): Promise<string>;
}

let cached: Promise<SharedPostgres> | undefined;

/** The shared server, started if it is not yet. Throws when it should run here and cannot (as root, in CI). */
export function sharedPostgres(): Promise<SharedPostgres> {
  return (cached ??= connect());
}

async function connect(): Promise<SharedPostgres> {
  const socket = inject('airlockPostgresBroker') as string | undefined;
  if (!socket) throw new Error('no PostgreSQL broker: vitest.config.ts must list test/support/postgres-global-setup.ts in globalSetup');
  const a = await ask(socket);
  if ('error' in a) throw new Error(`PostgreSQL for the tests: ${a.error}`);
  if ('skip' in a) {
    console.warn(`PostgreSQL tests skipped: ${a.skip}`);
    const skip = a.skip;
    return {
      skip,
      adminUrl: '',
      createDatabase: () => Promise.reject(new Error(`PostgreSQL tests skipped: ${skip}`)),
    };
  }
  return { skip: undefined, adminUrl: a.url, createDatabase: (name?: string) => createDatabase(a.url, name) };
}

function ask(socketPath: string): Promise<BrokerAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/server', method: 'POST' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        try {
          resolve(JSON.parse(body) as BrokerAnswer);
        } catch {
          reject(new Error(`the PostgreSQL broker answered ${res.statusCode ?? '?'}: ${body.slice(0, 200)}`));
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}
