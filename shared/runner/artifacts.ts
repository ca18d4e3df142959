/**
 * Taking artifacts out of a finished job: a tar stream from the engine's archive API is filtered
 * by the job's globs and extracted under a destination directory. The archive is hostile:
 * - a name that is absolute or climbs with `..` is rejected;
 * - a symlink is kept only when its target stays inside the artifact root (relative, resolved);
 * - a hardlink is kept only to a file already extracted;
 * - devices, fifos and anything else are rejected;
 * - nothing is written through a symlink: each file is opened with O_NOFOLLOW|O_EXCL under a
 *   parent whose real path is checked to be inside the destination;
 * - byte and file-count caps are checked from headers before any data is written.
 * Extraction goes to a private staging directory that is renamed into place only on success, so
 * a rejected archive leaves nothing behind.
 */
import { constants, createWriteStream } from 'node:fs';
import { link, mkdir, open, realpath, rename, rm, symlink } from 'node:fs/promises';
import { dirname, join, posix, sep } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import picomatch from 'picomatch';
import tar from 'tar-stream';
import { ArtifactRejectedError, ArtifactTooLargeError } from '../errors.js';
import { formatBytes } from '../units.js';
import { safeEntryName } from './tar-pack.js';

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

  const safeParent = async (rel: string): Promise<string> => {
    const parent = dirname(join(stagingReal, rel));
    await mkdir(parent, { recursive: true });
    const real = await realpath(parent);
    if (real !== stagingReal && !real.startsWith(stagingReal + sep)) reject(`artifact ${JSON.stringify(rel)}: parent directory leaves the artifact root`);
    return join(real, posix.basename(rel));
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
        const fh = await open(target, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
        await pipeline(entry, createWriteStream('', { fd: fh }));
        written.push({ path: rel, bytes: size, kind: 'file' });
        seen.add(rel);
        continue;
      }
      entry.resume();
      if (h.type === 'symlink') {
        const linkname = h.linkname ?? '';
        const resolved = posix.normalize(posix.join(posix.dirname(rel), linkname));
        if (linkname.startsWith('/') || linkname.includes('\0') || resolved === '..' || resolved.startsWith('../')) {
          reject(`artifact ${JSON.stringify(rel)} is a symlink to ${JSON.stringify(linkname)}, outside the artifact root`);
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
    await Promise.all([fed, work]);
    // Move each top-level staged entry into place; existing artifacts of the same name are an error.
    for (const top of new Set(written.map((w) => w.path.split('/')[0] as string))) {
      await rename(join(stagingReal, top), join(destReal, top));
    }
    return written;
  } catch (e) {
    archive.destroy();
    extract.destroy();
    throw e;
  } finally {
    await rm(stagingReal, { recursive: true, force: true });
  }
}
