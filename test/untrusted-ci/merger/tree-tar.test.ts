/**
 * The source tar written from the object reader (tree-tar.ts) against `git archive --format=tar`
 * of the same commit, as a tar reader sees both: every entry's name, kind, mode, owner, time, link
 * target and bytes, in order. Trees with every kind of entry, names and link targets past ustar's
 * fields, a blob too big to read whole, a subtree named twice; then the caps and what is left to git.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { extract } from 'tar-stream';
import { afterAll, describe, expect, it } from 'vitest';
import { Mirror } from '../../../untrusted-ci/merger/mirror.js';
import { NeedsGitArchive, writeTreeTar } from '../../../untrusted-ci/merger/tree-tar.js';
import { createRepo, type FileContent } from '../../support/git-repo.js';

const dir = mkdtempSync(join(tmpdir(), 'airlock-tree-tar-'));
const up = createRepo({ 'README.md': 'hello\n' });
afterAll(() => {
  up.dispose();
  rmSync(dir, { recursive: true, force: true });
});
const mirror = new Mirror(up.dir, 'tree-tar-test');
const BIG = { maxBytes: 2 ** 40, maxEntries: 1_000_000 };
let n = 0;

/** What a tar reader sees in a tar stream, entry by entry. */
async function entries(s: Readable): Promise<string[]> {
  const out: string[] = [];
  const x = extract();
  s.pipe(x);
  for await (const e of x) {
    const h = e.header;
    const hash = createHash('sha256');
    for await (const c of e) hash.update(c as Buffer);
    out.push(JSON.stringify([h.name, h.type, (h.mode ?? 0).toString(8), h.uid, h.gid, h.uname, h.gname, h.mtime?.getTime(), h.linkname ?? null, h.size, hash.digest('hex').slice(0, 16)]));
  }
  return out;
}

async function ours(commit: string, cap = BIG): Promise<string[]> {
  const file = join(dir, `t${++n}.tar`);
  const fh = await open(file, 'w');
  try {
    await writeTreeTar(mirror, commit, fh, cap);
  } finally {
    await fh.close();
  }
  return entries(createReadStream(file));
}

function gitArchive(commit: string): Promise<string[]> {
  const file = join(dir, `g${++n}.tar`);
  execFileSync('git', ['archive', '--format=tar', '-o', file, commit], { env: { PATH: process.env.PATH, GIT_DIR: up.dir, GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' } });
  return entries(createReadStream(file));
}

describe('writeTreeTar', () => {
  it('is what git archive makes of the same commit, entry for entry', async () => {
    const long = (c: string, k: number) => c.repeat(k);
    const files: Record<string, FileContent> = {
      'a.txt': 'a\n', 'empty': '', 'bin/run': { mode: '100755', content: '#!/bin/sh\necho hi\n' },
      'link': { symlink: 'a.txt' }, 'dir/deeper/link': { symlink: '../../a.txt' },
      [`far/${long('t', 120)}`]: { symlink: `${long('../', 40)}target` },
      'vendor/mod': { submodule: 'c'.repeat(40) }, 'ünïcode/名前.txt': 'unicode\n',
      [long('n', 100)]: 'exactly 100\n', [long('m', 101)]: 'one over\n',
      [`${long('p', 90)}/${long('q', 90)}/${long('r', 90)}`]: 'split into prefix and name\n',
      [`${long('s', 60)}/${long('u', 150)}`]: 'a name no split fits\n',
      'bytes.bin': Buffer.from([0, 1, 2, 255, 10, 13, 0]),
      'huge.bin': Buffer.alloc(9 * 1024 * 1024, 7), // over INLINE_MAX: streamed
      'twice/one/x.txt': 'same\n', 'twice/two/x.txt': 'same\n',
    };
    const commit = up.commit(files);
    const expected = await gitArchive(commit);
    expect(expected.length).toBeGreaterThan(20);
    expect(await ours(commit)).toEqual(expected);
  });

  it('stops at the entry cap before reading blobs, and at the byte cap before the blob that passes it', async () => {
    // Headers count, pax headers too (as capArchive counts git archive's): none here.
    const other = createRepo({ 'c1.txt': 'x'.repeat(5000), 'c2.txt': 'y'.repeat(5000) });
    const m = new Mirror(other.dir, 'tree-tar-caps');
    const tar = async (cap: typeof BIG) => {
      const fh = await open(join(dir, `c${++n}.tar`), 'w');
      try {
        await writeTreeTar(m, other.tip(), fh, cap);
      } finally {
        await fh.close();
      }
    };
    try {
      await expect(tar({ maxBytes: 2 ** 40, maxEntries: 1 })).rejects.toThrow(/more than 1 entries/);
      await expect(tar({ maxBytes: 4096, maxEntries: 1_000_000 })).rejects.toThrow(/larger than 4096 bytes/);
      await expect(tar({ maxBytes: 2 ** 40, maxEntries: 2 })).resolves.toBeUndefined();
    } finally {
      m.objects.close();
      other.dispose();
    }
  });

  it('leaves to git archive a commit it cannot read as one', async () => {
    await expect(ours(up.git('rev-parse', 'HEAD^{tree}'))).rejects.toThrow(NeedsGitArchive);
    await expect(ours('0'.repeat(40))).rejects.toThrow(NeedsGitArchive);
  });
});
