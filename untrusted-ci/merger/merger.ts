/**
 * The merger builds the speculative git state a build tests: the branch tip with a list of
 * changes merged on top, in order (the gate tests C on top of B on top of A on top of the tip;
 * a check tests one change, or its dependencies and then it). It never checks anything out.
 *
 * Lifecycle: prepare → (readFile | treeId | exportTar | archiveTree on the result) → release.
 * The merger only ever reads from the project's repository: it has no way to write a branch there
 * (the review system merges; see review/review-system.ts).
 * A merge commit `prepare` makes is recorded under `refs/airlock/builds/<buildId>`, so it survives
 * `gc()` until `release(buildId)`; a fast-forward (the common check: a change based on the tip)
 * makes no commit, and its state is already held by the change's fetch ref, so no build ref is
 * written and release has nothing to do (two git runs fewer per build). `gc()` drops build refs no
 * build of this process holds (left by a process that died), except those `keep` names (another
 * process's live builds, when gc runs from `airlock ci gc`). A prepared state is frozen:
 * re-preparing the same build id replaces it. Merge commits are deterministic (speculate.ts), so
 * preparing the same stack again yields the same ids.
 *
 * Concurrency: one Merger per `root` (per process). Calls for different projects run in
 * parallel; for one project, fetches and ref updates are serialised by a per-mirror lock, while
 * merges and reads run concurrently (they only add or read objects).
 *
 * Failures: a bad request throws InvalidInputError (listing every problem); a conflict or a
 * missing branch/ref/commit is a result, not an error; git or network trouble throws
 * GitFailedError (retryable); an aborted signal throws CancelledError.
 */
import { existsSync } from 'node:fs';
import { open, readdir, rm } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CancelledError, InvalidInputError, NotFoundError, type Issue } from '#shared/errors.js';
import { isSha, refNameProblem, remoteUrlProblem, streamGit } from '#shared/git/git.js';
import { closeCatFile } from '#shared/git/cat-file.js';
import type { Logger } from '#shared/logging.js';
import { KeyedLock, Mirror, type Resolved, type Want } from './mirror.js';
import { conflictCulprit, mergeOnto, type MergeOutcome, type StackItem, type StepMode } from './speculate.js';
import { archive, readBlob, repoPathProblem, treeAt } from './tree-reader.js';
import { archiveCapError, capArchive } from './archive-cap.js';
import { NeedsGitArchive, TreeTarOverCap, writeTreeTar } from './tree-tar.js';

/** Where a project's code comes from; `url` is anything `remoteUrlProblem` accepts. */
export interface Project {
  name: string;
  url: string;
}

/** One change to apply: a full remote ref (`refs/changes/45/12345/3`, `refs/heads/feature`) or a 40-hex commit id. */
export interface ChangeToMerge {
  ref: string;
  /** How results name the change, e.g. "12345,3". Also used in the merge commit's message. */
  label: string;
}

/** The speculative state to build. `branch` is `master` or `refs/heads/master`. */
export interface PrepareRequest {
  project: Project;
  branch: string;
  /** Applied in order; may be empty (the state is then the branch tip). */
  changes: readonly ChangeToMerge[];
  /** Names the kept ref: letters, digits, `.`, `_`, `-`, at most 128. */
  buildId: string;
  signal?: AbortSignal;
  /**
   * A time (ms since the epoch): when every ref was fetched by a fetch that began at or after it
   * (`prefetch`, or another build's), those commits are used and nothing is fetched. A check
   * passes its enqueue time: it then tests its change on the branch as it was when the change was
   * enqueued or later, as Zuul's check pipeline does. Without it, prepare always fetches (the gate).
   */
  fetchedSince?: number;
}

/** How one change was applied: `result` is the state after it (a merge commit, the change itself, or unchanged). */
export interface MergeStep {
  label: string;
  commit: string;
  result: string;
  mode: StepMode;
}

/**
 * - `merged`: `commit` is the final state (a merge commit is kept under refs/airlock/builds/<buildId>).
 * - `conflict`: change `label` does not merge. `message` is `merge conflict with branch <branch>`
 *   when it conflicts with the branch tip alone, else `merge conflict with change <label ahead>`
 *   naming the first change ahead whose inclusion makes it conflict; `files` are the conflicted
 *   paths of the failed merge. A change sharing no history with the branch is also a conflict,
 *   with message `change <label> has no history in common with branch <branch>` and no files.
 * - `missing`: the branch (no `label`) or a change's ref or commit (`label` set) does not exist:
 *   `branch master not found`, `ref refs/changes/… not found`, `commit <sha> not found`.
 */
export type PrepareResult =
  | { kind: 'merged'; commit: string; branchTip: string; steps: MergeStep[] }
  | { kind: 'conflict'; label: string; message: string; files: string[] }
  | { kind: 'missing'; label?: string; message: string };

/** The commits a merge of `commit` into the branch would bring in, newest first (`commit` included). */
export type Between = { kind: 'ok'; commits: string[] } | { kind: 'too-many' } | { kind: 'missing'; message: string };

/** Construction options; `root` holds `mirrors/` (created on first use). */
export interface MergerOptions {
  root: string;
  logger?: Logger;
  /** Deadline of one ls-remote or fetch. Default 5 min. */
  fetchTimeoutMs?: number;
  /** Check fetched objects with fsck (rejects e.g. tree entries named `..` or `.git`). Default true. */
  fsckObjects?: boolean;
}

/** Where a prepared build's commit is kept. */
export const BUILD_REF_PREFIX = 'refs/airlock/builds/';

/** Merge steps remembered (a few hundred bytes each). */
const MAX_REMEMBERED_STEPS = 10_000;
/** Fetched refs remembered for `fetchedSince` (a few hundred bytes each). */
const MAX_REMEMBERED_FETCHES = 10_000;

/** Wants gathered for one coalesced fetch, and its outcome. */
interface FetchBatch {
  wants: Want[];
  result: Promise<Resolved[]>;
}
const LABEL_MAX = 200;

/** See the module comment. */
export class Merger {
  private readonly root: string;
  private readonly lock = new KeyedLock();
  private readonly fetchBatches = new Map<string, FetchBatch>();
  private readonly steps = new Map<string, Promise<MergeOutcome>>();
  private readonly ready = new Set<string>();
  private readonly builds = new Map<string, Mirror>();
  /** Builds of this process with a ref under refs/airlock/builds/. */
  private readonly refed = new Set<string>();
  /** Per mirror, URL and remote ref: the commit the latest fetch of it found, and when that fetch began. */
  private readonly fetched = new Map<string, { sha: string; at: number }>();

  constructor(private readonly opts: MergerOptions) {
    this.root = resolve(opts.root);
  }

  /**
   * Fetch under the mirror's lock, coalescing: requests that arrive while a fetch of the same
   * mirror and URL runs are gathered and served by one fetch of all their wants when it is done
   * (the gate prepares ten stacks at once: two fetches instead of ten in a row). A caller's abort
   * rejects its own wait at once; the shared fetch is not cut short by one caller.
   */
  private fetchCoalesced(mirror: Mirror, url: string, wants: Want[], signal: AbortSignal | undefined): Promise<Resolved[]> {
    if (signal?.aborted) return Promise.reject(signal.reason instanceof Error ? signal.reason : new CancelledError('aborted'));
    const key = `${mirror.dir}\n${url}`;
    let batch = this.fetchBatches.get(key);
    if (!batch) {
      const b: FetchBatch = { wants: [], result: undefined as unknown as Promise<Resolved[]> };
      b.result = this.lock.run(mirror.dir, async () => {
        // From here on, new requests start the next batch.
        if (this.fetchBatches.get(key) === b) this.fetchBatches.delete(key);
        const at = Date.now();
        const resolved = await mirror.fetch(url, b.wants, { timeoutMs: this.opts.fetchTimeoutMs ?? 300_000, fsck: this.opts.fsckObjects ?? true });
        this.remember(key, b.wants, resolved, at);
        return resolved;
      });
      this.fetchBatches.set(key, b);
      batch = b;
    }
    const offset = batch.wants.length;
    batch.wants.push(...wants);
    const shared = batch;
    const mine = batch.result.then(
      (all) => all.slice(offset, offset + wants.length),
      // One caller's bad ref (or objects failing fsck) must not fail the others: alone, each
      // request gets its own answer.
      (e: unknown) => {
        if (shared.wants.length === wants.length) throw e;
        return this.lock.run(mirror.dir, () => mirror.fetch(url, wants, { timeoutMs: this.opts.fetchTimeoutMs ?? 300_000, fsck: this.opts.fsckObjects ?? true }));
      },
    );
    if (!signal) return mine;
    return new Promise<Resolved[]>((resolve, reject) => {
      const onAbort = (): void => reject(signal.reason instanceof Error ? signal.reason : new CancelledError('aborted'));
      signal.addEventListener('abort', onAbort, { once: true });
      mine.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  /** Records what a fetch that began at `at` found for each ref it was asked for. */
  private remember(key: string, wants: readonly Want[], resolved: readonly Resolved[], at: number): void {
    wants.forEach((w, i) => {
      if (!('ref' in w)) return;
      const k = `${key}\n${w.ref}`;
      const r = resolved[i];
      this.fetched.delete(k); // re-inserted last: the map's order is the order of use
      if (r && 'sha' in r) this.fetched.set(k, { sha: r.sha, at });
    });
    while (this.fetched.size > MAX_REMEMBERED_FETCHES) this.fetched.delete(this.fetched.keys().next().value!);
  }

  /** Each want's commit, when every want is a ref a fetch that began at or after `since` found; else undefined. */
  private fetchedAfter(mirror: Mirror, url: string, wants: readonly Want[], since: number): Resolved[] | undefined {
    const out: Resolved[] = [];
    for (const w of wants) {
      const f = 'ref' in w ? this.fetched.get(`${mirror.dir}\n${url}\n${w.ref}`) : undefined;
      if (!f || f.at < since) return undefined;
      out.push({ sha: f.sha });
    }
    return out;
  }

  /**
   * Fetches a queued check's branch and change ref ahead of its build, coalesced with every other
   * request for the project (`fetchCoalesced`): a build then finds them fetched since it was
   * enqueued (`fetchedSince`) and fetches nothing while it holds a slot. Many changes queued at
   * once cost one or two fetches instead of one each. Never throws: a build whose refs were not
   * fetched ahead fetches them itself.
   */
  async prefetch(project: Project, branch: string, changeRef: string): Promise<void> {
    try {
      const issues: Issue[] = [];
      const check = checker(issues);
      const short = checkTarget(check, { project, branch });
      check('ref', changeRef.startsWith('refs/') ? refNameProblem(changeRef) : 'must be a full ref name (refs/…)');
      if (issues.length > 0) return;
      const mirror = await this.mirror(project.name);
      await this.fetchCoalesced(mirror, project.url, [{ ref: `refs/heads/${short}` }, { ref: changeRef }], undefined);
    } catch (e) {
      this.opts.logger?.debug({ err: e, project: project.name }, 'fetching ahead failed; the build fetches for itself');
    }
  }

  /**
   * `mergeOnto`, remembered: merges are deterministic (same parents and message, same commit), so
   * a step another prepare already made is reused. The gate prepares A, A+B, A+B+C, … at once;
   * each step is computed once instead of once per stack (55 merges for 10 changes become 10).
   * Only clean outcomes are kept, and the memory is dropped by `gc()`.
   */
  private mergeStep(mirror: Mirror, base: string, change: string, message: string, signal: AbortSignal | undefined): Promise<MergeOutcome> {
    const key = `${mirror.dir}\0${base}\0${change}\0${message}`;
    if (signal?.aborted) throw new CancelledError('prepare cancelled');
    const known = this.steps.get(key);
    if (known) return known;
    // Not the caller's signal: another prepare may be waiting for the same step.
    const p = mergeOnto(mirror, base, change, message);
    this.steps.set(key, p);
    if (this.steps.size > MAX_REMEMBERED_STEPS) this.steps.delete(this.steps.keys().next().value!);
    p.then(
      (o) => o.kind === 'ok' || this.steps.delete(key),
      () => this.steps.delete(key),
    );
    return p;
  }

  /** Fetches the branch and changes and merges them in order; see PrepareResult. */
  async prepare(req: PrepareRequest): Promise<PrepareResult> {
    const { signal } = req;
    const branch = validatePrepare(req);
    const mirror = await this.mirror(req.project.name);
    const log = this.opts.logger?.child({ project: req.project.name, buildId: req.buildId });
    const wants: Want[] = [{ ref: `refs/heads/${branch}` }, ...req.changes.map((c) => (isSha(c.ref) ? { sha: c.ref } : { ref: c.ref }))];
    const started = Date.now();
    const ahead = req.fetchedSince === undefined ? undefined : this.fetchedAfter(mirror, req.project.url, wants, req.fetchedSince);
    const resolved = ahead ?? (await this.fetchCoalesced(mirror, req.project.url, wants, signal).catch(rethrowAbort(signal)));
    log?.debug({ ms: Date.now() - started, ahead: ahead !== undefined }, 'fetched');

    const [tip, ...changes] = resolved;
    if (!tip || 'missing' in tip) return { kind: 'missing', message: `branch ${branch} not found` };
    const stack: StackItem[] = [];
    for (const [i, r] of changes.entries()) {
      const label = req.changes[i]?.label ?? '';
      if ('missing' in r) return { kind: 'missing', label, message: r.missing };
      stack.push({ label, commit: r.sha });
    }

    const states = [tip.sha];
    const steps: MergeStep[] = [];
    for (const [i, item] of stack.entries()) {
      const base = states[states.length - 1] ?? tip.sha;
      const outcome = await this.mergeStep(mirror, base, item.commit, `Merge ${item.label} into ${branch}`, signal);
      if (outcome.kind === 'unrelated') {
        return { kind: 'conflict', label: item.label, message: `change ${item.label} has no history in common with branch ${branch}`, files: [] };
      }
      if (outcome.kind === 'conflict') {
        const culprit = await conflictCulprit(mirror, states, stack.slice(0, i), item, signal);
        const message = culprit.kind === 'branch' ? `merge conflict with branch ${branch}` : `merge conflict with change ${culprit.label}`;
        log?.info({ label: item.label, files: outcome.files }, message);
        return { kind: 'conflict', label: item.label, message, files: outcome.files };
      }
      states.push(outcome.result);
      steps.push({ label: item.label, commit: item.commit, result: outcome.result, mode: outcome.mode });
    }
    const commit = states[states.length - 1] ?? tip.sha;
    if (steps.some((s) => s.mode === 'merge')) {
      await this.lock.run(mirror.dir, () => mirror.git(['update-ref', `${BUILD_REF_PREFIX}${req.buildId}`, commit], { signal }));
      this.refed.add(req.buildId);
    } else if (this.refed.delete(req.buildId)) {
      await this.lock.run(mirror.dir, () => mirror.git(['update-ref', '-d', `${BUILD_REF_PREFIX}${req.buildId}`], { signal }));
    }
    this.builds.set(req.buildId, mirror);
    log?.debug({ ms: Date.now() - started, commit }, 'prepared');
    return { kind: 'merged', commit, branchTip: tip.sha, steps };
  }

  /**
   * The parents and message of each ref's commit: the refs are fetched as prepare fetches them
   * (coalesced, under the mirror's lock), then every commit is read with one `git cat-file --batch`.
   * A ref (full `refs/…` name or commit id) that does not exist maps to undefined. Only the first
   * 1 MiB of a commit object is read (a hostile one may be huge): parents come from its headers,
   * and the message is cut at 64 KiB (bytes; a cut character becomes U+FFFD). Throws as prepare
   * does: InvalidInputError for a bad project or ref, GitFailedError, CancelledError.
   */
  async commitInfo(
    project: Project,
    refs: readonly string[],
    signal?: AbortSignal,
  ): Promise<Map<string, { sha: string; parents: string[]; message: string } | undefined>> {
    const OBJECT_READ_MAX = 1024 * 1024; // 1 MiB of each commit object: headers and the start of the message
    const MESSAGE_MAX = 64 * 1024; // 64 KiB
    const issues: Issue[] = [];
    const check = checker(issues);
    check('project.name', textProblem(project.name, 200));
    check('project.url', remoteUrlProblem(project.url));
    refs.forEach((ref, i) => {
      const problem = isSha(ref) ? undefined : !ref.startsWith('refs/') ? 'must be a full ref name (refs/…) or a full commit id' : refNameProblem(ref);
      check(`refs[${i}]`, problem && `${JSON.stringify(ref)} ${problem}`);
    });
    if (issues.length > 0) throw new InvalidInputError(issues);

    const out = new Map<string, { sha: string; parents: string[]; message: string } | undefined>();
    const unique = [...new Set(refs)];
    if (unique.length === 0) return out;
    const mirror = await this.mirror(project.name);
    const wants: Want[] = unique.map((ref) => (isSha(ref) ? { sha: ref } : { ref }));
    const resolved = await this.fetchCoalesced(mirror, project.url, wants, signal).catch(rethrowAbort(signal, 'commitInfo'));
    const shas = [...new Set(resolved.flatMap((r) => ('sha' in r ? [r.sha] : [])))];

    // cat-file --batch answers each line with "<sha> <type> <size>\n<size bytes>\n" or "<name> missing\n".
    const objects = new Map<string, Buffer>();
    if (shas.length > 0) {
      const stream = streamGit(['cat-file', '--batch'], { gitDir: mirror.dir, input: Buffer.from(shas.map((s) => `${s}\n`).join('')), signal });
      let rest: Buffer = Buffer.alloc(0);
      let body: { sha: string; commit: boolean; keep: number; left: number; parts: Buffer[]; kept: number } | undefined;
      try {
        for await (const chunk of stream as AsyncIterable<Buffer>) {
          let buf = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
          rest = Buffer.alloc(0);
          while (buf.length > 0) {
            if (body) {
              const take = Math.min(body.left, buf.length);
              const piece = buf.subarray(0, Math.max(0, Math.min(take, body.keep - body.kept)));
              if (piece.length > 0) (body.parts.push(piece), (body.kept += piece.length));
              body.left -= take;
              buf = buf.subarray(take);
              if (body.left === 0) {
                if (body.commit) objects.set(body.sha, Buffer.concat(body.parts));
                body = undefined;
              }
              continue;
            }
            const nl = buf.indexOf(0x0a);
            if (nl < 0) {
              rest = Buffer.from(buf);
              break;
            }
            const m = /^([0-9a-f]{40,64}) (\w+) (\d+)$/.exec(buf.subarray(0, nl).toString('latin1'));
            buf = buf.subarray(nl + 1);
            if (m) {
              const size = Number(m[3]);
              body = { sha: m[1] ?? '', commit: m[2] === 'commit', keep: Math.min(size, OBJECT_READ_MAX), left: size + 1, parts: [], kept: 0 };
            }
          }
        }
      } catch (e) {
        rethrowAbort(signal, 'commitInfo')(e);
      }
    }

    unique.forEach((ref, i) => {
      const r = resolved[i];
      const raw = r && 'sha' in r ? objects.get(r.sha) : undefined;
      if (!r || !('sha' in r) || !raw) return out.set(ref, undefined);
      const end = raw.indexOf('\n\n');
      const head = (end < 0 ? raw : raw.subarray(0, end)).toString('latin1');
      const parents = [...head.matchAll(/^parent ([0-9a-f]{40,64})$/gm)].map((p) => p[1] ?? '');
      const message = end < 0 ? '' : raw.subarray(end + 2, end + 2 + MESSAGE_MAX).toString('utf8');
      out.set(ref, { sha: r.sha, parents, message });
    });
    return out;
  }

  /**
   * The commits reachable from `commit` but not from the branch's tip (`git rev-list <commit>
   * ^<tip>`), after fetching the branch as prepare does: what merging `commit` would add to the
   * branch. More than `max`: `too-many`. `commit` must be in the mirror already (commitInfo or
   * prepare fetched it). Throws as prepare does.
   */
  async commitsBetween(project: Project, branch: string, commit: string, max: number, signal?: AbortSignal): Promise<Between> {
    const issues: Issue[] = [];
    const check = checker(issues);
    const short = checkTarget(check, { project, branch });
    check('commit', isSha(commit) ? undefined : `${JSON.stringify(commit)} is not a full commit id`);
    check('max', Number.isSafeInteger(max) && max >= 0 ? undefined : 'must be a non-negative integer');
    if (issues.length > 0) throw new InvalidInputError(issues);
    const mirror = await this.mirror(project.name);
    const [tip] = await this.fetchCoalesced(mirror, project.url, [{ ref: `refs/heads/${short}` }], signal).catch(rethrowAbort(signal, 'commitsBetween'));
    if (!tip || 'missing' in tip) return { kind: 'missing', message: `branch ${short} not found` };
    const r = await mirror.git(['rev-list', `--max-count=${max + 1}`, '--end-of-options', commit, `^${tip.sha}`], { signal, maxOutputBytes: (max + 1) * 66 + 1024 });
    const commits = r.stdout.toString('utf8').split('\n').filter((l) => isSha(l));
    return commits.length > max ? { kind: 'too-many' } : { kind: 'ok', commits };
  }

  /**
   * Writes the tar `git archive --format=tar <commit>` makes (tree-tar.ts writes it from the object
   * reader, git archive where that cannot) to `file` (removed again on failure), at most
   * `cap.maxBytes` and `cap.maxEntries`: past either, InvalidInputError naming the cap (a small
   * pack can describe a huge tree; the archive is stopped, not written out).
   */
  async exportTar(project: Pick<Project, 'name'>, commit: string, file: string, cap: { maxBytes: number; maxEntries: number }, signal?: AbortSignal): Promise<void> {
    const mirror = this.existing(project.name, commit);
    const what = `the tree of ${commit.slice(0, 12)}`;
    try {
      // Written from the object reader (tree-tar.ts); `git archive` where that cannot.
      const fh = await open(file, 'w');
      let done = false;
      try {
        await writeTreeTar(mirror, commit, fh, cap, signal);
        done = true;
      } catch (e) {
        if (e instanceof TreeTarOverCap) throw archiveCapError(what, e.message);
        if (!(e instanceof NeedsGitArchive)) throw e;
        this.opts.logger?.debug({ commit, why: e.message }, 'the source tar is left to git archive');
      } finally {
        await fh.close();
      }
      if (!done) await pipeline(archive(mirror, commit, '', { signal, timeoutMs: 600_000 }), capArchive({ ...cap, what }), createWriteStream(file));
    } catch (e) {
      await rm(file, { force: true });
      if (signal?.aborted && !(e instanceof CancelledError)) throw new CancelledError('exportTar cancelled', { cause: e });
      throw e;
    }
  }

  /**
   * The bytes of the regular file `path` at `commit`, or undefined if there is none.
   * InvalidInputError for a symlink, submodule, directory or a file over `maxBytes`.
   */
  async readFile(project: Pick<Project, 'name'>, commit: string, path: string, maxBytes: number, signal?: AbortSignal): Promise<Buffer | undefined> {
    const mirror = this.existing(project.name, commit, path);
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw invalid('maxBytes', 'must be a non-negative integer');
    return readBlob(mirror, commit, path, maxBytes, signal);
  }

  /**
   * The git tree id of directory `path` at `commit` ('' or '.' = the root), or undefined if absent:
   * a content hash of the directory (equal trees, equal ids). InvalidInputError if `path` is a file.
   */
  async treeId(project: Pick<Project, 'name'>, commit: string, path: string, signal?: AbortSignal): Promise<string | undefined> {
    return treeAt(this.existing(project.name, commit, path, true), commit, path, signal);
  }

  /** A tar stream of directory `path` at `commit`, entries relative to it ('' = whole tree). Errors arrive on the stream. */
  archiveTree(project: Pick<Project, 'name'>, commit: string, path: string, signal?: AbortSignal): Readable {
    return archive(this.existing(project.name, commit, path, true), commit, path, { signal, timeoutMs: 600_000 });
  }

  /** Drops the build's ref so gc may reclaim its commits. Idempotent; looks in every mirror when the project is not given or known. */
  async release(buildId: string, project?: Pick<Project, 'name'>): Promise<void> {
    if (buildIdProblem(buildId)) throw invalid('buildId', buildIdProblem(buildId) ?? '');
    const known = project ? Mirror.of(this.root, project.name) : this.builds.get(buildId);
    if (known && this.builds.has(buildId) && !this.refed.has(buildId)) {
      this.builds.delete(buildId); // a fast-forward: no ref was written
      return;
    }
    const mirrors = known ? [known] : await this.allMirrors();
    for (const m of mirrors) {
      if (!existsSync(m.dir)) continue;
      await this.lock.run(m.dir, () => m.git(['update-ref', '-d', `${BUILD_REF_PREFIX}${buildId}`]));
    }
    this.builds.delete(buildId);
    this.refed.delete(buildId);
  }

  /**
   * In every mirror, under its lock: drop build refs that neither this process nor `keep` holds,
   * then `git gc --auto` (objects unreachable from refs expire after git's prune window).
   */
  async gc(opts: { keep?: (buildId: string) => boolean } = {}): Promise<void> {
    this.steps.clear(); // git gc may prune what only they pointed at
    this.fetched.clear();
    for (const m of await this.allMirrors()) {
      await this.lock.run(m.dir, async () => {
        const { stdout } = await m.git(['for-each-ref', '--format=%(refname)', BUILD_REF_PREFIX]);
        const stale = stdout
          .toString('utf8')
          .split('\n')
          .filter((ref) => ref.startsWith(BUILD_REF_PREFIX))
          .filter((ref) => !this.refed.has(ref.slice(BUILD_REF_PREFIX.length)) && !opts.keep?.(ref.slice(BUILD_REF_PREFIX.length)));
        if (stale.length > 0) await m.git(['update-ref', '--stdin'], { input: Buffer.from(stale.map((ref) => `delete ${ref}\n`).join('')) });
        await m.git(['gc', '--auto', '--quiet'], { timeoutMs: 3_600_000 });
        closeCatFile(m.dir); // its reader may hold packs the gc deleted
      });
    }
  }

  private async mirror(name: string): Promise<Mirror> {
    const m = Mirror.of(this.root, name);
    if (!this.ready.has(m.dir)) {
      await this.lock.run(m.dir, () => m.init());
      this.ready.add(m.dir);
    }
    return m;
  }

  /** The mirror of a project prepared before, after validating a read's arguments. */
  private existing(name: string, commit: string, path?: string, allowRoot = false): Mirror {
    const issues: Issue[] = [];
    if (!isSha(commit)) issues.push(issueAt('commit', `${JSON.stringify(commit)} is not a full commit id`));
    const p = path === undefined ? undefined : repoPathProblem(path, allowRoot);
    if (p) issues.push(issueAt('path', `${JSON.stringify(path)} ${p}`));
    if (issues.length > 0) throw new InvalidInputError(issues);
    const m = Mirror.of(this.root, name);
    if (!existsSync(m.dir)) throw new NotFoundError(`no mirror of project ${JSON.stringify(name)}: prepare it first`);
    return m;
  }

  private async allMirrors(): Promise<Mirror[]> {
    const dir = join(this.root, 'mirrors');
    const names = existsSync(dir) ? await readdir(dir) : [];
    return names.filter((n) => n.endsWith('.git')).map((n) => new Mirror(join(dir, n), n));
  }
}

function issueAt(path: string, message: string): Issue {
  return { file: 'merger', path, message, severity: 'error' };
}

function invalid(path: string, message: string): InvalidInputError {
  return new InvalidInputError([issueAt(path, message)]);
}

function buildIdProblem(id: string): string | undefined {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(id)) return 'must be 1-128 letters, digits, ".", "_" or "-", starting with a letter or digit';
  return refNameProblem(`${BUILD_REF_PREFIX}${id}`);
}

function textProblem(s: string, max: number): string | undefined {
  // eslint-disable-next-line no-control-regex
  return s.length === 0 || s.length > max ? `must be 1 to ${max} characters` : /[\x00-\x1f\x7f]/.test(s) ? 'contains a control character' : undefined;
}

type Check = (path: string, problem: string | undefined) => void;

function checker(issues: Issue[]): Check {
  return (path, problem) => void (problem && issues.push(issueAt(path, problem)));
}

/** Checks the project and branch of a request; returns the short branch name. */
function checkTarget(check: Check, req: { project: Project; branch: string }): string {
  check('project.name', textProblem(req.project.name, 200));
  check('project.url', remoteUrlProblem(req.project.url));
  const branch = req.branch.replace(/^refs\/heads\//, '');
  check('branch', branch.startsWith('-') ? 'starts with "-"' : refNameProblem(`refs/heads/${branch}`));
  return branch;
}

/** Checks a whole request, throwing one InvalidInputError with every problem; returns the short branch name. */
function validatePrepare(req: PrepareRequest): string {
  const issues: Issue[] = [];
  const check = checker(issues);
  const branch = checkTarget(check, req);
  req.changes.forEach((c, i) => {
    const refProblem = isSha(c.ref) ? undefined : !c.ref.startsWith('refs/') ? 'must be a full ref name (refs/…) or a full commit id' : refNameProblem(c.ref);
    check(`changes[${i}].ref`, refProblem && `${JSON.stringify(c.ref)} ${refProblem}`);
    check(`changes[${i}].label`, textProblem(c.label, LABEL_MAX));
  });
  check('buildId', buildIdProblem(req.buildId));
  if (issues.length > 0) throw new InvalidInputError(issues);
  return branch;
}

/** Turns whatever an aborted `what` threw into CancelledError. */
function rethrowAbort(signal?: AbortSignal, what = 'prepare'): (e: unknown) => never {
  return (e) => {
    if (signal?.aborted && !(e instanceof CancelledError)) throw new CancelledError(`${what} cancelled`, { cause: e });
    throw e;
  };
}
