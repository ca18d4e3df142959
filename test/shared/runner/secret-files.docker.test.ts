/**
 * secret-files.ts on the real filesystem, as root (the host tier): files land on a tmpfs, owned by
 * the job's host uid, read-only, and removal leaves nothing.
 */
import { readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { removeSecretFiles, writeSecretFiles } from '#shared/runner/secret-files.js';

const root = join('/dev/shm', `airlock-secret-files-test-${process.pid}`);
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('secret files for a job step', () => {
  it('writes each file 0400 owned by the job uid on a tmpfs, directories 0500, and removes them all', async () => {
    const dir = await writeSecretFiles(root, [{ path: 'team/app/npm/token', data: Buffer.from('t0k3n') }, { path: 'plain', data: Buffer.from('p') }], { uid: 101000, gid: 101000 });
    const f = statSync(join(dir, 'team/app/npm/token'));
    expect([f.mode & 0o777, f.uid, f.gid]).toEqual([0o400, 101000, 101000]);
    expect(statSync(join(dir, 'team/app')).mode & 0o777).toBe(0o500);
    expect(statSync(dir).mode & 0o777).toBe(0o500);
    expect(statSync(root).mode & 0o777).toBe(0o700);
    expect(readFileSync(join(dir, 'team/app/npm/token'), 'utf8')).toBe('t0k3n');
    await removeSecretFiles(dir);
    expect(readdirSync(root)).toEqual([]);
  });
});
