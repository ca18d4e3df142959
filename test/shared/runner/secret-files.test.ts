/**
 * secret-files.ts on the real filesystem: files land on a tmpfs (a directory elsewhere is
 * refused), owned by the job's host uid, read-only, and removal leaves nothing; bad paths are
 * refused before anything is written.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkSecretFiles, removeSecretFiles, writeSecretFiles } from '#shared/runner/secret-files.js';

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

  it('refuses a directory that is not on a tmpfs: secrets are never written to disk', async () => {
    const disk = mkdtempSync(join(tmpdir(), 'airlock-not-tmpfs-'));
    const onTmpfs = (await import('node:fs/promises')).statfs(disk).then((s) => s.type === 0x01021994);
    if (await onTmpfs) return; // this machine's /tmp is a tmpfs: nothing to show here
    await expect(writeSecretFiles(disk, [{ path: 'x', data: Buffer.from('s') }], { uid: 0, gid: 0 })).rejects.toThrow(/not on a tmpfs/);
    expect(readdirSync(disk)).toEqual([]);
    rmSync(disk, { recursive: true, force: true });
  });

  it.each([['../escape'], ['/abs'], ['a//b'], ['a/./b'], ['sp ace'], ['']])('refuses the path %j', (path) => {
    expect(() => checkSecretFiles([{ path, data: Buffer.from('x') }], 'j')).toThrow(/secretFiles\[0\]\.path/);
  });

  it('refuses a path used twice, a file that is also a directory, and more than 1 MiB', () => {
    expect(() => checkSecretFiles([{ path: 'a', data: Buffer.from('1') }, { path: 'a', data: Buffer.from('2') }], 'j')).toThrow(/given twice/);
    expect(() => checkSecretFiles([{ path: 'a', data: Buffer.from('1') }, { path: 'a/b', data: Buffer.from('2') }], 'j')).toThrow(/both a file and a directory/);
    expect(() => checkSecretFiles([{ path: 'a', data: Buffer.alloc(1024 * 1024 + 1) }], 'j')).toThrow(/1 MiB/);
  });
});
