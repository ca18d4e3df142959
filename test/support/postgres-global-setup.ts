/**
 * vitest globalSetup (`vitest.config.ts`): one PostgreSQL server (`postgres.ts`) for the whole
 * run, started only if a test asks for it. At setup this starts nothing but a broker: a tiny HTTP
 * server on a unix socket in a directory of its own (mode 0700), whose path it `provide`s as
 * `airlockPostgresBroker`. The first `POST /server` (from `sharedPostgres()` in
 * `postgres-shared.ts`, in a test worker) starts the server; every request gets the same answer:
 *
 * - `{url}`: the server's superuser URL;
 * - `{skip}`: PostgreSQL cannot run here and this is neither root nor CI (`npm run test:unit` as
 *   an ordinary user on a machine without the package): the tests that need it skip, saying why;
 * - `{error}`: it should run and does not (as root or with CI set it never skips).
 *
 * The teardown stops the server (deleting its directory) and the broker.
 */
import { rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { ownedTempDir, type PgServer, postgresAvailability, startPostgres } from './postgres.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The unix socket of the broker that starts the run's PostgreSQL server on the first request. */
    airlockPostgresBroker: string;
  }
}

export type BrokerAnswer = { url: string } | { skip: string } | { error: string };

/** Whether PostgreSQL-backed tests must run (fail rather than skip): as root (`npm test`, the bootstrap installs PostgreSQL) or in CI. */
export function mustRunPostgres(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.()): boolean {
  return uid === 0 || (env.CI !== undefined && env.CI !== '' && env.CI !== 'false');
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // Named like a server's directory, with an owner: reaped like one if this process is killed.
  const dir = ownedTempDir('broker-');
  const socket = join(dir, 'broker.sock');
  let server: Promise<PgServer> | undefined;
  let answer: Promise<BrokerAnswer> | undefined;
  const decide = async (): Promise<BrokerAnswer> => {
    const a = postgresAvailability();
    if (!a.ok) {
      return mustRunPostgres() ? { error: `${a.reason} (as root or in CI the PostgreSQL tests never skip)` } : { skip: `${a.reason}; not root and not CI, so the PostgreSQL tests skip` };
    }
    server = startPostgres();
    try {
      return { url: (await server).url };
    } catch (e) {
      return { error: e instanceof Error ? e.message : String(e) };
    }
  };
  const http = createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== '/server') {
      res.statusCode = 404;
      res.end();
      return;
    }
    void (answer ??= decide()).then((a) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(a));
    });
  });
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(socket, () => resolve());
  });
  project.provide('airlockPostgresBroker', socket);
  return async () => {
    http.closeAllConnections();
    await new Promise<void>((resolve) => http.close(() => resolve()));
    if (server) await server.then((s) => s.stop()).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  };
}
