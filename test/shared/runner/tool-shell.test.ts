import { afterEach, describe, expect, it } from 'vitest';
import { ToolShell } from '../../../shared/runner/tool-shell.js';

let shell: ToolShell;
afterEach(() => shell?.close());

describe('ToolShell', () => {
  it('returns a command\'s output and runs queued commands in order', async () => {
    shell = new ToolShell();
    expect(await Promise.all([shell.run('echo', ['a']), shell.run('echo', ['b', 'c']), shell.run('printf', ['x'])])).toEqual(['a', 'b c', 'x']);
  });

  it('fails a command that exits non-zero, naming it and its output', async () => {
    shell = new ToolShell();
    await expect(shell.run('ls', ['/nonexistent-airlock'])).rejects.toMatchObject({ code: 'AIRLOCK_E_EXECUTOR_FAILED', message: expect.stringMatching(/^ls \/nonexistent-airlock: .*No such file/) });
    expect(await shell.run('echo', ['still-works'])).toBe('still-works');
  });

  it.each([['$(id)'], ['a;b'], ['x y'], ['`id`'], ['a|b'], ['>f'], ['']])('refuses the argument %j without running anything', async (arg) => {
    shell = new ToolShell();
    await expect(shell.run('echo', [arg])).rejects.toMatchObject({ code: 'AIRLOCK_E_EXECUTOR_FAILED', message: expect.stringContaining('unsafe argument') });
  });

  it('starts a new shell when the old one died', async () => {
    shell = new ToolShell();
    const parent = await shell.run('cat', ['/proc/self/stat']); // cat's parent is the shell
    const ppid = Number(parent.slice(parent.lastIndexOf(')') + 2).split(' ')[1]);
    process.kill(ppid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 100));
    expect(await shell.run('echo', ['again'])).toBe('again');
  });
});
