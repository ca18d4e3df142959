/**
 * The trusted builder's audit log: append-only JSONL, one record per decision, each record holding
 * the hash of the one before it, so an edit, a deletion or a reordering anywhere but at the very end
 * breaks the chain and `verifyAuditLog` names the first bad line.
 *
 * Record (one line, `\n`-terminated):
 *   `{ seq, at, kind, ...fields, prev, hash }`
 *   - `seq`  1, 2, 3 … (equal to the line number in an intact log)
 *   - `at`   ISO-8601 UTC time from the injected clock
 *   - `kind` an `AuditKind`
 *   - `prev` the previous record's `hash`, or `GENESIS_HASH` (64 zeros) for the first record
 *   - `hash` hex sha256 of the canonical JSON of the record without `hash`
 * Canonical JSON is RFC 8785 (trusted-builder/canonical-json.ts; a string with a lone surrogate keeps
 * `JSON.stringify`'s escape, as records have always been hashed). Lines are written in a readable key
 * order; the hash does not depend on it, so verification is independent of key order and whitespace.
 *
 * What the chain cannot show: records removed from the END leave a shorter but valid chain. The
 * file alone cannot tell; a caller that remembers (or publishes) an earlier `head` can, since the
 * head then changes or the remembered hash is no longer in the log.
 *
 * Writing: `AuditLog.open` creates the file (0600) and its directory (0700) if absent, and checks
 * the tail: the last line must be complete, parse, match its hash and link to the line before it.
 * A crash mid-write leaves a cut-off last line; open then refuses (ConflictError naming the line)
 * instead of forking the chain — an operator must look at the file. Open checks only the tail; run
 * `verifyAuditLog` for the whole chain. Appends are serialized in call order, each written with one
 * write and fsync'ed before its promise resolves. One writer per file: an append that finds the
 * file grown by someone else refuses (ConflictError), as does every append after a failed write.
 *
 * Secret guard: the log must never hold a secret value, so `append` refuses (InvalidInputError,
 * listing every offending path, nothing written) any field — at any depth — whose name contains
 * `secret`, `password`, `passwd`, `passphrase`, `token`, `credential`, `apikey` or `privatekey`
 * (case and separators ignored), or has the word `value`/`values`/`pwd`. A `secret-read` record
 * therefore carries only `path` (e.g. `{ path: 'kv/airlock/registry' }`). The guard checks names,
 * not contents: it is a backstop, not a leak scanner.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import { syncDir } from '../durable-file.js';
import { ConflictError, InternalError, InvalidInputError, isAirlockError, NotFoundError, StorageFailedError, type Issue } from '#shared/errors.js';
import { canonicalJson, type JsonValue } from '../canonical-json.js';

export const AuditKind = z.enum([
  'hint-accepted',
  'hint-refused',
  'verify-passed',
  'verify-refused',
  'dependencies-verified',
  'secret-read',
  'tests-passed',
  'tests-failed',
  'leak-check',
  'image-built',
  'pushed',
  'signed',
  'promotion-failed',
  'embargo',
]);
export type AuditKind = z.infer<typeof AuditKind>;

export type { JsonValue };

/** One parsed record. The header fields are fixed; the rest are the caller's fields. */
export type AuditRecord = { seq: number; at: string; kind: AuditKind; prev: string; hash: string } & { readonly [field: string]: JsonValue };

export type AuditVerification = { ok: true; records: number; head: string } | { ok: false; line: number; problem: string };

/** `prev` of the first record, and the head of an empty log. */
export const GENESIS_HASH = '0'.repeat(64);

const RESERVED_FIELDS = new Set(['seq', 'at', 'kind', 'prev', 'hash']);
/** Substrings of a normalised field name (lowercase, separators removed) that mark a secret. */
const SECRET_NAME_PARTS = ['secret', 'password', 'passwd', 'passphrase', 'token', 'credential', 'apikey', 'privatekey'];
/** Whole words of a field name (camelCase / snake / kebab split) that mark a secret. */
const SECRET_NAME_WORDS = new Set(['value', 'values', 'pwd']);
/** How much of the file `open` reads per step while looking for the last two lines. */
const TAIL_CHUNK_BYTES = 64 * 1024; // 64 KiB

const Hex64 = z.string().regex(/^[0-9a-f]{64}$/, 'not a hex sha256');
/** The header of a record; the caller's fields are kept from the raw object, not from zod's copy. */
const RecordHeader = z.object({ seq: z.number().int().positive(), at: z.iso.datetime(), kind: AuditKind, prev: Hex64, hash: Hex64 });

/** The hash a record must carry: sha256 of the canonical JSON of everything but `hash`. */
export function recordHash(record: Readonly<Record<string, JsonValue>>): string {
  const { hash: _ignored, ...rest } = record;
  return createHash('sha256').update(canonicalJson(rest)).digest('hex');
}

/** Every reason `fields` may not go into a record: reserved or secret-like names, non-JSON values. */
export function auditFieldIssues(fields: unknown, file = 'audit record'): Issue[] {
  const issues: Issue[] = [];
  const add = (path: string, message: string): void => {
    issues.push({ file, path, message, severity: 'error' });
  };
  const walk = (v: unknown, path: string): void => {
    if (v === null || typeof v === 'string' || typeof v === 'boolean') return;
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) add(path, `not a JSON number: ${v}`);
      return;
    }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        if (i in v) walk(v[i], `${path}[${i}]`);
        else add(`${path}[${i}]`, 'not a JSON value (an array hole)');
      }
      return;
    }
    const proto: unknown = typeof v === 'object' ? Object.getPrototypeOf(v) : undefined;
    if (typeof v !== 'object' || (proto !== Object.prototype && proto !== null)) {
      const what = typeof v === 'object' ? ((v as object).constructor?.name ?? 'object') : typeof v;
      return add(path, `not a JSON value (${what})`);
    }
    for (const [key, x] of Object.entries(v)) {
      const at = path ? `${path}.${key}` : key;
      if (isSecretLikeName(key)) add(at, 'named like a secret: secret values never go in the audit log (a secret-read record carries only `path`)');
      walk(x, at);
    }
  };
  if (fields === null || typeof fields !== 'object' || Array.isArray(fields)) add('', 'fields must be an object');
  else {
    for (const key of Object.keys(fields)) if (RESERVED_FIELDS.has(key)) add(key, `reserved: the log sets \`${key}\` itself`);
    walk(fields, '');
  }
  return issues;
}

export function isSecretLikeName(name: string): boolean {
  const normalised = name.toLowerCase().replace(/[^a-z0-9]/g, '');
  if (SECRET_NAME_PARTS.some((p) => normalised.includes(p))) return true;
  const words = name.replace(/([a-z0-9])([A-Z])/g, '$1 $2').toLowerCase().split(/[^a-z0-9]+/);
  return words.some((w) => SECRET_NAME_WORDS.has(w));
}

export type CheckedLine = { record: AuditRecord } | { problem: string };

/** One line on its own: present, JSON, a record, and its hash matches its content (readers use it too). */
export function checkAuditLine(text: string): CheckedLine {
  if (text.trim() === '') return { problem: 'empty line' };
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    // The parser's message quotes the line; a tampered line may hold terminal escapes, so say less.
    return { problem: 'not valid JSON (garbled or cut-off line)' };
  }
  const header = RecordHeader.safeParse(raw);
  if (!header.success) {
    const i = header.error.issues[0];
    return { problem: `not an audit record: ${i?.path.join('.') || '(root)'}: ${i?.message ?? 'invalid'}` };
  }
  const record = raw as AuditRecord;
  if (recordHash(record) !== record.hash) return { problem: 'hash does not match the record: the record was edited' };
  return { record };
}

/** The link from `before` (undefined: start of the log) to `record`: undefined when intact, else the problem. */
export function checkAuditLink(before: AuditRecord | undefined, record: AuditRecord): string | undefined {
  const seq = (before?.seq ?? 0) + 1;
  if (record.seq !== seq) return `seq ${record.seq} where ${seq} was expected: a record was deleted, inserted or moved`;
  if (record.prev !== (before?.hash ?? GENESIS_HASH)) return 'prev does not match the hash of the record before it: the chain is broken (a record was replaced, deleted or moved)';
  return undefined;
}

/** Lines of a file, streamed; `terminated` is false only for a last line with no `\n`. */
async function* fileLines(file: string): AsyncGenerator<{ text: string; terminated: boolean }> {
  let rest = Buffer.alloc(0);
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    let buf = rest.length ? Buffer.concat([rest, chunk]) : chunk;
    for (let nl = buf.indexOf(10); nl >= 0; nl = buf.indexOf(10)) {
      yield { text: buf.subarray(0, nl).toString('utf8'), terminated: true };
      buf = buf.subarray(nl + 1);
    }
    rest = Buffer.from(buf);
  }
  if (rest.length) yield { text: rest.toString('utf8'), terminated: false };
}

function ioError(file: string, e: unknown): Error {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') return new NotFoundError(`audit log ${file} does not exist`);
  if (code === 'EISDIR') return new InvalidInputError([{ file, path: '', message: 'is a directory, not an audit log', severity: 'error' }]);
  return new StorageFailedError(`audit log ${file}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
}

/**
 * Check the whole chain of `file`; `line` is 1-based. An empty file is a valid empty log. Throws
 * NotFoundError if the file is missing, StorageFailedError if it cannot be read.
 */
export async function verifyAuditLog(file: string): Promise<AuditVerification> {
  let before: AuditRecord | undefined;
  let line = 0;
  try {
    for await (const { text, terminated } of fileLines(file)) {
      line++;
      const checked = checkAuditLine(text);
      if ('problem' in checked) return { ok: false, line, problem: checked.problem };
      const broken = checkAuditLink(before, checked.record);
      if (broken) return { ok: false, line, problem: broken };
      if (!terminated) return { ok: false, line, problem: 'the last line has no newline: a write was cut short' };
      before = checked.record;
    }
  } catch (e) {
    throw ioError(file, e);
  }
  return { ok: true, records: line, head: before?.hash ?? GENESIS_HASH };
}

/** The last two lines of the file (fewer if it has fewer), read backwards in chunks. */
async function readTail(h: FileHandle, size: number): Promise<{ lines: string[]; terminated: boolean; atStart: boolean }> {
  let pos = size;
  let buf = Buffer.alloc(0);
  const newlines = () => buf.subarray(0, buf.length - 1).filter((b) => b === 10).length;
  while (pos > 0 && newlines() < 2) {
    const n = Math.min(TAIL_CHUNK_BYTES, pos);
    pos -= n;
    const chunk = Buffer.alloc(n);
    await h.read(chunk, 0, n, pos);
    buf = Buffer.concat([chunk, buf]);
  }
  const text = buf.toString('utf8');
  const terminated = text.endsWith('\n');
  const lines = (terminated ? text.slice(0, -1) : text).split('\n');
  if (pos > 0) lines.shift(); // starts mid-line
  return { lines: lines.slice(-2), terminated, atStart: pos === 0 };
}

/** The problem with the tail of a log, or where its chain ends. `atStart`: `lines` begin the file. */
function checkTail({ lines, terminated, atStart }: { lines: string[]; terminated: boolean; atStart: boolean }): { problem: string } | { last: AuditRecord } {
  const checked = lines.map(checkAuditLine);
  for (const c of checked) if ('problem' in c) return c;
  const [a, b] = checked as { record: AuditRecord }[];
  const last = (b ?? a)!.record;
  const broken = b ? checkAuditLink(a!.record, last) : atStart ? checkAuditLink(undefined, last) : undefined;
  if (broken) return { problem: broken };
  if (!terminated) return { problem: 'the last line has no newline: a write was cut short' };
  return { last };
}

export class AuditLog {
  private queue: Promise<unknown> = Promise.resolve();
  private failed: Error | undefined;
  private closed = false;

  private constructor(
    readonly file: string,
    private readonly handle: FileHandle,
    private readonly now: () => number,
    private size: number,
    private lastSeq: number,
    private lastHash: string,
  ) {}

  /** Open (or create) the log at `file` and continue its chain; refuses a log whose tail is broken. */
  static async open(file: string, opts: { now?: () => number } = {}): Promise<AuditLog> {
    let handle: FileHandle;
    let created = false;
    try {
      await mkdir(dirname(file), { recursive: true, mode: 0o700 });
      created = await stat(file).then(() => false, (e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? true : Promise.reject(e)));
      handle = await open(file, 'a+', 0o600);
    } catch (e) {
      throw ioError(file, e);
    }
    try {
      if (created) await syncDir(dirname(file)); // the new directory entry survives a crash too
      const size = (await handle.stat()).size;
      if (size === 0) return new AuditLog(file, handle, opts.now ?? Date.now, 0, 0, GENESIS_HASH);
      const tail = checkTail(await readTail(handle, size));
      if ('last' in tail) return new AuditLog(file, handle, opts.now ?? Date.now, size, tail.last.seq, tail.last.hash);
      // Name the exact line: the full pass is only paid for on a log that is already broken.
      const full = await verifyAuditLog(file);
      const where = full.ok ? `last record: ${tail.problem}` : `line ${full.line}: ${full.problem}`;
      throw new ConflictError(`audit log ${file} is broken at ${where}; refusing to append to a broken chain (check it with \`airlock builder audit verify ${file}\`)`);
    } catch (e) {
      await handle.close();
      throw isAirlockError(e) ? e : ioError(file, e);
    }
  }

  /** The hash of the last record (`GENESIS_HASH` for an empty log). */
  get head(): string {
    return this.lastHash;
  }

  /** The `seq` of the last record (0 for an empty log). */
  get seq(): number {
    return this.lastSeq;
  }

  /**
   * Append one record and resolve once it is on disk (fsync'ed). Calls are written in call order,
   * one at a time. `fields` are checked and copied at the call: a refused call writes nothing and
   * takes no `seq`.
   */
  async append(kind: AuditKind, fields: Readonly<Record<string, JsonValue>> = {}): Promise<AuditRecord> {
    const issues = auditFieldIssues(fields, this.file);
    if (!AuditKind.safeParse(kind).success) issues.unshift({ file: this.file, path: 'kind', message: `unknown audit kind ${JSON.stringify(kind)}`, severity: 'error' });
    if (issues.length) throw new InvalidInputError(issues);
    if (this.closed) throw new InternalError(`audit log ${this.file} is closed`);
    const copy = structuredClone(fields);
    const run = this.queue.then(() => this.write(kind, copy));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Wait for pending appends, then close the file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue;
    await this.handle.close();
  }

  private async write(kind: AuditKind, fields: Readonly<Record<string, JsonValue>>): Promise<AuditRecord> {
    if (this.failed) throw this.failed;
    const size = (await this.handle.stat()).size;
    if (size !== this.size) {
      this.failed = new ConflictError(`audit log ${this.file} changed under this writer (${this.size} → ${size} bytes): another process writes to it; refusing to fork the chain`);
      throw this.failed;
    }
    const unhashed = { seq: this.lastSeq + 1, at: new Date(this.now()).toISOString(), kind, ...fields, prev: this.lastHash };
    const record = { ...unhashed, hash: recordHash(unhashed) } as AuditRecord;
    const line = `${JSON.stringify(record)}\n`;
    try {
      await this.handle.appendFile(line, 'utf8');
      await this.handle.sync();
    } catch (e) {
      // Part of the line may be on disk: this writer stops; a reopen finds and names the cut-off line.
      this.failed = new StorageFailedError(`audit log ${this.file}: append of seq ${record.seq} failed: ${(e as Error).message}`, { cause: e });
      throw this.failed;
    }
    this.size += Buffer.byteLength(line);
    this.lastSeq = record.seq;
    this.lastHash = record.hash;
    return record;
  }
}
