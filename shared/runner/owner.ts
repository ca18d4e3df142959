/**
 * Who owns a container: `host/pid/starttime`. The start time (from /proc, in clock ticks since
 * boot) makes the id unique even when a pid is reused, so "is the owner alive" needs no shared
 * state: the reaper reads /proc.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';

function procStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22; fields after the parenthesised command name, which may itself contain spaces.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19];
  } catch {
    return undefined;
  }
}

export function currentOwner(): string {
  return `${hostname()}/${process.pid}/${procStartTime(process.pid) ?? '0'}`;
}

/** False only when we can tell the owner is dead: same host and its pid is gone or reused. */
export function isOwnerAlive(owner: string): boolean {
  const [host, pid, start] = owner.split('/');
  if (host !== hostname()) return true; // another host's reaper decides
  const n = Number(pid);
  if (!Number.isSafeInteger(n) || n <= 0) return false;
  return procStartTime(n) === start;
}
