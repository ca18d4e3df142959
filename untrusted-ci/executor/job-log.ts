/**
 * One job's whole log on local disk while it runs: the executor appends each kept piece (the runner
 * already capped it), then uploads the file to the ArtifactStore when the job ends.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';

export class JobLog {
  private bytes = 0;
  private constructor(
    readonly file: string,
    private readonly out: WriteStream,
  ) {}

  static async open(file: string): Promise<JobLog> {
    await mkdir(dirname(file), { recursive: true });
    return new JobLog(file, createWriteStream(file, { flags: 'w' }));
  }

  write(data: Buffer): void {
    this.bytes += data.length;
    this.out.write(data);
  }

  /** Flush and close; resolves to the bytes written. Safe to call twice. */
  close(): Promise<number> {
    if (this.out.closed) return Promise.resolve(this.bytes);
    return new Promise((res, rej) => {
      this.out.once('error', rej);
      this.out.end(() => res(this.bytes));
    });
  }
}
