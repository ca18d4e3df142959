/**
 * `putDirectory` for every store: walk a local directory (a job's artifact output, which the job
 * controlled), keep regular files only, check every name before the first upload, then upload a
 * few at a time through the store's own `putFile`.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidInputError, StorageFailedError, isAirlockError, type Issue } from '#shared/errors.js';
import { keyProblems, validatePrefix } from './artifact-store.js';

/** Regular files under `dir`, as '/'-joined paths relative to it. */
async function regularFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const pending: string[] = [''];
  while (pending.length > 0) {
    const rel = pending.pop() as string;
    // withFileTypes reports what the entry is (lstat), so a symlink is a symlink, never its target.
    const entries = await readdir(join(dir, rel), { withFileTypes: true });
    for (const e of entries) {
      const child = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) pending.push(child);
      else if (e.isFile()) out.push(child);
    }
  }
  return out;
}

/** Upload every regular file of `dir` under `prefix` with `putFile`, `concurrency` at a time. */
export async function putDirectoryWith(
  prefix: string,
  dir: string,
  putFile: (key: string, path: string) => Promise<void>,
  concurrency: number,
): Promise<number> {
  validatePrefix(prefix);
  let files: string[];
  try {
    files = await regularFiles(dir);
  } catch (e) {
    throw new StorageFailedError(`cannot read directory ${dir}: ${(e as Error).message}`, { cause: e });
  }
  const issues: Issue[] = [];
  for (const rel of files) {
    for (const message of keyProblems(prefix + rel)) issues.push({ file: dir, path: rel, message, severity: 'error' });
  }
  if (issues.length > 0) throw new InvalidInputError(issues);

  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < files.length) {
      const rel = files[next++] as string;
      try {
        await putFile(prefix + rel, join(dir, ...rel.split('/')));
      } catch (e) {
        next = files.length; // stop the other workers from starting more
        throw isAirlockError(e) ? e : new StorageFailedError(`cannot upload ${rel}: ${(e as Error).message}`, { cause: e });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, files.length)) }, worker));
  return files.length;
}
