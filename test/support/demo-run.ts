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
  const left = (await createDocker().listImages()).flatMap((i) => i.RepoTags ?? []).filter((t) => images.test(t));
  expect(left).toEqual([]);
}
