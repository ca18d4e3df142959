/**
 * `airlock gate-sim FILE`: replay a gate or check scenario (YAML, see
 * untrusted-ci/pipelines/sim/scenario.ts) through the service's own pipeline managers with a
 * simulated clock and executor, and print one JSON object. `-` reads the scenario from stdin.
 * Exit 2 on a bad scenario, naming every problem.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { InvalidInputError } from '#shared/errors.js';
import { parseScenario } from '../untrusted-ci/pipelines/sim/scenario.js';
import { simulate } from '../untrusted-ci/pipelines/sim/simulate.js';

/** A scenario is a small file; refuse anything that is clearly not one. */
const MAX_SCENARIO_BYTES = 4 * 1024 * 1024; // 4 MiB

export function registerGateSimCommand(program: Command): void {
  program
    .command('gate-sim')
    .description('replay a gate/check scenario (YAML) with a simulated executor and clock; prints one JSON object')
    .argument('<file>', 'scenario file, or - for stdin')
    .option('--pretty', 'indent the JSON')
    .action((file: string, flags: { pretty?: boolean }) => {
      const text = readScenario(file);
      const result = simulate(parseScenario(text, file === '-' ? '<stdin>' : file));
      process.stdout.write(`${JSON.stringify(result, null, flags.pretty ? 2 : undefined)}\n`);
    });
}

function readScenario(file: string): string {
  let buf: Buffer;
  try {
    buf = readFileSync(file === '-' ? 0 : file);
  } catch (e) {
    throw new InvalidInputError([{ file, path: '', message: `cannot read: ${(e as Error).message}`, severity: 'error' }]);
  }
  if (buf.length > MAX_SCENARIO_BYTES) throw new InvalidInputError([{ file, path: '', message: `larger than ${MAX_SCENARIO_BYTES} bytes`, severity: 'error' }]);
  return buf.toString('utf8');
}
