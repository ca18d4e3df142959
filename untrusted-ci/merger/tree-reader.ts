/**
 * Reading a prepared commit straight from the mirror's object store: one file, the id of a
 * directory's tree, or a tar of a directory. No checkout; symlinks and submodules are never
 * followed (a file read refuses them, an archive carries a symlink as a symlink entry).
 */
import type { Readable } from 'node:stream';
import { GitFailedError, InvalidInputError, NotFoundError, type Issue } from '#shared/errors.js';
import { streamGit } from '#shared/git/git.js';
import type { Mirror } from './mirror.js';

/** One entry of a commit's tree, as `git ls-tree -l` shows it. */
export interface TreeEntry {
  mode: string;
  type: 'blob' | 'tree' | 'commit';
  oid: string;
  /** Bytes for a blob; undefined for a tree or submodule. */
  size: number | undefined;
}

/**
 * Why `path` is not a clean repo-relative path, or undefined. Clean: `/`-separated, not absolute,
 * no empty, `.` or `..` component, no control character. With `allowRoot`, '' and '.' mean the root.
 */
export function repoPathProblem(path: string, allowRoot = false): string | undefined {
  if (allowRoot && (path === '' || path === '.')) return undefined;
  if (path.length === 0 || path.length > 4096) return 'must be 1 to 4096 characters';
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(path)) return 'contains a control character';
  if (path.startsWith('/')) return 'is absolute';
  const parts = path.replace(/\/$/, '').split('/');
  if (parts.some((p) => p === '' || p === '.' || p === '..')) return 'has an empty, "." or ".." component';
  return undefined;
}

function issue(path: string, message: string): InvalidInputError {
  const i: Issue = { file: path, path: '', message, severity: 'error' };
  return new InvalidInputError([i]);
}

/** The tree entry at `path` in `commit`, or undefined when there is none. NotFoundError for an unknown commit. */
export async function entryAt(mirror: Mirror, commit: string, path: string, signal?: AbortSignal): Promise<TreeEntry | undefined> {
  const clean = path.replace(/\/$/, '');
  const r = await mirror.git(['ls-tree', '-l', '-z', '--end-of-options', commit, '--', clean], { signal, allowFail: [128] });
  if (r.code !== 0) {
    const [known] = await mirror.commits([commit], signal);
    if (!known) throw new NotFoundError(`commit ${commit} is not in the mirror of ${mirror.project}`);
    throw new GitFailedError(`git ls-tree failed: ${r.stderr.trim()}`);
  }
  for (const record of r.stdout.toString('utf8').split('\0')) {
    const m = /^(\d{6}) (blob|tree|commit) ([0-9a-f]+) +(-|\d+)\t([\s\S]*)$/.exec(record);
    if (m && m[5] === clean) {
      return { mode: m[1] ?? '', type: m[2] as TreeEntry['type'], oid: m[3] ?? '', size: m[4] === '-' ? undefined : Number(m[4]) };
    }
  }
  return undefined;
}

/**
 * The bytes of the regular file at `path`, or undefined if nothing is there. InvalidInputError
 * for a symlink, submodule or directory, or a file over `maxBytes` (checked before reading).
 */
export async function readBlob(mirror: Mirror, commit: string, path: string, maxBytes: number, signal?: AbortSignal): Promise<Buffer | undefined> {
  const entry = await entryAt(mirror, commit, path, signal);
  if (!entry) return undefined;
  if (entry.mode === '120000') throw issue(path, 'is a symbolic link, not a regular file');
  if (entry.type === 'commit') throw issue(path, 'is a submodule, not a regular file');
  if (entry.type === 'tree') throw issue(path, 'is a directory, not a regular file');
  if ((entry.size ?? 0) > maxBytes) throw issue(path, `is ${entry.size} bytes, over the limit of ${maxBytes}`);
  const { stdout } = await mirror.git(['cat-file', 'blob', entry.oid], { signal, maxOutputBytes: maxBytes });
  return stdout;
}

/** The tree id of directory `path` ('' or '.' for the root), or undefined if absent. InvalidInputError if it is not a directory. */
export async function treeAt(mirror: Mirror, commit: string, path: string, signal?: AbortSignal): Promise<string | undefined> {
  if (path === '' || path === '.') {
    const [known] = await mirror.commits([commit], signal);
    if (!known) throw new NotFoundError(`commit ${commit} is not in the mirror of ${mirror.project}`);
    const r = await mirror.git(['rev-parse', '--verify', `${commit}^{tree}`], { signal });
    return r.stdout.toString('utf8').trim();
  }
  const entry = await entryAt(mirror, commit, path, signal);
  if (!entry) return undefined;
  if (entry.type !== 'tree') throw issue(path, 'is not a directory');
  return entry.oid;
}

/**
 * A tar stream (`git archive --format=tar`) of `commit`, or of its directory `path` with entries
 * relative to that directory. Errors (unknown commit or path) surface as a stream error.
 */
export function archive(mirror: Mirror, commit: string, path: string, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Readable {
  const root = path === '' || path === '.';
  const treeish = root ? commit : `${commit}:${path.replace(/\/$/, '')}`;
  return streamGit(['archive', '--format=tar', '--end-of-options', treeish], { gitDir: mirror.dir, ...opts });
}
