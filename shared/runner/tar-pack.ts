/**
 * The job's source goes into the container as a tar stream (never as a bind mount). Whatever the
 * source, every entry is re-written: owned by the job user, permission bits only (no setuid,
 * setgid or sticky), and only regular files, directories and symlinks; device nodes, fifos and
 * hardlinks are dropped. Names are normalised and must stay inside the workspace.
 */
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { InvalidInputError } from '../errors.js';

export interface Owner {
  uid: number;
  gid: number;
}

/** A safe relative name for an entry, or undefined for one that would leave the root. */
export function safeEntryName(name: string): string | undefined {
  if (name.includes('\0') || name.startsWith('/')) return undefined;
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.length === 0 || parts.some((p) => p === '..')) return undefined;
  return parts.join('/');
}

/** Tar a host directory for the workspace. Files are streamed; nothing is buffered whole. */
export function packDirectory(dir: string, owner: Owner): Readable {
  const pack = tar.pack();
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(join(dir, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of entries) {
      const name = rel ? `${rel}/${e.name}` : e.name;
      const full = join(dir, name);
      const st = await lstat(full);
      const common = { name, uid: owner.uid, gid: owner.gid, mode: st.mode & 0o777, mtime: st.mtime };
      if (st.isDirectory()) {
        pack.entry({ ...common, type: 'directory' });
        await walk(name);
      } else if (st.isSymbolicLink()) {
        pack.entry({ ...common, type: 'symlink', linkname: await readlink(full) });
      } else if (st.isFile()) {
        const entry = pack.entry({ ...common, type: 'file', size: st.size });
        await pipeline(createReadStream(full), entry);
      }
    }
  };
  walk('').then(
    () => pack.finalize(),
    (e: Error) => pack.destroy(e),
  );
  return Readable.from(pack, { objectMode: false });
}

/** Re-write a tar file's entries under the rules above. A name that leaves the root is an error. */
export function repackTar(file: string, owner: Owner): Readable {
  const pack = tar.pack();
  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    const name = safeEntryName(header.name);
    if (name === undefined) {
      const err = new InvalidInputError([{ file, path: header.name, message: 'tar entry would land outside the workspace', severity: 'error' }]);
      stream.on('error', () => {}); // destroying extract errors this entry too; the reader gets err through pack
      stream.resume();
      extract.destroy(err);
      pack.destroy(err);
      return;
    }
    const common = { name, uid: owner.uid, gid: owner.gid, mode: (header.mode ?? 0o644) & 0o777, mtime: header.mtime ?? new Date(0) };
    if (header.type === 'file' || header.type === 'contiguous-file') {
      const entry = pack.entry({ ...common, type: 'file', size: header.size ?? 0 }, (err) => (err ? extract.destroy(err) : next()));
      // With a callback, streamx keeps either side's error inside the pipe instead of an uncaught
      // 'error' (a truncated tar would crash the process); the reader gets it through pack.
      stream.pipe(entry, () => {});
      return;
    }
    if (header.type === 'directory') pack.entry({ ...common, type: 'directory' });
    else if (header.type === 'symlink' && header.linkname) pack.entry({ ...common, type: 'symlink', linkname: header.linkname });
    stream.on('end', () => next());
    stream.resume();
  });
  extract.on('finish', () => pack.finalize());
  extract.on('error', (e) =>
    pack.destroy(e instanceof InvalidInputError ? e : new InvalidInputError([{ file, path: '', message: `not a readable tar: ${e.message}`, severity: 'error' }])),
  );
  createReadStream(file)
    .on('error', (e) => pack.destroy(new InvalidInputError([{ file, path: '', message: `cannot read: ${e.message}`, severity: 'error' }])))
    .pipe(extract);
  return Readable.from(pack, { objectMode: false });
}

