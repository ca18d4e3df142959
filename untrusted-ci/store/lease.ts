/**
 * A lease in the CI database: one holder at a time for a name (`leader`: the replica that runs the
 * gate, the scheduler and the outboxes; every replica serves the API). Times are the database's
 * clock (`dbNow`), so replicas on hosts whose clocks disagree still agree on who holds it.
 *
 * - `acquire` takes the lease when it is free, expired, already ours, or held by a process of this
 *   host that is gone (a restart after `kill -9` need not wait out the old lease);
 * - `renew` extends it while it is still ours and unexpired;
 * - a new holder bumps `epoch`: writes a leader makes only while it leads check it (`fenced`),
 *   so a leader that lost the lease (paused, cut off) and comes back cannot write over its
 *   successor's work.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { ConflictError } from '#shared/errors.js';
import type { Db, Sql } from './sql.js';

export interface LeaseRow {
  name: string;
  holder: string;
  address: string | null;
  epoch: number;
  expires_at: number;
  updated_at: number;
}

/** The lease was lost: this process must stop acting as its holder. */
export class LeadershipLostError extends ConflictError {}

/** The database's clock, in milliseconds since the epoch. */
export function dbNow(s: Sql): string {
  return s.engine === 'postgres' ? 'CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)' : "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
}

/**
 * This machine and PID namespace: the kernel's boot id (unique per boot of a machine, so two hosts
 * cloned with one host name differ) and the PID namespace (containers of one host, sharing its
 * name under host networking, differ). Empty where unreadable: then no holder is judged gone.
 */
function machine(): string {
  try {
    const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    const ns = /\[([0-9]+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1];
    return boot && ns ? `${boot}.${ns}` : '';
  } catch {
    return '';
  }
}
const MACHINE = machine();

/**
 * This process as a lease holder: `<host>:<pid>:<random>:<machine>` (the random part tells two
 * lives of one pid apart; `pid` is for tests that name another process of this machine).
 */
export function holderId(pid: number = process.pid): string {
  return `${hostname()}:${pid}:${randomBytes(4).toString('hex')}:${MACHINE}`;
}

/**
 * Whether `holder` names a process of this machine and PID namespace that no longer exists. A
 * host name alone says too little: a pid that does not exist here may be a live leader's on a
 * machine of the same name, and taking its lease would make two leaders.
 */
function goneHere(holder: string): boolean {
  const [host, pid, , where] = holder.split(':');
  if (!MACHINE || where !== MACHINE || host !== hostname() || !pid || !/^[0-9]{1,10}$/.test(pid) || Number(pid) === process.pid) return false;
  try {
    process.kill(Number(pid), 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

export class Lease {
  private epochHeld: number | undefined;

  constructor(
    private readonly db: Db,
    readonly name: string,
    readonly holder: string,
    private readonly ttlMs: number,
  ) {}

  /** The epoch of our holding, while we hold it (what `fenced` checks). */
  get epoch(): number | undefined {
    return this.epochHeld;
  }

  /** Take the lease if it is free, expired, ours, or its holder is a dead process of this host. */
  async acquire(address?: string): Promise<boolean> {
    const won = await this.db.tx(async (t) => {
      const now = (await t.get<{ now: number }>(`SELECT ${dbNow(t)} AS now`))!.now;
      const row = await t.get<LeaseRow>('SELECT * FROM leases WHERE name = ?', [this.name]);
      if (!row) {
        await t.run('INSERT INTO leases (name, holder, address, epoch, expires_at, updated_at) VALUES (?,?,?,1,?,?)', [this.name, this.holder, address ?? null, now + this.ttlMs, now]);
        return 1;
      }
      const mine = row.holder === this.holder;
      if (!mine && row.expires_at >= now && !goneHere(row.holder)) return undefined;
      const epoch = mine ? row.epoch : row.epoch + 1;
      await t.run('UPDATE leases SET holder = ?, address = ?, epoch = ?, expires_at = ?, updated_at = ? WHERE name = ?', [this.holder, address ?? null, epoch, now + this.ttlMs, now, this.name]);
      return epoch;
    });
    this.epochHeld = won;
    return won !== undefined;
  }

  /** Extend the lease; false (and no longer held) when it is not ours any more or has expired. */
  async renew(): Promise<boolean> {
    if (this.epochHeld === undefined) return false;
    const r = await this.db.run(`UPDATE leases SET expires_at = ${dbNow(this.db)} + ?, updated_at = ${dbNow(this.db)} WHERE name = ? AND holder = ? AND epoch = ? AND expires_at >= ${dbNow(this.db)}`, [
      this.ttlMs,
      this.name,
      this.holder,
      this.epochHeld,
    ]);
    if (r.changes !== 1) this.epochHeld = undefined;
    return r.changes === 1;
  }

  /** Give the lease up (a clean stop): another replica takes it at once instead of after it expires. */
  async release(): Promise<void> {
    if (this.epochHeld === undefined) return;
    await this.db.run('UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ? AND epoch = ?', [this.name, this.holder, this.epochHeld]);
    this.epochHeld = undefined;
  }

  /** Who holds it now (an expired row is nobody's). */
  async current(): Promise<{ holder: string; address?: string; epoch: number } | undefined> {
    const row = await this.db.get<LeaseRow & { now: number }>(`SELECT leases.*, ${dbNow(this.db)} AS now FROM leases WHERE name = ?`, [this.name]);
    if (!row || row.expires_at < row.now) return undefined;
    return { holder: row.holder, ...(row.address ? { address: row.address } : {}), epoch: row.epoch };
  }

  /**
   * Throws LeadershipLostError unless we hold the lease at our epoch (call inside the write's
   * transaction). On PostgreSQL the row is locked (FOR SHARE) until the write commits: a takeover
   * waits for it, so the successor reads what a write that passed this check wrote. Unlocked, the
   * takeover could commit in between and its leader read the state before that write landed on it.
   * (SQLite has one writer at a time: a takeover waits anyway.)
   */
  async fenced(t: Sql): Promise<void> {
    const lock = t.engine === 'postgres' ? ' FOR SHARE' : '';
    const row =
      this.epochHeld === undefined ? undefined : await t.get<{ one: number }>(`SELECT 1 AS one FROM leases WHERE name = ? AND holder = ? AND epoch = ?${lock}`, [this.name, this.holder, this.epochHeld]);
    if (!row) throw new LeadershipLostError(`this process no longer holds the ${this.name} lease: another replica took over`);
  }
}
