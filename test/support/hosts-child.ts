/**
 * A process that starts one executor host (test/support/hosts.ts), prints it as one JSON line, and
 * waits to be killed: hosts.docker.test.ts kills it with SIGKILL to see that the next startHost()
 * removes what it left.
 */
import { startHost } from './hosts.js';

const host = await startHost();
process.stdout.write(`${JSON.stringify({ name: host.name, dir: host.dir, ciAddress: host.ciAddress, enginePid: host.enginePid })}\n`);
setInterval(() => undefined, 60_000);
