/**
 * The sample project's repository, standing in for a code-review system: a bare repository
 * (`master` is what the gate merges to and the builder promotes from) and a contributor's clone.
 * A change is a commit on top of master pushed to `refs/changes/NN/N/1`, as Gerrit stores
 * patchsets. The first commit is demo/sample-project/ as it is in this repository.
 *
 * git runs with no system or user config and no hooks, so the machine's settings cannot change
 * what happens.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const TEMPLATE = fileURLToPath(new URL('./sample-project', import.meta.url));

export interface SampleChange {
  number: number;
  subject: string;
  ref: string;
  sha: string;
}

const GIT_ENV = {
  PATH: process.env.PATH ?? '/usr/bin:/bin',
  HOME: '/nonexistent',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_AUTHOR_NAME: 'Ada Contributor',
  GIT_AUTHOR_EMAIL: 'ada@example.org',
  GIT_COMMITTER_NAME: 'Ada Contributor',
  GIT_COMMITTER_EMAIL: 'ada@example.org',
  LC_ALL: 'C',
};

export class SampleRepo {
  private constructor(
    readonly upstream: string,
    readonly work: string,
  ) {}

  /** The bare repository with the template as its first commit on master, and a clone of it. */
  static create(upstream: string, work: string): SampleRepo {
    mkdirSync(work, { recursive: true });
    const repo = new SampleRepo(upstream, work);
    git(dirname(upstream), ['init', '-q', '--bare', '--initial-branch=master', upstream]);
    git(dirname(work), ['init', '-q', '--initial-branch=master', work]);
    cpSync(TEMPLATE, work, { recursive: true, filter: (src) => !src.endsWith('report.txt') });
    repo.git('add', '-A');
    repo.git('commit', '-q', '-m', 'greet: the sample project');
    repo.git('remote', 'add', 'origin', upstream);
    repo.git('push', '-q', 'origin', 'master');
    return repo;
  }

  git(...args: string[]): string {
    return git(this.work, args);
  }

  /** A change on top of upstream's master, pushed for review. `null` deletes a file. */
  change(number: number, subject: string, files: Record<string, string | null>): SampleChange {
    this.git('fetch', '-q', 'origin', 'master');
    this.git('checkout', '-q', '-B', `change-${number}`, 'FETCH_HEAD');
    for (const [path, text] of Object.entries(files)) {
      const file = join(this.work, path);
      if (text === null) rmSync(file);
      else {
        mkdirSync(dirname(file), { recursive: true });
        writeFileSync(file, text);
      }
    }
    this.git('add', '-A');
    this.git('commit', '-q', '-m', subject);
    const ref = `refs/changes/${String(number % 100).padStart(2, '0')}/${number}/1`;
    this.git('push', '-q', 'origin', `HEAD:${ref}`);
    return { number, subject, ref, sha: this.git('rev-parse', 'HEAD') };
  }

  /** Upstream master's first-parent history, newest first. */
  history(max = 5): { sha: string; subject: string; parents: number }[] {
    return git(this.upstream, ['log', `--max-count=${max}`, '--first-parent', '--format=%H %p%x00%s', 'master'])
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        const [ids = '', subject = ''] = line.split('\0');
        const [sha = '', ...parents] = ids.split(' ');
        return { sha, subject, parents: parents.length };
      });
  }

  /** A revision of upstream (`sha^2`: a merge's second parent). */
  revParse(rev: string): string {
    return git(this.upstream, ['rev-parse', '--verify', '--quiet', rev]);
  }

  /** Does upstream's master contain a file? */
  has(path: string): boolean {
    return git(this.upstream, ['ls-tree', '--name-only', 'master', path]) !== '';
  }
}

function git(cwd: string, args: string[]): string {
  return execFileSync('git', ['-c', 'core.hooksPath=/dev/null', ...args], { cwd, env: GIT_ENV, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}
