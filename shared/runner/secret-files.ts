/**
 * Secret files for one job step: the trusted builder hands a step the secrets policy grants it
 * as files under /run/secrets, never as environment variables or image layers.
 *
 * The files live on a host tmpfs (RAM only; default /dev/shm/airlock-secrets, refused if the
 * directory is not on a tmpfs), in a fresh directory per job: the root 0700 and root's, the job's
 * directory and files owned by the uid the job user maps to on the host (mode 0500/0400), so only
 * that job can read them. The directory is bind-mounted read-only at /run/secrets, and removed
 * with the container when the job ends (a crash of the runner leaves them in RAM until a reboot
 * or an operator removes the directory).
 */
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, rm, statfs, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { InvalidInputError, StorageFailedError } from '../errors.js';

/** Where the files appear inside the container. */
export const SECRETS_PATH = '/run/secrets';
/** The host tmpfs they are written to, unless the runner is told otherwise. */
export const DEFAULT_SECRETS_TMPFS = '/dev/shm/airlock-secrets';

const TMPFS_MAGIC = 0x01021994;
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$/;
const MAX_FILES = 64;
const MAX_BYTES = 1024 * 1024; // 1 MiB in all

export interface SecretFile {
  /** Relative to /run/secrets, e.g. `team/app/npm/token`. */
  path: string;
  data: Buffer;
}

export function checkSecretFiles(files: readonly SecretFile[], jobId: string): void {
  const issues: { file: string; path: string; message: string; severity: 'error' }[] = [];
  const seen = new Set<string>();
  let bytes = 0;
  if (files.length > MAX_FILES) issues.push({ file: `job ${jobId}`, path: 'secretFiles', message: `at most ${MAX_FILES} secret files`, severity: 'error' });
  files.forEach((f, i) => {
    if (!f.path.split('/').every((s) => SEGMENT.test(s) && s !== '.' && s !== '..')) {
      issues.push({ file: `job ${jobId}`, path: `secretFiles[${i}].path`, message: 'relative path of letters, digits, _ . - segments', severity: 'error' });
    }
    if (seen.has(f.path)) issues.push({ file: `job ${jobId}`, path: `secretFiles[${i}].path`, message: 'given twice', severity: 'error' });
    seen.add(f.path);
    bytes += f.data.length;
  });
  // A file and a directory of the same name cannot both exist.
  for (const p of seen) if ([...seen].some((q) => q.startsWith(`${p}/`))) issues.push({ file: `job ${jobId}`, path: 'secretFiles', message: `${p} is both a file and a directory`, severity: 'error' });
  if (bytes > MAX_BYTES) issues.push({ file: `job ${jobId}`, path: 'secretFiles', message: 'more than 1 MiB of secrets', severity: 'error' });
  if (issues.length > 0) throw new InvalidInputError(issues);
}

/** Write `files` into a new directory under `root` (which must be on a tmpfs); returns that directory. */
export async function writeSecretFiles(root: string, files: readonly SecretFile[], owner: { uid: number; gid: number }): Promise<string> {
  await mkdir(root, { recursive: true, mode: 0o700 });
  const fs = await statfs(root);
  if (fs.type !== TMPFS_MAGIC) throw new StorageFailedError(`${root} is not on a tmpfs: secrets are never written to disk`);
  const dir = join(root, `job-${randomBytes(8).toString('hex')}`);
  await mkdir(dir, { mode: 0o700 });
  try {
    const dirs = new Set<string>();
    for (const f of files) {
      for (let d = dirname(f.path); d !== '.'; d = dirname(d)) dirs.add(d);
    }
    for (const d of [...dirs].sort((a, b) => a.length - b.length)) await mkdir(join(dir, d), { mode: 0o700 });
    for (const f of files) {
      await writeFile(join(dir, f.path), f.data, { mode: 0o400, flag: 'wx' });
      await chown(join(dir, f.path), owner.uid, owner.gid);
    }
    for (const d of [...dirs].sort((a, b) => b.length - a.length)) await chown(join(dir, d), owner.uid, owner.gid);
    await chown(dir, owner.uid, owner.gid);
    // Directories readable and searchable by their owner only, once everything is in place.
    for (const d of [...dirs]) await chmod(join(dir, d), 0o500);
    await chmod(dir, 0o500);
    return dir;
  } catch (e) {
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    throw e;
  }
}

export async function removeSecretFiles(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}
