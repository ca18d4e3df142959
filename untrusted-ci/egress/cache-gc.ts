/**
 * The package cache's size bound: when the files under the cache directories add up to more than
 * `maxBytes`, the least recently used go first (by mtime: the front marks a file used at each hit,
 * and the proxies write it when they fetch it), until the rest fits. apt-cacher-ng keeps a `.head`
 * file beside each file it caches; the two go together. Files that vanish meanwhile are skipped:
 * the proxies may be writing while this runs, and a file they miss is fetched again.
 */
import { lstat, readdir, realpath, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';

export interface PruneReport {
  /** Files removed (a `.head` companion not counted). */
  files: number;
  bytes: number;
  /** What the cache holds afterwards. */
  keptBytes: number;
}

interface Entry {
  path: string;
  bytes: number;
  mtimeMs: number;
}

export async function pruneCache(dirs: readonly string[], maxBytes: number): Promise<PruneReport> {
  const entries: Entry[] = [];
  // From the real paths of the roots: stillInside compares against what the walk saw.
  for (const d of dirs) await walk(await realpath(d).catch(() => d), entries, 0);
  const heads = new Map<string, Entry>();
  const files: Entry[] = [];
  for (const e of entries) (e.path.endsWith('.head') ? heads.set(e.path.slice(0, -5), e) : files.push(e));
  const unit = files.map((f) => ({ ...f, bytes: f.bytes + (heads.get(f.path)?.bytes ?? 0) }));
  const named = new Set(files.map((f) => f.path));
  let total = unit.reduce((n, f) => n + f.bytes, 0) + [...heads.entries()].filter(([p]) => !named.has(p)).reduce((n, [, h]) => n + h.bytes, 0);
  const report: PruneReport = { files: 0, bytes: 0, keptBytes: total };
  if (total <= maxBytes) return report;
  unit.sort((a, b) => a.mtimeMs - b.mtimeMs);
  for (const f of unit) {
    if (total <= maxBytes) break;
    // The proxies' user owns these directories: one swapped for a link since the walk is not followed.
    if (!(await stillInside(f.path))) continue;
    await rm(f.path, { force: true });
    if (heads.has(f.path)) await rm(`${f.path}.head`, { force: true });
    total -= f.bytes;
    report.files += 1;
    report.bytes += f.bytes;
  }
  report.keptBytes = total;
  return report;
}

/** Whether the file's directory is still the real directory the walk found (no link on the way). */
async function stillInside(path: string): Promise<boolean> {
  try {
    return (await realpath(dirname(path))) === dirname(path);
  } catch {
    return false;
  }
}

async function walk(dir: string, out: Entry[], depth: number): Promise<void> {
  if (depth > 32) return;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const path = join(dir, name);
    try {
      const s = await lstat(path);
      if (s.isDirectory()) await walk(path, out, depth + 1);
      else if (s.isFile()) out.push({ path, bytes: s.size, mtimeMs: s.mtimeMs });
    } catch {
      // gone meanwhile
    }
  }
}
