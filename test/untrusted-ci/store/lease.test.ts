/**
 * The leader lease on both engines of the CI database: one holder at a time, on the database's
 * clock; expiry, release, renewal; the epoch fence a deposed leader's writes meet; a dead process
 * of this host is taken over at once.
 */
import { spawnSync } from 'node:child_process';
import { hostname } from 'node:os';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Lease, LeadershipLostError, holderId } from '../../../untrusted-ci/store/lease.js';
import type { Db } from '../../../untrusted-ci/store/sql.js';
import { storeEngines, type FreshDb } from '../../support/store-engines.js';
import { until } from '../../support/until.js';

const engines = await storeEngines();

describe.each(engines)('the lease on $name', ({ skip, fresh }) => {
  let made: FreshDb;
  let db: Db;
  beforeEach(async (ctx) => {
    if (skip) return ctx.skip();
    made = await fresh();
    db = made.db;
  });
  afterEach(async () => {
    await made?.dispose();
  });

  it('has one holder at a time, even when several ask at once', async () => {
    const leases = Array.from({ length: 6 }, () => new Lease(db, 'leader', holderId(), 60_000));
    const won = await Promise.all(leases.map((l, i) => l.acquire(`http://replica-${i}`)));
    expect(won.filter(Boolean)).toHaveLength(1);
    const winner = leases[won.indexOf(true)]!;
    expect(await winner.current()).toEqual({ holder: winner.holder, address: `http://replica-${won.indexOf(true)}`, epoch: 1 });
    // Asking again keeps it (and its epoch); the others still cannot.
    expect(await winner.acquire(`http://replica-${won.indexOf(true)}`)).toBe(true);
    expect(winner.epoch).toBe(1);
    for (const l of leases) if (l !== winner) expect(await l.acquire()).toBe(false);
    expect(await winner.renew()).toBe(true);
  });

  it('passes on when it expires: the new holder has the next epoch, and the old one is fenced off', async () => {
    const a = new Lease(db, 'leader', holderId(), 300);
    const b = new Lease(db, 'leader', holderId(), 60_000);
    expect(await a.acquire()).toBe(true);
    await db.tx((t) => a.fenced(t)); // ours: passes
    await until('the lease to expire', async () => ((await b.acquire()) ? true : undefined), 10_000, 50);
    expect(b.epoch).toBe(2);
    expect(await a.renew()).toBe(false);
    expect(a.epoch).toBeUndefined();
    await expect(db.tx((t) => a.fenced(t))).rejects.toBeInstanceOf(LeadershipLostError);
    await db.tx((t) => b.fenced(t));
    // The deposed holder cannot take it back while the new one holds it.
    expect(await a.acquire()).toBe(false);
  });

  it('is taken at once after a release', async () => {
    const a = new Lease(db, 'leader', holderId(), 60_000);
    const b = new Lease(db, 'leader', holderId(), 60_000);
    expect(await a.acquire()).toBe(true);
    expect(await b.acquire()).toBe(false);
    await a.release();
    expect(await a.current()).toBeUndefined();
    expect(await b.acquire()).toBe(true);
    expect(b.epoch).toBe(2);
  });

  it('is taken at once from a process of this host that is gone (a restart after kill -9), not from a live one', async () => {
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
    const gone = new Lease(db, 'leader', holderId(Number(dead)), 60_000);
    expect(await gone.acquire()).toBe(true);
    const live = new Lease(db, 'other', holderId(1), 60_000); // pid 1 exists
    expect(await live.acquire()).toBe(true);
    const elsewhere = new Lease(db, 'third', `another-host:${dead}:0000`, 60_000);
    expect(await elsewhere.acquire()).toBe(true);
    const me = (name: string) => new Lease(db, name, holderId(), 60_000);
    expect(await me('leader').acquire()).toBe(true);
    expect(await me('other').acquire()).toBe(false);
    expect(await me('third').acquire()).toBe(false); // another host's pid says nothing here
  });

  it('is not taken from a process of another machine or container that has this host name (cloned hosts, host networking)', async () => {
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
    const twin = new Lease(db, 'leader', `${hostname()}:${dead}:0000:another-boot-another-pid-namespace`, 60_000);
    expect(await twin.acquire()).toBe(true);
    expect(await new Lease(db, 'leader', holderId(), 60_000).acquire()).toBe(false);
  });

  it('a fenced write that passed its check commits before the lease can pass on (the successor then reads it)', async () => {
    const a = new Lease(db, 'leader', holderId(), 300);
    const b = new Lease(db, 'leader', holderId(), 60_000);
    expect(await a.acquire()).toBe(true);
    await until('the lease to expire', async () => ((await a.current()) === undefined ? true : undefined), 10_000, 50);
    const order: string[] = [];
    let checked!: () => void;
    const fenceDone = new Promise<void>((r) => (checked = r));
    let finish!: () => void;
    const held = new Promise<void>((r) => (finish = r));
    // A deposed leader's save: its check passed (the lease expired, but nobody took it yet).
    const save = db
      .tx(async (t) => {
        await a.fenced(t);
        checked();
        await held;
        await t.run("INSERT INTO leases (name, holder, address, epoch, expires_at, updated_at) VALUES ('marker', 'a', NULL, 1, 0, 0)");
      })
      .then(() => order.push('save'));
    await fenceDone;
    const takeover = b.acquire().then((won) => order.push(won ? 'takeover' : 'refused'));
    // Give the takeover every chance to pass the open save (it must wait for it).
    await Promise.race([takeover, new Promise((r) => setTimeout(r, 1000))]);
    finish();
    await Promise.all([save, takeover]);
    expect(order).toEqual(['save', 'takeover']);
  });
});
