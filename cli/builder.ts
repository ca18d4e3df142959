/**
 * `airlock builder …`: the trusted builder's commands (a separate service from `airlock ci`).
 */
import type { Command } from 'commander';
import { createLogger } from '#shared/logging.js';
import { loadBuilderConfig } from '../trusted-builder/config.js';
import { startBuilderService } from '../trusted-builder/service.js';
import { registerBuilderAuditCommand } from './builder-audit.js';
import { registerBuilderPromoteCommand } from './builder-promote.js';
import { serveUntilSignal } from './serve.js';

export function registerBuilderCommands(program: Command): void {
  const builder = program.command('builder').description('the trusted builder: re-verify, rebuild, sign and publish (a separate service)');
  builder
    .command('serve')
    .description('run the trusted builder (hints in, signed images out) until SIGINT or SIGTERM')
    .requiredOption('--config <file>', 'the builder config (YAML)')
    .action(async (f: { config: string }) => {
      const config = loadBuilderConfig(f.config);
      const level = process.env.AIRLOCK_LOG_LEVEL;
      const service = await startBuilderService(config, { logger: createLogger({ name: 'airlock-builder', ...(level ? { level } : {}) }) });
      await serveUntilSignal(service, { name: 'trusted builder', address: `${config.listen.host}:${config.listen.port}`, onClose: 'a promotion in progress finishes first' });
    });
  registerBuilderPromoteCommand(builder);
  registerBuilderAuditCommand(builder);
}
