/**
 * The tar of a commit's tree, written from the mirror's object reader (cat-file.ts) instead of a
 * `git archive` process: starting one blocked the service's event loop for milliseconds on every
 * build (bench:ci's profile). The archive is what `git archive --format=tar` makes of the same
 * commit, entry for entry, as a tar reader sees it:
 *   - entries in git's order: each directory (`name/`) before what is in it, in tree order;
 *   - a directory or a submodule: a directory entry, mode 0775 (a submodule's is empty);
 *   - a file: mode 0664, or 0775 when executable; a symlink: mode 0777, its blob as its target;
 *   - owner root/root (0/0), every entry's time the commit's committer date;
 *   - a name over 100 bytes split at a `/` into the ustar prefix and name where that fits, else
 *     carried in a pax header (`path`), as is a link target over 100 bytes (`linkpath`);
 *   - no attributes apply (the mirror turns export-ignore and export-subst off for `git archive`).
 * The git archive's global pax header (the commit id as a comment) is left out: no reader here
 * looks at it.
 *
 * The caps are checked before anything is read that would pass them: the entries once the trees
 * are read, the bytes from each blob's size before its bytes are read. Blobs are read a window at
 * a time; a blob over INLINE_MAX streams through its own `git cat-file blob`. What the reader
 * cannot do (a tree too big to read whole, an object that does not parse or is missing, a commit
 * without a well-formed committer date) throws NeedsGitArchive, and the caller runs `git archive`.
 */
import type { FileHandle } from 'node:fs/promises';
import { streamGit } from '#shared/git/git.js';
import type { Mirror } from './mirror.js';
import { parseTreeObject, readCommit, TREE_READ_MAX, type RawTreeEntry } from './tree-reader.js';

/** The object reader cannot make this archive: `git archive` must. */
export class NeedsGitArchive extends Error {}

/** Blobs up to this size are read through the object reader; bigger ones stream from a process of their own. */
const INLINE_MAX = 8 * 1024 * 1024;
/** Directories nested deeper than this are left to git archive. */
const MAX_DEPTH = 1000;
/** Blob reads in flight at once. */
const WINDOW = 32;
/** Bytes gathered before a write to the file. */
const FLUSH_AT = 1024 * 1024;
const BLOCK = 512;
/** The ustar size field holds 11 octal digits. */
const USTAR_SIZE_MAX = 0o77777777777;

interface Entry {
  /** Path bytes, `/`-separated, a directory's with its trailing `/`. */
  path: Buffer;
  kind: 'dir' | 'file' | 'exec' | 'link';
  oid: string;
}

export interface TreeTarCap {
  maxBytes: number;
  maxEntries: number;
}

/** Why the archive would pass a cap (the caller words it as capArchive does). */
export class TreeTarOverCap extends Error {}

/**
 * Writes the tar of `commit`'s tree to `file` (an open, empty file). Throws TreeTarOverCap past a
 * cap, NeedsGitArchive where git must do it, GitFailedError when the reader fails.
 */
export async function writeTreeTar(mirror: Mirror, commit: string, file: FileHandle, cap: TreeTarCap, signal?: AbortSignal): Promise<void> {
  const c = await readCommit(mirror, commit, signal);
  if (!c || c.committerTime === undefined) throw new NeedsGitArchive('the commit cannot be read whole');
  const entries = await listTree(mirror, c.tree, cap.maxEntries, signal);
  const out = new TarOut(file, cap, c.committerTime);
  const pending: Promise<{ size: number; data?: Buffer } | undefined>[] = [];
  const read = (e: Entry): Promise<{ size: number; data?: Buffer } | undefined> => {
    const p = e.kind === 'dir' ? Promise.resolve(undefined) : mirror.objects.contents(e.oid, INLINE_MAX, signal).then((r) => r && { size: r.info.size, ...(r.data ? { data: r.data } : {}) });
    p.catch(() => undefined); // awaited in order below; one left behind by a throw must not be unhandled
    return p;
  };
  for (let i = 0; i < Math.min(WINDOW, entries.length); i++) pending.push(read(entries[i]!));
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    const blob = await pending[i]!;
    delete pending[i];
    if (i + WINDOW < entries.length) pending[i + WINDOW] = read(entries[i + WINDOW]!);
    if (e.kind === 'dir') {
      out.header(e.path, '5', 0o775, 0, '');
      continue;
    }
    if (!blob) throw new NeedsGitArchive(`object ${e.oid} is not in the mirror`);
    if (e.kind === 'link') {
      if (!blob.data) throw new NeedsGitArchive('a symlink target too big to read');
      out.header(e.path, '2', 0o777, 0, blob.data.toString('utf8'));
      continue;
    }
    out.header(e.path, '0', e.kind === 'exec' ? 0o775 : 0o664, blob.size, '');
    if (blob.data) out.data(blob.data);
    else await out.stream(streamGit(['cat-file', 'blob', e.oid], { gitDir: mirror.dir, timeoutMs: 600_000, ...(signal ? { signal } : {}) }), blob.size);
    out.pad(blob.size);
  }
  out.end();
  await out.flush();
}

/** Every entry under `tree`, in git archive's order; over `maxEntries`: TreeTarOverCap. */
async function listTree(mirror: Mirror, tree: string, maxEntries: number, signal?: AbortSignal): Promise<Entry[]> {
  const oidBytes = tree.length / 2;
  // Trees are read a level at a time, every tree of a level at once (up to WINDOW), then put in order.
  const children = new Map<string, RawTreeEntry[]>();
  let level = [tree];
  let count = 0;
  let depth = 0;
  while (level.length > 0) {
    if (++depth > MAX_DEPTH) throw new NeedsGitArchive('a tree nested deeper than this reader goes');
    const next: string[] = [];
    for (let i = 0; i < level.length; i += WINDOW) {
      const batch = level.slice(i, i + WINDOW).filter((t) => !children.has(t));
      const read = await Promise.all(batch.map((t) => mirror.objects.contents(t, TREE_READ_MAX, signal)));
      read.forEach((r, j) => {
        if (!r?.data || r.info.type !== 'tree') throw new NeedsGitArchive('a tree cannot be read whole');
        const list = parseTreeObject(r.data, oidBytes);
        if (!list) throw new NeedsGitArchive('a tree that does not parse');
        count += list.length;
        if (count > maxEntries) throw new TreeTarOverCap(`its archive has more than ${maxEntries} entries`);
        children.set(batch[j]!, list);
        for (const e of list) if (e.mode === '40000' && !children.has(e.oid)) next.push(e.oid);
      });
    }
    level = [...new Set(next)];
  }
  // Depth first, each directory's entry before its contents, without recursion (a hostile tree may
  // nest deep) and counted as expanded (one tree named many times counts each time).
  const out: Entry[] = [];
  const stack: { list: RawTreeEntry[]; at: number; prefix: Buffer }[] = [{ list: children.get(tree) ?? [], at: 0, prefix: Buffer.alloc(0) }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    const e = top.list[top.at++];
    if (!e) {
      stack.pop();
      continue;
    }
    if (out.length >= maxEntries) throw new TreeTarOverCap(`its archive has more than ${maxEntries} entries`);
    const path = top.prefix.length > 0 ? Buffer.concat([top.prefix, Buffer.from('/'), e.name]) : e.name;
    if (e.mode === '40000' || e.mode === '160000') {
      out.push({ path: Buffer.concat([path, Buffer.from('/')]), kind: 'dir', oid: e.oid });
      if (e.mode === '40000') {
        if (stack.length > MAX_DEPTH) throw new NeedsGitArchive('a tree nested deeper than this reader goes');
        stack.push({ list: children.get(e.oid) ?? [], at: 0, prefix: path });
      }
    } else if (e.mode === '120000') out.push({ path, kind: 'link', oid: e.oid });
    else if (e.mode === '100755') out.push({ path, kind: 'exec', oid: e.oid });
    else if (e.mode === '100644' || e.mode === '100664') out.push({ path, kind: 'file', oid: e.oid });
    else throw new NeedsGitArchive(`a tree entry of mode ${e.mode}`);
  }
  return out;
}

/** The tar being written: headers and data gathered into large writes, the caps counted as it grows. */
class TarOut {
  private chunks: Buffer[] = [];
  private gathered = 0;
  private bytes = 0;
  private entries = 0;
  private writing: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly file: FileHandle,
    private readonly cap: TreeTarCap,
    private readonly mtime: number,
  ) {}

  /** One entry's header (and a pax header before it for a name or target too long for ustar's fields). */
  header(path: Buffer, type: '0' | '2' | '5', mode: number, size: number, linkname: string): void {
    if (size > USTAR_SIZE_MAX) throw new TreeTarOverCap(`its archive is larger than ${this.cap.maxBytes} bytes`);
    const link = Buffer.from(linkname, 'utf8');
    let name = path;
    let prefix: Buffer = Buffer.alloc(0);
    const pax: string[] = [];
    if (path.length > 100) {
      const split = prefixSplit(path);
      if (split > 0 && path.length - split - 1 <= 100) {
        prefix = path.subarray(0, split);
        name = path.subarray(split + 1);
      } else {
        pax.push(paxRecord('path', path));
        name = path.subarray(0, 100);
      }
    }
    let linkField: Buffer = link;
    if (link.length > 100) {
      pax.push(paxRecord('linkpath', link));
      linkField = link.subarray(0, 100);
    }
    if (pax.length > 0) {
      const body = Buffer.from(pax.join(''), 'utf8');
      this.push(ustarHeader(Buffer.from('././@PaxHeader'), Buffer.alloc(0), 'x', 0o644, body.length, this.mtime, Buffer.alloc(0)));
      this.data(body);
      this.pad(body.length);
    }
    this.push(ustarHeader(name, prefix, type, mode, size, this.mtime, linkField));
  }

  data(b: Buffer): void {
    this.push(b, false);
  }

  pad(size: number): void {
    const rest = size % BLOCK;
    if (rest > 0) this.push(Buffer.alloc(BLOCK - rest), false);
  }

  /** A blob of `size` bytes from a stream (a big one): written as it comes. */
  async stream(s: AsyncIterable<unknown>, size: number): Promise<void> {
    let got = 0;
    for await (const chunk of s) {
      const b = chunk as Buffer;
      got += b.length;
      if (got > size) throw new NeedsGitArchive('a blob longer than its size');
      this.data(b);
      if (this.gathered >= FLUSH_AT) await this.flush();
    }
    if (got !== size) throw new NeedsGitArchive('a blob shorter than its size');
  }

  end(): void {
    this.push(Buffer.alloc(2 * BLOCK), false);
  }

  async flush(): Promise<void> {
    const data = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.gathered);
    this.chunks = [];
    this.gathered = 0;
    const file = this.file;
    this.writing = this.writing.then(async () => {
      for (let off = 0; off < data.length; ) off += (await file.write(data, off)).bytesWritten;
    });
    await this.writing;
  }

  private push(b: Buffer, isHeader = true): void {
    if (isHeader && ++this.entries > this.cap.maxEntries) throw new TreeTarOverCap(`its archive has more than ${this.cap.maxEntries} entries`);
    this.bytes += b.length;
    if (this.bytes > this.cap.maxBytes) throw new TreeTarOverCap(`its archive is larger than ${this.cap.maxBytes} bytes`);
    this.chunks.push(b);
    this.gathered += b.length;
    if (this.gathered >= FLUSH_AT) void this.flush().catch(() => undefined);
  }
}

/** Where to split a long path into ustar's prefix (≤ 155 bytes) and name: the `/` index, or 0 for none. */
function prefixSplit(path: Buffer): number {
  let i = path.length;
  if (i > 1 && path[i - 1] === 0x2f) i--;
  if (i > 155) i = 155;
  do i--;
  while (i > 0 && path[i] !== 0x2f);
  return i;
}

/** A pax record: "<length> <key>=<value>\n", the length counting itself. */
function paxRecord(key: string, value: Buffer): string {
  const text = `${key}=${value.toString('utf8')}\n`;
  const body = Buffer.byteLength(text) + 1; // the space
  let len = body + String(body).length;
  if (String(len).length !== String(body).length) len = body + String(len).length;
  return `${len} ${text}`;
}

function ustarHeader(name: Buffer, prefix: Buffer, type: string, mode: number, size: number, mtime: number, linkname: Buffer): Buffer {
  const h = Buffer.alloc(BLOCK);
  name.copy(h, 0, 0, Math.min(100, name.length));
  h.write(`${mode.toString(8).padStart(7, '0')}\0`, 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write(`${Math.max(0, Math.min(mtime, USTAR_SIZE_MAX)).toString(8).padStart(11, '0')}\0`, 136, 'latin1');
  h.write(type, 156, 'latin1');
  linkname.copy(h, 157, 0, Math.min(100, linkname.length));
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  h.write('root', 265, 'latin1');
  h.write('root', 297, 'latin1');
  prefix.copy(h, 345, 0, Math.min(155, prefix.length));
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}
