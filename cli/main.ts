/**
 * `airlock` — one command, several services. This is the composition root for the CLI: it is the
 * only place that picks concrete adapters (dockerode, the policy file on disk).
 *
 * Exit codes: 0 job passed · 1 job failed (non-zero exit, killed, timed out) · 2 bad input or
 * policy violation · 3 airlock or engine failure.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { AirlockError } from '#shared/errors.js';
import { registerJobCommands } from './job.js';
import { registerCiCommands } from './ci.js';
import { registerGateSimCommand } from './gate-sim.js';
import { registerBuilderCommands } from './builder.js';
import { registerEmbargoCommands } from './embargo.js';
import { registerLintCommand } from './lint.js';
import { registerExecutorCommands } from './executor.js';

export const EXIT = { passed: 0, failed: 1, badInput: 2, internal: 3 } as const;

// `airlock … | head` closes stdout early: that is the reader's choice, not an airlock failure.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });
}

/** The version of the package this file belongs to, read from its package.json (one source of truth). */
function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  return typeof pkg.version === 'string' ? pkg.version : 'unknown';
}

const program = new Command('airlock')
  .description('airlock: public untrusted CI and a separate trusted builder')
  .version(`airlock ${packageVersion()}`, '-V, --version', 'print the version of airlock')
  .exitOverride()
  .configureOutput({ writeErr: (s) => process.stderr.write(s) });
registerJobCommands(program);
registerCiCommands(program);
registerGateSimCommand(program);
registerBuilderCommands(program);
registerEmbargoCommands(program);
registerLintCommand(program);
registerExecutorCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  process.exitCode = exitCodeFor(e);
}

export function exitCodeFor(e: unknown): number {
  if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : EXIT.badInput;
  if (e instanceof AirlockError) {
    process.stderr.write(`airlock: ${e.code}: ${e.message}\n`);
    return e.httpStatus < 500 ? EXIT.badInput : EXIT.internal;
  }
  process.stderr.write(`airlock: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
  return EXIT.internal;
}
