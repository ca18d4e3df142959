/**
 * `demo/demo.ts --once [flags]` as a child process, and the check every demo test ends with:
 * nothing left behind (no service process, no demo root, no image of the demo project).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { REPO_ROOT, runChild, type ChildRun } from './run-child.js';

const TSX = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));
export const DEMO_TIMEOUT_MS = 5 * 60_000; // 5 min; 15–40 s on an idle 2-core machine

export function runDemo(flags: readonly string[]): Promise<ChildRun> {
  return runChild(TSX, ['demo/demo.ts', '--once', ...flags], { cwd: REPO_ROOT, env: { ...process.env, FORCE_COLOR: '0' }, timeoutMs: DEMO_TIMEOUT_MS });
}

/** Both services stopped (by the pids the demo printed), the demo root removed, the project's images gone. */
export async function expectNothingLeft(output: string, images: RegExp): Promise<void> {
  for (const m of output.matchAll(/: pid (\d+),/g)) expect(() => process.kill(Number(m[1]), 0), `pid ${m[1]} still runs`).toThrow();
  const root = /demo root (\/\S+):/.exec(output)?.[1];
  expect(root).toBeDefined();
  expect(existsSync(root!)).toBe(false);
  // A tag naming a commit counts when the commit is this run's (its output names each by its first
  // 10 characters): the two demo tests run at once, and the other one's builder may hold an image
  // of its own commits meanwhile. Other tags count always.
  const ours = (tag: string): boolean => {
    const commit = /:([0-9a-f]{40})$/.exec(tag)?.[1];
    return commit === undefined || output.includes(commit.slice(0, 10));
  };
  const left = (await createDocker().listImages()).flatMap((i) => i.RepoTags ?? []).filter((t) => images.test(t) && ours(t));
  expect(left).toEqual([]);
}
