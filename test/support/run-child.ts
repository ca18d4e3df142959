/**
 * A child process run to its end with its output collected (never a synchronous spawn: the
 * services a test talks to may run in the test's own process). `output` is stdout and stderr
 * interleaved as they came; past `timeoutMs` the child gets SIGINT, as Ctrl-C would send.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export interface ChildRun {
  code: number | null;
  stdout: string;
  stderr: string;
  output: string;
  ms: number;
}

export function runChild(command: string, args: readonly string[], o: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(command, args, { cwd: o.cwd, env: o.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let output = '';
    child.stdout.on('data', (d: Buffer) => ((stdout += d.toString('utf8')), (output += d.toString('utf8'))));
    child.stderr.on('data', (d: Buffer) => ((stderr += d.toString('utf8')), (output += d.toString('utf8'))));
    const timer = o.timeoutMs === undefined ? undefined : setTimeout(() => child.pid !== undefined && process.kill(child.pid, 'SIGINT'), o.timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, output, ms: Date.now() - started });
    });
  });
}

const BIN = fileURLToPath(new URL('../../bin/airlock.js', import.meta.url));

/** `airlock ARGS` (bin/airlock.js) with `env` added to this process's environment. */
export function runAirlock(args: readonly string[], env: Record<string, string> = {}, timeoutMs?: number): Promise<ChildRun> {
  return runChild(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, ...(timeoutMs === undefined ? {} : { timeoutMs }) });
}

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
