import { hostname } from 'node:os';
import { describe, expect, it } from 'vitest';
import { currentOwner, ownerFromToken, ownerState, ownerToken } from '../../../shared/runner/owner.js';

describe('owner ids', () => {
  const me = currentOwner();
  const [host, boot, ns, pid, start] = me.split('/') as [string, string, string, string, string];

  it('name host, boot, pid namespace, pid and start time', () => {
    expect(host).toBe(hostname());
    expect(Number(pid)).toBe(process.pid);
    expect(boot).toMatch(/^[0-9a-f]{12}$/);
    expect(ns).toMatch(/^\d+$/);
    expect(start).toMatch(/^\d+$/);
  });

  it.each([
    ['this process', () => me, 'alive'],
    ['a reused pid (other start time)', () => [host, boot, ns, pid, String(Number(start) + 1)].join('/'), 'dead'],
    ['a pid that does not exist', () => [host, boot, ns, '999999999', start].join('/'), 'dead'],
    ['an earlier boot', () => [host, '000000000000', ns, pid, start].join('/'), 'dead'],
    ['another host', () => ['elsewhere.example', boot, ns, pid, start].join('/'), 'unknown'],
    ['another pid namespace', () => [host, boot, '1', pid, start].join('/'), 'unknown'],
    ['an id of an older format', () => `${host}/${pid}/${start}`, 'dead'],
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
