/**
 * One bare mirror per project, under `<root>/mirrors/<slug>-<hash>.git`, and the fetch that
 * brings a branch and change refs into it. A mirror only reads from the project's repository.
 *
 * Ref layout inside a mirror (everything airlock writes lives under refs/airlock/):
 *   refs/airlock/fetch/ref/<ref with "refs/" cut and "/" as %2F>  last fetched value of a remote ref
 *   refs/airlock/fetch/sha/<sha>                                  a commit fetched by id
 *   refs/airlock/builds/<buildId>                                 a prepared speculative commit
 * Fetched refs are flat (one component under ref/), so a remote that deletes `a` and creates
 * `a/b` cannot wedge the mirror on a directory/file conflict.
 *
 * `info/attributes` turns off `export-ignore` and `export-subst` for every path (it outranks the
 * repo's own .gitattributes), so `git archive` yields what a checkout would, not what the
 * project's attributes choose to hide or rewrite.
 *
 * Concurrency: every ref-changing operation on a mirror runs under its KeyedLock entry. The lock
 * is per process; one Merger per root is assumed (git's own lock files make a second process fail
 * rather than corrupt).
 */
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GitFailedError, InvalidInputError } from '#shared/errors.js';
import { runGit, type GitOptions, type GitResult } from '#shared/git/git.js';
import { catFileOf, type CatFile } from '#shared/git/cat-file.js';

/** Serialises async work per key; a failed task does not block the next one. */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();

  /** Runs `fn` once every earlier task for `key` has settled. */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const task = previous.then(fn, fn);
    const tail = task.catch(() => undefined);
    this.tails.set(key, tail);
    try {
      return await task;
    } finally {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

/** The mirror's directory name: readable slug plus a hash of the exact name, so names never collide. */
export function mirrorDirName(project: string): string {
  const slug = project.replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^[._-]+/, '').slice(0, 64) || 'project';
  const hash = createHash('sha256').update(project).digest('hex').slice(0, 12);
  return `${slug}-${hash}.git`;
}

/** What the mirror should hold after a fetch: a remote ref by full name, or a commit by id. */
export type Want = { ref: string } | { sha: string };

/** A want resolved to a commit in the mirror, or why it could not be. */
export type Resolved = { sha: string } | { missing: string };

const FETCH_MISSING = /not our ref|unadvertised object|couldn't find remote ref|no such remote ref/i;

/** A project's bare mirror. Cheap to construct; `init()` creates it on disk (idempotent). */
export class Mirror {
  /** `project` only names the mirror in messages; `dir` is the bare repository. */
  constructor(
    readonly dir: string,
    readonly project: string,
  ) {}

  /** The mirror of `project` under `root`. */
  static of(root: string, project: string): Mirror {
    return new Mirror(join(root, 'mirrors', mirrorDirName(project)), project);
  }

  /** The mirror's shared object reader (one long-lived `git cat-file` process, cat-file.ts). */
  get objects(): CatFile {
    return catFileOf(this.dir);
  }

  /** Runs git against this mirror. */
  git(args: readonly string[], opts: GitOptions = {}): Promise<GitResult> {
    return runGit(args, { ...opts, gitDir: this.dir });
  }

  /** Creates the bare repository if needed and (re)writes its attribute overrides. */
  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await runGit(['init', '--bare', '--quiet', this.dir], { cwd: this.dir });
    await mkdir(join(this.dir, 'info'), { recursive: true });
    await writeFile(join(this.dir, 'info', 'attributes'), '* -export-ignore -export-subst\n');
  }

  /**
   * Makes every want available as a commit in the mirror, fetching from `url` only what is not
   * already present, and returns them in order. One `ls-remote` names the remote refs (a ref that
   * is absent resolves to `{missing}`); refs whose commit is already here are not fetched; the rest
   * are fetched in one `git fetch`. A sha not present is fetched by id, which protocol-v2 servers
   * (git, Gerrit, GitHub, GitLab) allow for reachable commits; a refusal resolves to `{missing}`.
   * Must run under the mirror's lock. Throws GitFailedError for network or remote failures.
   */
  async fetch(url: string, wants: readonly Want[], opts: { signal?: AbortSignal; timeoutMs: number; fsck: boolean }): Promise<Resolved[]> {
    const net = { signal: opts.signal, timeoutMs: opts.timeoutMs };
    const refs = [...new Set(wants.flatMap((w) => ('ref' in w ? [w.ref] : [])))];
    const fsck = ['-c', `fetch.fsckObjects=${opts.fsck}`];
    const fetchArgs = ['fetch', '--quiet', '--no-tags', '--no-write-fetch-head', '--no-recurse-submodules', '--end-of-options', url];

    // Fast path, the common case (the branch and every change ref exist, no bare sha): one fetch of
    // them all, which costs one remote round trip instead of ls-remote + fetch. Any failure falls
    // through to the careful path below, which tells a missing ref from a broken remote.
    if (refs.length > 0 && wants.every((w) => 'ref' in w)) {
      const r = await this.git([...fsck, ...fetchArgs, ...refs.map((ref) => `+${ref}:${fetchRefName(ref)}`)], { ...net, allowFail: [1, 128] });
      if (r.code === 0) {
        const commits = await this.commits(
          wants.map((w) => fetchRefName((w as { ref: string }).ref)),
          opts.signal,
        );
        if (commits.every((c) => c !== undefined)) return commits.map((sha) => ({ sha: sha! }));
      } else if (!FETCH_MISSING.test(r.stderr)) throw fetchFailure(r.stderr, refs.join(', '));
    }

    const remote = new Map<string, string>();
    if (refs.length > 0) {
      const { stdout } = await this.git(['ls-remote', '--end-of-options', url, ...refs], { ...net, maxOutputBytes: 4 * 1024 * 1024 });
      for (const line of stdout.toString('utf8').split('\n')) {
        const [sha, name] = line.split('\t');
        if (sha && name && refs.includes(name)) remote.set(name, sha);
      }
    }
    const wantedShas = [...new Set([...remote.values(), ...wants.flatMap((w) => ('sha' in w ? [w.sha] : []))])];
    const present = await this.present(wantedShas, opts.signal);
    const fetchedRefs = refs.filter((r) => remote.has(r) && !present.has(remote.get(r) ?? ''));
    if (fetchedRefs.length > 0) {
      const r = await this.git([...fsck, ...fetchArgs, ...fetchedRefs.map((ref) => `+${ref}:${fetchRefName(ref)}`)], { ...net, allowFail: [1, 128] });
      if (r.code !== 0) throw fetchFailure(r.stderr, fetchedRefs.join(', '));
    }
    const unfetchable = new Set<string>();
    for (const w of wants) {
      if (!('sha' in w) || present.has(w.sha) || unfetchable.has(w.sha)) continue;
      const r = await this.git([...fsck, ...fetchArgs, `${w.sha}:refs/airlock/fetch/sha/${w.sha}`], { ...net, allowFail: [1, 128] });
      if (r.code !== 0) {
        if (!FETCH_MISSING.test(r.stderr)) throw fetchFailure(r.stderr, w.sha);
        unfetchable.add(w.sha);
      }
      present.add(w.sha);
    }

    const names = wants.map((w) => ('sha' in w ? w.sha : fetchedRefs.includes(w.ref) ? fetchRefName(w.ref) : (remote.get(w.ref) ?? '')));
    const commits = await this.commits(names, opts.signal);
    return wants.map((w, i): Resolved => {
      if ('ref' in w && !remote.has(w.ref)) return { missing: `ref ${w.ref} not found` };
      if ('sha' in w && unfetchable.has(w.sha)) return { missing: `commit ${w.sha} not found` };
      const sha = commits[i];
      return sha ? { sha } : { missing: `${'ref' in w ? `ref ${w.ref}` : w.sha} is not a commit` };
    });
  }

  /** Which of `shas` are objects in the mirror. */
  private async present(shas: readonly string[], signal?: AbortSignal): Promise<Set<string>> {
    const infos = await Promise.all(shas.map((s) => this.objects.info(s, signal)));
    return new Set(shas.filter((_, i) => infos[i] !== undefined));
  }

  /** Each name peeled to a commit id, or undefined where it is absent or not a commit. */
  async commits(names: readonly string[], signal?: AbortSignal): Promise<(string | undefined)[]> {
    const infos = await Promise.all(names.map((n) => this.objects.info(`${n || 'refs/airlock/none'}^{commit}`, signal)));
    return infos.map((i) => (i?.type === 'commit' ? i.oid : undefined));
  }
}

/**
 * A failed fetch as an error: InvalidInputError (not retryable: the content is the change's
 * fault) when fetched objects fail fsck, else GitFailedError.
 */
function fetchFailure(stderr: string, what: string): Error {
  const detail = gitDetail(stderr);
  if (/fsck error|^error: object [0-9a-f]+: \w+:/m.test(stderr)) {
    return new InvalidInputError([{ file: 'fetch', path: what, message: `fetched objects fail git fsck: ${detail}`, severity: 'error' }]);
  }
  return new GitFailedError(`git fetch of ${what} failed: ${detail}`);
}

/** git's stderr for a message: trimmed, without hints, at most its last 2000 characters. */
function gitDetail(stderr: string): string {
  return stderr.trim().split('\n').filter((l) => !l.startsWith('hint:')).join('\n').slice(-2000);
}

/** The mirror ref a remote ref is fetched into (flat: "/" becomes %2F). */
export function fetchRefName(ref: string): string {
  return `refs/airlock/fetch/ref/${ref.slice('refs/'.length).replaceAll('%', '%25').replaceAll('/', '%2F')}`;
}
