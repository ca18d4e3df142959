/**
 * Build contexts for environment builds.
 *
 * - `contextFromDirectory` digests a host directory and packs it on demand (for tests and local use;
 *   the CI hands in a git tree id as the digest and a tar of that tree).
 * - `withCheckedDockerfile` passes a context tar through, capped in size, and appends the Dockerfile
 *   text that was checked against policy under a reserved name. The build reads that entry, so what
 *   is built is exactly what was checked, whatever the context holds at `dockerfilePath`.
 *
 * `.dockerignore` is not applied: the context is the tar the caller packs, as sent.
 */
import { constants, type Stats } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { PassThrough, Readable, Transform } from 'node:stream';
import tar from 'tar-stream';
import { PolicyViolationError } from '../errors.js';
import { packDirectory } from '../runner/tar-pack.js';
import { formatBytes } from '../units.js';

/** The name the checked Dockerfile is added under, at the context's root. */
export const CHECKED_DOCKERFILE = '.airlock-environment.Dockerfile';

export interface BuildContext {
  /** A content hash of the context: equal digests mean equal contexts. */
  contextDigest: string;
  /** A new tar stream of the context on each call. */
  openContext: () => Readable;
}

function tooLarge(file: string, maxBytes: number): PolicyViolationError {
  return new PolicyViolationError([{ file, path: '', message: `the build context is larger than ${formatBytes(maxBytes)}`, severity: 'error' }]);
}

/**
 * Digest `dir` (sorted relative paths, kind, permission bits, file contents and link targets; no
 * symlink is followed; fifos, sockets and devices are skipped as the packer skips them) and return
 * it with an opener that packs the same tree. The tree must not change in between.
 */
export async function contextFromDirectory(dir: string, maxBytes: number): Promise<BuildContext> {
  const hash = createHash('sha256');
  let bytes = 0;
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(join(dir, rel))).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const base of names) {
      const name = rel ? `${rel}/${base}` : base;
      const full = join(dir, name);
      const st = await lstat(full);
      const mode = (st.mode & 0o777).toString(8);
      if (st.isDirectory()) {
        hash.update(`D\0${name}\0${mode}\n`);
        await walk(name);
      } else if (st.isSymbolicLink()) {
        hash.update(`L\0${name}\0${await readlink(full)}\n`);
      } else if (st.isFile()) {
        bytes += st.size;
        if (bytes > maxBytes) throw tooLarge(dir, maxBytes);
        hash.update(`F\0${name}\0${mode}\0${st.size}\0${await fileDigest(full, st)}\n`);
      }
    }
  };
  await walk('');
  return {
    contextDigest: `sha256:${hash.digest('hex')}`,
    openContext: () => packDirectory(dir, { uid: 0, gid: 0 }, { maxBytes }),
  };
}

async function fileDigest(full: string, st: Stats): Promise<string> {
  // O_NOFOLLOW: a file swapped for a symlink since lstat is not read through it.
  const fh = await open(full, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const h = createHash('sha256');
    for await (const chunk of fh.createReadStream({ start: 0, end: Math.max(0, st.size - 1), autoClose: false })) h.update(chunk as Buffer);
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

/**
 * `context` re-packed with the checked Dockerfile appended as CHECKED_DOCKERFILE (a later entry
 * wins on extraction). The returned stream errors with PolicyViolationError once more than
 * `maxBytes` of context have been read, and with the source's error if the source fails.
 */
export function withCheckedDockerfile(context: Readable, dockerfileText: string, opts: { maxBytes: number; file: string }): Readable {
  const extract = tar.extract();
  const pack = tar.pack();
  const out = new PassThrough();
  let failed = false;
  const fail = (err: Error): void => {
    if (failed) return;
    failed = true;
    out.destroy(err);
    extract.destroy();
    pack.destroy();
    context.destroy();
  };
  let read = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      read += chunk.length;
      if (read > opts.maxBytes) return cb(tooLarge(opts.file, opts.maxBytes));
      cb(null, chunk);
    },
  });
  extract.on('entry', (header, stream, next) => {
    const entry = pack.entry(header, (err) => (err ? fail(err) : next()));
    // Destroying the extract (on failure) closes this pipe with an error on both sides: the
    // caller gets the failure through `out`, so these are swallowed here.
    entry.on('error', () => {});
    stream.on('error', () => {});
    stream.pipe(entry, () => {});
  });
  extract.on('finish', () => {
    if (failed) return;
    pack.entry({ name: CHECKED_DOCKERFILE, mode: 0o644, uid: 0, gid: 0, mtime: new Date(0) }, dockerfileText);
    pack.finalize();
  });
  extract.on('error', (e) => fail(e));
  pack.on('error', (e) => fail(e));
  counter.on('error', (e) => fail(e));
  context.on('error', (e) => fail(e));
  out.on('close', () => {
    if (!out.writableFinished) fail(new Error('build context stream closed'));
  });
  context.pipe(counter).pipe(extract);
  Readable.from(pack, { objectMode: false }).on('error', (e) => fail(e)).pipe(out);
  return out;
}
