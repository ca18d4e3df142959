/** Running a host tool (mkfs, losetup) with a clear error naming the tool and its stderr. */
import { execFile } from 'node:child_process';
import { ExecutorFailedError } from '../errors.js';

export function run(cmd: string, args: readonly string[], timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new ExecutorFailedError(`${cmd} ${args.join(' ')}: ${String(stderr).trim() || err.message}`, { cause: err }));
      else resolve(String(stdout));
    });
  });
}
