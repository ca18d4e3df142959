/**
 * Embargoed patches on top of a verified public commit, without a work tree and without writing a
 * single object of theirs into the builder's mirror:
 *
 * - a scratch directory (the promotion's private work dir) holds a temporary index and object
 *   directory; the mirror's objects are read through GIT_ALTERNATE_OBJECT_DIRECTORIES, and every
 *   new object (the patched blobs and trees) goes to the scratch directory, which the caller
 *   removes when the promotion ends;
 * - patches go to git on stdin: no patch file on disk, no patch name or path in any argv (so
 *   nothing of them shows in a process list);
 * - git's own messages about a patch (they name its files) are returned as `detail`, for the
 *   embargo's encrypted log only; the rest of the result names a patch by its id.
 *
 * Retirement: a patch is already public when it reverse-applies cleanly to the public commit, or
 * when its `git patch-id --stable` equals that of one of the last RETIRE_LOOKBACK first-parent
 * commits of the public history.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isSha, runGit } from '../../shared/git/git.js';
import { InvalidInputError } from '../../shared/errors.js';
import { archiveToFile } from '../verify/source.js';

export interface EmbargoPatch {
  /** The embargo's id (no meaning, no content). */
  id: string;
  /** The patch text (`git format-patch` output or a plain unified diff). */
  patch: string;
}

export type ApplyResult =
  | { ok: true; tree: string }
  | { ok: false; failed: string; detail: string };

/** How far back the public history is searched for a patch's patch-id. */
export const RETIRE_LOOKBACK = 500;

export class PatchWorkspace {
  private readonly env: Record<string, string>;

  private constructor(
    readonly mirror: string,
    readonly scratch: string,
  ) {
    this.env = {
      GIT_INDEX_FILE: join(scratch, 'index'),
      GIT_OBJECT_DIRECTORY: join(scratch, 'objects'),
      GIT_ALTERNATE_OBJECT_DIRECTORIES: join(mirror, 'objects'),
    };
  }

  /** A workspace over `mirror` (a bare repository) whose new objects live in `scratch`. */
  static async open(mirror: string, scratch: string): Promise<PatchWorkspace> {
    await mkdir(join(scratch, 'objects'), { recursive: true, mode: 0o700 });
    return new PatchWorkspace(mirror, scratch);
  }

  private git(args: string[], opts: { input?: Buffer; allowFail?: number[]; maxOutputBytes?: number } = {}) {
    return runGit(args, { gitDir: this.mirror, env: this.env, ...opts });
  }

  /** The index := the tree of `commit`. */
  private async reset(commit: string): Promise<void> {
    if (!isSha(commit)) throw new InvalidInputError([{ file: 'embargo', path: 'commit', message: 'not a full commit id', severity: 'error' }]);
    await this.git(['read-tree', '--end-of-options', commit]);
  }

  /** Apply `patches` in order on `commit`; the first that does not apply stops it. */
  async apply(commit: string, patches: readonly EmbargoPatch[]): Promise<ApplyResult> {
    await this.reset(commit);
    for (const p of patches) {
      const r = await this.git(['apply', '--cached', '--whitespace=nowarn', '-'], { input: Buffer.from(p.patch, 'utf8'), allowFail: [1, 128] });
      if (r.code !== 0) return { ok: false, failed: p.id, detail: r.stderr.trim().slice(0, 4000) || 'git apply failed' };
    }
    const tree = (await this.git(['write-tree'])).stdout.toString('utf8').trim();
    return { ok: true, tree };
  }

  /** Whether `patch` is already in the public history at `commit` (see the module comment). */
  async isPublic(commit: string, patch: string): Promise<{ public: false } | { public: true; how: 'reverse-applies' | 'patch-id'; match?: string }> {
    await this.reset(commit);
    const rev = await this.git(['apply', '--cached', '--reverse', '--check', '-'], { input: Buffer.from(patch, 'utf8'), allowFail: [1, 128] });
    if (rev.code === 0 && (await this.changesSomething(patch))) return { public: true, how: 'reverse-applies' };
    const id = await this.patchId(Buffer.from(patch, 'utf8'));
    if (!id) return { public: false };
    const log = await this.git(['log', '--first-parent', '-p', '--no-color', '--no-ext-diff', `-n${RETIRE_LOOKBACK}`, '--format=commit %H', '--end-of-options', commit], { maxOutputBytes: 256 * 1024 * 1024 });
    const ids = await this.git(['patch-id', '--stable'], { input: log.stdout });
    for (const line of ids.stdout.toString('utf8').split('\n')) {
      const [pid, sha] = line.split(' ');
      if (pid === id && sha) return { public: true, how: 'patch-id', match: sha };
    }
    return { public: false };
  }

  /** `git archive` of `tree` (or its directory `subdir`) to `file`, capped like the public one. */
  async archive(tree: string, file: string, subdir = '.'): Promise<void> {
    const dir = subdir.replace(/\/+$/, '');
    if (!/^[0-9a-f]{40,64}$/.test(tree) || dir.startsWith('/') || dir.startsWith('-') || dir.split('/').includes('..') || dir.includes(':') || dir.includes('\0')) {
      throw new InvalidInputError([{ file: 'embargo', path: 'subdir', message: 'must be a relative directory inside the repository', severity: 'error' }]);
    }
    await archiveToFile({ gitDir: this.mirror, env: this.env, treeish: dir === '.' || dir === '' ? tree : `${tree}:${dir}`, file, what: subdir });
  }

  /** A file of `tree`, or undefined. */
  async readFile(tree: string, path: string, maxBytes: number): Promise<Buffer | undefined> {
    if (path.startsWith('/') || path.split('/').includes('..') || path.includes('\0')) return undefined;
    const r = await this.git(['cat-file', '-s', `${tree}:${path}`], { allowFail: [128] });
    if (r.code !== 0) return undefined;
    const size = Number(r.stdout.toString('utf8').trim());
    if (!(size <= maxBytes)) throw new InvalidInputError([{ file: path, path: '', message: `is ${size} bytes, more than the ${maxBytes} allowed`, severity: 'error' }]);
    return (await this.git(['cat-file', 'blob', `${tree}:${path}`], { maxOutputBytes: maxBytes })).stdout;
  }

  private async patchId(patch: Buffer): Promise<string | undefined> {
    const r = await this.git(['patch-id', '--stable'], { input: patch });
    return r.stdout.toString('utf8').split(' ')[0] || undefined;
  }

  /** A patch with no hunks reverse-applies to anything; it retires nothing. */
  private async changesSomething(patch: string): Promise<boolean> {
    const r = await this.git(['apply', '--numstat', '-'], { input: Buffer.from(patch, 'utf8'), allowFail: [1, 128] });
    return r.code === 0 && r.stdout.toString('utf8').trim().length > 0;
  }
}
