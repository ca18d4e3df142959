/**
 * Writing files so that they survive a crash: the bytes fsync'ed before the file is used, and the
 * directory fsync'ed after an entry is created, renamed or linked in it.
 */
import { open } from 'node:fs/promises';

/** Create `path` (it must not exist), write `bytes`, fsync, close. */
export async function writeDurably(path: string, bytes: Uint8Array, mode = 0o644): Promise<void> {
  const fh = await open(path, 'wx', mode);
  try {
    await fh.writeFile(bytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsync a directory, so that the entries created or renamed in it are on disk. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
