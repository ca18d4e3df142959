/**
 * Runs host tools (mkfs, losetup) through one long-lived `/bin/sh` instead of a fresh spawn each
 * time: a spawn from a large Node process costs milliseconds of CPU (the fork copies its page
 * tables), a fork from a small shell almost nothing, and workspaces are formatted on every job.
 *
 * Commands are run one at a time, in order. Arguments are never interpreted by the shell: each
 * must match a conservative pattern (paths, numbers, option words) and anything else is refused
 * before it is written.
 *
 * Failure handling, so that nothing here can crash the process or hang a caller:
 * - The shell failing to start (ENOENT, EAGAIN, EMFILE: no pid, maybe no pipes), dying, or its
 *   pipes failing (EPIPE) fails the command written to it; the next command starts a new shell.
 * - A command that takes longer than the timeout kills the shell and fails (the tool itself,
 *   orphaned, runs to its end; its late output goes to the old shell's pipe, which is drained
 *   and ignored).
 * - Each command is framed by start and end markers carrying a nonce unique to that command, and
 *   only the text between them is its output: stray output from anything else is discarded.
 * - After `close()` nothing new is started: queued and later commands fail.
 * The shell and its pipes are unref'd, so an idle shell never keeps Node alive; the timer of a
 * command in flight is ref'd, so a process that awaits a command is not ended under it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { ExecutorFailedError } from '../errors.js';

const SAFE_ARG = /^[A-Za-z0-9_./:=,^+-]+$/;
/** A command is a program name or path: no assignment (PATH=…), no shell keyword (while, if, …). */
const SAFE_CMD = /^(?:\/[A-Za-z0-9_./+-]+|[a-z][a-z0-9_.+-]*)$/;
const SHELL_WORDS = new Set(['if', 'then', 'else', 'elif', 'fi', 'case', 'esac', 'for', 'while', 'until', 'do', 'done', 'in', 'function', 'select', 'time', 'exec', 'eval', 'source', '.', 'exit', 'set', 'unset', 'export', 'alias', 'trap', 'cd', 'read', 'ulimit', 'umask']);
const DEFAULT_TIMEOUT_MS = 60_000;
/** After the shell's 'exit', how long its last output may take to arrive before it is given up. */
const EXIT_GRACE_MS = 100;

export interface ToolShellOptions {
  /** Per-command limit: a command running longer kills the shell and fails. Default 60 s. */
  timeoutMs?: number;
  /** The shell to run. Default `/bin/sh`. */
  shellPath?: string;
}

interface Pending {
  /** The nonce in this command's start and end markers. */
  id: string;
  line: string;
  what: string;
  resolve: (out: string) => void;
  reject: (e: Error) => void;
}

/** One shell process; `dead` once it has been given up (it is never written to again). */
interface Shell {
  proc: ChildProcess;
  /** It never started (no pid or no pipes): Node reports why with an 'error' event. */
  failed: boolean;
  dead: boolean;
}

function unref(stream: unknown): void {
  (stream as { unref?: () => void } | null)?.unref?.();
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class ToolShell {
  private readonly timeoutMs: number;
  private readonly shellPath: string;
  /** Makes the markers unguessable by a tool's output, and distinct between instances. */
  private readonly salt = randomBytes(6).toString('hex');
  private seq = 0;
  private sh: Shell | undefined;
  private readonly queue: Pending[] = [];
  private current: Pending | undefined;
  /** The shell `current` was written to. */
  private currentShell: Shell | undefined;
  /** Output of `current` not yet consumed; before its start marker, only a possible partial marker. */
  private out = '';
  private started = false;
  /** Where in `out` to look for the end marker next. */
  private scanFrom = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private pumping = false;

  constructor(opts: ToolShellOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.shellPath = opts.shellPath ?? '/bin/sh';
    if (!(Number.isFinite(this.timeoutMs) && this.timeoutMs > 0 && this.timeoutMs <= 2 ** 31 - 1)) {
      throw new RangeError(`ToolShell: timeoutMs must be a positive number of milliseconds, got ${this.timeoutMs}`);
    }
  }

  run(cmd: string, args: readonly string[]): Promise<string> {
    const what = [cmd, ...args].join(' ');
    if (!SAFE_CMD.test(cmd) || SHELL_WORDS.has(cmd)) {
      return Promise.reject(new ExecutorFailedError(`refusing to run ${JSON.stringify(what)}: ${JSON.stringify(cmd)} is not a program name`));
    }
    for (const a of args) {
      if (!SAFE_ARG.test(a)) return Promise.reject(new ExecutorFailedError(`refusing to run ${JSON.stringify(what)}: unsafe argument ${JSON.stringify(a)}`));
    }
    if (this.closed) return Promise.reject(new ExecutorFailedError(`${what}: tool shell closed`));
    const id = `${this.salt}_${++this.seq}`;
    const line = `echo "__airlock_start_${id}"; ${what} </dev/null 2>&1; __rc=$?; echo; echo "__airlock_rc_${id}=$__rc"\n`;
    return new Promise((resolve, reject) => {
      this.queue.push({ id, line, what, resolve, reject });
      this.next();
    });
  }

  /**
   * Stop: commands queued or run from now on fail. A command already written to the shell is left
   * to finish (or time out); the shell then reads the end of its input and exits. Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.queue.splice(0)) p.reject(new ExecutorFailedError(`${p.what}: tool shell closed`));
    const sh = this.sh;
    if (sh && !sh.failed) sh.proc.stdin?.end();
  }

  /** Start queued commands while none is running. Never throws. */
  private next(): void {
    if (this.pumping) return; // the outer call's loop picks up whatever changed
    this.pumping = true;
    try {
      while (!this.current) {
        const p = this.queue.shift();
        if (!p) return;
        if (this.closed) {
          p.reject(new ExecutorFailedError(`${p.what}: tool shell closed`));
          continue;
        }
        const sh = this.shell();
        if (sh instanceof Error) {
          p.reject(new ExecutorFailedError(`${p.what}: could not start ${this.shellPath}: ${sh.message}`, { cause: sh }));
          continue;
        }
        this.current = p;
        this.currentShell = sh;
        this.out = '';
        this.started = false;
        this.scanFrom = 0;
        this.timer = setTimeout(() => {
          if (this.current === p) this.died(sh, `timed out after ${this.timeoutMs / 1000} s (the tool shell was killed; the tool may still be running)`);
        }, this.timeoutMs); // ref'd: while a command runs, Node stays up to hear its answer
        // A shell that failed to start gets its 'error' event on the next tick, which fails `p`.
        if (!sh.failed) sh.proc.stdin?.write(p.line); // errors arrive as 'error' events
      }
    } finally {
      this.pumping = false;
    }
  }

  /** The live shell, a new one, or why none could be started. */
  private shell(): Shell | Error {
    const live = this.sh;
    if (live) {
      const { proc } = live;
      if (proc.exitCode === null && proc.signalCode === null && proc.stdin?.writable) return live;
      this.died(live, 'the tool shell exited');
    }
    let proc: ChildProcess;
    try {
      proc = spawn(this.shellPath, [], { stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (e) {
      return e instanceof Error ? e : new Error(String(e));
    }
    const sh: Shell = { proc, failed: false, dead: false };
    // Listeners first: nothing below may run into an unhandled 'error'.
    proc.on('error', (e) => this.died(sh, sh.failed ? `could not start ${this.shellPath}: ${e.message}` : `the tool shell failed: ${e.message}`, e));
    proc.on('close', (code, signal) => this.died(sh, exited(code, signal)));
    // 'exit' can come before the shell's last output has been read: give that a moment.
    proc.on('exit', (code, signal) => setTimeout(() => this.died(sh, exited(code, signal)), EXIT_GRACE_MS).unref());
    proc.stdin?.on('error', (e) => this.died(sh, `the tool shell stopped reading: ${e.message}`, e));
    proc.stdout?.on('error', (e) => this.died(sh, `reading the tool shell failed: ${e.message}`, e));
    proc.stderr?.on('error', () => undefined);
    proc.unref();
    if (proc.pid === undefined || !proc.stdin || !proc.stdout || !proc.stderr) {
      sh.failed = true;
      if (proc.pid !== undefined) {
        this.died(sh, 'no pipes'); // kills it; no command is on it yet
        return new Error('no pipes to the shell');
      }
      // Node emits 'error' on the next tick, which fails the command; should it not, fail it anyway.
      setImmediate(() => this.died(sh, `could not start ${this.shellPath}`));
      return sh;
    }
    unref(proc.stdin);
    unref(proc.stdout);
    unref(proc.stderr);
    proc.stdout.setEncoding('utf8');
    // A dead shell's pipe is still drained (an orphaned tool writing to it must not get SIGPIPE),
    // but what comes from it is ignored.
    proc.stdout.on('data', (d: string) => {
      if (!sh.dead && this.currentShell === sh) this.onData(d);
    });
    proc.stderr.resume();
    this.sh = sh;
    return sh;
  }

  /** Give up `sh`: fail the command written to it, and go on with a new shell. Idempotent. */
  private died(sh: Shell, why: string, cause?: unknown): void {
    if (sh.dead) return;
    sh.dead = true;
    if (this.sh === sh) this.sh = undefined;
    const { proc } = sh;
    try {
      if (proc.pid !== undefined && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    } catch {
      // kill failing is reported by an 'error' event, which `dead` makes a no-op
    }
    proc.stdin?.destroy();
    if (this.currentShell === sh) {
      const p = this.current;
      this.current = undefined;
      this.currentShell = undefined;
      this.out = '';
      clearTimeout(this.timer);
      p?.reject(new ExecutorFailedError(`${p.what}: ${why}`, cause === undefined ? undefined : { cause }));
    }
    this.next();
  }

  private onData(d: string): void {
    const p = this.current;
    if (!p) return; // nothing was asked: stray output
    this.out += d;
    if (!this.started) {
      const start = `__airlock_start_${p.id}\n`;
      const at = this.out.indexOf(start);
      if (at < 0) {
        this.out = this.out.slice(-(start.length - 1)); // all but a possible partial marker is stray
        return;
      }
      this.out = this.out.slice(at + start.length);
      this.started = true;
    }
    const end = `__airlock_rc_${p.id}=`;
    const at = this.out.indexOf(end, this.scanFrom);
    if (at < 0) {
      this.scanFrom = Math.max(0, this.out.length - end.length + 1);
      return;
    }
    const eol = this.out.indexOf('\n', at + end.length);
    if (eol < 0) {
      this.scanFrom = at;
      return;
    }
    const status = this.out.slice(at + end.length, eol);
    // The newline `echo` adds so that the marker starts a line, then the output's own last one.
    const text = this.out.slice(0, at).replace(/\n$/, '').replace(/\n$/, '');
    this.out = '';
    this.current = undefined;
    this.currentShell = undefined;
    clearTimeout(this.timer);
    if (status === '0') p.resolve(text);
    else p.reject(new ExecutorFailedError(`${p.what}: ${text.trim() || `exit status ${status}`}`));
    this.next();
  }
}

function exited(code: number | null, signal: NodeJS.Signals | null): string {
  return `the tool shell exited (${signal ?? `status ${code}`})`;
}
