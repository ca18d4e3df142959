/**
 * `airlock lint [FILE] [--policies DIR] [--json]`: the checks the CI makes of a project's
 * `.airlock.yaml` before a build runs anything (untrusted-ci/executor/config-check.ts), run on a
 * working copy before pushing. FILE defaults to ./.airlock.yaml; a Dockerfile environment is read
 * relative to FILE's directory (the repository's root, where the CI reads it).
 *
 * Policies: DIR/untrusted-job.yaml and DIR/environments.yaml; by default the ones the CI uses when
 * its config names none (this installation's policies/).
 *
 * Output: each problem as the CI lists it (`file: path: message`, warnings marked), then
 * `FILE: ok` or the CI's one-line reason. `--json`: `{ok, problems: [{path, message, code,
 * severity}]}` on one line. Exit 0 when there is no error (warnings allowed), 2 when there is one,
 * or when FILE cannot be read (on stderr; `file not found` is what the CI says of a missing file).
 */
import { readFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join, resolve, sep } from 'node:path';
import type { Command } from 'commander';
import { formatIssues, InvalidInputError, type Issue } from '#shared/errors.js';
import { AIRLOCK_YAML } from '#shared/repo-config/airlock-yaml.js';
import { DEFAULT_JOB_POLICY_FILE, loadJobPolicy } from '#shared/policy/job-policy.js';
import { configErrorReason, lintAirlockYaml, type LintProblem } from '../untrusted-ci/executor/config-check.js';
import { DEFAULT_ENVIRONMENT_POLICY_FILE, loadEnvironmentPolicy } from '../untrusted-ci/environments/policy.js';
import { DEFAULT_EGRESS_POLICY_FILE, loadEgressPolicy, NO_EGRESS } from '../untrusted-ci/egress/policy.js';

export const LINT_EXIT = { ok: 0, problems: 2 } as const;
/** Bigger files are not read at all (the YAML loader refuses far less: 1 MiB). */
const READ_MAX_BYTES = 16 * 1024 * 1024;

interface LintFlags {
  policies?: string;
  json?: boolean;
}

export function registerLintCommand(program: Command): void {
  program
    .command('lint')
    .description(`check a ${AIRLOCK_YAML} as the CI does, before pushing (exit 2 on errors)`)
    .argument('[file]', `the file to check`, `./${AIRLOCK_YAML}`)
    .option('--policies <dir>', 'the policies directory (untrusted-job.yaml, environments.yaml, egress.yaml); default: the ones the CI uses by default')
    .option('--json', 'print {ok, problems} as one JSON object')
    .action(async (file: string, flags: LintFlags) => {
      process.exitCode = await runLint(file, flags);
    });
}

/** The action of `lint`, with its output injectable; returns the exit code. */
export async function runLint(file: string, flags: LintFlags, write: (s: string) => void = (s) => void process.stdout.write(s)): Promise<number> {
  const job = loadJobPolicy(flags.policies !== undefined ? join(flags.policies, 'untrusted-job.yaml') : DEFAULT_JOB_POLICY_FILE);
  const environments = loadEnvironmentPolicy(flags.policies !== undefined ? join(flags.policies, 'environments.yaml') : DEFAULT_ENVIRONMENT_POLICY_FILE);
  // egress.yaml may be absent from an older policies directory: then no run may ask for packages.
  const egressFile = flags.policies !== undefined ? join(flags.policies, 'egress.yaml') : DEFAULT_EGRESS_POLICY_FILE;
  const egress = existsSync(egressFile) ? loadEgressPolicy(egressFile) : NO_EGRESS;
  const text = await readText(file);
  if (typeof text !== 'string') {
    if (flags.json) write(`${JSON.stringify({ ok: false, problems: [problem(text)] })}\n`);
    else process.stderr.write(`airlock: lint: cannot read ${file}: ${text.message}\n`);
    return LINT_EXIT.problems;
  }
  const root = dirname(resolve(file));
  const result = await lintAirlockYaml(text, { job, environments, egress }, {
    readFile: async (path, maxBytes) => {
      const t = await readText(join(root, path), maxBytes);
      if (typeof t === 'string') return t;
      // Not there is the checks' own message; anything else (a directory, too large) is said as it is.
      if (t.message === NOT_FOUND) return undefined;
      throw new InvalidInputError([{ ...t, message: t.message.replace(root + sep, '') }]);
    },
    isDirectory: async (path) => {
      const s = await stat(join(root, path)).catch(() => undefined);
      return s === undefined ? undefined : s.isDirectory();
    },
  });
  return report(file, result, flags, write);
}

function report(file: string, r: { ok: boolean; issues: Issue[]; problems: LintProblem[] }, flags: LintFlags, write: (s: string) => void): number {
  if (flags.json) write(`${JSON.stringify({ ok: r.ok, problems: r.problems })}\n`);
  else {
    const lines = r.issues.map((i) => (i.severity === 'warning' ? `warning: ${formatIssues([i])}` : formatIssues([i])));
    write(lines.map((l) => `${l}\n`).join(''));
    write(r.ok ? `${file}: ok\n` : `${file}: ${configErrorReason(r.issues)}\n`);
  }
  return r.ok ? LINT_EXIT.ok : LINT_EXIT.problems;
}

const NOT_FOUND = 'file not found';

/** The file's text, or the issue that says why there is none. */
async function readText(path: string, maxBytes = READ_MAX_BYTES): Promise<string | Issue> {
  const fail = (message: string): Issue => ({ file: AIRLOCK_YAML, path: '', message, severity: 'error' });
  try {
    const s = await stat(path);
    if (!s.isFile()) return fail(`${path} is not a file`);
    if (s.size > maxBytes) return fail(`${path} is larger than ${maxBytes} bytes`);
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return fail(code === 'ENOENT' ? NOT_FOUND : `cannot read ${path}: ${code ?? (e as Error).message}`);
  }
}

function problem(i: Issue): LintProblem {
  return { path: i.path, message: i.message, code: 'AIRLOCK_E_INVALID_INPUT', severity: i.severity };
}
