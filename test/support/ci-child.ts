/**
 * The CI service in a child process, for tests that kill it (`kill -9`) and start it again.
 * argv: <config.yaml>. Prints `LISTENING <url>` on stdout once it accepts requests.
 */
import { loadCiConfig } from '../../untrusted-ci/config.js';
import { startCiService } from '../../untrusted-ci/service.js';
import { createLogger } from '#shared/logging.js';

const service = await startCiService(loadCiConfig(process.argv[2]!), {
  logger: createLogger({ level: process.env.AIRLOCK_TEST_LOG ?? 'warn' }),
  workspacePool: 0,
  // As `airlock ci serve` does: a replica that stopped leading exits.
  onLeadershipLost: () => void service.close().finally(() => process.exit(75)),
});
const url = await service.listen();
process.stdout.write(`LISTENING ${url}\n`);
process.on('SIGTERM', () => void service.close().then(() => process.exit(0)));
