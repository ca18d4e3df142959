/**
 * Runs host tools (mkfs, losetup) through one long-lived `/bin/sh` instead of a fresh spawn each
 * time: a spawn from a large Node process costs milliseconds of CPU (the fork copies its page
 * tables), a fork from a small shell almost nothing, and workspaces are formatted on every job.
 *
 * Commands are run one at a time. Arguments are never interpreted by the shell: each must match
 * a conservative pattern (paths, numbers, option words) and anything else is refused before it is
 * written. If the shell dies, the next command starts a new one; a command that takes longer than
 * the timeout kills the shell and fails (the tool itself, orphaned, runs to its end).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { ExecutorFailedError } from '../errors.js';

const SAFE_ARG = /^[A-Za-z0-9_./:=,^+-]+$/;
const MARK = '__airlock_rc=';
const COMMAND_TIMEOUT_MS = 60_000;

interface Pending {
  line: string;
  what: string;
  resolve: (out: string) => void;
  reject: (e: Error) => void;
}

export class ToolShell {
  private proc: ChildProcessWithoutNullStreams | undefined;
  private readonly queue: Pending[] = [];
  private current: Pending | undefined;
  private out = '';
  private timer: NodeJS.Timeout | undefined;

  run(cmd: string, args: readonly string[]): Promise<string> {
    const what = `${cmd} ${args.join(' ')}`;
    for (const a of [cmd, ...args]) {
      if (!SAFE_ARG.test(a)) return Promise.reject(new ExecutorFailedError(`refusing to run ${JSON.stringify(what)}: unsafe argument ${JSON.stringify(a)}`));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ line: `${cmd} ${args.join(' ')} </dev/null 2>&1; __rc=$?; echo; echo "${MARK}$__rc"\n`, what, resolve, reject });
      this.next();
    });
  }

  close(): void {
    this.proc?.stdin.end();
    this.proc = undefined;
  }

  private shell(): ChildProcessWithoutNullStreams {
    if (this.proc) return this.proc;
    const proc = spawn('/bin/sh', [], { stdio: ['pipe', 'pipe', 'pipe'] });
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (d: string) => this.onData(d));
    proc.stderr.resume();
    proc.on('error', () => undefined);
    proc.on('exit', () => {
      if (this.proc === proc) this.proc = undefined;
      clearTimeout(this.timer);
      const p = this.current;
      this.current = undefined;
      this.out = '';
      p?.reject(new ExecutorFailedError(`${p.what}: the tool shell exited`));
      this.next();
    });
    proc.unref();
    (proc.stdout as unknown as { unref?: () => void }).unref?.();
    (proc.stdin as unknown as { unref?: () => void }).unref?.();
    this.proc = proc;
    return proc;
  }

  private next(): void {
    if (this.current) return;
    const p = this.queue.shift();
    if (!p) return;
    this.current = p;
    const proc = this.shell();
    this.timer = setTimeout(() => {
      p.what += ` (killed after ${COMMAND_TIMEOUT_MS / 1000} s)`;
      proc.kill('SIGKILL');
    }, COMMAND_TIMEOUT_MS);
    this.timer.unref();
    proc.stdin.write(p.line);
  }

  private onData(d: string): void {
    this.out += d;
    const at = this.out.indexOf(`\n${MARK}`);
    if (at < 0) return;
    const end = this.out.indexOf('\n', at + 1 + MARK.length);
    if (end < 0) return;
    const rc = Number(this.out.slice(at + 1 + MARK.length, end));
    const text = this.out.slice(0, at).replace(/\n$/, '');
    this.out = this.out.slice(end + 1);
    const p = this.current;
    this.current = undefined;
    clearTimeout(this.timer);
    if (p) {
      if (rc === 0) p.resolve(text);
      else p.reject(new ExecutorFailedError(`${p.what}: ${text.trim() || `exit status ${rc}`}`));
    }
    this.next();
  }
}
