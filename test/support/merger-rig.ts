/**
 * A Merger over a temporary root plus upstream repositories made on demand, all removed after the
 * test file (the merger, merger-between and needs tests share it).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { Merger, type Project } from '../../untrusted-ci/merger/merger.js';
import { createRepo, type FileContent, type TestRepo } from './git-repo.js';

export interface MergerRig {
  root: string;
  merger: Merger;
  /** A fresh upstream repository and the project naming it (`org/<prefix><n>`). */
  upstream(files?: Record<string, FileContent>): { up: TestRepo; project: Project };
}

export function mergerRig(prefix: string): MergerRig {
  const root = mkdtempSync(join(tmpdir(), `airlock-${prefix}-`));
  const merger = new Merger({ root });
  const repos: TestRepo[] = [];
  afterAll(() => {
    repos.forEach((r) => r.dispose());
    rmSync(root, { recursive: true, force: true });
  });
  let seq = 0;
  return {
    root,
    merger,
    upstream(files = { 'README.md': 'hello\n' }) {
      const up = createRepo(files);
      repos.push(up);
      return { up, project: { name: `org/${prefix}${++seq}`, url: up.url } };
    },
  };
}
