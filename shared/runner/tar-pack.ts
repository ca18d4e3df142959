/**
 * The job's source goes into the container as a tar stream (never as a bind mount). Whatever the
 * source, every entry is re-written: owned by the job user, permission bits only (no setuid,
 * setgid or sticky), and only regular files, directories and symlinks; device nodes, fifos and
 * hardlinks are dropped. Names are normalised and must stay inside the workspace.
 *
 * Docker's archive API extracts inside the container's root and follows symlinks it has already
 * made, so the stream itself must not be able to leave the workspace:
 * - no entry is placed under a name that an earlier entry made a symlink (`x -> /etc` then
 *   `x/file` would write /etc/file in the container);
 * - a symlink's target is relative and stays inside the workspace, also when the symlinks it
 *   passes through are followed (`x -> .` then `s -> x/..` climbs out). Links that point at a
 *   link later in the stream are checked again once the stream is complete;
 * - with `maxBytes`, the regular files together are at most that large, checked from each
 *   header before the file's data is sent.
 * Every refusal and every unreadable input is an InvalidInputError, and the returned stream
 * errors with it.
 */
import { constants, createReadStream, type Stats } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { InvalidInputError } from '../errors.js';

export interface Owner {
  uid: number;
  gid: number;
}

export interface PackOptions {
  /** The most the regular files may add up to, in bytes (the workspace's size). */
  maxBytes?: number;
}

/** A safe relative name for an entry, or undefined for one that would leave the root. */
export function safeEntryName(name: string): string | undefined {
  if (name.includes('\0') || name.startsWith('/')) return undefined;
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.length === 0 || parts.some((p) => p === '..')) return undefined;
  return parts.join('/');
}

/** The kernel's limit on symlinks followed in one lookup (MAXSYMLINKS). */
const MAX_HOPS = 40;

/**
 * Where `target`, read from `from` (directory parts below the workspace root), ends up when the
 * symlinks in `links` are followed: its parts, 'outside', or 'loop' past MAX_HOPS (where a lookup
 * in the kernel fails with ELOOP rather than going anywhere).
 */
function resolveLink(from: readonly string[], target: string, links: ReadonlyMap<string, string>): string[] | 'outside' | 'loop' {
  let hops = 0;
  const walk = (base: readonly string[], rel: string): string[] | 'outside' | 'loop' => {
    if (rel.startsWith('/')) return 'outside';
    const cur = [...base];
    for (const part of rel.split('/')) {
      if (part === '' || part === '.') continue;
      if (part === '..') {
        if (cur.length === 0) return 'outside';
        cur.pop();
        continue;
      }
      cur.push(part);
      const next = links.get(cur.join('/'));
      if (next === undefined) continue;
      if (++hops > MAX_HOPS) return 'loop';
      cur.pop();
      const r = walk(cur, next);
      if (!Array.isArray(r)) return r;
      cur.splice(0, cur.length, ...r);
    }
    return cur;
  };
  return walk(from, target);
}

/** What the guard needs to know of one entry. */
export type GuardedEntry = { type: 'file'; size: number } | { type: 'directory' } | { type: 'symlink'; linkname: string } | { type: 'other' };

/**
 * The rules every entry of either source passes, in stream order (also applied again by the
 * workspace extractor, source-extract.ts).
 */
export class EntryGuard {
  /** Every symlink entry so far, by name. A name stays here even if an entry re-uses it. */
  private readonly links = new Map<string, string>();
  private bytes = 0;

  constructor(
    private readonly file: string,
    private readonly maxBytes: number | undefined,
  ) {}

  error(path: string, message: string): InvalidInputError {
    return new InvalidInputError([{ file: this.file, path, message, severity: 'error' }]);
  }

  /** The refusal for entry `name` (already a safe name), or undefined to keep it. */
  check(name: string, entry: GuardedEntry): InvalidInputError | undefined {
    const parts = name.split('/');
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/');
      if (this.links.has(parent)) return this.error(name, `would be written through the symlink ${JSON.stringify(parent)} earlier in the source`);
    }
    if (entry.type === 'file') {
      this.bytes += entry.size;
      if (this.maxBytes !== undefined && this.bytes > this.maxBytes) return this.error(name, `source is larger than the workspace (${this.maxBytes} bytes)`);
    } else if (entry.type === 'symlink') {
      const bad = this.linkProblem(name, entry.linkname);
      if (bad) return this.error(name, bad);
      this.links.set(name, entry.linkname);
    }
    return undefined;
  }

  /** Once the stream is complete: a link through a link that came later may only now be seen to climb out. */
  finish(): InvalidInputError | undefined {
    for (const [name, target] of this.links) {
      const bad = this.linkProblem(name, target);
      if (bad) return this.error(name, bad);
    }
    return undefined;
  }

  private linkProblem(name: string, target: string): string | undefined {
    const shown = `symlink to ${JSON.stringify(target)}`;
    if (target.startsWith('/')) {
      return `${shown} is absolute: inside the container it would point at the image's files, and a source tree has no business with them`;
    }
    if (target.includes('\0')) return `${shown} has a NUL byte`;
    // The plain rule Docker applies too (it refuses such a link with an HTTP 500).
    const lexical = posix.join(posix.dirname(name), target);
    if (lexical === '..' || lexical.startsWith('../')) return `${shown} leaves the workspace`;
    const r = resolveLink(posix.dirname(name).split('/').filter((p) => p !== '.'), target, this.links);
    if (r === 'outside') return `${shown} leaves the workspace through the symlinks it passes`;
    // 'loop': the kernel gives up after as many links (ELOOP), so such a link points nowhere.
    return undefined;
  }
}

/**
 * `entry`, with its 'error' handled: destroying the pack destroys its current and pending entries
 * with the pack's error, which would otherwise be an uncaught 'error'. The reader gets that error
 * through the pack.
 */
function quiet<T extends NodeJS.EventEmitter>(entry: T): T {
  entry.on('error', () => {});
  return entry;
}

/** Resolves on `event`, rejects if `w` closes (is destroyed) first. */
function until(w: NodeJS.EventEmitter, event: 'drain' | 'finish'): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (): void => {
      w.off('close', gone);
      resolve();
    };
    const gone = (): void => {
      w.off(event, done);
      reject(new Error('tar entry destroyed'));
    };
    w.once(event, done);
    w.once('close', gone);
  });
}

/** Resolves when `w` can take more, rejects when it is destroyed first. */
function drained(w: NodeJS.EventEmitter & { destroyed?: boolean; destroying?: boolean }): Promise<void> {
  return w.destroyed || w.destroying ? Promise.reject(new Error('tar entry destroyed')) : until(w, 'drain');
}

/** Resolves when the entry has written its data into the pack, rejects if it is destroyed first. */
function finished(w: NodeJS.EventEmitter): Promise<void> {
  return until(w, 'finish');
}

/**
 * Tar a host directory for the workspace. Files are streamed; nothing is buffered whole. Symlinks
 * are packed as symlinks and never followed, also not a symlinked directory.
 */
export function packDirectory(dir: string, owner: Owner, opts: PackOptions = {}): Readable {
  const pack = tar.pack();
  const guard = new EntryGuard(dir, opts.maxBytes);
  /** Runs one fs call for `rel`, its failure named. */
  const io = async <T>(rel: string, f: () => Promise<T>): Promise<T> => {
    try {
      return await f();
    } catch (e) {
      throw guard.error(rel, `cannot read: ${(e as Error).message}`);
    }
  };
  const add = (name: string, entry: Parameters<EntryGuard['check']>[1]): void => {
    const refused = guard.check(name, entry);
    if (refused) throw refused;
  };

  const sendFile = async (name: string, full: string, st: Stats, header: { name: string; uid: number; gid: number; mode: number; mtime: Date }): Promise<void> => {
    // O_NOFOLLOW: what was a file at lstat is not read through a symlink swapped in since;
    // O_NONBLOCK: nor does a fifo swapped in hang the walk (and fstat below refuses it).
    const fh = await io(name, () => open(full, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK));
    try {
      const now = await io(name, () => fh.stat());
      if (!now.isFile() || now.ino !== st.ino || now.dev !== st.dev) throw guard.error(name, 'changed while the source was being packed');
      const entry = quiet(pack.entry({ ...header, type: 'file', size: st.size }));
      let left = st.size;
      while (left > 0) {
        const buf = Buffer.allocUnsafe(Math.min(left, 64 * 1024));
        const { bytesRead } = await io(name, () => fh.read(buf, 0, buf.length, st.size - left));
        if (bytesRead === 0) throw guard.error(name, 'changed while the source was being packed (it became shorter)');
        left -= bytesRead;
        if (!entry.write(bytesRead === buf.length ? buf : buf.subarray(0, bytesRead))) await drained(entry);
      }
      if ((await io(name, () => fh.stat())).size !== st.size) throw guard.error(name, 'changed while the source was being packed (its size changed)');
      entry.end(null);
      await finished(entry);
    } finally {
      await fh.close().catch(() => {});
    }
  };

  const walk = async (rel: string): Promise<void> => {
    const entries = await io(rel, () => readdir(join(dir, rel)));
    entries.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const base of entries) {
      const name = rel ? `${rel}/${base}` : base;
      const full = join(dir, name);
      const st = await io(name, () => lstat(full));
      const header = { name, uid: owner.uid, gid: owner.gid, mode: st.mode & 0o777, mtime: st.mtime };
      if (st.isDirectory()) {
        add(name, { type: 'directory' });
        quiet(pack.entry({ ...header, type: 'directory' }));
        await walk(name);
      } else if (st.isSymbolicLink()) {
        const linkname = await io(name, () => readlink(full));
        add(name, { type: 'symlink', linkname });
        quiet(pack.entry({ ...header, type: 'symlink', linkname }));
      } else if (st.isFile()) {
        add(name, { type: 'file', size: st.size });
        await sendFile(name, full, st, header);
      }
    }
  };

  walk('').then(
    () => {
      const late = guard.finish();
      if (late) pack.destroy(late);
      else pack.finalize();
    },
    (e: unknown) => pack.destroy(e instanceof InvalidInputError ? e : guard.error('', (e as Error).message)),
  );
  return Readable.from(pack, { objectMode: false });
}

/** Re-write a tar file's entries under the rules above. A name that leaves the root is an error. */
export function repackTar(file: string, owner: Owner, opts: PackOptions = {}): Readable {
  const pack = tar.pack();
  const extract = tar.extract();
  const source = createReadStream(file);
  const guard = new EntryGuard(file, opts.maxBytes);
  let failed = false;
  const fail = (err: InvalidInputError): void => {
    if (failed) return;
    failed = true;
    pack.destroy(err); // first, so the reader gets err and not what destroying the rest causes
    extract.destroy(err);
    source.destroy();
  };
  // The reader went away (or the stream ended): stop reading the file.
  pack.on('close', () => {
    failed = true;
    extract.destroy();
    source.destroy();
  });

  extract.on('entry', (header, stream, next) => {
    const refuse = (err: InvalidInputError): void => {
      stream.on('error', () => {}); // destroying extract errors this entry too; the reader gets err through pack
      stream.resume();
      fail(err);
    };
    const isRoot = header.name.startsWith('.') && header.name.split('/').every((p) => p === '' || p === '.');
    if (header.type === 'directory' && isRoot) {
      // `./`, as `tar -C src -cf x.tar .` writes first: the workspace itself, which stays as it is.
      stream.on('end', () => next());
      stream.resume();
      return;
    }
    const name = safeEntryName(header.name);
    if (name === undefined) return refuse(guard.error(header.name, 'tar entry would land outside the workspace'));
    const isFile = header.type === 'file' || header.type === 'contiguous-file';
    const isLink = header.type === 'symlink' && !!header.linkname;
    const refused = guard.check(
      name,
      isFile
        ? { type: 'file', size: header.size ?? 0 }
        : header.type === 'directory'
          ? { type: 'directory' }
          : isLink
            ? { type: 'symlink', linkname: header.linkname ?? '' }
            : { type: 'other' },
    );
    if (refused) return refuse(refused);

    const common = { name, uid: owner.uid, gid: owner.gid, mode: (header.mode ?? 0o644) & 0o777, mtime: header.mtime ?? new Date(0) };
    if (isFile) {
      const entry = pack.entry({ ...common, type: 'file', size: header.size ?? 0 }, (err) => (err ? extract.destroy(err) : next()));
      // With a callback, streamx keeps either side's error inside the pipe instead of an uncaught
      // 'error' (a truncated tar would crash the process); the reader gets it through pack.
      stream.pipe(entry, () => {});
      return;
    }
    if (header.type === 'directory') quiet(pack.entry({ ...common, type: 'directory' }));
    else if (isLink) quiet(pack.entry({ ...common, type: 'symlink', linkname: header.linkname ?? '' }));
    stream.on('end', () => next());
    stream.resume();
  });
  extract.on('finish', () => {
    if (failed) return;
    const late = guard.finish();
    if (late) fail(late);
    else pack.finalize();
  });
  extract.on('error', (e) => fail(e instanceof InvalidInputError ? e : guard.error('', `not a readable tar: ${e.message}`)));
  source.on('error', (e) => fail(guard.error('', `cannot read: ${e.message}`)));
  source.pipe(extract);
  return Readable.from(pack, { objectMode: false });
}
