/**
 * Artifact extraction against hostile archives built in the test. Every case gets a fresh
 * directory holding `dest` and a `sentinel` directory next to it that must stay empty.
 */
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, realpath, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ArtifactRejectedError, ArtifactTooLargeError } from '#shared/errors.js';
import { extractArtifacts, globBase, toWorkspacePath, type ExtractOptions } from '#shared/runner/artifacts.js';

type Entry = Partial<tar.Header> & { name: string; body?: string };

/** A tar stream of `entries`, as the engine's archive API would send it. */
function archive(entries: Entry[]): Readable {
  const pack = tar.pack();
  for (const { body, ...header } of entries) {
    if (body !== undefined) pack.entry({ type: 'file', mode: 0o644, ...header }, body);
    else pack.entry(header);
  }
  pack.finalize();
  return Readable.from(pack, { objectMode: false });
}

const file = (name: string, body: string): Entry => ({ name, body });
const dir = (name: string): Entry => ({ name, type: 'directory', mode: 0o755 });
const symlink = (name: string, linkname: string): Entry => ({ name, type: 'symlink', linkname });
const hardlink = (name: string, linkname: string): Entry => ({ name, type: 'link', linkname });

let root: string;
let dest: string;
let sentinel: string;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'airlock-artifacts-'));
  dest = join(root, 'dest');
  sentinel = join(root, 'sentinel');
  await mkdir(sentinel);
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const WHOLE: Omit<ExtractOptions, 'globs'> = { archivedDir: '', maxBytes: 1024 * 1024, maxFiles: 100 };
const extract = (entries: Entry[], globs: string[], opts: Partial<ExtractOptions> = {}) =>
  extractArtifacts(archive(entries), dest, { ...WHOLE, globs, ...opts });

/** The whole tree under `dir`, as sorted relative paths (directories end in /). */
async function tree(at: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(at, rel), { withFileTypes: true })) {
      const name = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        out.push(`${name}/`);
        await walk(name);
      } else out.push(name);
    }
  };
  await walk('');
  return out.sort();
}

/** Nothing escaped, nothing was left behind: only `dest` (empty) and `sentinel` (empty) in root. */
async function expectNothingWritten(): Promise<void> {
  expect((await readdir(root)).sort()).toEqual(['dest', 'sentinel']);
  expect(await readdir(sentinel)).toEqual([]);
  expect(await readdir(dest)).toEqual([]);
}

async function expectRejected(p: Promise<unknown>, message?: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ArtifactRejectedError);
  expect((e as ArtifactRejectedError).code).toBe('AIRLOCK_E_ARTIFACT_REJECTED');
  if (message) expect((e as Error).message).toMatch(message);
}

async function expectTooLarge(p: Promise<unknown>): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ArtifactTooLargeError);
  expect((e as ArtifactTooLargeError).code).toBe('AIRLOCK_E_ARTIFACT_TOO_LARGE');
}

describe('globBase', () => {
  it.each([
    ['out/**', 'out'],
    ['dist/js/*.js', 'dist/js'],
    ['out/report.xml', 'out/report.xml'],
    ['**/*.xml', ''],
    ['*.log', ''],
    ['a/b/{c,d}/*.txt', 'a/b'],
    ['build/[ab]*/x', 'build'],
  ])('%s → %j', (glob, base) => {
    expect(globBase(glob)).toBe(base);
  });
});

describe('toWorkspacePath', () => {
  it.each([
    ['workspace/out/a.txt', '', 'out/a.txt'],
    ['workspace/a.txt', '', 'a.txt'],
    ['workspace', '', ''],
    ['workspace/', '', ''],
    ['./workspace//out/./a.txt', '', 'out/a.txt'],
    ['out/a.txt', 'out', 'out/a.txt'],
    ['out', 'out', 'out'],
    ['js/app.js', 'dist/js', 'dist/js/app.js'],
  ])('%j under %j → %j', (name, archivedDir, path) => {
    expect(toWorkspacePath(name, archivedDir)).toBe(path);
  });

  it.each(['workspace/../../etc/passwd', '/etc/passwd', '../x', 'workspace/a/../../..', 'a\0b', '', '.'])('%j is unsafe', (name) => {
    expect(toWorkspacePath(name, '')).toBeUndefined();
  });
});

describe('extractArtifacts', () => {
  it('extracts the files that match, with their content, and skips the rest', async () => {
    const written = await extract(
      [
        dir('workspace/'),
        dir('workspace/out/'),
        file('workspace/out/a.txt', 'alpha'),
        file('workspace/out/sub/b.txt', 'beta'),
        file('workspace/out/.hidden', 'dot'),
        file('workspace/src/main.c', 'int main;'),
        file('workspace/README', 'readme'),
      ],
      ['out/**'],
    );
    expect(written.sort((a, b) => a.path.localeCompare(b.path))).toEqual([
      { path: 'out/.hidden', bytes: 3, kind: 'file' },
      { path: 'out/a.txt', bytes: 5, kind: 'file' },
      { path: 'out/sub/b.txt', bytes: 4, kind: 'file' },
    ]);
    expect(await tree(dest)).toEqual(['out/', 'out/.hidden', 'out/a.txt', 'out/sub/', 'out/sub/b.txt']);
    expect(await readFile(join(dest, 'out/a.txt'), 'utf8')).toBe('alpha');
    expect(await readFile(join(dest, 'out/sub/b.txt'), 'utf8')).toBe('beta');
    expect(await readdir(sentinel)).toEqual([]);
  });

  it("maps entries of an archived subdirectory ('out') back to workspace paths", async () => {
    const written = await extract([dir('out/'), file('out/a.txt', 'A'), file('out/deep/c.txt', 'C'), file('out/a.log', 'L')], ['out/*.txt'], {
      archivedDir: 'out',
    });
    expect(written).toEqual([{ path: 'out/a.txt', bytes: 1, kind: 'file' }]);
    expect(await tree(dest)).toEqual(['out/', 'out/a.txt']);
  });

  it('extracts a large file intact', async () => {
    const body = 'x'.repeat(300_000) + 'END';
    await extract([file('workspace/out/big.bin', body)], ['out/**']);
    expect(await readFile(join(dest, 'out/big.bin'), 'utf8')).toBe(body);
  });

  it('writes nothing when no entry matches', async () => {
    expect(await extract([file('workspace/src/a.c', 'x')], ['out/**'])).toEqual([]);
    await expectNothingWritten();
  });

  it.each([
    ['a climbing name', 'workspace/../../etc/passwd'],
    ['a climbing name into the sentinel', 'workspace/../../sentinel/pwned'],
    ['an absolute name', '/etc/passwd'],
    ['an absolute name into the sentinel', '/sentinel/pwned'],
    ['a name that climbs after descending', 'workspace/out/../../../sentinel/pwned'],
  ])('rejects %s, even when it matches no glob, and leaves nothing behind', async (_what, name) => {
    await expectRejected(extract([file('workspace/out/ok.txt', 'ok'), file(name, 'root::0:0::/:/bin/sh')], ['**']), /outside the artifact root/);
    await expectNothingWritten();
    await expect(stat(join(root, 'etc'))).rejects.toThrow();
  });

  it.each([
    ['an absolute target', 'workspace/out/passwd', '/etc/passwd'],
    ['a target above the root', 'workspace/out/x', '../../x'],
    ['a top-level link to the parent', 'workspace/up', '..'],
    ['a link to the sentinel', 'workspace/out/s', '../../sentinel'],
  ])('rejects a symlink with %s', async (_what, name, linkname) => {
    await expectRejected(extract([file('workspace/out/ok.txt', 'ok'), symlink(name, linkname)], ['**']), /symlink/);
    await expectNothingWritten();
  });

  it('keeps a symlink whose target stays inside the root', async () => {
    const written = await extract(
      [file('workspace/out/lib/libx.so.1', 'elf'), symlink('workspace/out/lib/libx.so', 'libx.so.1'), symlink('workspace/out/current', '../out/lib')],
      ['out/**'],
    );
    expect(written.filter((w) => w.kind === 'symlink').map((w) => w.path).sort()).toEqual(['out/current', 'out/lib/libx.so']);
    expect((await lstat(join(dest, 'out/lib/libx.so'))).isSymbolicLink()).toBe(true);
    expect(await readlink(join(dest, 'out/lib/libx.so'))).toBe('libx.so.1');
    expect(await readFile(join(dest, 'out/lib/libx.so'), 'utf8')).toBe('elf');
    expect(await realpath(join(dest, 'out/current'))).toBe(join(await realpath(dest), 'out/lib'));
  });

  it('does not write through a symlink: out/evil -> .. then out/evil/x', async () => {
    const p = extract([symlink('out/evil', '..'), file('out/evil/x', 'through the link'), file('out/evil/sentinel/y', 'deeper')], ['out/**'], {
      archivedDir: 'out',
    });
    await expectRejected(p);
    await expectNothingWritten();
  });

  it('does not keep a chain of symlinks that climbs out of the root step by step', async () => {
    // Each link looks harmless on its own ("x/.." cancels out), but x is itself a link to ".",
    // so out/s really points at the parent of dest, and out/s2 above that.
    const p = extract([symlink('out/x', '.'), symlink('out/s', 'x/../..'), symlink('out/s2', 's/..')], ['out/**'], { archivedDir: 'out' });
    await expectRejected(p, /symlink/);
    await expectNothingWritten();
  });

  it('does not create directories outside dest through a chain of symlinks', async () => {
    const p = extract(
      [symlink('out/x', '.'), symlink('out/s', 'x/../..'), symlink('out/s2', 's/..'), file('out/s2/sentinel/pwned/x', 'hi')],
      ['out/**'],
      { archivedDir: 'out' },
    );
    await expectRejected(p);
    await expectNothingWritten();
  });

  it('does not write through a symlink made by an earlier archive into the same dest', async () => {
    await extract([symlink('out/up', '..')], ['out/**'], { archivedDir: 'out' });
    expect(await readlink(join(dest, 'out/up'))).toBe('..');
    await expectRejected(extract([file('workspace/out/up/x', 'x')], ['out/**']));
    expect(await tree(dest)).toEqual(['out/', 'out/up']);
    expect(await readdir(sentinel)).toEqual([]);
  });

  it('keeps a hardlink to a file extracted before it', async () => {
    const written = await extract([file('workspace/out/a.txt', 'same'), hardlink('workspace/out/b.txt', 'workspace/out/a.txt')], ['out/**']);
    expect(written.map((w) => [w.path, w.kind])).toEqual([
      ['out/a.txt', 'file'],
      ['out/b.txt', 'hardlink'],
    ]);
    const [a, b] = await Promise.all([stat(join(dest, 'out/a.txt')), stat(join(dest, 'out/b.txt'))]);
    expect(b.ino).toBe(a.ino);
  });

  it.each([
    ['a file that was not extracted', 'workspace/src/secret.key'],
    ['a file outside the root', '../../etc/passwd'],
    ['an absolute path', '/etc/shadow'],
    ['a file that comes later', 'workspace/out/later.txt'],
  ])('rejects a hardlink to %s', async (_what, linkname) => {
    const p = extract(
      [file('workspace/src/secret.key', 'k'), hardlink('workspace/out/h', linkname), file('workspace/out/later.txt', 'l')],
      ['out/**'],
    );
    await expectRejected(p, /hardlink/);
    await expectNothingWritten();
  });

  it.each([
    ['character-device', { devmajor: 1, devminor: 3 }],
    ['block-device', { devmajor: 8, devminor: 0 }],
    ['fifo', {}],
  ] as const)('rejects a %s entry', async (type, dev) => {
    const p = extract([file('workspace/out/ok.txt', 'ok'), { name: 'workspace/out/node', type, mode: 0o666, ...dev }], ['out/**']);
    await expectRejected(p, new RegExp(type));
    await expectNothingWritten();
  });

  it('ignores a device entry no glob asks for', async () => {
    const written = await extract([{ name: 'workspace/dev/null', type: 'character-device', devmajor: 1, devminor: 3 }, file('workspace/out/a', 'a')], [
      'out/**',
    ]);
    expect(written.map((w) => w.path)).toEqual(['out/a']);
  });

  it('takes exactly maxBytes and refuses one byte more', async () => {
    const entries = [file('workspace/out/a', '12345'), file('workspace/out/b', '67890')];
    expect(await extract(entries, ['out/**'], { maxBytes: 10 })).toHaveLength(2);
    await rm(dest, { recursive: true });
    await expectTooLarge(extract(entries, ['out/**'], { maxBytes: 9 }));
    await expectNothingWritten();
  });

  it('counts only matching files against maxBytes', async () => {
    const written = await extract([file('workspace/src/huge', 'x'.repeat(1000)), file('workspace/out/a', 'a')], ['out/**'], { maxBytes: 10 });
    expect(written.map((w) => w.path)).toEqual(['out/a']);
  });

  it('takes exactly maxFiles and refuses one more (links count)', async () => {
    const entries = [file('workspace/out/a', 'a'), file('workspace/out/b', 'b'), symlink('workspace/out/c', 'a')];
    expect(await extract(entries, ['out/**'], { maxFiles: 3 })).toHaveLength(3);
    await rm(dest, { recursive: true });
    await expectTooLarge(extract(entries, ['out/**'], { maxFiles: 2 }));
    await expectNothingWritten();
  });

  it('with maxFiles 0 refuses any matching file', async () => {
    await expectTooLarge(extract([file('workspace/out/a', 'a')], ['out/**'], { maxFiles: 0 }));
    await expectNothingWritten();
  });

  it('merges archives of two globs that share a top directory into one dest', async () => {
    const globs = ['dist/js/**', 'dist/css/**'];
    await extract([file('js/app.js', 'js')], globs, { archivedDir: 'dist/js' });
    await extract([file('css/app.css', 'css')], globs, { archivedDir: 'dist/css' });
    expect(await tree(dest)).toEqual(['dist/', 'dist/css/', 'dist/css/app.css', 'dist/js/', 'dist/js/app.js']);
  });

  it('refuses to overwrite an artifact that is already in dest', async () => {
    await extract([file('workspace/report.xml', 'first')], ['*.xml']);
    await expectRejected(extract([file('workspace/report.xml', 'second')], ['*.xml']), /exists/);
    expect(await readFile(join(dest, 'report.xml'), 'utf8')).toBe('first');
    expect(await tree(dest)).toEqual(['report.xml']);
  });

  it('rejects a broken archive without leaving anything behind', async () => {
    const bytes = Buffer.concat(await archive([file('workspace/out/a.txt', 'x'.repeat(2000))]).toArray());
    const p = extractArtifacts(Readable.from([bytes.subarray(0, 1100)]), dest, { ...WHOLE, globs: ['out/**'] });
    await expect(p).rejects.toThrow();
    await expectNothingWritten();
  });

  it('rejects an archive that is gone before extraction reads it (a request body whose sender went away), and does not hang', async () => {
    const body = new PassThrough();
    const p = extractArtifacts(body, dest, { ...WHOLE, globs: ['**'] });
    body.destroy();
    await expect(p).rejects.toThrow();
    await expectNothingWritten();
  }, 10_000);
});
