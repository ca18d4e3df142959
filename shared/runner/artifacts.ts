/**
 * Taking artifacts out of a finished job: a tar stream from the engine's archive API is filtered
 * by the job's globs and extracted under a destination directory. The archive is hostile:
 * - a name that is absolute or climbs with `..` is rejected;
 * - a symlink is kept only when its target is relative, its `..` parts all come first, and they
 *   do not climb above the artifact root. `x/..` is refused: if `x` is itself a link, the kernel
 *   resolves it to somewhere else than the text says, and a chain of such links walks out;
 * - a hardlink is kept only to a file already extracted;
 * - devices, fifos and anything else are rejected;
 * - nothing is written through a symlink: parent directories are made one at a time and each
 *   must be a real directory, and each file is opened with O_NOFOLLOW|O_EXCL;
 * - byte and file-count caps are checked from headers before any data is written.
 * Extraction goes to a private staging directory that is moved into place only on success, so
 * a rejected archive leaves nothing behind. Several archives may go to one destination (one per
 * glob base): staged directories merge into existing real directories, and an entry that already
 * exists there is an error, checked for every entry before anything is moved.
 */
import { constants, createWriteStream } from 'node:fs';
import { link, lstat, mkdir, open, readdir, realpath, rename, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import picomatch from 'picomatch';
import tar from 'tar-stream';
import { ArtifactRejectedError, ArtifactTooLargeError } from '../errors.js';
import { formatBytes } from '../units.js';
import { safeEntryName } from './tar-pack.js';
import { absentAsUndefined } from '../absent.js';

export interface ArtifactFile {
  /** Path relative to the workspace, as the globs see it. */
  path: string;
  bytes: number;
  kind: 'file' | 'symlink' | 'hardlink';
}

export interface ExtractOptions {
  globs: readonly string[];
  maxBytes: number;
  maxFiles: number;
  /**
   * The archive names entries relative to the parent of the directory that was archived; this
   * prefix maps them back to workspace-relative paths. For /workspace/out the archive says
   * `out/x` and the prefix is `out`; for /workspace it says `workspace/x` and the prefix is ``.
   */
  archivedDir: string;
}

/** The directory part of a glob without magic characters: where to ask the engine for an archive. */
export function globBase(glob: string): string {
  const base = picomatch.scan(glob).base;
  return base === '.' ? '' : base;
}

/** Map an archive entry name to a workspace-relative path (undefined: unsafe name). */
export function toWorkspacePath(entryName: string, archivedDir: string): string | undefined {
  const name = safeEntryName(entryName);
  if (name === undefined) return undefined;
  const parts = name.split('/');
  parts.shift(); // the archived directory's own name
  const rest = parts.join('/');
  if (!archivedDir) return rest;
  return rest ? `${archivedDir}/${rest}` : archivedDir;
}

/** Extract the matching entries of `archive` into `dest`. Returns what was written. */
export async function extractArtifacts(archive: Readable, dest: string, opts: ExtractOptions): Promise<ArtifactFile[]> {
  // Watched from the start: an archive that fails or is gone before it is read below (a request
  // body whose sender went away) rejects the extraction instead of leaving it waiting forever.
  const read = finished(archive, { writable: false });
  read.catch(() => undefined);
  const isMatch = picomatch(opts.globs as string[], { dot: true });
  await mkdir(dest, { recursive: true });
  const destReal = await realpath(dest);
  const staging = join(destReal, `.airlock-staging-${randomBytes(6).toString('hex')}`);
  await mkdir(staging, { mode: 0o700 });
  const stagingReal = await realpath(staging);
  const written: ArtifactFile[] = [];
  const seen = new Set<string>();
  let bytes = 0;

  const reject = (message: string): never => {
    throw new ArtifactRejectedError(message);
  };

  /** Where `rel` goes in staging, its parents made one at a time: none may be a symlink (mkdir -p would follow it). */
  const safeParent = async (rel: string): Promise<string> => {
    const parts = rel.split('/');
    const base = parts.pop() as string;
    let at = stagingReal;
    for (const part of parts) {
      at = join(at, part);
      const st = await absentAsUndefined(lstat(at));
      if (st === undefined) await mkdir(at);
      else if (!st.isDirectory()) reject(`artifact ${JSON.stringify(rel)}: ${JSON.stringify(part)} in its path is not a directory (nothing is written through a link)`);
    }
    return join(at, base);
  };

  const extract = tar.extract();
  const work = (async () => {
    for await (const entry of extract) {
      const h = entry.header;
      const rel = toWorkspacePath(h.name, opts.archivedDir);
      if (rel === undefined) reject(`artifact entry ${JSON.stringify(h.name)} would land outside the artifact root`);
      if (!rel || h.type === 'directory' || !isMatch(rel)) {
        entry.resume();
        continue;
      }
      if (written.length + 1 > opts.maxFiles) throw new ArtifactTooLargeError(`artifacts exceed the cap of ${opts.maxFiles} files`);
      const target = await safeParent(rel);
      if (h.type === 'file' || h.type === 'contiguous-file') {
        const size = h.size ?? 0;
        bytes += size;
        if (bytes > opts.maxBytes) throw new ArtifactTooLargeError(`artifacts exceed the cap of ${formatBytes(opts.maxBytes)}`);
        const fh = await open(target, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644).catch((e: NodeJS.ErrnoException) =>
          e.code === 'EEXIST' ? reject(`artifact ${JSON.stringify(rel)} appears twice in the archive`) : Promise.reject(e),
        );
        await pipeline(entry, createWriteStream('', { fd: fh }));
        written.push({ path: rel, bytes: size, kind: 'file' });
        seen.add(rel);
        continue;
      }
      entry.resume();
      if (h.type === 'symlink') {
        const linkname = h.linkname ?? '';
        const parts = linkname.split('/').filter((p) => p !== '' && p !== '.');
        const ups = parts.findIndex((p) => p !== '..');
        const climbs = ups === -1 ? parts.length : ups;
        if (linkname === '' || linkname.startsWith('/') || linkname.includes('\0') || climbs > rel.split('/').length - 1) {
          reject(`artifact ${JSON.stringify(rel)} is a symlink to ${JSON.stringify(linkname)}, outside the artifact root`);
        }
        if (parts.slice(climbs).includes('..')) {
          reject(`artifact ${JSON.stringify(rel)} is a symlink to ${JSON.stringify(linkname)}: .. is only taken at the start of a link`);
        }
        await symlink(linkname, target);
        written.push({ path: rel, bytes: 0, kind: 'symlink' });
      } else if (h.type === 'link') {
        const to = toWorkspacePath(h.linkname ?? '', opts.archivedDir);
        if (to === undefined || !seen.has(to)) reject(`artifact ${JSON.stringify(rel)} is a hardlink to ${JSON.stringify(h.linkname)}, which is not an extracted artifact`);
        await link(join(stagingReal, to as string), target);
        written.push({ path: rel, bytes: 0, kind: 'hardlink' });
      } else {
        reject(`artifact ${JSON.stringify(rel)} is a ${h.type ?? 'unknown'} entry; only files, directories and links are taken`);
      }
    }
  })();

  try {
    const fed = new Promise<void>((resolve, rejectFed) => {
      archive.on('error', rejectFed);
      extract.on('error', rejectFed);
      extract.on('finish', resolve);
      archive.pipe(extract as unknown as NodeJS.WritableStream);
    });
    await Promise.all([fed, work, read]);
    await moveInto(stagingReal, destReal);
    return written;
  } catch (e) {
    archive.destroy();
    extract.destroy();
    throw e;
  } finally {
    await rm(stagingReal, { recursive: true, force: true });
  }
}


/**
 * Move everything in `from` into `to`, merging into directories that exist. Every move is planned
 * before one is made, so a clash (an existing file, or a link where a directory should be) leaves
 * `to` as it was and raises ArtifactRejectedError.
 */
export async function moveInto(from: string, to: string): Promise<void> {
  const moves: [string, string][] = [];
  await planMoves(from, to, '', moves);
  for (const [src, dst] of moves) await rename(src, dst);
}

/** The renames that put `from`'s entries into `to`: into a real directory that exists, merge; anything else that exists is a clash. */
async function planMoves(from: string, to: string, rel: string, moves: [string, string][]): Promise<void> {
  for (const e of await readdir(from, { withFileTypes: true })) {
    const src = join(from, e.name);
    const dst = join(to, e.name);
    const path = rel ? `${rel}/${e.name}` : e.name;
    const existing = await absentAsUndefined(lstat(dst));
    if (existing === undefined) moves.push([src, dst]);
    else if (existing.isDirectory() && e.isDirectory()) await planMoves(src, dst, path, moves);
    else throw new ArtifactRejectedError(`artifact ${JSON.stringify(path)} already exists in the artifacts directory`);
  }
}
