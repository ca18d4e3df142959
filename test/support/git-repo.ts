/**
 * Upstream repositories for tests: a bare repo in a temp dir, written with plumbing only (no
 * worktree, no checkout), so a commit can go on any branch, or on no branch at all (a Gerrit-style
 * change ref). Commit dates count up from a fixed epoch, so the same script gives the same shas.
 *
 * ```ts
 * const up = createRepo({ 'README.md': 'hello\n' });          // master with one commit
 * const a = up.change(12345, 3, { 'a.txt': 'A\n' });           // refs/changes/45/12345/3, label "12345,3"
 * up.commit({ 'README.md': 'moved on\n' });                    // master moves on
 * up.commit({ 'x': null, 'l': { symlink: 'README.md' } }, 'rm x, add a link', { branch: 'dev' });
 * ```
 * The helper runs git with hooks disabled and no user config, independent of shared/git/git.ts.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A file's content: text or bytes, a symlink, an executable, a submodule (gitlink to a commit id), or null to delete it. */
export type FileContent = string | Buffer | { symlink: string } | { mode: '100755'; content: string } | { submodule: string } | null;

/** A Gerrit-style change: its ref, commit and the label airlock reports it by. */
export interface TestChange {
  ref: string;
  sha: string;
  label: string;
}

/** A bare upstream repository; `url` is what a Merger fetches from. */
export interface TestRepo {
  dir: string;
  url: string;
  /** Runs git in the repo (hooks off) and returns trimmed stdout. */
  git(...args: string[]): string;
  /** Commits `files` on top of `branch` (default master; created if absent) and moves it. */
  commit(files: Record<string, FileContent>, message?: string, opts?: { branch?: string }): string;
  /** Writes a commit with the given parents (default: master's tip) without moving any ref. */
  write(files: Record<string, FileContent>, opts?: { parents?: string[]; message?: string }): string;
  /** Creates or moves branch `name` to `from` (a branch name or sha; default master's tip). */
  branch(name: string, from?: string): string;
  /** Points any ref (e.g. `refs/changes/45/12345/3`) at `sha`. */
  ref(name: string, sha: string): void;
  /** A change on top of `parent` (default master's tip) at `refs/changes/NN/<number>/<patchset>`. */
  change(number: number, patchset: number, files: Record<string, FileContent>, opts?: { parent?: string }): TestChange;
  /** The sha a branch or ref points at. */
  tip(branchOrRef?: string): string;
  /** Removes the repository. */
  dispose(): void;
}

const BASE_ENV = {
  PATH: process.env.PATH ?? '/usr/bin:/bin',
  HOME: '/nonexistent',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_AUTHOR_NAME: 'Test Author',
  GIT_AUTHOR_EMAIL: 'author@example.com',
  GIT_COMMITTER_NAME: 'Test Committer',
  GIT_COMMITTER_EMAIL: 'committer@example.com',
  LC_ALL: 'C',
};

/** Creates a bare repo whose `master` holds one commit with `files` ("initial"). */
export function createRepo(files: Record<string, FileContent> = { 'README.md': 'hello\n' }, opts: { branch?: string } = {}): TestRepo {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-upstream-'));
  const main = opts.branch ?? 'master';
  let clock = 1_700_000_000;

  const run = (args: string[], input?: string | Buffer, env: Record<string, string> = {}): string =>
    execFileSync('git', ['-c', 'core.hooksPath=/dev/null', '-c', 'safe.directory=*', ...args], {
      cwd: dir,
      env: { ...BASE_ENV, GIT_DIR: dir, ...env },
      input,
      encoding: 'utf8',
      stdio: ['pipe', 'pipe', 'pipe'],
    }).trim();
  const resolve = (rev: string): string | undefined => {
    try {
      return run(['rev-parse', '--verify', '--quiet', `${rev}^{commit}`]);
    } catch {
      return undefined;
    }
  };
  const revOf = (nameOrSha: string): string => resolve(`refs/heads/${nameOrSha}`) ?? resolve(nameOrSha) ?? fail(`no such branch or commit ${nameOrSha}`);

  const write = (changes: Record<string, FileContent>, o: { parents?: string[]; message?: string } = {}): string => {
    const parents = o.parents ?? (resolve(`refs/heads/${main}`) ? [revOf(main)] : []);
    const index = join(dir, `index-${process.pid}-${clock}`);
    const env = { GIT_INDEX_FILE: index };
    try {
      if (parents[0]) run(['read-tree', parents[0]], undefined, env);
      else run(['read-tree', '--empty'], undefined, env);
      for (const [path, content] of Object.entries(changes)) {
        if (content === null) {
          // Mode 0 in --index-info removes the entry; --force-remove would want a work tree.
          run(['update-index', '--index-info'], `0 ${'0'.repeat(40)}\t${path}\n`, env);
          continue;
        }
        if (typeof content === 'object' && 'submodule' in content) {
          run(['update-index', '--add', '--cacheinfo', `160000,${content.submodule},${path}`], undefined, env);
          continue;
        }
        const isLink = typeof content === 'object' && 'symlink' in content;
        const mode = isLink ? '120000' : typeof content === 'object' && 'mode' in content ? content.mode : '100644';
        const bytes = isLink ? content.symlink : typeof content === 'object' && 'mode' in content ? content.content : content;
        const blob = run(['hash-object', '-w', '--stdin'], bytes);
        run(['update-index', '--add', '--cacheinfo', `${mode},${blob},${path}`], undefined, env);
      }
      const tree = run(['write-tree'], undefined, env);
      clock += 60;
      const date = `${clock} +0000`;
      return run(['commit-tree', tree, ...parents.flatMap((p) => ['-p', p]), '-m', o.message ?? `commit at ${clock}`], undefined, {
        GIT_AUTHOR_DATE: date,
        GIT_COMMITTER_DATE: date,
      });
    } finally {
      rmSync(index, { force: true });
    }
  };

  run(['init', '--quiet', '--bare', `--initial-branch=${main}`, dir]);
  const repo: TestRepo = {
    dir,
    url: dir,
    git: (...args) => run(args),
    write,
    commit(changes, message, o = {}) {
      const branch = o.branch ?? main;
      const parent = resolve(`refs/heads/${branch}`);
      const sha = write(changes, { parents: parent ? [parent] : resolve(`refs/heads/${main}`) ? [revOf(main)] : [], ...(message ? { message } : {}) });
      run(['update-ref', `refs/heads/${branch}`, sha]);
      return sha;
    },
    branch(name, from = main) {
      const sha = revOf(from);
      run(['update-ref', `refs/heads/${name}`, sha]);
      return sha;
    },
    ref(name, sha) {
      run(['update-ref', name, sha]);
    },
    change(number, patchset, changes, o = {}) {
      const sha = write(changes, { parents: [o.parent ?? revOf(main)], message: `change ${number},${patchset}` });
      const ref = `refs/changes/${String(number % 100).padStart(2, '0')}/${number}/${patchset}`;
      run(['update-ref', ref, sha]);
      return { ref, sha, label: `${number},${patchset}` };
    },
    tip: (name = main) => (name.startsWith('refs/') ? run(['rev-parse', '--verify', name]) : revOf(name)),
    dispose: () => rmSync(dir, { recursive: true, force: true }),
  };
  repo.commit(files, 'initial');
  return repo;
}

function fail(message: string): never {
  throw new Error(message);
}
