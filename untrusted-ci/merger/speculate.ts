/**
 * Building a speculative state without a worktree: each change is merged onto the result of the
 * one before with `git merge-tree --write-tree` (git ≥ 2.38; exit 1 means conflicts) and a
 * `git commit-tree` with both parents. Nothing is checked out and no index is touched, so merges
 * of one mirror may run concurrently; they only add objects.
 *
 * Merge commits are deterministic: same parents, tree and message give the same id, because the
 * identity is fixed (shared/git/git.ts) and both dates are the later committer date of the two
 * parents. So the gate's stack [A, B] rebuilds exactly the commit A's own build [A] tested, and B
 * can be submitted with "A's tested commit" as the expected branch tip.
 */
import type { Mirror } from './mirror.js';
import { readCommit } from './tree-reader.js';

/** How one change landed on the state before it. */
export type StepMode = 'merge' | 'fast-forward' | 'up-to-date';

/** The outcome of putting one commit on top of another. */
export type MergeOutcome =
  | { kind: 'ok'; mode: StepMode; result: string }
  | { kind: 'conflict'; files: string[] }
  | { kind: 'unrelated' };

/**
 * Puts `change` on top of `base`: up to date when `change` is already in `base`, a fast-forward
 * when `base` is an ancestor of `change`, else a merge commit `message` with parents
 * `[base, change]`, authored and committed by airlock at the later committer date of the two (see
 * the module comment). Without `message` it is a dry run: a clean merge is reported with
 * `result: ''` and no commit is written.
 */
export async function mergeOnto(mirror: Mirror, base: string, change: string, message: string | undefined, signal?: AbortSignal): Promise<MergeOutcome> {
  // The common check, a change whose parent is the tip, needs no git process: the change's own
  // commit names its parents (the object reader, cat-file.ts). With `base` a parent of `change`,
  // `base` is their merge base, as `git merge-base` would say.
  if (change === base) return { kind: 'ok', mode: 'up-to-date', result: base };
  const changeCommit = await readCommit(mirror, change, signal);
  if (changeCommit?.parents.includes(base)) return { kind: 'ok', mode: 'fast-forward', result: change };
  // The merge base, the merge and the dates are read at once: a gate's stack is a chain of steps,
  // each waiting for the one before, so every round of processes here counts once per change in
  // the stack. The merge and the dates cost a process each, unused after a fast-forward.
  const mergeTree = ['merge-tree', '--write-tree', '--name-only', '--no-messages', '-z', '--end-of-options', base, change];
  const [mb, tried, date] = await Promise.all([
    mirror.git(['merge-base', '--end-of-options', base, change], { signal, allowFail: [1] }),
    // 128 too: git refuses unrelated histories, which the merge base tells apart below.
    mirror.git(mergeTree, { signal, allowFail: [1, 128] }),
    message === undefined ? undefined : laterCommitDate(mirror, base, change, signal),
  ]);
  // With `base` an ancestor of `change`, `base` is their only best merge base (and vice versa).
  if (mb.code === 1) return { kind: 'unrelated' };
  const mergeBase = mb.stdout.toString('utf8').trim();
  if (mergeBase === change) return { kind: 'ok', mode: 'up-to-date', result: base };
  if (mergeBase === base) return { kind: 'ok', mode: 'fast-forward', result: change };
  // Related histories and still a failure: run again alone, to fail as any git command fails.
  const mt = tried.code === 128 ? await mirror.git(mergeTree, { signal, allowFail: [1] }) : tried;
  // -z output: "<tree>\0" then, on conflict, each conflicted path once per conflicted stage "\0".
  const [tree, ...paths] = mt.stdout.toString('utf8').split('\0').filter(Boolean);
  if (mt.code === 1) return { kind: 'conflict', files: [...new Set(paths)].sort() };
  if (message === undefined) return { kind: 'ok', mode: 'merge', result: '' };
  const env = { GIT_AUTHOR_DATE: date ?? '@0 +0000', GIT_COMMITTER_DATE: date ?? '@0 +0000' };
  const ct = await mirror.git(['commit-tree', '-p', base, '-p', change, '-m', message, tree ?? ''], { signal, env });
  return { kind: 'ok', mode: 'merge', result: ct.stdout.toString('utf8').trim() };
}

/** The later committer date of two commits, as a git date (`@<seconds> +0000`). */
async function laterCommitDate(mirror: Mirror, a: string, b: string, signal?: AbortSignal): Promise<string> {
  // Read by the object reader where both committer lines are well-formed; else as git log says.
  const read = await Promise.all([readCommit(mirror, a, signal), readCommit(mirror, b, signal)]);
  let seconds = read.map((c) => c?.committerTime);
  if (seconds.some((t) => t === undefined)) {
    const { stdout } = await mirror.git(['log', '--no-walk', '--format=%ct', '--end-of-options', a, b], { signal });
    seconds = stdout
      .toString('utf8')
      .split('\n')
      .filter((l) => /^\d{1,15}$/.test(l))
      .map(Number);
  }
  return `@${Math.max(0, ...seconds.map((t) => t ?? 0))} +0000`;
}

/** A change in the order it is applied. */
export interface StackItem {
  label: string;
  commit: string;
}

/**
 * Names what `item` conflicts with, once merging it onto `states[states.length - 1]` has failed.
 * `states[0]` is the branch tip and `states[j + 1]` the state after `ahead[j]`. The culprit is the
 * branch when `item` conflicts with the bare tip, otherwise the first change ahead whose state it
 * cannot be merged onto. Costs one extra merge-tree per candidate, only on a conflict.
 */
export async function conflictCulprit(
  mirror: Mirror,
  states: readonly string[],
  ahead: readonly StackItem[],
  item: StackItem,
  signal?: AbortSignal,
): Promise<{ kind: 'branch' } | { kind: 'change'; label: string }> {
  for (let j = 0; j < states.length - 1; j++) {
    const state = states[j] ?? '';
    const outcome = await mergeOnto(mirror, state, item.commit, undefined, signal);
    if (outcome.kind !== 'ok') return j === 0 ? { kind: 'branch' } : { kind: 'change', label: ahead[j - 1]?.label ?? '' };
  }
  const last = ahead[ahead.length - 1];
  return states.length > 1 && last ? { kind: 'change', label: last.label } : { kind: 'branch' };
}
