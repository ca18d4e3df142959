import { chmod, link, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execFileSync } from 'node:child_process';
import tar from 'tar-stream';
import { tarOf, type TarEntry } from '../../support/tar.js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidInputError } from '#shared/errors.js';
import { packDirectory, repackTar, safeEntryName } from '#shared/runner/tar-pack.js';

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
async function writeTar(path: string, entries: TarEntry[]): Promise<void> {
  await writeFile(path, await tarOf(entries));
}

/** The error `stream` ends with, read as a tar (undefined if it ends cleanly). */
async function failure(stream: Readable): Promise<unknown> {
  return readTar(stream).then(
    () => undefined,
    (err: unknown) => err,
  );
}

/** `stream` fails with an InvalidInputError whose first issue matches. */
async function expectRefused(stream: Readable, issue: { file: string; path: string; message: RegExp }): Promise<void> {
  const e = await failure(stream);
  expect(e).toBeInstanceOf(InvalidInputError);
  expect((e as InvalidInputError).code).toBe('AIRLOCK_E_INVALID_INPUT');
  expect((e as InvalidInputError).issues).toHaveLength(1);
  expect((e as InvalidInputError).issues[0]).toMatchObject({ file: issue.file, path: issue.path, severity: 'error' });
  expect((e as InvalidInputError).issues[0]?.message).toMatch(issue.message);
}

/** How many of this process's file descriptors are open on `path` (Linux). */
async function openFds(path: string): Promise<number> {
  let n = 0;
  for (const fd of await readdir('/proc/self/fd')) {
    if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) === path) n++;
  }
  return n;
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
    await symlink('suid', join(src, 'link'));
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
    expect(byName.get('link')).toMatchObject({ type: 'symlink', linkname: 'suid', body: '' });
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

  it('leaves out the root directory entry that `tar -C src -cf x.tar .` writes, and refuses a root that is not a directory', async () => {
    const file = join(dir, 'in.tar');
    await writeTar(file, [
      { name: './', type: 'directory', mode: 0o777 },
      { name: './d/', type: 'directory' },
      { name: './d/f', type: 'file', body: 'f' },
      { name: '././', type: 'directory' },
    ]);
    expect((await readTar(repackTar(file, OWNER))).map((e) => e.name)).toEqual(['d', 'd/f']);
    await writeTar(file, [{ name: '.', type: 'symlink', linkname: 'x' }]);
    await expectRefused(repackTar(file, OWNER), { file, path: '.', message: /outside the workspace/ });
    await writeTar(file, [{ name: '/', type: 'directory' }]);
    await expectRefused(repackTar(file, OWNER), { file, path: '/', message: /outside the workspace/ });
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

describe('packDirectory: links, size, unreadable input', () => {
  let src: string;
  beforeEach(async () => {
    src = join(dir, 'src');
    await mkdir(join(src, 'sub'), { recursive: true });
    await writeFile(join(src, 'sub/f'), 'f');
  });

  it('packs a symlinked directory as a symlink and does not walk into it', async () => {
    await mkdir(join(src, 'real'));
    await writeFile(join(src, 'real/secret'), 'only once');
    await symlink('real', join(src, 'via-link'));
    const entries = await readTar(packDirectory(src, OWNER));
    expect(entries.map((e) => [e.name.replace(/\/$/, ''), e.type])).toEqual([
      ['real', 'directory'],
      ['real/secret', 'file'],
      ['sub', 'directory'],
      ['sub/f', 'file'],
      ['via-link', 'symlink'],
    ]);
    expect(entries.find((e) => e.name === 'via-link')).toMatchObject({ linkname: 'real', body: '' });
  });

  it.each([
    ['at the root', 'l', '../usr/lib/os-release'],
    ['in a subdirectory', 'sub/l', '../../etc/passwd'],
    ['down and then up', 'sub/l', 'x/../../../etc'],
    ['to the parent of the root', 'l', '..'],
  ])('refuses a relative symlink that climbs out of the root, %s', async (_where, name, target) => {
    await symlink(target, join(src, name));
    await expectRefused(packDirectory(src, OWNER), { file: src, path: name, message: /leaves the workspace/ });
  });

  it('refuses an absolute symlink, saying why', async () => {
    await symlink('/etc/passwd', join(src, 'sub/abs'));
    await expectRefused(packDirectory(src, OWNER), { file: src, path: 'sub/abs', message: /absolute.*image's files.*no business/ });
  });

  it('refuses a link that climbs out through another link, also one that comes later in the walk', async () => {
    // `a-up` is walked before `x`: lexically it stays at the root; through x (-> .) it is the root's parent.
    await symlink('x/..', join(src, 'a-up'));
    await symlink('.', join(src, 'x'));
    await expectRefused(packDirectory(src, OWNER), { file: src, path: 'a-up', message: /leaves the workspace/ });
  });

  it('keeps links that stay inside the root', async () => {
    await symlink('..', join(src, 'sub/up'));
    await symlink('../sub/f', join(src, 'sub/self'));
    await symlink('.', join(src, 'here'));
    await symlink('sub/up/sub/f', join(src, 'through-links'));
    await symlink('does-not-exist', join(src, 'dangling'));
    const entries = await readTar(packDirectory(src, OWNER));
    const links = Object.fromEntries(entries.filter((e) => e.type === 'symlink').map((e) => [e.name, e.linkname]));
    expect(links).toEqual({ dangling: 'does-not-exist', here: '.', 'sub/self': '../sub/f', 'sub/up': '..', 'through-links': 'sub/up/sub/f' });
  });

  it('caps the total size of the files', async () => {
    await writeFile(join(src, 'a'), '12345'); // with sub/f: 6 bytes
    expect((await readTar(packDirectory(src, OWNER, { maxBytes: 6 }))).map((e) => e.name)).toEqual(['a', 'sub', 'sub/f']);
    await expectRefused(packDirectory(src, OWNER, { maxBytes: 5 }), { file: src, path: 'sub/f', message: /^source is larger than the workspace \(5 bytes\)$/ });
  });

  it('does not send any of the file that goes over the cap', async () => {
    await writeFile(join(src, 'big'), 'BIGDATA'.repeat(1000));
    const chunks: Buffer[] = [];
    const e = await (async () => {
      for await (const c of packDirectory(src, OWNER, { maxBytes: 100 })) chunks.push(c as Buffer);
    })().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(InvalidInputError);
    expect((e as InvalidInputError).issues[0]).toMatchObject({ path: 'big' });
    expect(Buffer.concat(chunks).includes('BIGDATA')).toBe(false);
  });

  it('streams a file larger than the buffers, intact', async () => {
    const body = Buffer.alloc(300 * 1024 + 7, 'abcdefghij').toString();
    await writeFile(join(src, 'big'), body);
    const entries = await readTar(packDirectory(src, OWNER));
    expect(entries.find((e) => e.name === 'big')?.body).toBe(body);
  });

  // Tests run as root, where chmod 000 does not stop a read; a directory that goes away between
  // being listed and being walked is unreadable the same way, and that can be staged exactly.
  it('fails with the name of a directory that disappears while the source is packed', async () => {
    await writeFile(join(src, 'a-big'), Buffer.alloc(1024 * 1024)); // the walk waits in here for the reader
    const it = packDirectory(src, OWNER)[Symbol.asyncIterator]();
    await it.next(); // the root has been listed: a-big's header is out
    await rm(join(src, 'sub'), { recursive: true });
    const e = await (async () => {
      for (;;) if ((await it.next()).done) return undefined;
    })().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(InvalidInputError);
    expect((e as InvalidInputError).issues[0]).toMatchObject({ file: src, path: 'sub', message: expect.stringMatching(/cannot read: .*ENOENT/) });
  });

  it('fails, naming the root, for a root that is a file', async () => {
    await expectRefused(packDirectory(join(src, 'sub/f'), OWNER), { file: join(src, 'sub/f'), path: '', message: /ENOTDIR/ });
  });

  it('closes the file it was reading when the reader goes away', async () => {
    const big = join(src, 'a-big');
    await writeFile(big, Buffer.alloc(1024 * 1024));
    const stream = packDirectory(src, OWNER);
    for await (const _ of stream) break; // destroys the stream
    await new Promise((r) => setTimeout(r, 50));
    expect(await openFds(big)).toBe(0);
  });

  it('gives a piping consumer the InvalidInputError', async () => {
    await symlink('/etc', join(src, 'etc'));
    const sink = new Writable({ write: (_c, _e, cb) => cb() });
    await expect(pipeline(packDirectory(src, OWNER), sink)).rejects.toBeInstanceOf(InvalidInputError);
  });
});

describe('repackTar: links and size', () => {
  const refused = async (entries: Parameters<typeof writeTar>[1], issue: { path: string; message: RegExp }, opts?: { maxBytes?: number }) => {
    const file = join(dir, 'in.tar');
    await writeTar(file, entries);
    await expectRefused(repackTar(file, OWNER, opts), { file, ...issue });
  };

  it('refuses an entry written through an earlier symlink (the review case: x -> /etc, then x/…)', async () => {
    await refused(
      [
        { name: 'x', type: 'symlink', linkname: '/etc' },
        { name: 'x/airlock-written-through-link', type: 'file', body: 'pwned' },
      ],
      { path: 'x', message: /absolute/ },
    );
  });

  it.each([
    ['a file', [{ name: 'x/f', type: 'file', body: 'through' }]],
    ['a directory', [{ name: 'x/d/', type: 'directory' }]],
    ['a file deeper down', [{ name: 'x/d/e/f', type: 'file', body: 'through' }]],
    ['a symlink', [{ name: 'x/l', type: 'symlink', linkname: 'f' }]],
    ['a hardlink (dropped anyway)', [{ name: 'x/h', type: 'link', linkname: 'sub/f' }]],
    ['an entry after the link was re-used as a directory', [{ name: 'x/', type: 'directory' }, { name: 'x/f', type: 'file', body: 'through' }]],
  ] as const)('refuses %s under a symlink that stays inside the root', async (_what, later) => {
    const under = later.at(-1)!.name.replace(/\/$/, '');
    await refused(
      [{ name: 'sub/', type: 'directory' }, { name: 'sub/f', type: 'file', body: 'f' }, { name: 'x', type: 'symlink', linkname: 'sub' }, ...later],
      { path: under, message: /written through the symlink "x"/ },
    );
  });

  it('refuses an entry under a nested symlink', async () => {
    await refused(
      [
        { name: 'a/', type: 'directory' },
        { name: 'a/b', type: 'symlink', linkname: '..' },
        { name: 'a/b/c/d', type: 'file', body: 'through' },
      ],
      { path: 'a/b/c/d', message: /written through the symlink "a\/b"/ },
    );
  });

  it.each([
    ['l', '../usr/lib/os-release'],
    ['a/l', '../../x'],
    ['a/b/l', 'c/../../../../x'],
    ['l', '..'],
  ])('refuses %j -> %j, which climbs out of the root', async (name, linkname) => {
    await refused([{ name, type: 'symlink', linkname }], { path: name, message: /leaves the workspace/ });
  });

  it('refuses an absolute symlink', async () => {
    await refused([{ name: 'src/passwd', type: 'symlink', linkname: '/etc/passwd' }], { path: 'src/passwd', message: /absolute.*image's files/ });
  });

  it.each([
    ['through a link earlier in the tar', [
      { name: 'x', type: 'symlink', linkname: '.' },
      { name: 's', type: 'symlink', linkname: 'x/..' },
    ]],
    ['through a link later in the tar', [
      { name: 's', type: 'symlink', linkname: 'x/..' },
      { name: 'x', type: 'symlink', linkname: '.' },
    ]],
    ['through a nested link', [
      { name: 'a/b', type: 'symlink', linkname: '..' },
      { name: 's', type: 'symlink', linkname: 'a/b/..' },
    ]],
  ] as const)('refuses a link that climbs out %s', async (_how, entries) => {
    await refused([...entries], { path: 's', message: /leaves the workspace/ });
  });

  it('keeps links that stay inside the root, dangling and looping ones included', async () => {
    const file = join(dir, 'in.tar');
    await writeTar(file, [
      { name: 'lib/libx.so.1', type: 'file', body: 'elf' },
      { name: 'lib/libx.so', type: 'symlink', linkname: 'libx.so.1' },
      { name: 'lib/up', type: 'symlink', linkname: '..' },
      { name: 'current', type: 'symlink', linkname: './lib/../lib' },
      { name: 'via', type: 'symlink', linkname: 'lib/up/lib/libx.so' },
      { name: 'here', type: 'symlink', linkname: '.' },
      { name: 'dangling', type: 'symlink', linkname: 'nope/nothing' },
      { name: 'loop1', type: 'symlink', linkname: 'loop2' },
      { name: 'loop2', type: 'symlink', linkname: 'loop1/..' },
    ]);
    const entries = await readTar(repackTar(file, OWNER));
    expect(entries.map((e) => [e.name, e.type, e.linkname ?? e.body])).toEqual([
      ['lib/libx.so.1', 'file', 'elf'],
      ['lib/libx.so', 'symlink', 'libx.so.1'],
      ['lib/up', 'symlink', '..'],
      ['current', 'symlink', './lib/../lib'],
      ['via', 'symlink', 'lib/up/lib/libx.so'],
      ['here', 'symlink', '.'],
      ['dangling', 'symlink', 'nope/nothing'],
      ['loop1', 'symlink', 'loop2'],
      ['loop2', 'symlink', 'loop1/..'],
    ]);
  });

  it('caps the total size of the files, from the headers, before sending the one that goes over', async () => {
    const file = join(dir, 'in.tar');
    await writeTar(file, [
      { name: 'small', type: 'file', body: 'x'.repeat(100) },
      { name: 'dir/', type: 'directory' },
      { name: 'dir/big', type: 'file', body: 'BIGDATA'.repeat(1000) },
    ]);
    expect((await readTar(repackTar(file, OWNER, { maxBytes: 7100 }))).map((e) => e.name)).toEqual(['small', 'dir', 'dir/big']);
    await expectRefused(repackTar(file, OWNER, { maxBytes: 7099 }), { file, path: 'dir/big', message: /^source is larger than the workspace \(7099 bytes\)$/ });

    const chunks: Buffer[] = [];
    const e = await (async () => {
      for await (const c of repackTar(file, OWNER, { maxBytes: 7099 })) chunks.push(c as Buffer);
    })().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(Buffer.concat(chunks).includes('BIGDATA')).toBe(false);
  });

  it('gives a piping consumer the InvalidInputError', async () => {
    const file = join(dir, 'in.tar');
    await writeTar(file, [
      { name: 'x', type: 'symlink', linkname: 'sub' },
      { name: 'x/f', type: 'file', body: 'through' },
    ]);
    const sink = new Writable({ write: (_c, _e, cb) => cb() });
    await expect(pipeline(repackTar(file, OWNER), sink)).rejects.toBeInstanceOf(InvalidInputError);
  });

  it('closes the tar file when the reader goes away, and when it refuses the tar', async () => {
    const file = join(dir, 'in.tar');
    await writeTar(file, [{ name: 'big', type: 'file', body: 'x'.repeat(2 * 1024 * 1024) }]);
    for await (const _ of repackTar(file, OWNER)) break;
    await new Promise((r) => setTimeout(r, 50));
    expect(await openFds(file)).toBe(0);

    await writeTar(file, [
      { name: 'x', type: 'symlink', linkname: '..' },
      { name: 'big', type: 'file', body: 'x'.repeat(2 * 1024 * 1024) },
    ]);
    await expect(failure(repackTar(file, OWNER))).resolves.toBeInstanceOf(InvalidInputError);
    await new Promise((r) => setTimeout(r, 50));
    expect(await openFds(file)).toBe(0);
  });
});
