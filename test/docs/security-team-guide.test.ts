/**
 * docs/security-team.md stays true: every `airlock embargo …` command its shell examples show is a
 * command the CLI has, with only flags that command takes, and every command the CLI has is shown.
 * (test/cli/embargo-cli.test.ts runs these commands against the lane; the embargo docker test does
 * the same calls against a real builder.)
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { registerEmbargoCommands } from '../../cli/embargo.js';

const guide = readFileSync('docs/security-team.md', 'utf8');
const blocks = [...guide.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
const lines = blocks.flatMap((b) => b.split('\n')).map((l) => l.replace(/\s+#.*$/, '').trim()).filter((l) => l.startsWith('npx airlock embargo '));

describe('docs/security-team.md', () => {
  const program = new Command();
  registerEmbargoCommands(program);
  const embargo = program.commands.find((c) => c.name() === 'embargo')!;

  it('shows every embargo command, each with flags it takes', () => {
    expect(lines.length).toBeGreaterThan(5);
    const shown = new Set<string>();
    for (const line of lines) {
      const [, , , name, ...rest] = line.replace(/'[^']*'/g, 'TEXT').split(/\s+/);
      const cmd = embargo.commands.find((c) => c.name() === name);
      expect(cmd, `${line}: no such command`).toBeDefined();
      shown.add(name!);
      const flags = rest.filter((w) => w.startsWith('--'));
      const known = cmd!.options.map((o) => o.long);
      for (const f of flags) expect(known, `${line}: ${f}`).toContain(f);
      for (const required of cmd!.options.filter((o) => o.mandatory).map((o) => o.long)) expect(flags, `${line}: needs ${required}`).toContain(required);
      const args = rest.filter((w, i) => !w.startsWith('--') && !rest[i - 1]?.startsWith('--'));
      expect(args.length, `${line}: arguments`).toBe(cmd!.registeredArguments.length);
    }
    expect([...shown].sort()).toEqual(embargo.commands.map((c) => c.name()).sort());
  });

  it('names the environment variables the commands read', () => {
    for (const v of ['AIRLOCK_BUILDER_URL', 'AIRLOCK_BUILDER_KEY', 'AIRLOCK_EMBARGO_KEY', 'AIRLOCK_SIGNING_PUBLIC_KEY', 'AIRLOCK_KEY_PASSPHRASE']) expect(guide).toContain(`export ${v}`);
  });
});
