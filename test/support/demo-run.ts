/**
 * `demo/demo.ts --once [flags]` as a child process, and the check every demo test ends with:
 * nothing left behind (no service process, no demo root, no image of the run's project).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { sanitizeProject } from '../../untrusted-ci/environments/environment-builder.js';
import { LABEL_ENV_PROJECT } from '../../untrusted-ci/environments/image-cache.js';
import { REPO_ROOT, runChild, type ChildRun } from './run-child.js';

const TSX = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));
export const DEMO_TIMEOUT_MS = 5 * 60_000; // 5 min; 15–40 s on an idle 2-core machine

export function runDemo(flags: readonly string[]): Promise<ChildRun> {
  return runChild(TSX, ['demo/demo.ts', '--once', ...flags], { cwd: REPO_ROOT, env: { ...process.env, FORCE_COLOR: '0' }, timeoutMs: DEMO_TIMEOUT_MS });
}

/**
 * Both services stopped (by the pids the demo printed), the demo root removed, and nothing of the
 * run's namespace left: each run names its project `demo/greeter-<8 hex>` (demo/demo-root.ts) and
 * every image it makes after it, so every image is checked, exactly, with no other run's counted
 * (the two demo tests run at once). Returns the run's project name.
 */
export async function expectNothingLeft(output: string): Promise<string> {
  for (const m of output.matchAll(/: pid (\d+),/g)) expect(() => process.kill(Number(m[1]), 0), `pid ${m[1]} still runs`).toThrow();
  const root = /demo root (\/\S+):/.exec(output)?.[1];
  expect(root).toBeDefined();
  expect(existsSync(root!)).toBe(false);
  const project = /project (demo\/greeter-[0-9a-f]{8});/.exec(output)?.[1];
  expect(project, 'the run names its project').toBeDefined();
  expect(await imagesOf(project!)).toEqual([]);
  return project!;
}

/**
 * The engine's images of a demo run's namespace: labelled with its project (the CI's environments),
 * or with a tag that names it, as the builder's and the CI's do (`…/demo/greeter-<hex>:…`,
 * `airlock-env/demo-greeter-<hex>:…`), wherever in the tag.
 */
export async function imagesOf(project: string): Promise<string[]> {
  const names = [project, sanitizeProject(project)];
  return (await createDocker().listImages()).flatMap((i) => {
    const tags = i.RepoTags ?? [];
    const ours = i.Labels?.[LABEL_ENV_PROJECT] === project || tags.some((t) => names.some((n) => t.includes(`${n}:`) || t.includes(`${n}@`)));
    return ours ? [tags.length > 0 ? tags.join(' ') : i.Id] : [];
  });
}
