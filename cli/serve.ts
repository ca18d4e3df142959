/**
 * Run a service until SIGINT or SIGTERM: listen, say where, close cleanly on the first signal,
 * exit at once on a second. Shared by `airlock ci serve` and `airlock builder serve`.
 */
import { InternalError } from '#shared/errors.js';

export async function serveUntilSignal(service: { listen(): Promise<string>; close(): Promise<void> }, o: { name: string; address: string; onClose: string }): Promise<void> {
  let url: string;
  try {
    url = await service.listen();
  } catch (e) {
    await service.close();
    throw new InternalError(`cannot listen on ${o.address}: ${(e as Error).message}`, { cause: e });
  }
  process.stderr.write(`airlock: ${o.name} listening on ${url}\n`);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  process.stderr.write(`airlock: ${signal}: closing (${o.onClose})\n`);
  // A second signal does not wait for the close.
  const force = (): void => process.exit(3);
  process.once('SIGINT', force);
  process.once('SIGTERM', force);
  await service.close();
  // Keep-alive sockets or engine handles must not hold the process after a clean close.
  process.exit(0);
}
