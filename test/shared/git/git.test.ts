/**
 * shared/git/git.ts against the real git binary: the hardened environment, failure mapping,
 * caps, deadlines, cancellation, and the pure name checks (cross-checked with `git check-ref-format`).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { text } from 'node:stream/consumers';
import { afterAll, describe, expect, it } from 'vitest';
import { CancelledError, GitFailedError, InvalidInputError } from '#shared/errors.js';
import { isSha, refNameProblem, remoteUrlProblem, runGit, streamGit, validateRefName } from '#shared/git/git.js';
import { createRepo, type TestRepo } from '../../support/git-repo.js';

const repos: TestRepo[] = [];
const scratch = mkdtempSync(join(tmpdir(), 'airlock-git-test-'));
afterAll(() => {
  repos.forEach((r) => r.dispose());
  rmSync(scratch, { recursive: true, force: true });
});
function repo(files?: Parameters<typeof createRepo>[0]): TestRepo {
  const r = createRepo(files);
  repos.push(r);
  return r;
}
const out = (b: Buffer): string => b.toString('utf8').trim();

describe('runGit: environment', () => {
  it('runs git and buffers stdout', async () => {
    const r = await runGit(['--version']);
    expect(r.code).toBe(0);
    expect(out(r.stdout)).toMatch(/^git version 2\./);
  });

  it('commits as airlock, with hooks, fsmonitor and credential helpers off', async () => {
    const up = repo();
    const ident = await runGit(['var', 'GIT_COMMITTER_IDENT'], { gitDir: up.dir, env: { GIT_COMMITTER_NAME: 'mallory' } });
    expect(out(ident.stdout)).toMatch(/^airlock <airlock@localhost> /);
    const hooks = await runGit(['config', '--get', 'core.hooksPath'], { gitDir: up.dir });
    expect(out(hooks.stdout)).toBe('/dev/null');
    const fsmonitor = await runGit(['config', '--get', 'core.fsmonitor'], { gitDir: up.dir });
    expect(out(fsmonitor.stdout)).toBe('false');
  });

  it('beats the repository config and ignores the caller environment for hardened keys', async () => {
    const up = repo();
    up.git('config', 'core.hooksPath', '/tmp/evil-hooks');
    const r = await runGit(['config', '--get', 'core.hooksPath'], { gitDir: up.dir, env: { GIT_CONFIG_GLOBAL: '/tmp/evil', HOME: '/root' } });
    expect(out(r.stdout)).toBe('/dev/null');
    const home = await runGit(['config', '--global', '--list'], { gitDir: up.dir });
    expect(out(home.stdout)).toContain('safe.directory=*');
  });

  it('inherits no GIT_* variable from the parent process', async () => {
    const up = repo();
    process.env.GIT_DIR = up.dir;
    try {
      const notRepo = mkdtempSync(join(scratch, 'plain-'));
      await expect(runGit(['rev-parse', '--git-dir'], { cwd: notRepo })).rejects.toThrow(/not a git repository/);
    } finally {
      delete process.env.GIT_DIR;
    }
  });

  it('runs no hook, where plain git would', async () => {
    const up = repo();
    const marker = join(scratch, `hook-${Date.now()}`);
    mkdirSync(join(up.dir, 'hooks'), { recursive: true });
    writeFileSync(join(up.dir, 'hooks', 'reference-transaction'), `#!/bin/sh\necho ran >> ${marker}\n`, { mode: 0o755 });
    await runGit(['update-ref', 'refs/heads/x', up.tip()], { gitDir: up.dir });
    expect(existsSync(marker)).toBe(false);
    execFileSync('git', ['update-ref', 'refs/heads/y', up.tip()], { env: { PATH: process.env.PATH, GIT_DIR: up.dir, GIT_CONFIG_GLOBAL: '/dev/null' } });
    expect(readFileSync(marker, 'utf8')).toContain('ran'); // the control: the hook is real
  });

  it('refuses the ext:: transport (no command runs)', async () => {
    const marker = join(scratch, 'ext-pwned');
    await expect(runGit(['ls-remote', `ext::sh -c touch% ${marker}`])).rejects.toThrow(/transport 'ext' not allowed/);
    await expect(runGit(['ls-remote', 'fd::3'])).rejects.toThrow(GitFailedError);
    expect(existsSync(marker)).toBe(false);
  });

  it.skipIf(process.getuid?.() !== 0)('reads a repository owned by another uid, including as a local remote', async () => {
    const up = repo();
    chownSync(up.dir, 4242, 4242);
    execFileSync('chown', ['-R', '4242:4242', up.dir]);
    const plain = spawnSync('git', ['ls-remote', up.dir], { env: { PATH: process.env.PATH, GIT_CONFIG_GLOBAL: '/dev/null', HOME: scratch }, encoding: 'utf8' });
    expect(plain.stderr).toMatch(/dubious ownership/); // the control
    const r = await runGit(['ls-remote', '--end-of-options', up.dir, 'refs/heads/master']);
    expect(out(r.stdout)).toBe(`${up.tip()}\trefs/heads/master`);
  });
});

describe('runGit: failures', () => {
  it('maps a non-zero exit to a retryable GitFailedError naming the subcommand and its stderr', async () => {
    const up = repo();
    const err = await runGit(['rev-parse', '--verify', 'refs/heads/nope'], { gitDir: up.dir }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GitFailedError);
    expect((err as GitFailedError).message).toMatch(/^git rev-parse failed \(exit 128\): fatal: Needed a single revision/);
    expect((err as GitFailedError).retryable).toBe(true);
  });

  it('returns allowed exit codes as results', async () => {
    const up = repo();
    const r = await runGit(['rev-parse', '--verify', '--quiet', 'refs/heads/nope'], { gitDir: up.dir, allowFail: [1] });
    expect(r.code).toBe(1);
  });

  it('kills git when stdout passes the cap', async () => {
    const up = repo({ big: 'x'.repeat(100_000) });
    await expect(runGit(['cat-file', 'blob', `${up.tip()}:big`], { gitDir: up.dir, maxOutputBytes: 1000 })).rejects.toThrow(/output exceeded 1000 bytes/);
  });

  it('passes stdin', async () => {
    const r = await runGit(['hash-object', '--stdin'], { input: Buffer.from('hello\n') });
    expect(out(r.stdout)).toBe('ce013625030ba8dba906f756967f9e9ca394464a');
  });

  it('kills the whole process group at the deadline', async () => {
    const marker = join(scratch, 'late');
    const started = Date.now();
    await expect(runGit(['-c', `alias.slow=!sleep 1; touch ${marker}`, 'slow'], { timeoutMs: 200 })).rejects.toThrow(/timed out after 200 ms/);
    expect(Date.now() - started).toBeLessThan(900);
    await new Promise((r) => setTimeout(r, 1300));
    expect(existsSync(marker)).toBe(false);
  });

  it('cancels on abort, and before start', async () => {
    const ac = new AbortController();
    const p = runGit(['-c', 'alias.slow=!sleep 5', 'slow'], { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await expect(p).rejects.toBeInstanceOf(CancelledError);
    await expect(runGit(['--version'], { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(CancelledError);
  });
});

describe('streamGit', () => {
  it('streams output, and fails the stream when git fails', async () => {
    const up = repo({ 'a.txt': 'A\n' });
    expect(await text(streamGit(['cat-file', 'blob', `${up.tip()}:a.txt`], { gitDir: up.dir }))).toBe('A\n');
    await expect(text(streamGit(['cat-file', 'blob', `${up.tip()}:nope`], { gitDir: up.dir }))).rejects.toThrow(GitFailedError);
  });
});

describe('names', () => {
  it('isSha accepts full lowercase ids only', () => {
    expect(isSha('a'.repeat(40))).toBe(true);
    expect(isSha('a'.repeat(64))).toBe(true);
    for (const s of ['A'.repeat(40), 'a'.repeat(39), 'a'.repeat(41), 'HEAD', '', `${'a'.repeat(40)}\n`]) expect(isSha(s)).toBe(false);
  });

  const valid = ['refs/heads/master', 'refs/changes/45/12345/3', 'refs/heads/feature/x-y_z', 'refs/heads/ünïcode', 'refs/tags/v1.0', 'refs/heads/a@b'];
  const invalid = [
    'refs/../x', 'refs/heads/a..b', 'refs/heads/a.lock', 'refs/heads/.x', 'refs/heads/x.', 'refs/heads//x', 'refs/heads/x/', '/refs/heads/x',
    'master', 'refs/heads/a b', 'refs/heads/a~1', 'refs/heads/a^', 'refs/heads/a:b', 'refs/heads/a?', 'refs/heads/a*', 'refs/heads/a[',
    'refs/heads/a\\b', 'refs/heads/a@{1}', '@', '', 'refs/heads/a\x01', 'refs/heads/a\x7f', 'refs/heads/a\tb',
  ];
  it.each(valid)('accepts %j, as git check-ref-format does', (name) => {
    expect(refNameProblem(name)).toBeUndefined();
    expect(spawnSync('git', ['check-ref-format', name]).status).toBe(0);
  });
  it.each(invalid)('rejects %j, as git check-ref-format does', (name) => {
    expect(refNameProblem(name)).toBeDefined();
    if (name !== '') expect(spawnSync('git', ['check-ref-format', name]).status).not.toBe(0);
  });
  it.each(['--upload-pack=evil', '-x', '-refs/heads/x', `refs/heads/${'a'.repeat(1100)}`])('rejects %j (stricter than git)', (name) => {
    expect(refNameProblem(name)).toBeDefined();
  });

  it('validateRefName throws InvalidInputError naming the field', () => {
    expect(validateRefName('refs/heads/x')).toBe('refs/heads/x');
    const err = (() => {
      try {
        validateRefName('refs/../x', 'changes[0].ref');
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as InvalidInputError).issues[0]?.path).toBe('changes[0].ref');
  });

  it.each(['https://example.com/a.git', 'http://h/x', 'ssh://git@host:29418/p', 'git://h/p', 'file:///srv/p.git', 'git@github.com:o/r.git', '/srv/git/p.git'])(
    'accepts remote %j',
    (url) => expect(remoteUrlProblem(url)).toBeUndefined(),
  );
  it.each(['ext::sh -c touch% /tmp/x', 'fd::3', '-oProxyCommand=x', 'ssh://-oProxyCommand=x/p', 'ssh://u@-x/p', '-x:p', 'ftp://h/p', 'relative/path', '', 'https://h/\n', 'a'.repeat(3000)])(
    'refuses remote %j',
    (url) => expect(remoteUrlProblem(url)).toBeDefined(),
  );
});

describe('streamGit cancellation', () => {
  it('fails the stream, not the call, when aborted before start', async () => {
    const s = streamGit(['--version'], { signal: AbortSignal.abort() });
    await expect(text(s)).rejects.toBeInstanceOf(CancelledError);
  });
});
