/**
 * A cap on a tar stream made from untrusted git (`git archive`): bytes and entries, counted as the
 * stream passes, so that a small pack whose trees reuse one blob many times (a 4 KiB pack can
 * describe hundreds of MiB) is stopped at the cap instead of filling the disk. Over either cap the
 * stream fails with InvalidInputError naming what and the cap.
 *
 * Entries are counted from the tar headers as they pass (512-byte blocks: a header, then the
 * entry's data rounded up to whole blocks; the size is the octal field at offset 124, or base-256
 * when its high bit is set). Pax and GNU long-name headers count as entries too: they are still
 * work for whoever reads the archive.
 */
import { Transform } from 'node:stream';
import { InvalidInputError } from '#shared/errors.js';

const BLOCK = 512;

export interface ArchiveCap {
  maxBytes: number;
  maxEntries: number;
  /** What the archive is of, for the message (`the merged tree of change 12,3`). */
  what: string;
}

/** The size field of a tar header (octal, or base-256 for large values); undefined if unreadable. */
function entrySize(header: Buffer): number | undefined {
  const field = header.subarray(124, 136);
  if ((field[0]! & 0x80) !== 0) {
    let n = 0;
    for (let i = 1; i < field.length; i++) n = n * 256 + field[i]!;
    return Number.isSafeInteger(n) ? n : undefined;
  }
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  if (text === '') return 0;
  return /^[0-7]+$/.test(text) ? parseInt(text, 8) : undefined;
}

/** The error of an archive past a cap: `why` names the cap (`its archive has more than 10 entries`). */
export function archiveCapError(what: string, why: string): InvalidInputError {
  return new InvalidInputError([{ file: 'repository', path: what, message: why, severity: 'error' }]);
}

/** A pass-through Transform that fails past `cap` (see the module comment). */
export function capArchive(cap: ArchiveCap): Transform {
  let bytes = 0;
  let entries = 0;
  /** Bytes of data (and padding) left to skip before the next header. */
  let skip = 0;
  let partial: Buffer = Buffer.alloc(0);
  const over = (why: string) => archiveCapError(cap.what, why);
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      bytes += chunk.length;
      if (bytes > cap.maxBytes) return done(over(`its archive is larger than ${cap.maxBytes} bytes`));
      let buf = partial.length > 0 ? Buffer.concat([partial, chunk]) : chunk;
      partial = Buffer.alloc(0);
      while (buf.length > 0) {
        if (skip > 0) {
          const n = Math.min(skip, buf.length);
          skip -= n;
          buf = buf.subarray(n);
          continue;
        }
        if (buf.length < BLOCK) {
          partial = Buffer.from(buf);
          break;
        }
        const header = buf.subarray(0, BLOCK);
        buf = buf.subarray(BLOCK);
        if (header.every((b) => b === 0)) continue; // end-of-archive blocks
        const size = entrySize(header);
        if (size === undefined) return done(over('its archive has an unreadable tar header'));
        if (++entries > cap.maxEntries) return done(over(`its archive has more than ${cap.maxEntries} entries`));
        skip = Math.ceil(size / BLOCK) * BLOCK;
      }
      done(null, chunk);
    },
  });
}
