import { hostname } from 'node:os';
import { describe, expect, it } from 'vitest';
import { newOwnerId, ownerFromToken, ownerState, ownerToken } from '#shared/runner/owner.js';

describe('owner ids', () => {
  const me = newOwnerId();
  const [host, boot, ns, pid, start, instance] = me.split('/') as [string, string, string, string, string, string];
  const id = (...p: string[]) => [...p, instance].join('/');

  it('name host, boot, pid namespace, pid, start time and instance; each runner gets its own', () => {
    expect(instance).toMatch(/^[0-9a-f]{8}$/);
    expect(newOwnerId()).not.toBe(me);
    expect(newOwnerId().split('/').slice(0, 5)).toEqual(me.split('/').slice(0, 5));
    expect(host).toBe(hostname());
    expect(Number(pid)).toBe(process.pid);
    expect(boot).toMatch(/^[0-9a-f]{12}$/);
    expect(ns).toMatch(/^\d+$/);
    expect(start).toMatch(/^\d+$/);
  });

  it.each([
    ['this process', () => me, 'alive'],
    ['another runner in this process', () => newOwnerId(), 'alive'],
    ['a reused pid (other start time)', () => id(host, boot, ns, pid, String(Number(start) + 1)), 'dead'],
    ['a pid that does not exist', () => id(host, boot, ns, '999999999', start), 'dead'],
    ['an earlier boot', () => id(host, '000000000000', ns, pid, start), 'dead'],
    ['another host', () => id('elsewhere.example', boot, ns, pid, start), 'unknown'],
    ['another pid namespace', () => id(host, boot, '1', pid, start), 'unknown'],
    ['an id of an older format', () => `${host}/${boot}/${ns}/${pid}/${start}`, 'dead'],
    ['garbage', () => 'x', 'dead'],
  ] as [string, () => string, string][])('%s is %s', (_name, make, want) => {
    expect(ownerState(make())).toBe(want);
  });

  it('round-trips through a file-name-safe token, and refuses tokens it did not make', () => {
    const t = ownerToken(me);
    expect(t).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(ownerFromToken(t)).toBe(me);
    expect(ownerFromToken('!!')).toBeUndefined();
  });
});
