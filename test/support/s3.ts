/**
 * A real S3 server for tests: s3rver in a child process on 127.0.0.1 and a free port, storing its
 * objects in a fresh temp directory, with one bucket made up front. `stop()` ends the child and
 * removes the directory; the child also exits by itself when its stdin closes, so a test process
 * that dies does not leave it behind. Use one per test file (beforeAll/afterAll).
 *
 * Why a child and not in-process: s3rver encrypts ListObjectsV2 continuation tokens with DES,
 * which OpenSSL 3 only offers with `--openssl-legacy-provider`, a process-wide flag we do not want
 * in the test process. Without it, any listing of more than one page fails with a 500.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export interface TestS3 {
  /** `http://127.0.0.1:<port>`: use path-style addressing. */
  endpoint: string;
  bucket: string;
  region: string;
  /** s3rver's built-in account. It knows the key id but does not verify SigV4 signatures. */
  accessKeyId: string;
  secretAccessKey: string;
  stop(): Promise<void>;
}

/** Runs in the child (CommonJS): argv = [s3rver module, directory, bucket]. Prints `{"port":N}` once listening. */
const CHILD = `
const [mod, directory, bucket] = process.argv.slice(1);
const S3rver = require(mod);
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket }] });
server.run().then((a) => process.stdout.write(JSON.stringify({ port: a.port }) + '\\n'), (e) => { console.error(e); process.exit(1); });
process.stdin.on('end', () => process.exit(0)).resume();
`;

const STARTUP_TIMEOUT_MS = 20_000;

export async function startS3(bucket = 'airlock-test'): Promise<TestS3> {
  const s3rverModule = createRequire(import.meta.url).resolve('s3rver');
  const directory = await mkdtemp(join(tmpdir(), 'airlock-s3rver-'));
  const child = spawn(process.execPath, ['--openssl-legacy-provider', '-e', CHILD, s3rverModule, directory, bucket], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = once(child, 'exit');

  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.stdin.end();
      child.kill('SIGTERM');
      await exited;
    }
    await rm(directory, { recursive: true, force: true });
  };

  try {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => child.kill('SIGTERM'), STARTUP_TIMEOUT_MS);
    const [line] = (await Promise.race([once(lines, 'line'), exited.then(() => [undefined])])) as [string | undefined];
    clearTimeout(timer);
    lines.close();
    if (line === undefined) throw new Error(`s3rver did not start: ${stderr}`);
    const { port } = JSON.parse(line) as { port: number };
    return {
      endpoint: `http://127.0.0.1:${port}`,
      bucket,
      region: 'us-east-1', // s3rver's continuation tokens only accept this region
      accessKeyId: 'S3RVER',
      secretAccessKey: 'S3RVER',
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
