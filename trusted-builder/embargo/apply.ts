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
 * - paths inside the patched tree (which come from patched config) reach git on stdin too
 *   (`cat-file --batch`), and archives are made of a tree id: no such path in any argv either.
 *
 * Retirement: a patch is already public when the public commit's tree has the fix, and a wrong
 * "yes" would silently drop a security fix from production, so the rule is strict:
 *   1. the patch must NOT apply forward any more (if it still applies, the fix is not there — this
 *      rules out a similar hunk elsewhere matching at an offset, and a published fix later
 *      reverted);
 *   2. it must add something: a patch that only deletes is never judged public (a file moved away
 *      would look like its deletion);
 *   3. and then either it reverse-applies and round-trips exactly (reverse gives T′, the patch on
 *      T′ gives back the public tree T), or every commit of the patch (a `format-patch` series
 *      counts each) has the `git patch-id --stable` of one of the last RETIRE_LOOKBACK
 *      first-parent commits of the public history.
 * The public patch-ids are computed once per workspace (one promotion), with a size cap and a
 * deadline; when they cannot be computed, only the reverse-apply test decides.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isSha, runGit } from '#shared/git/git.js';
import { InvalidInputError } from '#shared/errors.js';
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
const PATCH_ID_LOG_MAX_BYTES = 64 * 1024 * 1024; // 64 MiB of diffs at most
const PATCH_ID_TIMEOUT_MS = 60_000;

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

  private git(args: string[], opts: { input?: Buffer; allowFail?: number[]; maxOutputBytes?: number; timeoutMs?: number } = {}) {
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
    const input = Buffer.from(patch, 'utf8');
    await this.reset(commit);
    const forward = await this.git(['apply', '--cached', '--check', '-'], { input, allowFail: [1, 128] });
    if (forward.code === 0) return { public: false }; // the fix is not in the tree
    if (!(await this.addsSomething(input))) return { public: false };
    const tree = (await this.git(['write-tree'])).stdout.toString('utf8').trim();
    const reverse = await this.git(['apply', '--cached', '--reverse', '-'], { input, allowFail: [1, 128] });
    if (reverse.code === 0) {
      const again = await this.git(['apply', '--cached', '-'], { input, allowFail: [1, 128] });
      if (again.code === 0 && (await this.git(['write-tree'])).stdout.toString('utf8').trim() === tree) return { public: true, how: 'reverse-applies' };
    }
    const ids = await this.patchIds(input);
    if (ids.length === 0) return { public: false };
    const published = await this.publicPatchIds(commit);
    if (ids.every((id) => published.has(id))) return { public: true, how: 'patch-id', match: published.get(ids[ids.length - 1]!)! };
    return { public: false };
  }

  /** `git archive` of `tree` (or its directory `subdir`) to `file`, capped like the public one. */
  async archive(tree: string, file: string, subdir = '.'): Promise<void> {
    const dir = subdir.replace(/\/+$/, '');
    if (!/^[0-9a-f]{40,64}$/.test(tree) || dir.startsWith('/') || dir.split('/').includes('..') || dir.includes('\0') || dir.includes('\n')) {
      throw new InvalidInputError([{ file: 'embargo', path: 'subdir', message: 'must be a relative directory inside the repository', severity: 'error' }]);
    }
    let treeish = tree;
    if (dir !== '.' && dir !== '') {
      const o = await this.object(`${tree}:${dir}`);
      if (o?.type !== 'tree') throw new InvalidInputError([{ file: 'embargo', path: 'subdir', message: 'is not a directory of the patched tree', severity: 'error' }]);
      treeish = o.oid;
    }
    await archiveToFile({ gitDir: this.mirror, env: this.env, treeish, file, what: 'the patched tree' });
  }

  /** A file of `tree`, or undefined. */
  async readFile(tree: string, path: string, maxBytes: number): Promise<Buffer | undefined> {
    if (path.startsWith('/') || path.split('/').includes('..') || path.includes('\0') || path.includes('\n')) return undefined;
    const o = await this.object(`${tree}:${path}`);
    if (!o || o.type !== 'blob') return undefined;
    if (!(o.size <= maxBytes)) throw new InvalidInputError([{ file: 'a file of the patched tree', path: '', message: `is ${o.size} bytes, more than the ${maxBytes} allowed`, severity: 'error' }]);
    const r = await this.git(['cat-file', '--batch'], { input: Buffer.from(`${o.oid}\n`), maxOutputBytes: maxBytes + 200 });
    const out = r.stdout;
    const nl = out.indexOf(10);
    return out.subarray(nl + 1, nl + 1 + o.size);
  }

  /** `<rev>:<path>` resolved on stdin (the path stays out of argv). */
  private async object(spec: string): Promise<{ oid: string; type: string; size: number } | undefined> {
    const r = await this.git(['cat-file', '--batch-check'], { input: Buffer.from(`${spec}\n`) });
    const [oid, type, size] = r.stdout.toString('utf8').trim().split(' ');
    if (!oid || !type || type === 'missing' || size === undefined) return undefined;
    return { oid, type, size: Number(size) };
  }

  /** Every patch-id of `patch` (one per commit of a series; one for a plain diff). */
  private async patchIds(patch: Buffer): Promise<string[]> {
    const r = await this.git(['patch-id', '--stable'], { input: patch });
    return r.stdout.toString('utf8').split('\n').map((l) => l.split(' ')[0] ?? '').filter((x) => /^[0-9a-f]{40,64}$/.test(x));
  }

  private readonly published = new Map<string, Promise<Map<string, string>>>();

  /** patch-id → commit for the last RETIRE_LOOKBACK first-parent commits of `commit` (once per workspace). */
  private publicPatchIds(commit: string): Promise<Map<string, string>> {
    let p = this.published.get(commit);
    if (!p) {
      p = (async () => {
        const ids = new Map<string, string>();
        try {
          const log = await this.git(['log', '--first-parent', '-p', '--no-color', '--no-ext-diff', `-n${RETIRE_LOOKBACK}`, '--format=commit %H', '--end-of-options', commit], { maxOutputBytes: PATCH_ID_LOG_MAX_BYTES, timeoutMs: PATCH_ID_TIMEOUT_MS });
          const out = await this.git(['patch-id', '--stable'], { input: log.stdout, timeoutMs: PATCH_ID_TIMEOUT_MS });
          for (const line of out.stdout.toString('utf8').split('\n')) {
            const [pid, sha] = line.split(' ');
            if (pid && sha && !ids.has(pid)) ids.set(pid, sha);
          }
        } catch {
          // Too large or too slow: no patch-id evidence this time; the reverse-apply test still runs.
        }
        return ids;
      })();
      this.published.set(commit, p);
    }
    return p;
  }

  /** Whether the patch adds at least one line (`git apply --numstat`: added, deleted, path). */
  private async addsSomething(patch: Buffer): Promise<boolean> {
    const r = await this.git(['apply', '--numstat', '-'], { input: patch, allowFail: [1, 128] });
    return r.code === 0 && r.stdout.toString('utf8').split('\n').some((l) => Number(l.split('\t')[0]) > 0);
  }
}
