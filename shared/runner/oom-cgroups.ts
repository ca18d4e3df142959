/**
 * Knowing for sure that the kernel OOM-killed in a job, without the engine's OOM event.
 *
 * Under cgroup v1 the engine learns of an OOM kill from containerd's shim, which watches the
 * container's own `memory.oom_control` through an eventfd and drops the event when the container's
 * cgroup is already deleted by the time it reads it. A job whose only process is the one killed
 * ends at once, its cgroup goes with it, and the engine may never say OOMKilled (seen here: 1 of
 * 16 bare `dd` hogs started at once; with this watch off, at least one of 60 in 3 runs of 5 of
 * test/shared/runner/oom.docker.test.ts).
 *
 * So the runner owns a parent cgroup per job and watches that one itself:
 *   <memory hierarchy>/airlock-jobs/<runner>/<job>   memory (and memory+swap) limited to the job's
 *                                                   limit, swappiness 0; the engine makes the
 *                                                   container's cgroup inside it (CgroupParent)
 *   the container's own limit                       CHILD_HEADROOM above, so a charge always fails
 *                                                   at the parent first, which makes the parent the
 *                                                   cgroup the kernel OOMs
 *   an eventfd on the parent's memory.oom_control   registered before the job starts; the kernel
 *                                                   signals it on each OOM of that cgroup. Its
 *                                                   count is kernel state: read after the job, it
 *                                                   holds every OOM there was, however late
 *                                                   anything runs. (v1's `oom_kill` counter will
 *                                                   not do: it is counted at the victim's cgroup,
 *                                                   the container's, and goes with it.)
 * Node cannot make an eventfd, so one small perl process per runner holds its jobs' eventfds
 * (perl-base is Essential in Debian): asked over its stdin, it registers one and says `ready`,
 * and later prints its count.
 * <runner> and <job> are random hex the runner makes: nothing of a job or its spec is in a path,
 * and a job sees only its own cgroup (the engine mounts nothing else of the host's cgroupfs).
 *
 * Where this cannot work the runner goes on as before, on the engine's word alone: cgroup v2 or the
 * systemd driver (the engine reports them), no v1 memory hierarchy here, not root, no perl, an
 * architecture whose eventfd2 number is not known here, runsc (the job runner asks only for runc).
 * After each job the parent's max_usage_in_bytes must be above 0: if it is not, the container did
 * not run under this cgroupfs (an engine that sees other cgroups than this process) and the watch
 * is turned off for good.
 *
 * Bookkeeping: `<stateDir>/cgroups/<owner token>` names the runner's directory, written before it
 * is made; the reaper removes a dead owner's directories (jobs, then the runner's) in every
 * hierarchy, where the engine made them too.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../logging.js';
import { ownerFromToken, ownerToken } from './owner.js';

/** The top directory of every runner's job cgroups, in each hierarchy. */
export const JOBS_CGROUP = 'airlock-jobs';
/**
 * How far the container's own memory limit is above its parent's. A charge is tried against the
 * container's counter first, then the parent's; with this margin the parent's fails first for any
 * charge up to this size (a huge page is 2 MiB).
 */
export const CHILD_HEADROOM = 8 * 1024 * 1024;
const NAME = /^[0-9a-f]{16}$/;
const READY_MS = 10_000;
const COUNT_MS = 5_000;
/** eventfd2's system call number, by Node's process.arch. */
const EVENTFD2: Partial<Record<string, number>> = { x64: 290, arm64: 19 };

/** Where the cgroup hierarchies are mounted: the v1 memory one, and every one (the engine makes a container's path in each). */
export interface CgroupMounts {
  memory: string;
  all: readonly string[];
}

/** The v1 hierarchies in a /proc/self/mounts text; no `memory` when there is no v1 memory hierarchy. Pure. */
export function parseCgroupMounts(mounts: string): { memory?: string; all: string[] } {
  let memory: string | undefined;
  const all: string[] = [];
  for (const line of mounts.split('\n')) {
    const [, dir, type, options] = line.split(' ');
    if (!dir || (type !== 'cgroup' && type !== 'cgroup2')) continue;
    const path = dir.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    all.push(path);
    if (type === 'cgroup' && (options ?? '').split(',').includes('memory')) memory ??= path;
  }
  return memory ? { memory, all } : { all };
}

/** Why the engine rules the watch out, or undefined if it does not (cgroupfs driver, cgroup v1). Pure. */
export function engineRulesOut(info: { CgroupDriver?: string; CgroupVersion?: string }): string | undefined {
  if (info.CgroupVersion !== undefined && info.CgroupVersion !== '1') return `the engine uses cgroup v${info.CgroupVersion}`;
  if (info.CgroupDriver !== 'cgroupfs') return `the engine's cgroup driver is ${info.CgroupDriver ?? 'not reported'}`;
  return undefined;
}

/** An eventfd on one cgroup's memory.oom_control; count() ends the watch and says how many OOMs the kernel signalled. */
export interface OomWatch {
  count(): Promise<number>;
  stop(): void;
}
export type StartWatch = (cgroupDir: string) => Promise<OomWatch>;

/** One job's parent cgroup. */
export interface JobCgroup {
  /** For the engine's CgroupParent: `/airlock-jobs/<runner>/<job>`. */
  readonly parent: string;
  /** The container's own memory and memory+swap limit: the job's plus CHILD_HEADROOM. */
  readonly containerMemory: number;
  /**
   * After the job ended, before its cgroup is removed: the OOMs the kernel signalled in it, and
   * whether the job's memory was charged there at all (if not, the count means nothing).
   */
  finish(): Promise<{ oomEvents: number; charged: boolean }>;
  /** After the container is removed: the job's directories in every hierarchy. */
  remove(): Promise<void>;
}

export interface OomCgroupsOptions {
  mounts: CgroupMounts;
  /** `<stateDir>/cgroups`: which runner owns which directory. */
  recordsDir: string;
  owner: string;
  /** Injected for tests; defaults to the runner's perl eventfd holder (PerlWatcher). */
  startWatch?: StartWatch;
  /** Injected for tests (a temp dir cannot remove a directory with files in it, cgroupfs can). */
  rmdir?: (path: string) => Promise<void>;
  logger?: Logger;
}

/** A runner's job cgroups. */
export class OomCgroups {
  private readonly held = new Set<string>();
  private readonly watcher: PerlWatcher | undefined;
  private readonly startWatch: StartWatch;
  private constructor(
    private readonly opts: OomCgroupsOptions,
    /** This runner's directory name under JOBS_CGROUP. */
    readonly runnerName: string,
  ) {
    if (!opts.startWatch) this.watcher = new PerlWatcher();
    this.startWatch = opts.startWatch ?? this.watcher!.start;
  }

  /**
   * Records and makes this runner's directory, then proves an eventfd can be registered on it.
   * Throws, having left nothing, if any of that fails: the caller goes on without the watch.
   */
  static async create(opts: OomCgroupsOptions): Promise<OomCgroups> {
    const name = randomBytes(8).toString('hex');
    const self = new OomCgroups(opts, name);
    const record = join(opts.recordsDir, ownerToken(opts.owner));
    await mkdir(opts.recordsDir, { recursive: true, mode: 0o700 });
    await writeFile(record, `${name}\n`, { mode: 0o600 });
    try {
      await mkdir(join(opts.mounts.memory, JOBS_CGROUP, name), { recursive: true });
      const probe = await self.startWatch(join(opts.mounts.memory, JOBS_CGROUP, name));
      await probe.count();
      return self;
    } catch (e) {
      await self.close().catch(() => undefined);
      throw e;
    }
  }

  /** The job directories made and not yet removed (the reaper leaves them to this runner). */
  heldNames(): ReadonlySet<string> {
    return this.held;
  }

  /** A parent cgroup for one job of `memory` bytes, with its watch running: the job may start. */
  async open(memory: number): Promise<JobCgroup> {
    const job = randomBytes(8).toString('hex');
    const rel = [JOBS_CGROUP, this.runnerName, job];
    const dir = join(this.opts.mounts.memory, ...rel);
    this.held.add(job);
    let watch: OomWatch | undefined;
    const remove = async (): Promise<void> => {
      watch?.stop();
      await removeEverywhere(this.opts.mounts.all, rel, this.rmdirFn);
      this.held.delete(job);
    };
    try {
      await mkdir(dir);
      // memory before memory+swap: the kernel keeps memory <= memory+swap at every step.
      await writeFile(join(dir, 'memory.swappiness'), '0');
      await writeFile(join(dir, 'memory.limit_in_bytes'), String(memory));
      if (await exists(join(dir, 'memory.memsw.limit_in_bytes'))) await writeFile(join(dir, 'memory.memsw.limit_in_bytes'), String(memory));
      watch = await this.startWatch(dir);
    } catch (e) {
      await remove().catch(() => undefined);
      throw e;
    }
    const w = watch;
    return {
      parent: `/${rel.join('/')}`,
      containerMemory: memory + CHILD_HEADROOM,
      finish: async () => {
        const oomEvents = await w.count();
        const peak = Number((await readFile(join(dir, 'memory.max_usage_in_bytes'), 'utf8').catch(() => '0')).trim());
        return { oomEvents, charged: peak > 0 };
      },
      remove,
    };
  }

  /** Removes this runner's directory and its record; if a job's directory is still there, both stay for the reaper. */
  async close(): Promise<void> {
    this.watcher?.close();
    if (!(await removeEverywhere(this.opts.mounts.all, [JOBS_CGROUP, this.runnerName], this.rmdirFn))) {
      throw new Error(`cannot remove ${JOBS_CGROUP}/${this.runnerName} everywhere`);
    }
    await rm(join(this.opts.recordsDir, ownerToken(this.opts.owner)), { force: true });
  }

  private get rmdirFn(): (path: string) => Promise<void> {
    return this.opts.rmdir ?? rmdir;
  }
}

export interface ReapCgroupsOptions {
  mounts: { all: readonly string[] };
  recordsDir: string;
  ownerState: (owner: string) => 'alive' | 'dead' | 'unknown';
  /** The calling runner: its job directories not in `held` are its leaks. */
  self?: { owner: string; held: () => ReadonlySet<string> };
  rmdir?: (path: string) => Promise<void>;
  logger?: Logger;
}

/**
 * Removes the job cgroups of dead runners (and the calling runner's leaks): every job directory,
 * then the runner's, in every hierarchy, then the record. A directory the engine still uses (its
 * container not yet removed) cannot be removed: the next pass takes it. Returns what was removed,
 * as `<runner>/<job>` and `<runner>`.
 */
export async function reapJobCgroups(o: ReapCgroupsOptions): Promise<string[]> {
  const removed: string[] = [];
  let records: string[] = [];
  try {
    records = await readdir(o.recordsDir);
  } catch {
    return removed;
  }
  const rmdirFn = o.rmdir ?? rmdir;
  const selfToken = o.self ? ownerToken(o.self.owner) : undefined;
  for (const token of records) {
    const owner = ownerFromToken(token);
    const isSelf = token === selfToken;
    if (!isSelf && owner !== undefined && o.ownerState(owner) !== 'dead') continue;
    let name = '';
    try {
      name = (await readFile(join(o.recordsDir, token), 'utf8')).trim();
    } catch {
      continue;
    }
    if (!NAME.test(name)) {
      if (!isSelf) await rm(join(o.recordsDir, token), { force: true });
      continue;
    }
    const held = isSelf ? (o.self?.held() ?? new Set<string>()) : new Set<string>();
    const jobs = new Set<string>();
    for (const root of o.mounts.all) {
      for (const j of await readdir(join(root, JOBS_CGROUP, name)).catch(() => [] as string[])) if (NAME.test(j) && !held.has(j)) jobs.add(j);
    }
    let left = false;
    for (const j of jobs) {
      if (await removeEverywhere(o.mounts.all, [JOBS_CGROUP, name, j], rmdirFn)) removed.push(`${name}/${j}`);
      else left = true;
    }
    if (isSelf || left) continue;
    if (await removeEverywhere(o.mounts.all, [JOBS_CGROUP, name], rmdirFn)) {
      removed.push(name);
      await rm(join(o.recordsDir, token), { force: true });
    }
  }
  if (removed.length > 0) o.logger?.info({ cgroups: removed }, 'reaper: removed job cgroups');
  return removed;
}

/** rmdir `rel` under each hierarchy where it exists; true if it is gone from all of them. */
async function removeEverywhere(roots: readonly string[], rel: readonly string[], rmdirFn: (path: string) => Promise<void>): Promise<boolean> {
  let gone = true;
  for (const root of roots) {
    const dir = join(root, ...rel);
    try {
      await rmdirFn(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') gone = false;
    }
  }
  return gone;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** The cgroup mounts of this process, if it has a v1 memory hierarchy. */
export function localCgroupMounts(): CgroupMounts | undefined {
  try {
    const m = parseCgroupMounts(readFileSync('/proc/self/mounts', 'utf8'));
    return m.memory ? { memory: m.memory, all: m.all } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The eventfd holder, one process for all of a runner's jobs: each line on its stdin is a request,
 * each answer a line on its stdout.
 *   open <job> <dir>   registers an eventfd (non-blocking) on <dir>/memory.oom_control through
 *                      <dir>/cgroup.event_control: `ready <job>`, or `error <job> <why>`
 *   count <job>        reads that eventfd's count (0 if never signalled) and closes it: `count <job> <n>`
 *   stop <job>         closes it, no answer
 * A runner that dies closes its stdin, and the holder ends with every eventfd it held.
 */
const WATCH_PL = String.raw`
use strict; use warnings;
my $nr = shift @ARGV;
my %w;
$| = 1;
while (my $line = <STDIN>) {
  chomp $line;
  if ($line =~ /^open ([0-9a-f]{16}) (.+)$/s) {
    my ($id, $dir) = ($1, $2);
    my $ok = eval {
      open(my $oc, '<', "$dir/memory.oom_control") or die "memory.oom_control: $!\n";
      my $efd = syscall($nr + 0, 0, 2048);
      die "eventfd2: $!\n" if $efd < 0;
      open(my $ev, '<&=', $efd) or die "eventfd: $!\n";
      open(my $ec, '>', "$dir/cgroup.event_control") or die "cgroup.event_control: $!\n";
      syswrite($ec, $efd . ' ' . fileno($oc)) or die "cgroup.event_control: $!\n";
      close($ec) or die "cgroup.event_control: $!\n";
      $w{$id} = [$ev, $oc];
      1;
    };
    if ($ok) { print "ready $id\n"; } else { my $e = $@; $e =~ s/\s+/ /g; print "error $id $e\n"; }
  } elsif ($line =~ /^count ([0-9a-f]{16})$/) {
    my $x = delete $w{$1};
    if (!$x) { print "error $1 not watched\n"; next; }
    my $n = sysread($x->[0], my $v, 8);
    print "count $1 ", (defined($n) && $n == 8 ? unpack('Q', $v) : 0), "\n";
    close($x->[0]); close($x->[1]);
  } elsif ($line =~ /^stop ([0-9a-f]{16})$/) {
    my $x = delete $w{$1};
    if ($x) { close($x->[0]); close($x->[1]); }
  }
}
`;

/**
 * A runner's eventfd holder (WATCH_PL, one perl process, started on first use): a process per job
 * cost the service a process start per job. If the holder dies, the watches it held fail (their
 * jobs' OOM kills are then as the engine reports them) and the next watch starts a new one.
 */
export class PerlWatcher {
  private child: ChildProcess | undefined;
  private out = '';
  private err = '';
  /** Answers awaited, by job name: one request at a time per job. */
  private readonly waiting = new Map<string, { resolve(line: string): void; reject(e: Error): void }>();
  private closed = false;

  /** Registers the watch on `cgroupDir`; resolves once it is registered (the job may start). */
  readonly start: StartWatch = async (dir) => {
    const nr = EVENTFD2[process.arch];
    if (nr === undefined) throw new Error(`no eventfd2 system call number known for ${process.arch}`);
    if (/[\n\r]/.test(dir)) throw new Error('a cgroup directory with a line break cannot be watched');
    const child = this.process(nr);
    const job = randomBytes(8).toString('hex');
    const ready = await this.ask(child, job, `open ${job} ${dir}`, READY_MS, 'ready');
    if (!ready.startsWith('ready ')) throw new Error(`OOM watch: ${ready.replace(/^error \S+ /, '')}`);
    let done = false;
    return {
      count: async () => {
        if (done) throw new Error('OOM watch: already counted or stopped');
        done = true;
        if (this.child !== child) throw new Error(`OOM watch ended: ${this.err.trim() || 'its holder exited'}`);
        const line = await this.ask(child, job, `count ${job}`, COUNT_MS, 'count');
        const m = /^count \S+ (\d+)$/.exec(line);
        if (!m) throw new Error(`OOM watch: ${line.replace(/^error \S+ /, '')}`);
        return Number(m[1]);
      },
      stop: () => {
        if (done) return;
        done = true;
        if (this.child === child) child.stdin?.write(`stop ${job}\n`);
      },
    };
  };

  /** The holder's process id while it runs. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Ends the holder (every watch it holds fails). */
  close(): void {
    this.closed = true;
    this.end(new Error('OOM watch: the runner closed'));
  }

  private process(nr: number): ChildProcess {
    if (this.closed) throw new Error('OOM watch: the runner closed');
    if (this.child) return this.child;
    // Nothing of this process's environment but PATH: no PERL5OPT or PERL5LIB reaches perl.
    const child = spawn('perl', ['-e', WATCH_PL, String(nr)], { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C' } });
    this.child = child;
    this.out = '';
    this.err = '';
    // It never keeps the runner's process alive: a waiting request's timer does while it waits.
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr] as ({ unref?: () => void } | null)[]) s?.unref?.();
    child.stdin?.on('error', () => undefined);
    child.stderr?.on('data', (d: Buffer) => {
      if (this.err.length < 4096) this.err += d.toString('utf8');
    });
    child.stdout?.on('data', (d: Buffer) => {
      if (this.child !== child) return;
      this.out += d.toString('utf8');
      let nl: number;
      while ((nl = this.out.indexOf('\n')) >= 0) {
        const line = this.out.slice(0, nl);
        this.out = this.out.slice(nl + 1);
        const job = line.split(' ')[1] ?? '';
        const w = this.waiting.get(job);
        this.waiting.delete(job);
        w?.resolve(line);
      }
      if (this.out.length > 65536) this.end(new Error('OOM watch: its holder wrote a line too long'));
    });
    child.on('error', (e) => this.child === child && this.end(new Error(`OOM watch ended: ${e.message}`)));
    child.on('close', () => this.child === child && this.end(new Error(`OOM watch ended: ${this.err.trim() || 'no output'}`)));
    return child;
  }

  private ask(child: ChildProcess, job: string, line: string, ms: number, what: string): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        // A holder that does not answer holds nothing reliably: start again.
        if (this.child === child) this.end(new Error(`OOM watch: no ${what} within ${ms} ms`));
      }, ms);
      this.waiting.set(job, {
        resolve: (l) => (clearTimeout(timer), resolve(l)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      child.stdin?.write(`${line}\n`);
    });
  }

  private end(reason: Error): void {
    const child = this.child;
    this.child = undefined;
    if (child && child.exitCode === null) child.kill('SIGKILL');
    const waiting = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiting) w.reject(reason);
  }
}
