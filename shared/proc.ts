/**
 * What /proc and /sys say about processes and mounts of this machine, read synchronously and
 * never throwing: a process or file that is gone is an answer (undefined, false, empty). Used to
 * find and stop what a throwaway engine left (untrusted-ci/environments/build-sandbox.ts, the
 * tests' executor hosts).
 */
import { readdirSync, readFileSync } from 'node:fs';

/** A file's text, or undefined when it cannot be read. */
export function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** A directory's entries, or none when it cannot be read. */
export function safeReaddir(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

/** The process exists and is neither a zombie nor dead. */
export function alive(pid: number): boolean {
  const stat = readText(`/proc/${pid}/stat`);
  if (!stat) return false;
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X';
}

/** The process's command line names `dir` or a path under it (as an argument, `x=dir/…` or `unix://dir/…`). */
export function mentions(pid: number, dir: string): boolean {
  const cmd = readText(`/proc/${pid}/cmdline`);
  return cmd !== undefined && cmd.split('\0').some((a) => a === dir || a.startsWith(`${dir}/`) || a.includes(`=${dir}/`) || a.includes(`://${dir}/`));
}

/** Processes whose command line names the directory (an engine, its containerd, shims), this one excepted. */
export function processesMentioning(dir: string): number[] {
  return safeReaddir('/proc')
    .filter((n) => /^\d+$/.test(n) && Number(n) !== process.pid)
    .map(Number)
    .filter((pid) => mentions(pid, dir));
}

/** A mountinfo path with its octal escapes (`\040` for a space) decoded. */
export function decodeMount(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mountpoints at or under `dir` in this mount namespace, deepest first. */
export function mountsUnder(dir: string): string[] {
  const points = (readText('/proc/self/mountinfo') ?? '')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => !!p)
    .map(decodeMount)
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}
