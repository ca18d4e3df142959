/**
 * `airlock builder audit verify FILE [--json]`: check the trusted builder's hash-chained audit log
 * (trusted-builder/audit/audit-log.ts) end to end.
 *
 * The verdict goes to stdout: `ok: N records, head <hash>` (exit 0) or
 * `FILE: line N: <problem>` for the first bad line (exit 1); with `--json`, the
 * `AuditVerification` object as one line. A missing or unreadable file is an AirlockError that
 * cli/main.ts turns into exit 2 (bad input) or 3.
 *
 * An intact chain whose last records were cut off still verifies: compare `head` with one you
 * kept to notice that.
 */
import type { Command } from 'commander';
import { AirlockError } from '#shared/errors.js';
import { verifyAuditLog } from '../trusted-builder/audit/audit-log.js';

export const AUDIT_EXIT = { ok: 0, broken: 1 } as const;

export function registerBuilderAuditCommand(builder: Command): void {
  const audit = builder.command('audit').description("the trusted builder's hash-chained audit log");
  audit
    .command('verify')
    .description('check every record of an audit log: hashes, order, nothing deleted or edited')
    .argument('<file>', 'the audit log (JSONL)')
    .option('--json', 'print the verdict as one JSON object')
    .action(async (file: string, flags: { json?: boolean }) => {
      process.exitCode = await runAuditVerify(file, flags);
    });
}

/** The action of `audit verify`, with its output injectable; returns the exit code. */
export async function runAuditVerify(file: string, flags: { json?: boolean }, write: (s: string) => void = (s) => void process.stdout.write(s)): Promise<number> {
  let result;
  try {
    result = await verifyAuditLog(file);
  } catch (e) {
    if (flags.json && e instanceof AirlockError) write(`${JSON.stringify({ error: e.toWire() })}\n`);
    throw e;
  }
  if (flags.json) write(`${JSON.stringify(result)}\n`);
  else if (result.ok) write(`ok: ${result.records} records, head ${result.head}\n`);
  else write(`${file}: line ${result.line}: ${result.problem}\n`);
  return result.ok ? AUDIT_EXIT.ok : AUDIT_EXIT.broken;
}
