import { EventEmitter } from 'node:events';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { ToolShell } from '#shared/runner/tool-shell.js';

// spawn goes to the real one unless a test installs a fake (to simulate failures such as EMFILE
// that cannot be provoked for real).
const spawnHook = vi.hoisted(() => ({ fake: undefined as undefined | (() => unknown), calls: 0 }));
vi.mock('node:child_process', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:child_process')>();
  return {
    ...real,
    spawn: (...args: Parameters<typeof real.spawn>) => {
      spawnHook.calls++;
      return spawnHook.fake ? spawnHook.fake() : real.spawn(...args);
    },
  };
});

/** A child process that never started: no pid, no pipes (what Node gives on EMFILE). */
class UnstartedProc extends EventEmitter {
  readonly pid = undefined;
  readonly stdin = null;
  readonly stdout = null;
  readonly stderr = null;
  readonly exitCode = null;
  readonly signalCode = null;
  kill(): boolean {
    return false;
  }
  unref(): void {}
}

let shell: ToolShell;
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'airlock-tool-shell-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => {
  shell?.close();
  spawnHook.fake = undefined;
});

/** An executable shell script in the temp dir, run by path (SAFE_ARG allows no `sh -c '...'`). */
function script(name: string, body: string): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, 0o755);
  return path;
}

const failed = (message: RegExp | string) => ({ code: 'AIRLOCK_E_EXECUTOR_FAILED', message: typeof message === 'string' ? expect.stringContaining(message) : expect.stringMatching(message) });

/** Settles within `ms`, else fails the test rather than hanging it. */
function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still pending after ${ms} ms`)), ms);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

describe('ToolShell', () => {
  it('returns a command\'s output and runs queued commands in order', async () => {
    shell = new ToolShell();
    expect(await Promise.all([shell.run('echo', ['a']), shell.run('echo', ['b', 'c']), shell.run('printf', ['x'])])).toEqual(['a', 'b c', 'x']);
  });

  it('keeps multi-line output, dropping only its last newline', async () => {
    shell = new ToolShell();
    const lines = script('lines', 'echo one; echo; echo three; echo');
    expect(await shell.run(lines, [])).toBe('one\n\nthree\n');
  });

  it('fails a command that exits non-zero, naming it and its output', async () => {
    shell = new ToolShell();
    await expect(shell.run('ls', ['/nonexistent-airlock'])).rejects.toMatchObject(failed(/^ls \/nonexistent-airlock: .*No such file/));
    await expect(shell.run('false', [])).rejects.toMatchObject(failed(/^false: exit status 1$/));
    expect(await shell.run('echo', ['still-works'])).toBe('still-works');
  });

  it.each([['while'], ['PATH=/x'], ['exec'], ['Echo']])('refuses %j as a command: only program names and paths', async (cmd) => {
    shell = new ToolShell();
    await expect(shell.run(cmd, [])).rejects.toMatchObject(failed('is not a program name'));
  });

  it.each([['$(id)'], ['a;b'], ['x y'], ['`id`'], ['a|b'], ['>f'], ['']])('refuses the argument %j without running anything', async (arg) => {
    shell = new ToolShell();
    const before = spawnHook.calls;
    await expect(shell.run('echo', [arg])).rejects.toMatchObject(failed('unsafe argument'));
    await expect(shell.run(arg, ['x'])).rejects.toMatchObject(failed('is not a program name'));
    expect(spawnHook.calls).toBe(before);
  });

  it('starts a new shell when the old one died', async () => {
    shell = new ToolShell();
    const parent = await shell.run('cat', ['/proc/self/stat']); // cat's parent is the shell
    const ppid = Number(parent.slice(parent.lastIndexOf(')') + 2).split(' ')[1]);
    process.kill(ppid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 100));
    expect(await shell.run('echo', ['again'])).toBe('again');
  });

  it('fails, without crashing, a command written to a shell that has just been killed', async () => {
    shell = new ToolShell();
    const parent = await shell.run('cat', ['/proc/self/stat']);
    const ppid = Number(parent.slice(parent.lastIndexOf(')') + 2).split(' ')[1]);
    process.kill(ppid, 'SIGKILL');
    // Written before Node has seen the shell die: it never answers (and the write may hit EPIPE).
    const lost = shell.run('echo', ['lost']);
    await expect(within(lost, 2000)).rejects.toMatchObject(failed(/^echo lost: the tool shell/));
    expect(await shell.run('echo', ['again'])).toBe('again');
  });

  it('kills the shell of a command that runs past the timeout, naming it, and goes on with a new one', async () => {
    shell = new ToolShell({ timeoutMs: 300 });
    const t0 = Date.now();
    const slow = shell.run('sleep', ['5']);
    const after = shell.run('echo', ['queued']);
    await expect(slow).rejects.toMatchObject(failed(/^sleep 5: timed out after 0\.3 s/));
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(await after).toBe('queued');
    expect(await shell.run('echo', ['next'])).toBe('next');
  });

  it('does not let an orphaned tool\'s late output into a later command\'s result', async () => {
    shell = new ToolShell({ timeoutMs: 1000 });
    const go = join(dir, 'go');
    const done = join(dir, 'done');
    // The orphan prints, on the killed shell's pipe, only once the next command is running.
    const orphan = script('orphan', `echo early; i=0; while [ ! -e ${go} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; echo LATE; echo __airlock_rc_1=0; touch ${done}`);
    const waiter = script('waiter', `touch ${go}; i=0; while [ ! -e ${done} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; sleep 0.1; echo next`);
    await expect(shell.run(orphan, [])).rejects.toMatchObject(failed('timed out'));
    expect(await shell.run(waiter, [])).toBe('next');
    expect(await shell.run('echo', ['next'])).toBe('next');
  });

  it('refuses commands once closed, and fails those still queued', async () => {
    shell = new ToolShell();
    expect(await shell.run('echo', ['a'])).toBe('a');
    const running = shell.run('echo', ['running']);
    const queued = shell.run('echo', ['queued']);
    const queuedFails = expect(queued).rejects.toMatchObject(failed('echo queued: tool shell closed'));
    shell.close();
    expect(await running).toBe('running'); // already written: it finishes
    await queuedFails;
    const before = spawnHook.calls;
    await expect(shell.run('echo', ['late'])).rejects.toMatchObject(failed('tool shell closed'));
    expect(spawnHook.calls).toBe(before);
    shell.close(); // idempotent
  });

  it('close() before any command never starts a shell', async () => {
    shell = new ToolShell();
    shell.close();
    const before = spawnHook.calls;
    await expect(shell.run('echo', ['x'])).rejects.toMatchObject(failed('tool shell closed'));
    expect(spawnHook.calls).toBe(before);
  });

  it('fails, rather than crashing or hanging, when the shell cannot be started', async () => {
    shell = new ToolShell({ shellPath: '/nonexistent-airlock/sh' });
    await expect(within(shell.run('echo', ['a']), 1000)).rejects.toMatchObject(failed(/^echo a: could not start \/nonexistent-airlock\/sh: .*ENOENT/));
    await expect(within(shell.run('echo', ['b']), 1000)).rejects.toMatchObject(failed('could not start'));
    const both = await Promise.allSettled([shell.run('echo', ['c']), shell.run('echo', ['d'])].map((p) => within(p, 1000)));
    expect(both.map((r) => r.status === 'rejected' && (r.reason as { code?: string }).code)).toEqual(['AIRLOCK_E_EXECUTOR_FAILED', 'AIRLOCK_E_EXECUTOR_FAILED']);
  });

  it('fails when the shell gets no pid and no pipes (EMFILE), then recovers', async () => {
    shell = new ToolShell();
    spawnHook.fake = () => {
      const proc = new UnstartedProc();
      process.nextTick(() => {
        proc.emit('error', Object.assign(new Error('spawn /bin/sh EMFILE'), { code: 'EMFILE', errno: -24, syscall: 'spawn /bin/sh' }));
        proc.emit('close', -24, null);
      });
      return proc;
    };
    await expect(within(shell.run('echo', ['a']), 1000)).rejects.toMatchObject(failed(/^echo a: could not start \/bin\/sh: .*EMFILE/));
    await expect(within(shell.run('echo', ['b']), 1000)).rejects.toMatchObject(failed('EMFILE'));
    spawnHook.fake = undefined; // fds are free again
    expect(await shell.run('echo', ['c'])).toBe('c');
  });

  it('fails when spawn throws, or reports nothing at all', async () => {
    shell = new ToolShell();
    spawnHook.fake = () => {
      throw Object.assign(new Error('spawn EINVAL'), { code: 'EINVAL' });
    };
    await expect(within(shell.run('echo', ['a']), 1000)).rejects.toMatchObject(failed(/^echo a: could not start \/bin\/sh: spawn EINVAL/));
    spawnHook.fake = () => new UnstartedProc(); // no pid, and no 'error' ever
    await expect(within(shell.run('echo', ['b']), 1000)).rejects.toMatchObject(failed('could not start'));
    spawnHook.fake = undefined;
    expect(await shell.run('echo', ['c'])).toBe('c');
  });

  it('rejects a nonsensical timeout', () => {
    expect(() => new ToolShell({ timeoutMs: 0 })).toThrow(RangeError);
    expect(() => new ToolShell({ timeoutMs: Number.NaN })).toThrow(RangeError);
  });
});
