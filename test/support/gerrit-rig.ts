/**
 * A code-review setup for tests, the demo and the benchmarks: the Gerrit stand-in
 * (gerrit-double.ts) with the accounts and rules a real airlock deployment would give it.
 *
 * - `ada`, `mallory`: contributors (Code-Review -1..+1: they cannot approve);
 * - `grace`, `linus`: core reviewers (group `core`, Code-Review -2..+2);
 * - `airlock-ci`: the CI's account: Verified -2..+2 and Submit, nothing else (no push: the
 *   stand-in takes code only through `upload`, and a real Gerrit grants it no Push);
 * - `airlock-builder`: the trusted builder's own account: no label, no Submit (reads only).
 * Submit rules: Code-Review +2 and Verified +2, each blocked by its minimum (MaxWithBlock).
 */
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { GerritDouble, type GerritDoubleOptions } from './gerrit-double.js';

export const CI_ACCOUNT = 'airlock-ci';
export const BUILDER_ACCOUNT = 'airlock-builder';

export interface GerritRig {
  gerrit: GerritDouble;
  /** HTTP passwords by username. */
  passwords: Record<string, string>;
  /** The webhook secret the CI is configured with (`webhooks.gerritSecretFile`). */
  hookSecret: string;
}

export async function startGerrit(o: Partial<Pick<GerritDoubleOptions, 'dir' | 'canonicalWebUrl'>> = {}): Promise<GerritRig> {
  const names = ['ada', 'mallory', 'grace', 'linus', CI_ACCOUNT, BUILDER_ACCOUNT];
  const passwords = Object.fromEntries(names.map((n) => [n, randomBytes(12).toString('base64url')]));
  const gerrit = await GerritDouble.start({
    ...o,
    accounts: names.map((username, i) => ({
      id: 1000 + i,
      username,
      name: username,
      email: `${username}@example.org`,
      password: passwords[username]!,
      groups: username === 'grace' || username === 'linus' ? ['core'] : username === CI_ACCOUNT ? ['Service Users'] : [],
    })),
    labels: {
      'Code-Review': {
        values: [-2, 2],
        function: 'MaxWithBlock',
        copyOnKinds: ['TRIVIAL_REBASE', 'NO_CHANGE'],
        copyMin: true,
        ranges: [
          { who: 'Registered Users', min: -1, max: 1 },
          { who: 'core', min: -2, max: 2 },
        ],
      },
      Verified: { values: [-2, 2], function: 'MaxWithBlock', ranges: [{ who: CI_ACCOUNT, min: -2, max: 2 }] },
    },
    submit: [CI_ACCOUNT],
  });
  return { gerrit, passwords, hookSecret: randomBytes(24).toString('base64url') };
}

/** The files of a directory as the stand-in's `createProject` takes them (text, relative paths). */
export function filesOf(dir: string, skip: (path: string) => boolean = () => false): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const full = join(d, name);
      const rel = relative(dir, full);
      if (skip(rel)) continue;
      if (statSync(full).isDirectory()) walk(full);
      else out[rel] = readFileSync(full, 'utf8');
    }
  };
  walk(dir);
  return out;
}
