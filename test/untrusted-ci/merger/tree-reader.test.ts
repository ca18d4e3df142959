/**
 * The merger's tree reads through the long-lived object reader (tree-reader.ts, cat-file.ts)
 * against `git ls-tree -l`, path by path, on trees with every kind of entry and names that sort
 * next to each other; and the fallback to git where the reader cannot say.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { NotFoundError } from '#shared/errors.js';
import { Mirror } from '../../../untrusted-ci/merger/mirror.js';
import { entryAt, readCommit, type TreeEntry } from '../../../untrusted-ci/merger/tree-reader.js';
import { createRepo, type FileContent } from '../../support/git-repo.js';

const up = createRepo({ 'README.md': 'hello\n' });
afterAll(() => up.dispose());
const mirror = new Mirror(up.dir, 'tree-reader-test');
/** The same mirror with no way to run git: every answer must come from the object reader. */
const readerOnly: Mirror = Object.assign(Object.create(mirror) as Mirror, {
  git: () => Promise.reject(new Error('a git process was started')),
});

/** What `git ls-tree -l -z <commit> -- <path>` says is at `path`. */
function lsTree(commit: string, path: string): TreeEntry | undefined {
  const clean = path.replace(/\/$/, '');
  const out = up.git('ls-tree', '-l', '-z', commit, '--', clean);
  for (const record of out.split('\0')) {
    const m = /^(\d{6}) (blob|tree|commit) ([0-9a-f]+) +(-|\d+)\t([\s\S]*)$/.exec(record);
    if (m && m[5] === clean) return { mode: m[1]!, type: m[2] as TreeEntry['type'], oid: m[3]!, size: m[4] === '-' ? undefined : Number(m[4]) };
  }
  return undefined;
}

describe('entryAt through the object reader', () => {
  it('says what git ls-tree says, for every path and for paths that are not there', async () => {
    const files: Record<string, FileContent> = {
      'a': 'a\n', 'a.txt': 'a.txt\n', 'a-b': '', 'a0': '0', 'ab/c': 'deep\n', 'a b/c d': 'spaces\n',
      'dir/sub/leaf.txt': 'leaf\n', 'dir/sub.txt': 'sub\n', 'dir/x': { mode: '100755', content: '#!/bin/sh\n' },
      'link': { symlink: 'a' }, 'dir/link': { symlink: '../a' }, 'vendor/mod': { submodule: 'b'.repeat(40) },
      'ünïcode/名前.txt': 'u\n', '.airlock.yaml': 'version: 1\n', ['z'.repeat(200)]: 'long\n',
    };
    const commit = up.commit(files);
    const paths = new Set<string>();
    for (const p of Object.keys(files)) {
      const parts = p.split('/');
      parts.forEach((_, i) => paths.add(parts.slice(0, i + 1).join('/')));
      paths.add(`${p}/beyond`);
      paths.add(`${p}x`);
      paths.add(`${p}/`);
    }
    for (const p of ['nope', 'dir/nope', 'a/b', 'A', 'dir/sub/leaf.txt/x', 'vendor/mod/inside', 'link/x']) paths.add(p);
    for (const p of paths) expect({ p, e: await entryAt(readerOnly, commit, p) }).toEqual({ p, e: lsTree(commit, p) });
  });

  it('reads a commit\'s tree, parents and committer date; an unknown commit is not found', async () => {
    const parent = up.tip();
    const commit = up.commit({ 'x.txt': 'x\n' });
    const c = await readCommit(mirror, commit);
    expect(c).toEqual({ tree: up.git('rev-parse', `${commit}^{tree}`), parents: [parent], committerTime: Number(up.git('log', '-1', '--format=%ct', commit)) });
    expect(await readCommit(mirror, '0'.repeat(40))).toBeUndefined();
    expect(await readCommit(mirror, up.git('rev-parse', `${commit}^{tree}`))).toBeUndefined();
    await expect(entryAt(mirror, '0'.repeat(40), 'README.md')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('a commit with a committer line git would not parse as ours falls back to git for its date', async () => {
    const tree = up.git('rev-parse', 'master^{tree}');
    const odd = execFileSync('git', ['hash-object', '-t', 'commit', '-w', '--literally', '--stdin'], {
      env: { PATH: process.env.PATH, GIT_DIR: up.dir, GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' },
      input: `tree ${tree}\nauthor a <a> 1 +0000\ncommitter weird\n\nodd\n`,
      encoding: 'utf8',
    }).trim();
    expect((await readCommit(mirror, odd))?.committerTime).toBeUndefined();
  });
});
