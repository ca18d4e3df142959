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

/** Read through the mirror's object reader at most this much of a commit (its headers come first). */
const COMMIT_READ_MAX = 1024 * 1024;
/** Trees bigger than this are not read whole: `git ls-tree` lists them, `git archive` archives them. */
export const TREE_READ_MAX = 8 * 1024 * 1024;

/** A commit's headers as the object reader gives them, or undefined when it is not a commit, or too big to read whole. */
export interface CommitHeaders {
  tree: string;
  parents: string[];
  /** The committer date in seconds, when the committer line is well-formed. */
  committerTime: number | undefined;
}

/**
 * The headers of commit `commit` (one long-lived process serves every read, cat-file.ts);
 * undefined when there is no such commit, or it is over 1 MiB (the caller then asks git itself).
 */
export async function readCommit(mirror: Mirror, commit: string, signal?: AbortSignal): Promise<CommitHeaders | undefined> {
  const got = await mirror.objects.contents(commit, COMMIT_READ_MAX, signal);
  if (!got?.data || got.info.type !== 'commit') return undefined;
  const end = got.data.indexOf('\n\n');
  const head = (end < 0 ? got.data : got.data.subarray(0, end)).toString('latin1');
  const tree = /^tree ([0-9a-f]{40,64})$/m.exec(head)?.[1];
  if (!tree) return undefined;
  const committer = /^committer [^\n]*> (\d{1,15}) [+-]\d{4}$/m.exec(head);
  return { tree, parents: [...head.matchAll(/^parent ([0-9a-f]{40,64})$/gm)].map((p) => p[1] ?? ''), committerTime: committer ? Number(committer[1]) : undefined };
}

/** One entry of a tree object, as stored: its octal mode without padding (`40000` for a tree). */
export interface RawTreeEntry {
  name: Buffer;
  mode: string;
  oid: string;
}

/**
 * A tree object's entries ("<octal mode> <name>\0<raw id>" each), in its own (git's) order; object
 * ids of `oidBytes` bytes. Undefined when it does not parse (a bad mode, an empty name or one
 * holding `/`, a cut entry).
 */
export function parseTreeObject(data: Buffer, oidBytes: number): RawTreeEntry[] | undefined {
  const out: RawTreeEntry[] = [];
  for (let i = 0; i < data.length; ) {
    const sp = data.indexOf(0x20, i);
    const nul = sp < 0 ? -1 : data.indexOf(0x00, sp + 1);
    if (sp < 0 || nul < 0 || nul + 1 + oidBytes > data.length) return undefined;
    const mode = data.subarray(i, sp).toString('latin1');
    const name = data.subarray(sp + 1, nul);
    if (!/^[0-7]{5,6}$/.test(mode) || name.length === 0 || name.includes(0x2f)) return undefined;
    out.push({ name, mode, oid: data.subarray(nul + 1, nul + 1 + oidBytes).toString('hex') });
    i = nul + 1 + oidBytes;
  }
  return out;
}

/**
 * The entry `name` of tree object `tree` through the object reader: the entry, null when the tree
 * has none of that name, undefined when the reader cannot say (the tree is too big or does not
 * parse: the caller asks `git ls-tree`).
 */
async function treeEntry(mirror: Mirror, tree: string, name: string, signal?: AbortSignal): Promise<TreeEntry | null | undefined> {
  const got = await mirror.objects.contents(tree, TREE_READ_MAX, signal);
  if (!got?.data || got.info.type !== 'tree') return undefined;
  const entries = parseTreeObject(got.data, tree.length / 2);
  if (!entries) return undefined;
  const want = Buffer.from(name, 'utf8');
  const e = entries.find((x) => x.name.equals(want));
  if (!e) return null;
  const mode = e.mode.padStart(6, '0');
  const type: TreeEntry['type'] = mode === '040000' ? 'tree' : mode === '160000' ? 'commit' : 'blob';
  let size: number | undefined;
  if (type === 'blob') {
    size = (await mirror.objects.info(e.oid, signal))?.size;
    if (size === undefined) return undefined; // a blob the mirror lacks: as git says it
  }
  return { mode, type, oid: e.oid, size };
}

/** The entry at `clean` in `commit` through the object reader; undefined when the reader cannot say. */
async function entryByReader(mirror: Mirror, commit: string, clean: string, signal?: AbortSignal): Promise<{ entry: TreeEntry | undefined } | undefined> {
  const c = await readCommit(mirror, commit, signal);
  if (!c) return undefined;
  let tree = c.tree;
  const parts = clean.split('/');
  for (const [i, part] of parts.entries()) {
    const e = await treeEntry(mirror, tree, part, signal);
    if (e === undefined) return undefined;
    if (e === null) return { entry: undefined };
    if (i === parts.length - 1) return { entry: e };
    if (e.type !== 'tree') return { entry: undefined };
    tree = e.oid;
  }
  return undefined;
}

/** The tree entry at `path` in `commit`, or undefined when there is none. NotFoundError for an unknown commit. */
export async function entryAt(mirror: Mirror, commit: string, path: string, signal?: AbortSignal): Promise<TreeEntry | undefined> {
  const clean = path.replace(/\/$/, '');
  // The object reader answers without a process; git ls-tree where it cannot (a commit or tree
  // too big to read whole, an unknown commit, objects that do not parse).
  const read = await entryByReader(mirror, commit, clean, signal);
  if (read) return read.entry;
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
  const got = await mirror.objects.contents(entry.oid, maxBytes, signal);
  if (!got || got.info.type !== 'blob') throw new GitFailedError(`blob ${entry.oid} of ${path} is not in the mirror of ${mirror.project}`);
  if (!got.data) throw issue(path, `is ${got.info.size} bytes, over the limit of ${maxBytes}`);
  return got.data;
}

/** The tree id of directory `path` ('' or '.' for the root), or undefined if absent. InvalidInputError if it is not a directory. */
export async function treeAt(mirror: Mirror, commit: string, path: string, signal?: AbortSignal): Promise<string | undefined> {
  if (path === '' || path === '.') {
    const [known] = await mirror.commits([commit], signal);
    if (!known) throw new NotFoundError(`commit ${commit} is not in the mirror of ${mirror.project}`);
    const tree = await mirror.objects.info(`${commit}^{tree}`, signal);
    if (!tree) throw new GitFailedError(`commit ${commit} has no tree in the mirror of ${mirror.project}`);
    return tree.oid;
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
