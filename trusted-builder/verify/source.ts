/**
 * The trusted builder's own view of a project's source. It never uses a clone, ref or object the
 * untrusted tier made: each project has a bare mirror under the builder's data dir, fetched from the
 * canonical URL in `policies/promotion.yaml` (never from a hint), with fsck on, and holding only the
 * protected branches (`refs/protected/<branch>`).
 *
 * `verify(project, commit)`: fetch the protected branches, then the commit must exist and be an
 * ancestor of (or equal to) one of their tips. Anything else is a refusal with the reason, not an
 * error. git or network trouble throws GitFailedError (retryable). Calls for one project are
 * serialised (one fetch at a time per mirror); different projects run in parallel.
 *
 * After a successful verify, `archive` and `readFile` read that commit from the same mirror.
 */
import { createWriteStream, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { join } from 'node:path';
import { InvalidInputError, NotFoundError } from '#shared/errors.js';
import { isSha, runGit, streamGit } from '#shared/git/git.js';
import type { PromotedProject } from '../policy/promotion.js';

export type Verification =
  | { ok: true; commit: string; branch: string; tips: Record<string, string> }
  | { ok: false; reason: string; tips: Record<string, string> };

const PROTECTED_PREFIX = 'refs/protected/';
/** One fetch of a project's protected branches. */
const FETCH_TIMEOUT_MS = 5 * 60_000; // 5 min
/** A commit's archive at most (the source of the test re-run and the build context come from it). */
const MAX_ARCHIVE_BYTES = 1024 * 1024 * 1024; // 1 GiB

export class SourceVerifier {
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(private readonly root: string) {}

  /** The mirror of `project` (created on first use). */
  /** The builder's own bare mirror of `project` (the embargo lane reads its objects). */
  mirrorOf(project: PromotedProject): string {
    return this.mirror(project);
  }

  private mirror(project: PromotedProject): string {
    const dir = join(this.root, `${project.name.replaceAll('/', '%2F')}.git`);
    return dir;
  }

  private async ensure(dir: string): Promise<void> {
    if (existsSync(join(dir, 'HEAD'))) return;
    mkdirSync(dir, { recursive: true });
    await runGit(['init', '--quiet', '--bare', dir]);
    // The repository's .gitattributes must not change what `git archive` gives us (export-ignore
    // would hide files from the tests, export-subst would rewrite them and run gpg on its say).
    mkdirSync(join(dir, 'info'), { recursive: true });
    writeFileSync(join(dir, 'info', 'attributes'), '* -export-subst -export-ignore\n');
  }

  private serial<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    this.locks.set(
      key,
      next.catch(() => undefined),
    );
    return next;
  }

  /** Fetch the protected branches and return their tips (the poll mode's view). */
  async tips(project: PromotedProject, signal?: AbortSignal): Promise<Record<string, string>> {
    const dir = this.mirror(project);
    return this.serial(dir, () => this.fetchTips(project, dir, signal));
  }

  private async fetchTips(project: PromotedProject, dir: string, signal?: AbortSignal): Promise<Record<string, string>> {
    await this.ensure(dir);
    // Only the protected branches, into our own namespace; fsck every object (hostile remotes).
    const refspecs = project.protectedBranches.map((b) => `+refs/heads/${b}:${PROTECTED_PREFIX}${b}`);
    await runGit(['-c', 'fetch.fsckObjects=true', 'fetch', '--quiet', '--no-tags', '--prune', '--no-write-fetch-head', '--end-of-options', project.url, ...refspecs], {
      gitDir: dir,
      timeoutMs: FETCH_TIMEOUT_MS,
      ...(signal ? { signal } : {}),
    });
    const tips: Record<string, string> = {};
    for (const b of project.protectedBranches) {
      const r = await runGit(['rev-parse', '--verify', '--quiet', `${PROTECTED_PREFIX}${b}^{commit}`], { gitDir: dir, allowFail: [1] });
      if (r.code === 0) tips[b] = r.stdout.toString('utf8').trim();
    }
    return tips;
  }

  async verify(project: PromotedProject, commit: string, signal?: AbortSignal): Promise<Verification> {
    if (!isSha(commit)) throw new InvalidInputError([{ file: 'hint', path: 'commit', message: 'not a full commit id', severity: 'error' }]);
    const dir = this.mirror(project);
    return this.serial(dir, async () => {
      const tips = await this.fetchTips(project, dir, signal);
      const present = await runGit(['cat-file', '-e', `${commit}^{commit}`], { gitDir: dir, allowFail: [1, 128] });
      if (present.code !== 0) return { ok: false, reason: `commit ${commit} is not on a protected branch of ${project.name} (${project.protectedBranches.join(', ')})`, tips };
      for (const [branch, tip] of Object.entries(tips)) {
        const anc = await runGit(['merge-base', '--is-ancestor', commit, tip], { gitDir: dir, allowFail: [1] });
        if (anc.code === 0) return { ok: true, commit, branch, tips };
      }
      return { ok: false, reason: `commit ${commit} is not on a protected branch of ${project.name} (${project.protectedBranches.join(', ')})`, tips };
    });
  }

  /** Whether `ancestor` is an ancestor of (or equal to) `commit` in the builder's mirror (false when either is absent). */
  async isAncestor(project: PromotedProject, ancestor: string, commit: string): Promise<boolean> {
    if (!isSha(ancestor) || !isSha(commit)) throw new InvalidInputError([{ file: 'request', path: 'commit', message: 'not a full commit id', severity: 'error' }]);
    const r = await runGit(['merge-base', '--is-ancestor', '--end-of-options', ancestor, commit], { gitDir: this.mirror(project), allowFail: [1, 128] });
    return r.code === 0;
  }

  /** A file of a verified commit, or undefined when absent; refuses anything but a regular file. */
  async readFile(project: PromotedProject, commit: string, path: string, maxBytes: number): Promise<Buffer | undefined> {
    if (!isSha(commit)) throw new InvalidInputError([{ file: 'request', path: 'commit', message: 'not a full commit id', severity: 'error' }]);
    if (path.startsWith('/') || path.split('/').includes('..') || path.includes('\0')) {
      throw new InvalidInputError([{ file: 'request', path: 'path', message: 'must be a relative path inside the repository', severity: 'error' }]);
    }
    const dir = this.mirror(project);
    const ls = await runGit(['ls-tree', '-z', '--full-tree', commit, '--', path], { gitDir: dir });
    const entry = ls.stdout.toString('utf8').split('\0')[0];
    if (!entry) return undefined;
    const [meta] = entry.split('\t');
    const [mode, type, oid] = (meta ?? '').split(' ');
    if (type !== 'blob' || (mode !== '100644' && mode !== '100755') || !oid) throw new NotFoundError(`${path} at ${commit.slice(0, 12)} is not a regular file`);
    const size = Number((await runGit(['cat-file', '-s', oid], { gitDir: dir })).stdout.toString('utf8').trim());
    if (!(size <= maxBytes)) throw new InvalidInputError([{ file: path, path: '', message: `is ${size} bytes, more than the ${maxBytes} allowed`, severity: 'error' }]);
    const r = await runGit(['cat-file', 'blob', oid], { gitDir: dir, maxOutputBytes: maxBytes });
    return r.stdout;
  }

  /**
   * `git archive` of a verified commit (or of one directory of it, as the root), as a tar file at
   * `file`, at most `maxBytes` (a repository that is too large fails with InvalidInputError, and
   * the partial file is removed).
   */
  async archive(project: PromotedProject, commit: string, file: string, subdir = '.', maxBytes = MAX_ARCHIVE_BYTES): Promise<void> {
    if (!isSha(commit)) throw new InvalidInputError([{ file: 'request', path: 'commit', message: 'not a full commit id', severity: 'error' }]);
    const dir = subdir.replace(/\/+$/, '');
    if (dir.startsWith('/') || dir.startsWith('-') || dir.split('/').includes('..') || dir.includes('\0') || dir.includes(':')) {
      throw new InvalidInputError([{ file: 'request', path: 'subdir', message: 'must be a relative directory inside the repository', severity: 'error' }]);
    }
    const treeish = dir === '.' || dir === '' ? commit : `${commit}:${dir}`;
    await archiveToFile({ gitDir: this.mirror(project), treeish, file, maxBytes, what: subdir });
  }
}

/**
 * `git archive --format=tar <treeish>` into `file` (mode 0600), at most `maxBytes`: past it,
 * InvalidInputError naming `what`, and no partial file is left.
 */
export async function archiveToFile(o: { gitDir: string; env?: Record<string, string>; treeish: string; file: string; maxBytes?: number; what: string }): Promise<void> {
  const maxBytes = o.maxBytes ?? MAX_ARCHIVE_BYTES;
  let size = 0;
  const cap = new Transform({
    transform(chunk: Buffer, _enc, done) {
      size += chunk.length;
      if (size > maxBytes) done(new InvalidInputError([{ file: 'repository', path: o.what, message: `its archive is larger than ${maxBytes} bytes`, severity: 'error' }]));
      else done(null, chunk);
    },
  });
  try {
    await pipeline(streamGit(['archive', '--format=tar', o.treeish], { gitDir: o.gitDir, timeoutMs: FETCH_TIMEOUT_MS, ...(o.env ? { env: o.env } : {}) }), cap, createWriteStream(o.file, { mode: 0o600 }));
  } catch (e) {
    await rm(o.file, { force: true });
    throw e;
  }
}
