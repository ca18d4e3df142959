/**
 * The one way airlock runs git: `spawn` with an argument vector (never a shell), a scrubbed
 * environment, hardened config, a deadline, an output cap and a kill switch.
 *
 * Repositories airlock touches hold hostile content and may belong to other uids, so every git
 * process (and every git it starts, e.g. `upload-pack` for a local remote) sees:
 * - no system or user config: the "global" config is a file airlock writes (see HARDENING), and
 *   HOME / XDG_CONFIG_HOME point at that private directory;
 * - no hooks (`core.hooksPath=/dev/null`), no fsmonitor, no credential helpers, no prompts;
 * - a transport allow-list: file, git, http, https, ssh; `ext::` and every other helper are refused;
 * - `safe.directory=*`: ownership checks are off, because the hardening above is what makes a
 *   foreign repository safe to read, and mirrors may be owned by another uid;
 * - literal pathspecs, no replace refs, a fixed identity `airlock <airlock@localhost>`, `LC_ALL=C`.
 * The hardening is passed twice: as `-c` arguments (which beat a repository's own config) and as
 * the global config file, because git drops `-c` (GIT_CONFIG_PARAMETERS) when it starts
 * `upload-pack` for a local-path remote.
 *
 * Arguments are trusted (airlock's own code builds them); a value that came from outside must be
 * validated first (`isSha`, `validateRefName`, `remoteUrlProblem`) and placed after
 * `--end-of-options` or `--`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { CancelledError, GitFailedError, InvalidInputError } from '../errors.js';

/** The identity of every commit airlock writes (speculative merges). */
export const GIT_IDENTITY = Object.freeze({ name: 'airlock', email: 'airlock@localhost' });

/** Default deadline of one git process. */
export const DEFAULT_GIT_TIMEOUT_MS = 60_000; // 1 min
/** Default cap on a buffered git process's stdout. */
export const DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024; // 16 MiB
const MAX_STDERR_BYTES = 64 * 1024; // 64 KiB kept for error messages

/** Config applied to every git process; see the module comment. */
export const HARDENING: ReadonlyArray<readonly [key: string, value: string]> = [
  ['core.hooksPath', '/dev/null'],
  ['core.fsmonitor', 'false'],
  ['safe.directory', '*'],
  ['credential.helper', ''],
  ['protocol.allow', 'never'],
  ['protocol.file.allow', 'always'],
  ['protocol.git.allow', 'always'],
  ['protocol.http.allow', 'always'],
  ['protocol.https.allow', 'always'],
  ['protocol.ssh.allow', 'always'],
  ['protocol.ext.allow', 'never'],
  ['submodule.recurse', 'false'],
  ['fetch.recurseSubmodules', 'false'],
  ['maintenance.auto', 'false'], // no background gc after a fetch, outside the caller's lock
  ['gc.autoDetach', 'false'],
  ['init.defaultBranch', 'master'],
];

/** Options of one git process. */
export interface GitOptions {
  /** Working directory; defaults to `gitDir`, else airlock's private git home. */
  cwd?: string;
  /** Sets GIT_DIR: the repository to operate on (a bare mirror needs no worktree). */
  gitDir?: string;
  /** Deadline; the process group is killed when it passes. Default DEFAULT_GIT_TIMEOUT_MS. */
  timeoutMs?: number;
  /** Cap on buffered stdout (runGit only); exceeding it kills git. Default DEFAULT_MAX_OUTPUT_BYTES. */
  maxOutputBytes?: number;
  /** Bytes written to stdin; stdin is closed (/dev/null) when absent. */
  input?: Buffer;
  /** Aborting kills git and rejects with CancelledError. */
  signal?: AbortSignal;
  /** Extra environment (e.g. GIT_SSH_COMMAND, GIT_COMMITTER_DATE). Hardened keys cannot be overridden. */
  env?: Record<string, string>;
  /** Exit codes (besides 0) that are results rather than failures, e.g. [1] for `merge-tree`. */
  allowFail?: readonly number[];
}

/** What a finished git process produced. `code` is 0 or one of `allowFail`. */
export interface GitResult {
  stdout: Buffer;
  stderr: string;
  code: number;
}

let home: string | undefined;

/** airlock's private git home: an empty 0700 temp dir holding the hardened global config. */
function gitHome(): string {
  if (home) return home;
  const dir = mkdtempSync(join(tmpdir(), 'airlock-git-'));
  writeFileSync(join(dir, 'gitconfig'), configFile(HARDENING), { mode: 0o600 });
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  home = dir;
  return dir;
}

/** Renders `[k, v]` pairs as a git config file (`a.b.c` → `[a "b"] c = v`). */
function configFile(pairs: typeof HARDENING): string {
  return pairs
    .map(([key, value]) => {
      const first = key.indexOf('.');
      const last = key.lastIndexOf('.');
      const section = first === last ? key.slice(0, first) : `${key.slice(0, first)} "${key.slice(first + 1, last)}"`;
      return `[${section}]\n\t${key.slice(last + 1)} = "${value}"\n`;
    })
    .join('');
}

/** The complete environment of a git process: nothing inherited but PATH. */
function gitEnv(opts: GitOptions): Record<string, string> {
  const dir = gitHome();
  return {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    TZ: 'UTC',
    GIT_SSH_COMMAND: 'ssh -o BatchMode=yes',
    ...opts.env,
    LC_ALL: 'C',
    LANG: 'C',
    HOME: dir,
    XDG_CONFIG_HOME: dir,
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_CONFIG_SYSTEM: '/dev/null',
    GIT_CONFIG_GLOBAL: join(dir, 'gitconfig'),
    GIT_ATTR_NOSYSTEM: '1',
    GIT_TERMINAL_PROMPT: '0',
    GIT_ASKPASS: '/bin/false',
    SSH_ASKPASS: '/bin/false',
    GIT_NO_REPLACE_OBJECTS: '1',
    GIT_LITERAL_PATHSPECS: '1',
    GIT_AUTHOR_NAME: GIT_IDENTITY.name,
    GIT_AUTHOR_EMAIL: GIT_IDENTITY.email,
    GIT_COMMITTER_NAME: GIT_IDENTITY.name,
    GIT_COMMITTER_EMAIL: GIT_IDENTITY.email,
    ...(opts.gitDir ? { GIT_DIR: opts.gitDir } : {}),
  };
}

/**
 * A long-lived hardened git process with piped stdin, stdout and stderr (e.g. `cat-file
 * --batch-command`, cat-file.ts): the caller owns it and must kill it. Its own process group, like
 * every git here.
 */
export function spawnGitServer(args: readonly string[], gitDir: string): ChildProcess {
  const argv = [...HARDENING.flatMap(([k, v]) => ['-c', `${k}=${v}`]), ...args];
  return spawn('git', argv, { cwd: gitDir, env: gitEnv({ gitDir }), stdio: ['pipe', 'pipe', 'pipe'], detached: true });
}

interface Launched {
  stdout: Readable;
  /** Settles when git has exited and its pipes are closed; rejects with the reason it was killed. */
  done: Promise<{ code: number; stderr: string }>;
  /** Kills git's process group; `done` rejects with `reason`. No-op once git has exited. */
  kill(reason: Error): void;
}

/** "git <subcommand>" for messages: never the arguments, which may hold URLs with credentials. */
function describeCommand(args: readonly string[]): string {
  for (let i = 0; i < args.length; i++) {
    const a = args[i] ?? '';
    if (a === '-c' || a === '-C') i++;
    else if (!a.startsWith('-')) return `git ${a}`;
  }
  return 'git';
}

function launch(args: readonly string[], opts: GitOptions): Launched {
  const what = describeCommand(args);
  if (opts.signal?.aborted) throw new CancelledError(`${what}: cancelled before start`);
  const argv = [...HARDENING.flatMap(([k, v]) => ['-c', `${k}=${v}`]), ...args];
  // detached: git gets its own process group, so a kill also reaches upload-pack, ssh, index-pack.
  const child = spawn('git', argv, {
    cwd: opts.cwd ?? opts.gitDir ?? gitHome(),
    env: gitEnv(opts),
    stdio: [opts.input ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let exited = false;
  let killedWith: Error | undefined;
  const kill = (reason: Error): void => {
    if (exited || killedWith) return;
    killedWith = reason;
    try {
      process.kill(-(child.pid ?? 0), 'SIGKILL');
    } catch {
      child.kill('SIGKILL');
    }
  };
  const timer = setTimeout(() => kill(new GitFailedError(`${what}: timed out after ${opts.timeoutMs ?? DEFAULT_GIT_TIMEOUT_MS} ms`)), opts.timeoutMs ?? DEFAULT_GIT_TIMEOUT_MS);
  const onAbort = (): void => kill(new CancelledError(`${what}: cancelled`));
  opts.signal?.addEventListener('abort', onAbort, { once: true });

  const { stdout, stderr: errPipe } = child;
  if (!stdout || !errPipe) throw new GitFailedError(`${what}: no pipes to git`); // stdio above makes both pipes
  let stderr = '';
  errPipe.setEncoding('utf8');
  errPipe.on('data', (s: string) => {
    if (stderr.length < MAX_STDERR_BYTES) stderr += s.slice(0, MAX_STDERR_BYTES - stderr.length);
  });
  if (opts.input && child.stdin) {
    child.stdin.on('error', () => undefined); // EPIPE when git exits before reading all of it
    child.stdin.end(opts.input);
  }
  const done = new Promise<{ code: number; stderr: string }>((resolve, reject) => {
    child.once('error', (e) => {
      exited = true;
      clearTimeout(timer);
      reject(new GitFailedError(`${what}: could not start git: ${e.message}`, { cause: e }));
    });
    child.once('close', (code, signal) => {
      exited = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      if (killedWith) reject(killedWith);
      else if (code === null) reject(new GitFailedError(`${what}: killed by ${signal ?? 'a signal'}`));
      else resolve({ code, stderr });
    });
  });
  return { stdout, done, kill };
}

function failure(args: readonly string[], code: number, stderr: string): GitFailedError {
  const what = describeCommand(args);
  const detail = stderr.trim().split('\n').filter((l) => !l.startsWith('hint:')).join('\n').slice(-2000);
  return new GitFailedError(`${what} failed (exit ${code})${detail ? `: ${detail}` : ''}`);
}

/**
 * Runs git to completion and buffers its stdout.
 * Rejects with GitFailedError on a non-zero exit not in `allowFail` (the message names the
 * subcommand and carries stderr, trimmed), on timeout, on output over the cap, or when git cannot
 * start; with CancelledError when `signal` aborts. The process group is killed in each case.
 */
export async function runGit(args: readonly string[], opts: GitOptions = {}): Promise<GitResult> {
  const max = opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
  const git = launch(args, opts);
  const chunks: Buffer[] = [];
  let size = 0;
  git.stdout.on('data', (b: Buffer) => {
    size += b.length;
    if (size > max) git.kill(new GitFailedError(`${describeCommand(args)}: output exceeded ${max} bytes`));
    else chunks.push(b);
  });
  const { code, stderr } = await git.done;
  if (code !== 0 && !opts.allowFail?.includes(code)) throw failure(args, code, stderr);
  return { stdout: Buffer.concat(chunks), stderr, code };
}

/**
 * Runs git and returns its stdout as a stream (e.g. `git archive`). The stream ends only after git
 * exits 0; otherwise it is destroyed with the same errors runGit rejects with. Destroying the
 * stream early kills git. `maxOutputBytes` and `allowFail` do not apply.
 */
export function streamGit(args: readonly string[], opts: Omit<GitOptions, 'maxOutputBytes' | 'allowFail'> = {}): Readable {
  const out = new PassThrough();
  let git: Launched;
  try {
    git = launch(args, opts);
  } catch (e) {
    return out.destroy(e instanceof Error ? e : new GitFailedError(String(e)));
  }
  git.stdout.pipe(out, { end: false });
  git.done.then(
    ({ code, stderr }) => (code === 0 ? out.end() : out.destroy(failure(args, code, stderr))),
    (e: unknown) => out.destroy(e instanceof Error ? e : new GitFailedError(String(e))),
  );
  out.once('close', () => git.kill(new CancelledError('git: output stream closed by its reader')));
  return out;
}

/** True for a full object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits. */
export function isSha(s: string): boolean {
  return /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/.test(s);
}

/**
 * Why `name` is not an acceptable full ref name, or undefined if it is. The rules of
 * `git check-ref-format` (without --allow-onelevel), plus: not starting with `-`, at most 1024 bytes.
 * Pure: git is not run.
 */
export function refNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (Buffer.byteLength(name) > 1024) return 'is longer than 1024 bytes';
  if (name.startsWith('-')) return 'starts with "-"';
  if (name === '@') return 'is "@"';
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20\x7f~^:?*[\\]/.test(name)) return 'contains a space, control character or one of ~ ^ : ? * [ \\';
  if (name.includes('..')) return 'contains ".."';
  if (name.includes('@{')) return 'contains "@{"';
  if (name.startsWith('/') || name.endsWith('/') || name.includes('//')) return 'has an empty path component';
  if (name.endsWith('.')) return 'ends with "."';
  if (!name.includes('/')) return 'has a single component';
  for (const part of name.split('/')) {
    if (part.startsWith('.')) return 'has a component starting with "."';
    if (part.endsWith('.lock')) return 'has a component ending with ".lock"';
  }
  return undefined;
}

/**
 * Returns `name` when refNameProblem finds nothing wrong with it; otherwise throws
 * InvalidInputError whose one issue names `field` (e.g. `changes[2].ref`).
 */
export function validateRefName(name: string, field = 'ref'): string {
  const problem = refNameProblem(name);
  if (problem) throw new InvalidInputError([{ file: 'git', path: field, message: `ref ${JSON.stringify(name)} ${problem}`, severity: 'error' }]);
  return name;
}

const URL_SCHEMES = new Set(['https', 'http', 'ssh', 'git', 'file', 'git+ssh', 'ssh+git']);

/**
 * Why `url` is not a remote airlock will fetch from, or undefined. Accepted: `https://`, `http://`,
 * `ssh://`, `git://`, `file://` URLs, scp-like `user@host:path`, and absolute local paths. Refused:
 * transport-helper syntax (`ext::…`, `fd::…`), relative paths, control characters, and anything
 * (or any host) starting with `-`, which a program could read as an option. Pure.
 */
export function remoteUrlProblem(url: string): string | undefined {
  if (url.length === 0 || url.length > 2048) return 'must be 1 to 2048 characters';
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(url)) return 'contains a control character';
  if (url.startsWith('-')) return 'starts with "-"';
  if (/^[A-Za-z][A-Za-z0-9+.-]*::/.test(url)) return 'uses a transport helper (<transport>::), which is refused';
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/]*)/.exec(url);
  if (scheme) {
    if (!URL_SCHEMES.has((scheme[1] ?? '').toLowerCase())) return `uses the unsupported scheme ${JSON.stringify(scheme[1])}`;
    const host = (scheme[2] ?? '').replace(/^[^@]*@/, '');
    return host.startsWith('-') ? 'has a host starting with "-"' : undefined;
  }
  if (url.startsWith('/')) return undefined;
  const scp = /^(?:[^@/:]+@)?([^/:]+):/.exec(url);
  if (scp) return (scp[1] ?? '').startsWith('-') ? 'has a host starting with "-"' : undefined;
  return 'is neither a URL, an scp-like address nor an absolute path';
}
