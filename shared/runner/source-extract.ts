/**
 * Writes a job's source tar straight into its workspace filesystem, on the host, before the job's
 * container starts: the fast path for the source (Docker's archive API re-executes the daemon for
 * every job). The tar is attacker-controlled (repository files), and this runs as root, so it is
 * the attack surface; the caller (WorkspaceManager.withMounted) gives it the root of a freshly
 * formatted filesystem mounted privately with nosuid,nodev,noexec,nosymfollow, and nothing else
 * writes to that filesystem until it is unmounted.
 *
 * What is written, and what is refused (an InvalidInputError naming the entry; the first one
 * stops the extraction, and the caller discards the workspace's contents):
 * - names: `safeEntryName` (no absolute path, no `..`) and the same EntryGuard the tar packers
 *   apply (nothing under a name an earlier entry made a symlink, symlink targets relative and
 *   inside, regular files together at most `maxBytes`, checked from each header before any data);
 * - kinds: regular files, directories and symlinks only; hardlinks, device nodes, fifos and
 *   anything else are refused (the runner's own stream, from repackTar/packDirectory, has
 *   already dropped them, so one arriving here means the stream was not normalised);
 * - modes: permission bits only; a setuid, setgid or sticky bit is refused for the same reason;
 * - owner: every entry, and every directory made for a missing parent, belongs to `owner`.
 *
 * Why a path cannot leave the root (each of these alone suffices for the entry's parents):
 * - the kernel follows no symlink on a nosymfollow mount (lookups through one fail with ELOOP);
 * - every parent directory is checked with lstat (not followed) to be a real directory the first
 *   time it is used, and remembered: nothing else writes here, and a directory is never removed
 *   or replaced by a later entry (that is refused), so a checked directory stays one;
 * - the entry itself is made with O_CREAT|O_EXCL|O_NOFOLLOW (files), mkdir then
 *   O_DIRECTORY|O_NOFOLLOW for its owner and mode (directories), symlink + lchown (symlinks).
 * A later entry of a name that exists replaces a file or symlink (unlink, then create), as tar
 * does, and is refused over a directory.
 */
import {
  closeSync, constants, fchmodSync, fchownSync, futimesSync, lchownSync, lstatSync, lutimesSync, mkdirSync, openSync, symlinkSync, unlinkSync, writeSync,
} from 'node:fs';
import { lstat } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import { AirlockError, ExecutorFailedError, InvalidInputError } from '../errors.js';
import { EntryGuard, safeEntryName, type Owner } from './tar-pack.js';

export interface ExtractOptions {
  /** The directory to fill: the root of a filesystem nobody else writes to while this runs. */
  root: string;
  /** Host uid/gid every entry gets: the job user as the engine maps it. */
  owner: Owner;
  /** The most the regular files may add up to, in bytes (the workspace's size). */
  maxBytes: number;
  /** Names the source in errors (`source.tar`, a path). */
  label: string;
}

export interface ExtractReport {
  entries: number;
  bytes: number;
}

/** One entry's data, as tar-stream yields it. */
type EntryData = AsyncIterable<unknown>;

const FILE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
/** The longest the extractor keeps the event loop before it lets other work run. */
const YIELD_EVERY_MS = 5;
/** Failures that the source's content causes (too many files, too long a name), not the host. */
const CONTENT_ERRNOS = new Set(['ENOSPC', 'EDQUOT', 'ENAMETOOLONG', 'EMLINK', 'ELOOP', 'ENOTDIR', 'EEXIST', 'EISDIR', 'EFBIG']);

/** Extract `input` (a tar stream) into `opts.root` under the rules above. */
export async function extractSource(input: Readable, opts: ExtractOptions): Promise<ExtractReport> {
  const guard = new EntryGuard(opts.label, opts.maxBytes);
  const writer = new TreeWriter(opts.root, opts.owner, guard);
  const extract = tar.extract();
  // The iterator listens for entries from here on: one emitted before it exists would be lost.
  const entries = extract[Symbol.asyncIterator]();
  input.on('error', (e) => extract.destroy(e));
  input.pipe(extract);
  let current = '';
  let lastYield = performance.now();
  try {
    const root = await lstat(opts.root);
    if (!root.isDirectory()) throw new ExecutorFailedError(`${opts.root} is not a directory`);
    for await (const entry of { [Symbol.asyncIterator]: () => entries }) {
      const { header } = entry;
      current = header.name;
      const isRoot = header.name.startsWith('.') && header.name.split('/').every((p) => p === '' || p === '.');
      if (header.type === 'directory' && isRoot) {
        await discard(entry); // `./`: the filesystem's root, which stays as mkfs made it (the job user's)
        continue;
      }
      const name = safeEntryName(header.name);
      if (name === undefined) throw guard.error(header.name, 'tar entry would land outside the workspace');
      current = name;
      await writer.add(name, header, entry);
      // The file system calls are synchronous (a thread-pool round trip per call costs far more
      // than the call itself): hand the event loop back now and then, so other jobs' logs flow.
      if (performance.now() - lastYield > YIELD_EVERY_MS) {
        await nextTurn();
        lastYield = performance.now();
      }
    }
    const late = guard.finish();
    if (late) throw late;
    writer.finish();
    return { entries: writer.entries, bytes: writer.bytes };
  } catch (e) {
    extract.destroy();
    input.unpipe(extract);
    input.destroy();
    throw classify(e, guard, current);
  }
}

class TreeWriter {
  /** Directories (relative names) known to be real directories on this filesystem; '' is the root. */
  private readonly dirs = new Set<string>(['']);
  /** Directory entries whose mtime is set at the end, once nothing more is written into them. */
  private readonly dirTimes: { path: string; mtime: Date }[] = [];
  entries = 0;
  bytes = 0;

  constructor(
    private readonly root: string,
    private readonly owner: Owner,
    private readonly guard: EntryGuard,
  ) {}

  async add(name: string, header: tar.Header, data: EntryData): Promise<void> {
    const mode = header.mode ?? 0o644;
    if ((mode & 0o7000) !== 0) throw this.guard.error(name, `mode ${mode.toString(8)} has a setuid, setgid or sticky bit`);
    const type = header.type ?? 'file';
    const isFile = type === 'file' || type === 'contiguous-file';
    if (!isFile && type !== 'directory' && type !== 'symlink') throw this.guard.error(name, refusedKind(type, header.linkname));
    if (type === 'symlink' && !header.linkname) throw this.guard.error(name, 'symlink without a target');
    const refused = this.guard.check(
      name,
      isFile ? { type: 'file', size: header.size ?? 0 } : type === 'directory' ? { type: 'directory' } : { type: 'symlink', linkname: header.linkname ?? '' },
    );
    if (refused) throw refused;

    this.parents(name);
    const path = join(this.root, name);
    const mtime = header.mtime ?? new Date(0);
    this.entries++;
    if (type === 'directory') {
      await discard(data);
      this.directory(name, path, mode & 0o777);
      this.dirTimes.push({ path, mtime });
      return;
    }
    this.clear(name, path);
    if (type === 'symlink') {
      await discard(data);
      symlinkSync(header.linkname as string, path);
      lchownSync(path, this.owner.uid, this.owner.gid);
      lutimesSync(path, mtime, mtime);
      return;
    }
    await this.file(name, path, header.size ?? 0, mode & 0o777, mtime, data);
  }

  /** Directory mtimes last: writing into a directory changes its mtime. Deepest first. */
  finish(): void {
    for (const { path, mtime } of this.dirTimes.reverse()) {
      const fd = openSync(path, DIR_FLAGS);
      try {
        futimesSync(fd, mtime, mtime);
      } finally {
        closeSync(fd);
      }
    }
  }

  /** Every parent of `name` is a real directory afterwards (made, owned by the job user, if missing). */
  private parents(name: string): void {
    const parts = name.split('/');
    for (let i = 1; i < parts.length; i++) {
      const rel = parts.slice(0, i).join('/');
      if (this.dirs.has(rel)) continue;
      const st = lstatSync(join(this.root, rel), { throwIfNoEntry: false });
      if (st === undefined) {
        this.directory(rel, join(this.root, rel), 0o755);
      } else if (st.isDirectory()) {
        this.dirs.add(rel);
      } else {
        throw this.guard.error(name, `its parent ${JSON.stringify(rel)} is ${st.isSymbolicLink() ? 'a symlink' : 'not a directory'}`);
      }
    }
  }

  /** Make (or take over) directory `rel` with the job user as owner and `mode`. */
  private directory(rel: string, path: string, mode: number): void {
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st && !st.isDirectory()) {
      if (this.dirs.has(rel)) throw new ExecutorFailedError(`${path} stopped being a directory during extraction`);
      unlinkSync(path); // a file or symlink of that name earlier in the stream: replaced, as tar does
    }
    if (!st || !st.isDirectory()) mkdirSync(path, { mode: 0o700 });
    const fd = openSync(path, DIR_FLAGS);
    try {
      fchownSync(fd, this.owner.uid, this.owner.gid);
      fchmodSync(fd, mode); // after chown, which may clear mode bits
    } finally {
      closeSync(fd);
    }
    this.dirs.add(rel);
  }

  /** Remove a file or symlink that an earlier entry put at `name`; a directory there is refused. */
  private clear(name: string, path: string): void {
    if (this.dirs.has(name)) throw this.guard.error(name, 'would replace a directory');
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st === undefined) return;
    if (st.isDirectory()) throw this.guard.error(name, 'would replace a directory');
    unlinkSync(path);
  }

  private async file(name: string, path: string, size: number, mode: number, mtime: Date, data: EntryData): Promise<void> {
    const fd = openSync(path, FILE_FLAGS, 0o600);
    try {
      let written = 0;
      for await (const item of data) {
        const chunk = item as Uint8Array; // tar-stream yields Buffers (its types say unknown)
        written += chunk.length;
        if (written > size) throw this.guard.error(name, 'has more data than its header says');
        let off = 0;
        while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
      }
      this.bytes += written;
      fchownSync(fd, this.owner.uid, this.owner.gid);
      fchmodSync(fd, mode);
      futimesSync(fd, mtime, mtime);
    } finally {
      closeSync(fd);
    }
  }
}

function refusedKind(type: string, linkname: string | undefined | null): string {
  switch (type) {
    case 'link': {
      const where = linkname && safeEntryName(linkname) !== undefined ? '' : ' (outside the workspace)';
      return `hardlink to ${JSON.stringify(linkname ?? '')}${where}: hardlinks are not accepted`;
    }
    case 'character-device':
    case 'block-device':
      return 'device nodes are not accepted';
    case 'fifo':
      return 'fifos are not accepted';
    default:
      return `entries of type ${JSON.stringify(type)} are not accepted`;
  }
}

/** Read and drop an entry's data (directories and symlinks have none, but the stream must end). */
async function discard(data: EntryData): Promise<void> {
  for await (const _ of data) {
    // nothing to keep
  }
}

/** Our own refusals as they are; what the content caused as InvalidInputError; the rest is the host's fault. */
function classify(e: unknown, guard: EntryGuard, entry: string): AirlockError {
  if (e instanceof AirlockError) return e;
  const err = e as NodeJS.ErrnoException;
  if (typeof err.code === 'string' && typeof err.syscall === 'string') {
    if (err.code === 'ENOSPC' || err.code === 'EDQUOT') return guard.error(entry, 'the source does not fit the workspace (no space or no inodes left)');
    if (CONTENT_ERRNOS.has(err.code)) return guard.error(entry, `cannot be written: ${err.code} (${err.syscall})`);
    return new ExecutorFailedError(`writing the source into the workspace failed at ${JSON.stringify(entry)}: ${err.message}`, { cause: e });
  }
  return guard.error(entry, `not a readable tar: ${err?.message ?? String(e)}`);
}
