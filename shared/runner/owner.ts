/**
 * Who owns a container or workspace: `host/boot/pidns/pid/start/instance`. Each part narrows "is
 * the owner alive" without shared state:
 *   host   another host's reaper decides for its own leftovers;
 *   boot   the kernel's boot id: after a reboot every owner from before is dead;
 *   pidns  the pid namespace: a reaper in another pid namespace cannot see the owner's pid, so it
 *          cannot judge (the caller falls back to age);
 *   pid + start  the process and its start time in clock ticks, so a reused pid is not mistaken
 *          for the owner;
 *   instance  one runner (workspace manager) in that process: two in one process each own only
 *          their own things, so one's reaper never takes the other's live workspaces.
 * Liveness is the process's: an instance lives as long as its process does.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';

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

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().replace(/-/g, '').slice(0, 12);
  } catch {
    return 'noboot';
  }
}

function pidNamespace(): string {
  try {
    return /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? 'nons';
  } catch {
    return 'nons';
  }
}

/** A new owner id for one runner instance in this process. */
export function newOwnerId(): string {
  return `${hostname()}/${bootId()}/${pidNamespace()}/${process.pid}/${procStartTime(process.pid) ?? '0'}/${randomBytes(4).toString('hex')}`;
}

/** 'alive', 'dead', or 'unknown' (another host or pid namespace: judge by age instead). */
export function ownerState(owner: string): 'alive' | 'dead' | 'unknown' {
  const parts = owner.split('/');
  if (parts.length !== 6) return 'dead'; // not an owner id this version writes: a leftover of an older one
  const [host, boot, ns, pid, start] = parts as [string, string, string, string, string, string];
  if (host !== hostname()) return 'unknown';
  if (boot !== bootId()) return 'dead';
  if (ns !== pidNamespace()) return 'unknown';
  const n = Number(pid);
  if (!Number.isSafeInteger(n) || n <= 0) return 'dead';
  return procStartTime(n) === start ? 'alive' : 'dead';
}

/** Owner ids as file-name-safe tokens (for workspace backing files) and back. */
export function ownerToken(owner: string): string {
  return Buffer.from(owner).toString('base64url');
}
export function ownerFromToken(token: string): string | undefined {
  try {
    const s = Buffer.from(token, 'base64url').toString('utf8');
    return ownerToken(s) === token ? s : undefined;
  } catch {
    return undefined;
  }
}
