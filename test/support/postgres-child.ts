/**
 * A private PostgreSQL server (`postgres.ts`) started by a child process that the test then kills
 * with SIGKILL, never calling `stop()`. Prints `STARTED <json>` (the postmaster's pid, the
 * server's directory) on stdout once the server answers, then waits to be killed.
 */
import { startPostgres } from './postgres.js';

const server = await startPostgres();
process.stdout.write(`STARTED ${JSON.stringify({ pid: server.pid, dir: server.dir })}\n`);
setInterval(() => undefined, 60_000);
