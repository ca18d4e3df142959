import { chmod, link, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { execFileSync } from 'node:child_process';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidInputError } from '../../../shared/errors.js';
import { packDirectory, repackTar, safeEntryName } from '../../../shared/runner/tar-pack.js';

interface Read {
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  linkname?: string;
  body: string;
}

/** Every entry of a tar stream, with its body. */
async function readTar(stream: Readable): Promise<Read[]> {
  const out: Read[] = [];
  const extract = tar.extract();
  stream.pipe(extract as unknown as NodeJS.WritableStream);
  stream.on('error', (e) => extract.destroy(e));
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const c of entry) chunks.push(c as Buffer);
    const h = entry.header;
    out.push({
      name: h.name,
      type: h.type ?? 'file',
      mode: h.mode ?? 0,
      uid: h.uid ?? -1,
      gid: h.gid ?? -1,
      ...(h.linkname ? { linkname: h.linkname } : {}),
      body: Buffer.concat(chunks).toString(),
    });
  }
  return out;
}

/** A tar file made with tar-stream from raw headers, written to `path`. */
async function writeTar(path: string, entries: (Partial<tar.Header> & { name: string; body?: string })[]): Promise<void> {
  const pack = tar.pack();
  for (const { body, ...h } of entries) {
    if (body === undefined) pack.entry(h);
    else pack.entry(h, body);
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  await writeFile(path, Buffer.concat(chunks));
}

const OWNER = { uid: 1000, gid: 1001 };
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'airlock-tarpack-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('safeEntryName', () => {
  it.each([
    ['a.txt', 'a.txt'],
    ['./a.txt', 'a.txt'],
    ['src/main.c', 'src/main.c'],
    ['src//main.c', 'src/main.c'],
    ['src/./main.c', 'src/main.c'],
    ['dir/', 'dir'],
    ['..foo', '..foo'],
    ['foo..', 'foo..'],
    ['a/...', 'a/...'],
  ])('%j → %j', (name, safe) => {
    expect(safeEntryName(name)).toBe(safe);
  });

  it.each(['', '.', './', '/', '/etc/passwd', '//etc/passwd', '..', '../escape', 'a/../b', 'a/b/..', 'a\0b', './../x'])('%j is refused', (name) => {
    expect(safeEntryName(name)).toBeUndefined();
  });
});

describe('packDirectory', () => {
  it('forces the owner, strips setuid/setgid/sticky, keeps symlinks as symlinks', async () => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'nested/deeper'), { recursive: true });
    await writeFile(join(src, 'suid'), '#!/bin/sh\necho root\n');
    await chmod(join(src, 'suid'), 0o4755);
    await writeFile(join(src, 'nested/deeper/data.txt'), 'deep data');
    await chmod(join(src, 'nested'), 0o3775); // setgid + sticky directory
    await symlink('/etc/passwd', join(src, 'link'));
    await symlink('nested/deeper/data.txt', join(src, 'rel-link'));

    const entries = await readTar(packDirectory(src, OWNER));
    const byName = new Map(entries.map((e) => [e.name.replace(/\/$/, ''), e]));
    expect([...byName.keys()].sort()).toEqual(['link', 'nested', 'nested/deeper', 'nested/deeper/data.txt', 'rel-link', 'suid']);

    for (const e of entries) {
      expect(e.uid).toBe(OWNER.uid);
      expect(e.gid).toBe(OWNER.gid);
      expect(e.mode & 0o7000).toBe(0);
    }
    expect(byName.get('suid')).toMatchObject({ type: 'file', mode: 0o755, body: '#!/bin/sh\necho root\n' });
    expect(byName.get('nested')).toMatchObject({ type: 'directory', mode: 0o775 });
    expect(byName.get('nested/deeper/data.txt')).toMatchObject({ type: 'file', body: 'deep data' });
    // Symlinks stay links: the target is not read, and not followed out of the directory.
    expect(byName.get('link')).toMatchObject({ type: 'symlink', linkname: '/etc/passwd', body: '' });
    expect(byName.get('rel-link')).toMatchObject({ type: 'symlink', linkname: 'nested/deeper/data.txt' });
  });

  it('lists a directory before what is in it', async () => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'a/b'), { recursive: true });
    await writeFile(join(src, 'a/b/c'), 'c');
    const names = (await readTar(packDirectory(src, OWNER))).map((e) => e.name.replace(/\/$/, ''));
    expect(names).toEqual(['a', 'a/b', 'a/b/c']);
  });

  it('leaves out fifos', async () => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'keep'), 'k');
    execFileSync('mkfifo', [join(src, 'pipe')]);
    const entries = await readTar(packDirectory(src, OWNER));
    expect(entries.map((e) => e.name)).toEqual(['keep']);
  });

  it('fails the stream for a directory that does not exist', async () => {
    await expect(readTar(packDirectory(join(dir, 'missing'), OWNER))).rejects.toThrow(/ENOENT/);
  });
});

describe('repackTar', () => {
  it('re-writes owner and mode, and drops devices, fifos and hardlinks', async () => {
    const file = join(dir, 'in.tar');
    await writeTar(file, [
      { name: './src/', type: 'directory', mode: 0o2777, uid: 0, gid: 0 },
      { name: 'src/run', type: 'file', mode: 0o6755, uid: 0, gid: 0, body: 'payload' },
      { name: 'src/zero', type: 'character-device', devmajor: 1, devminor: 5, mode: 0o666 },
      { name: 'src/pipe', type: 'fifo', mode: 0o666 },
      { name: 'src/hard', type: 'link', linkname: 'src/run' },
      { name: 'src/soft', type: 'symlink', linkname: 'run', uid: 0, gid: 0 },
    ]);
    const entries = await readTar(repackTar(file, OWNER));
    expect(entries.map((e) => [e.name.replace(/\/$/, ''), e.type])).toEqual([
      ['src', 'directory'],
      ['src/run', 'file'],
      ['src/soft', 'symlink'],
    ]);
    for (const e of entries) {
      expect([e.uid, e.gid]).toEqual([OWNER.uid, OWNER.gid]);
      expect(e.mode & 0o7000).toBe(0);
    }
    expect(entries[1]).toMatchObject({ mode: 0o755, body: 'payload' });
    expect(entries[2]).toMatchObject({ linkname: 'run' });
  });

  it.each(['../escape', '/etc/cron.d/x', 'src/../../escape'])('refuses an entry named %j with AIRLOCK_E_INVALID_INPUT', async (name) => {
    const file = join(dir, 'evil.tar');
    await writeTar(file, [
      { name: 'ok.txt', type: 'file', body: 'fine' },
      { name, type: 'file', body: 'evil' },
    ]);
    const e = await readTar(repackTar(file, OWNER)).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(InvalidInputError);
    expect((e as InvalidInputError).code).toBe('AIRLOCK_E_INVALID_INPUT');
    expect((e as InvalidInputError).issues[0]).toMatchObject({ file, path: name });
  });

  it.each([
    ['truncated in the middle of a file', (t: Buffer) => t.subarray(0, 1500)],
    ['not a tar at all', (t: Buffer) => Buffer.alloc(t.length, 'g')],
  ])('refuses a tar file %s with AIRLOCK_E_INVALID_INPUT, without an uncaught error', async (_what, damage) => {
    const good = join(dir, 'good.tar');
    await writeTar(good, [{ name: 'big.bin', type: 'file', body: 'x'.repeat(5000) }]);
    const bad = join(dir, 'bad.tar');
    await writeFile(bad, damage(await readFile(good)));
    const e = await readTar(repackTar(bad, OWNER)).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect((e as InvalidInputError).code).toBe('AIRLOCK_E_INVALID_INPUT');
    expect((e as InvalidInputError).issues[0]?.file).toBe(bad);
  });

  it('refuses a tar file that cannot be read', async () => {
    const e = await readTar(repackTar(join(dir, 'missing.tar'), OWNER)).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect((e as InvalidInputError).code).toBe('AIRLOCK_E_INVALID_INPUT');
  });

  it('round-trips what packDirectory made', async () => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'd'), { recursive: true });
    await writeFile(join(src, 'd/f'), 'content');
    await link(join(src, 'd/f'), join(src, 'd/f2')); // a hardlink on disk is just another file to packDirectory
    const chunks: Buffer[] = [];
    for await (const c of packDirectory(src, OWNER)) chunks.push(c as Buffer);
    await writeFile(join(dir, 'packed.tar'), Buffer.concat(chunks));
    const entries = await readTar(repackTar(join(dir, 'packed.tar'), { uid: 2000, gid: 2000 }));
    expect(entries.map((e) => [e.name.replace(/\/$/, ''), e.type, e.body, e.uid])).toEqual([
      ['d', 'directory', '', 2000],
      ['d/f', 'file', 'content', 2000],
      ['d/f2', 'file', 'content', 2000],
    ]);
  });
});
