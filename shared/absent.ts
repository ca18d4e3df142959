/**
 * A file operation whose "no such file" is an answer, not a failure: `absentAsUndefined(lstat(p))`
 * is the stat, or undefined when nothing is at `p`; every other error is thrown as it is.
 */
export async function absentAsUndefined<T>(operation: Promise<T>): Promise<T | undefined> {
  try {
    return await operation;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}
