/**
 * `airlock builder …`: the trusted builder's commands (a separate service from `airlock ci`).
 */
import type { Command } from 'commander';
import { registerBuilderAuditCommand } from './builder-audit.js';

export function registerBuilderCommands(program: Command): void {
  const builder = program.command('builder').description('the trusted builder: re-verify, rebuild, sign and publish (a separate service)');
  registerBuilderAuditCommand(builder);
}
