/**
 * secret-files.ts on the real filesystem: a directory that is not a tmpfs is refused, and bad
 * paths are refused before anything is written. Files owned by the job's host uid need root:
 * secret-files.docker.test.ts.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkSecretFiles, writeSecretFiles } from '#shared/runner/secret-files.js';

describe('secret files for a job step', () => {
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
