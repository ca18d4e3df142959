/**
 * The demo's code review: the Gerrit stand-in of airlock's tests (test/support/gerrit-double.ts),
 * run in the demo's own process on a free 127.0.0.1 port, over bare repositories in the demo root.
 * It is a stand-in, not Gerrit: its REST API, submit rules, merges and webhook posts are written
 * from Gerrit's documentation, so both services talk to it as they would to a real Gerrit.
 *
 * Accounts (test/support/gerrit-rig.ts): ada and mallory contribute, grace and linus review
 * (Code-Review ±2), airlock-ci is the CI's account (Verified and Submit, nothing else), and
 * airlock-builder is the trusted builder's own read-only account. The sample project is
 * demo/sample-project/ as it is in this repository, as the first commit of `master`.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { filesOf, startGerrit, type GerritRig } from '../test/support/gerrit-rig.js';

const TEMPLATE = fileURLToPath(new URL('./sample-project', import.meta.url));

export interface CodeReview extends GerritRig {
  project: string;
  /** The sample project's first commit: review is checked for what comes after it. */
  initial: string;
  /** `master`'s first-parent history, newest first. */
  history(max?: number): { sha: string; subject: string; parents: number }[];
  revParse(rev: string): string;
  /** Does master contain this file? */
  has(path: string): boolean;
  close(): Promise<void>;
}

export async function startCodeReview(dir: string, project: string): Promise<CodeReview> {
  const rig = await startGerrit({ dir });
  const initial = rig.gerrit.createProject(project, filesOf(TEMPLATE, (p) => p.endsWith('report.txt')));
  const gitDir = rig.gerrit.gitUrl(project);
  const git = (args: string[]): string => execFileSync('git', ['--git-dir', gitDir, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null', HOME: '/nonexistent' } }).trim();
  return {
    ...rig,
    project,
    initial,
    history(max = 5) {
      return git(['log', `--max-count=${max}`, '--first-parent', '--format=%H %p%x00%s', 'master'])
        .split('\n')
        .filter(Boolean)
        .map((line) => {
          const [ids = '', subject = ''] = line.split('\0');
          const [sha = '', ...parents] = ids.split(' ');
          return { sha, subject, parents: parents.length };
        });
    },
    revParse: (rev) => git(['rev-parse', '--verify', '--quiet', rev]),
    has: (path) => git(['ls-tree', '--name-only', 'master', '--', path]) !== '',
    close: () => rig.gerrit.close(),
  };
}
