/**
 * shared/git/cat-file.ts against the real git: one long-lived `cat-file --batch-command` answering
 * reads in order, seeing what other git processes write after it started, and failing waiting
 * reads (never hanging, never answering one read with another's bytes) when its process dies,
 * stalls or ends.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GitFailedError } from '#shared/errors.js';
import { CatFile } from '#shared/git/cat-file.js';
import { createRepo, type TestRepo } from '../../support/git-repo.js';

const repos: TestRepo[] = [];
const readers: CatFile[] = [];
afterAll(() => {
  readers.forEach((r) => r.dispose());
  repos.forEach((r) => r.dispose());
});
function setUp(files: Parameters<typeof createRepo>[0] = { 'README.md': 'hello\n' }, opts?: ConstructorParameters<typeof CatFile>[1]): { up: TestRepo; cat: CatFile } {
  const up = createRepo(files);
  repos.push(up);
  const cat = new CatFile(up.dir, opts);
  readers.push(cat);
  return { up, cat };
}
const blobOf = (up: TestRepo, path: string, rev = 'master') => up.git('rev-parse', `${rev}:${path}`);
const alive = (pid: number | undefined) => {
  try {
    process.kill(pid ?? 0, 0);
    return pid !== undefined;
  } catch {
    return false;
  }
};

describe('CatFile', () => {
  it('says what an object is and gives its bytes; a name of nothing is undefined', async () => {
    const { up, cat } = setUp({ 'a.txt': 'A\n', 'empty': '' });
    const tip = up.tip();
    expect(await cat.info(`${tip}^{commit}`)).toEqual({ oid: tip, type: 'commit', size: Number(up.git('cat-file', '-s', tip)) });
    expect((await cat.info(`${tip}^{tree}`))?.oid).toBe(up.git('rev-parse', `${tip}^{tree}`));
    const a = await cat.contents(blobOf(up, 'a.txt'), 100);
    expect([a?.info.type, a?.data?.toString()]).toEqual(['blob', 'A\n']);
    expect((await cat.contents(blobOf(up, 'empty'), 0))?.data).toEqual(Buffer.alloc(0));
    expect(await cat.info('0'.repeat(40))).toBeUndefined();
    expect(await cat.info('refs/airlock/none^{commit}')).toBeUndefined();
    expect(await cat.info(`${blobOf(up, 'a.txt')}^{commit}`)).toBeUndefined();
    expect(await cat.contents('0'.repeat(40), 100)).toBeUndefined();
  });

  it('gives only the size of an object over the cap, and reads on in step after it', async () => {
    const big = Buffer.alloc(300_000, 0x0a);
    const { up, cat } = setUp({ 'big.bin': big, 'small.txt': 'small\n' });
    const got = await cat.contents(blobOf(up, 'big.bin'), big.length - 1);
    expect(got).toEqual({ info: { oid: blobOf(up, 'big.bin'), type: 'blob', size: big.length } });
    expect((await cat.contents(blobOf(up, 'big.bin'), big.length))?.data?.equals(big)).toBe(true);
    expect((await cat.contents(blobOf(up, 'small.txt'), 100))?.data?.toString()).toBe('small\n');
  });

  it('answers many reads at once, each with its own bytes (line breaks and NULs inside)', async () => {
    const files: Record<string, Buffer> = {};
    for (let i = 0; i < 60; i++) files[`f${i}`] = Buffer.concat([Buffer.from(`${i}\n\0`), Buffer.alloc(i * 997, i), Buffer.from('\n')]);
    const { up, cat } = setUp(files);
    const oids = Object.keys(files).map((f) => blobOf(up, f));
    const reads = await Promise.all([...oids, ...oids].map((oid) => cat.contents(oid, 1 << 20)));
    reads.forEach((r, i) => expect(r?.data?.equals(Object.values(files)[i % 60]!)).toBe(true));
  });

  it('sees commits and refs that another git process wrote after it started', async () => {
    const { up, cat } = setUp();
    expect(await cat.info('refs/heads/later^{commit}')).toBeUndefined();
    const first = up.tip();
    expect((await cat.info(`${first}^{commit}`))?.oid).toBe(first);
    const next = up.commit({ 'new.txt': 'new\n' });
    up.git('repack', '-a', '-d', '-q'); // the new commit in a pack the reader has not opened yet
    expect((await cat.info(`${next}^{commit}`))?.oid).toBe(next);
    up.branch('later', next);
    expect((await cat.info('refs/heads/later^{commit}'))?.oid).toBe(next);
    up.commit({ 'loose.txt': 'loose\n' }, 'loose', { branch: 'later' });
    expect((await cat.info('refs/heads/later^{commit}'))?.oid).toBe(up.tip('later'));
  });

  it('refuses a name with a line break or NUL, which would be two requests', async () => {
    const { up, cat } = setUp();
    await expect(cat.info(`${up.tip()}\ninfo ${up.tip()}`)).rejects.toThrow(/line break or NUL/);
    await expect(cat.info(`${up.tip()}\0`)).rejects.toBeInstanceOf(GitFailedError);
    expect((await cat.info(up.tip()))?.oid).toBe(up.tip());
  });

  it('fails the waiting reads when its process dies, and starts a new one for the next', async () => {
    const { up, cat } = setUp();
    await cat.info(up.tip());
    const pid = cat.pid;
    process.kill(pid!, 'SIGSTOP');
    const waiting = [cat.info(up.tip()), cat.contents(blobOf(up, 'README.md'), 100)];
    process.kill(pid!, 'SIGKILL');
    for (const w of waiting) await expect(w).rejects.toThrow(/cat-file ended/);
    expect((await cat.info(up.tip()))?.oid).toBe(up.tip());
    expect(cat.pid).not.toBe(pid);
  });

  it('kills a process that stops answering, and fails what waits', async () => {
    const { up, cat } = setUp(undefined, { timeoutMs: 300 });
    await cat.info(up.tip());
    const pid = cat.pid;
    process.kill(pid!, 'SIGSTOP');
    await expect(cat.info(up.tip())).rejects.toThrow(/no answer within 300 ms/);
    expect((await cat.info(up.tip()))?.oid).toBe(up.tip());
    expect(cat.pid).not.toBe(pid);
  });

  it('ends its process when idle and after maxRequests answers; reads go on', async () => {
    const { up, cat } = setUp(undefined, { idleMs: 100, maxRequests: 3 });
    await cat.info(up.tip());
    const first = cat.pid;
    await new Promise((r) => setTimeout(r, 400));
    expect(cat.pid).toBeUndefined();
    expect(alive(first)).toBe(false);
    await Promise.all([cat.info(up.tip()), cat.info(up.tip()), cat.info(up.tip())]);
    expect(cat.pid).toBeUndefined(); // replaced once idle after its third answer
    expect((await cat.info(up.tip()))?.oid).toBe(up.tip());
    cat.close();
  });

  it('close() while reads wait answers them first, then ends the process (a gc: no deleted pack held)', async () => {
    const { up, cat } = setUp();
    await cat.info(up.tip());
    const pid = cat.pid;
    const reads = Array.from({ length: 20 }, () => cat.contents(blobOf(up, 'README.md'), 100));
    cat.close();
    for (const r of await Promise.all(reads)) expect(r?.data?.toString()).toBe('hello\n');
    expect(alive(pid)).toBe(false); // ended once what waited on it was answered
    expect((await cat.info(up.tip()))?.oid).toBe(up.tip());
    expect(cat.pid).not.toBe(pid);
  });

  it('keeps no process alive while idle', () => {
    const { up } = setUp();
    const dir = mkdtempSync(join(tmpdir(), 'airlock-catfile-'));
    try {
      const script = join(dir, 'read.mts');
      writeFileSync(script, `import { CatFile } from ${JSON.stringify(new URL('../../../shared/git/cat-file.ts', import.meta.url).pathname)};\nconst c = new CatFile(${JSON.stringify(up.dir)}, { idleMs: 600_000 });\nconsole.log((await c.info('HEAD^{commit}'))?.type);\n`);
      // Would wait for the idle timer (10 minutes) if an idle reader held the event loop.
      const out = execFileSync(process.execPath, ['--import', 'tsx', script], { encoding: 'utf8', timeout: 60_000, cwd: new URL('../../..', import.meta.url).pathname });
      expect(out.trim()).toBe('commit');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
