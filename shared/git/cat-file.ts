/**
 * Object reads without a process each: one long-lived `git cat-file --batch-command` per
 * repository answers `info` and `contents` requests in order, over its pipes.
 *
 * Why: a check build read its config, its commits and its merge base with six short git processes.
 * Starting one blocks the service's event loop until the child has exec'd (1.5 ms idle, 5 ms on
 * a loaded 2-core machine, measured by bench:ci's profile), on top of the child's own start-up.
 *
 * Freshness: git looks a missing object up again on disk (re-reading the pack directory) and reads
 * refs from the files on each lookup, so objects and refs another git process wrote after this one
 * started are seen. Packs that `git gc` deleted stay open (and their disk space held) until the
 * process ends: `closeCatFile(gitDir)` after a gc, and every process ends when idle for `idleMs` or
 * after `maxRequests` answers.
 *
 * Hostile content: a repository's objects may be anything. `contents` reads an object's size first
 * and only then its bytes, when they fit the caller's cap; an answer that does not parse, or none
 * within `timeoutMs`, kills the process and fails every waiting request with GitFailedError (the
 * next request starts a new one). Names are the caller's (object ids, `<ref>^{commit}`), never a
 * path taken from a repository; one holding a line break or NUL is refused.
 */
import type { ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import { CancelledError, GitFailedError } from '../errors.js';
import { spawnGitServer } from './git.js';

export type ObjectType = 'blob' | 'tree' | 'commit' | 'tag';

/** What `info` says of an object. */
export interface ObjectInfo {
  oid: string;
  type: ObjectType;
  size: number;
}

export interface CatFileOptions {
  /** The process ends after this long without a request (default 10 s). */
  idleMs?: number;
  /** No answer for this long while requests wait: the process is killed (default 30 s). */
  timeoutMs?: number;
  /** Answers after which the process is replaced, bounding its object cache (default 20,000). */
  maxRequests?: number;
}

interface Waiting {
  kind: 'info' | 'contents';
  resolve(v: { info: ObjectInfo; data?: Buffer } | undefined): void;
  reject(e: Error): void;
}

/** Longest header line accepted: "<oid> <type> <size>" or "<name> missing". */
const HEADER_MAX = 8192;
const HEADER = /^([0-9a-f]{40}|[0-9a-f]{64}) (blob|tree|commit|tag) (\d{1,15})$/;

/** One repository's reader; see the module comment. */
export class CatFile {
  private child: ChildProcess | undefined;
  private waiting: Waiting[] = [];
  /** Bytes received and not yet consumed. */
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** The body being read for waiting[0]: its header and how many bytes (with the trailing LF) it has. */
  private body: { info: ObjectInfo } | undefined;
  private stderr = '';
  private answered = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private stallTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** close() was asked while requests waited: the process ends when they are answered. */
  private retiring = false;

  constructor(
    readonly gitDir: string,
    private readonly opts: CatFileOptions = {},
  ) {}

  /** The process's id while one runs. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** The object `name` names, or undefined when there is none (or the name is ambiguous). */
  async info(name: string, signal?: AbortSignal): Promise<ObjectInfo | undefined> {
    return (await this.request('info', name, signal))?.info;
  }

  /**
   * The object's header and bytes when it has at most `maxBytes`; `{ info }` alone (no `data`) when
   * it has more; undefined when there is no such object. Two requests: the size, then the bytes of
   * that very object id (a ref that moves in between cannot swap in a bigger one).
   */
  async contents(name: string, maxBytes: number, signal?: AbortSignal): Promise<{ info: ObjectInfo; data?: Buffer } | undefined> {
    const info = await this.info(name, signal);
    if (!info || info.size > maxBytes) return info && { info };
    const got = await this.request('contents', info.oid, signal);
    if (!got?.data || got.info.oid !== info.oid || got.data.length !== info.size) {
      throw new GitFailedError(`git cat-file: object ${info.oid} changed or vanished while it was read`);
    }
    return got;
  }

  /** Ends the process once no request waits (at once when none does); a later request starts a new one. */
  close(): void {
    if (this.waiting.length === 0) this.stop(new GitFailedError('git cat-file: closed'));
    else this.retiring = true;
  }

  /** Ends the process now, for good: waiting and later requests fail. */
  dispose(): void {
    this.closed = true;
    this.stop(new GitFailedError('git cat-file: closed'));
  }

  private request(kind: Waiting['kind'], name: string, signal?: AbortSignal): Promise<{ info: ObjectInfo; data?: Buffer } | undefined> {
    if (signal?.aborted) return Promise.reject(new CancelledError('git cat-file: cancelled'));
    if (this.closed) return Promise.reject(new GitFailedError('git cat-file: the reader is closed'));
    if (name.length === 0 || /[\n\r\0]/.test(name)) return Promise.reject(new GitFailedError(`git cat-file: refused an object name with a line break or NUL: ${JSON.stringify(name.slice(0, 80))}`));
    const child = this.process();
    return new Promise((resolve, reject) => {
      this.waiting.push({ kind, resolve, reject });
      if (this.waiting.length === 1) this.armStall();
      this.setRef(true);
      child.stdin?.write(`${kind} ${name}\n`);
    });
  }

  private process(): ChildProcess {
    if (this.child) return this.child;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    const child = spawnGitServer(['cat-file', '--batch-command'], this.gitDir);
    this.child = child;
    this.answered = 0;
    this.stderr = '';
    this.chunks = [];
    this.buffered = 0;
    this.body = undefined;
    child.stdin?.on('error', () => undefined); // EPIPE after git died: 'close' below fails the waiters
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (s: string) => {
      if (this.stderr.length < 4096) this.stderr += s.slice(0, 4096 - this.stderr.length);
    });
    child.stdout?.on('data', (b: Buffer) => {
      if (this.child !== child) return;
      this.chunks.push(b);
      this.buffered += b.length;
      this.parse();
    });
    child.on('error', (e) => {
      if (this.child === child) this.stop(new GitFailedError(`git cat-file: could not start git: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, sig) => {
      if (this.child === child) this.stop(new GitFailedError(`git cat-file ended (${code ?? sig}) with ${this.waiting.length} request(s) unanswered${this.stderr.trim() ? `: ${this.stderr.trim()}` : ''}`));
    });
    return child;
  }

  /** Takes `n` bytes off the front of what was received. */
  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }

  private parse(): void {
    for (;;) {
      const w = this.waiting[0];
      if (!w) {
        if (this.buffered > 0) return this.stop(new GitFailedError('git cat-file: output nobody asked for'));
        return;
      }
      if (this.body) {
        const need = this.body.info.size + 1;
        if (this.buffered < need) return;
        const bytes = this.take(need);
        if (bytes[need - 1] !== 0x0a) return this.stop(new GitFailedError('git cat-file: an object not followed by a line break'));
        const info = this.body.info;
        this.body = undefined;
        this.answer({ info, data: Buffer.from(bytes.subarray(0, need - 1)) });
        continue;
      }
      const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
      this.chunks = all.length > 0 ? [all] : [];
      const nl = all.indexOf(0x0a);
      if (nl < 0) {
        if (this.buffered > HEADER_MAX) this.stop(new GitFailedError('git cat-file: a header line too long'));
        return;
      }
      const line = this.take(nl + 1).subarray(0, nl).toString('latin1');
      const m = HEADER.exec(line);
      if (m) {
        const info: ObjectInfo = { oid: m[1]!, type: m[2] as ObjectType, size: Number(m[3]) };
        if (w.kind === 'info') this.answer({ info });
        else this.body = { info };
      } else if (/ (missing|ambiguous)$/.test(line)) this.answer(undefined);
      else return this.stop(new GitFailedError(`git cat-file: an answer that does not parse: ${JSON.stringify(line.slice(0, 200))}`));
    }
  }

  private answer(v: { info: ObjectInfo; data?: Buffer } | undefined): void {
    const w = this.waiting.shift();
    this.answered++;
    if (this.waiting.length > 0) this.armStall();
    else this.becameIdle();
    w?.resolve(v);
  }

  private armStall(): void {
    if (this.stallTimer) clearTimeout(this.stallTimer);
    const ms = this.opts.timeoutMs ?? 30_000;
    this.stallTimer = setTimeout(() => this.stop(new GitFailedError(`git cat-file: no answer within ${ms} ms`)), ms);
    this.stallTimer.unref();
  }

  private becameIdle(): void {
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
    if (this.retiring || this.answered >= (this.opts.maxRequests ?? 20_000)) return this.stop(new GitFailedError('git cat-file: replaced'));
    this.setRef(false);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.stop(new GitFailedError('git cat-file: idle')), this.opts.idleMs ?? 10_000);
    this.idleTimer.unref();
  }

  /** An idle reader keeps no process alive: its pipes are unref'd until a request waits. */
  private setRef(on: boolean): void {
    const c = this.child;
    if (!c) return;
    for (const s of [c.stdin, c.stdout, c.stderr] as (Socket | null)[]) {
      if (on) s?.ref?.();
      else s?.unref?.();
    }
    if (on) c.ref();
    else c.unref();
  }

  private stop(reason: Error): void {
    const child = this.child;
    this.child = undefined;
    this.retiring = false;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.stallTimer = this.idleTimer = undefined;
    this.body = undefined;
    this.chunks = [];
    this.buffered = 0;
    const waiting = this.waiting.splice(0);
    if (child) {
      child.stdin?.end();
      try {
        process.kill(-(child.pid ?? 0), 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
      child.unref();
    }
    for (const w of waiting) w.reject(reason);
  }
}

const readers = new Map<string, CatFile>();

/** The shared reader of the repository at `gitDir` (made on first use). */
export function catFileOf(gitDir: string): CatFile {
  let r = readers.get(gitDir);
  if (!r) {
    r = new CatFile(gitDir);
    readers.set(gitDir, r);
  }
  return r;
}

/** Ends the shared reader of `gitDir` once the reads waiting on it are answered (after a gc, so that it holds no deleted pack). */
export function closeCatFile(gitDir: string): void {
  readers.get(gitDir)?.close();
}
