/**
 * A directory of files sealed with OpenPGP: each is encrypted to the builder's embargo key and to
 * every security team key (so a member can read a file with their own key and gpg, without the
 * builder), and signed by the embargo key (so nobody who can merely write to the directory can
 * plant a file the builder would trust: the embargo *public* key is public). The signed content
 * starts with a line naming the file, so a sealed file moved or copied under another name is
 * refused too.
 *
 * Names are chosen by the caller (the store uses random hex); a file is `<dir>/<name>.pgp`, 0600,
 * in a 0700 directory, written to a temporary file, fsync'ed and renamed into place, so a crash
 * leaves the old version or the new one, never half of one.
 *
 * Reads verify the signature without a clock (`date: null`): a file the builder signed stays
 * readable when the clock is later set back.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { syncDir, writeDurably } from '../durable-file.js';
import { StorageFailedError } from '#shared/errors.js';
import type { EmbargoKey } from './embargo-key.js';

const SUFFIX = '.pgp';
const TMP_MARK = '.tmp-';
const NAME_PATTERN = /^[a-z0-9-]{1,64}$/;
const FRAME_PREFIX = 'airlock-embargo-file v1 ';

export class SealedFiles {
  constructor(
    readonly dir: string,
    private readonly key: EmbargoKey,
    /** Who besides the embargo key can read what is written (the team's keys). */
    private readonly recipients: readonly openpgp.PublicKey[],
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  /** A fresh random name (128 bits): says nothing about what the file holds. */
  static newName(): string {
    return randomBytes(16).toString('hex');
  }

  async write(name: string, bytes: Uint8Array): Promise<void> {
    const file = this.path(name);
    const framed = Buffer.concat([Buffer.from(`${FRAME_PREFIX}${name}\n`, 'utf8'), bytes]);
    const sealed = await openpgp.encrypt({
      message: await openpgp.createMessage({ binary: framed }),
      encryptionKeys: [this.key.publicKey, ...this.recipients],
      signingKeys: this.key.privateKey,
      format: 'binary',
    });
    const tmp = `${file}${TMP_MARK}${randomBytes(6).toString('hex')}`;
    try {
      await writeDurably(tmp, sealed, 0o600);
      await rename(tmp, file);
      await syncDir(this.dir);
    } catch (e) {
      await rm(tmp, { force: true });
      throw new StorageFailedError(`embargo store: cannot write ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
    }
  }

  async read(name: string): Promise<Uint8Array> {
    const file = this.path(name);
    let raw: Buffer;
    try {
      raw = await readFile(file);
    } catch (e) {
      throw new StorageFailedError(`embargo store: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
    }
    let data: Uint8Array;
    try {
      const message = await openpgp.readMessage({ binaryMessage: raw });
      const r = await openpgp.decrypt({ message, decryptionKeys: this.key.privateKey, verificationKeys: this.key.publicKey, expectSigned: true, format: 'binary', date: null as unknown as Date });
      data = r.data;
    } catch (e) {
      throw new StorageFailedError(`embargo store: ${file} does not decrypt with the embargo key or is not signed by it (${(e as Error).message}): a wrong key, or the file was altered`);
    }
    const header = Buffer.from(`${FRAME_PREFIX}${name}\n`, 'utf8');
    const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (body.length < header.length || !body.subarray(0, header.length).equals(header)) {
      throw new StorageFailedError(`embargo store: ${file} holds another file's content (moved or copied under this name)`);
    }
    return body.subarray(header.length);
  }

  async remove(name: string): Promise<void> {
    await rm(this.path(name), { force: true });
  }

  /** The names of the sealed files present; leftover temporary files are removed. */
  async names(): Promise<string[]> {
    const out: string[] = [];
    for (const entry of await readdir(this.dir)) {
      if (entry.includes(TMP_MARK)) await rm(join(this.dir, entry), { force: true });
      else if (entry.endsWith(SUFFIX)) out.push(entry.slice(0, -SUFFIX.length));
    }
    return out;
  }

  private path(name: string): string {
    if (!NAME_PATTERN.test(name)) throw new StorageFailedError(`embargo store: bad file name ${JSON.stringify(name)}`);
    return join(this.dir, `${name}${SUFFIX}`);
  }
}
