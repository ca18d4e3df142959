/**
 * The demo's two services as child processes, started the way an operator starts them
 * (`airlock ci serve --config …`, `airlock builder serve --config …` through bin/airlock.js), each
 * with its own config, data dir and log file.
 *
 * Contract:
 * - `startService` resolves once the child has said where it listens (`airlock: … listening on
 *   URL` on stderr; the config asks for port 0, so the kernel picks a free port and nothing races
 *   for it) and `GET /healthz` answers 200. It rejects, with the tail of the child's log, when the
 *   child exits first, the startup takes longer than `startupMs`, or `signal` aborts; the child
 *   is stopped before it rejects.
 * - Each child runs in its own process group (`detached`), so the terminal's Ctrl-C reaches the
 *   demo only, and the demo stops each child once, by its pid: SIGTERM (the service closes
 *   cleanly), SIGKILL after `stopMs`. `stop()` is idempotent and safe after the child died.
 * - stdout and stderr go to the log file only. Should the demo itself die without stopping a
 *   child, an `exit` hook SIGKILLs every child still running, by pid.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { Interrupted } from './wait.js';

const AIRLOCK_BIN = fileURLToPath(new URL('../bin/airlock.js', import.meta.url));
const LISTENING = /listening on (http:\/\/[^\s]+)/;
const LOG_TAIL_BYTES = 4000;

export interface ServiceProcess {
  readonly name: string;
  readonly pid: number;
  /** Base URL, e.g. http://127.0.0.1:41234 */
  readonly url: string;
  readonly logFile: string;
  /** Settles when the child exits, whoever stopped it. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stop(): Promise<void>;
}

export interface StartServiceOptions {
  /** Shown in messages: "CI", "trusted builder". */
  name: string;
  /** Arguments after `airlock`. */
  args: string[];
  logFile: string;
  env?: Record<string, string>;
  signal: AbortSignal;
  startupMs?: number;
  stopMs?: number;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) if (child.pid !== undefined) safeKill(child.pid, 'SIGKILL');
});

export async function startService(o: StartServiceOptions): Promise<ServiceProcess> {
  const log = createWriteStream(o.logFile, { flags: 'a', mode: 0o600 });
  const child = spawn(process.execPath, [AIRLOCK_BIN, ...o.args], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...o.env },
  });
  if (child.pid === undefined) throw new Error(`cannot start the ${o.name}: spawn failed`);
  const pid = child.pid;
  live.add(child);
  const exited = once(child, 'exit').then(([code, signal]) => {
    live.delete(child);
    return { code: code as number | null, signal: signal as NodeJS.Signals | null };
  });
  child.stdout!.pipe(log, { end: false });
  let url: string | undefined;
  let seen = '';
  const listening = new Promise<string>((resolve) => {
    child.stderr!.on('data', (d: Buffer) => {
      log.write(d);
      if (url) return;
      seen = (seen + d.toString('utf8')).slice(-8000);
      const m = LISTENING.exec(seen);
      if (m) resolve((url = m[1]!));
    });
  });
  // 'close' comes after the last output ('exit' may come before it).
  child.once('close', () => log.end());
  log.on('error', () => undefined); // a full disk must not take the demo down with its service

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        safeKill(pid, 'SIGTERM');
        const timer = setTimeout(() => safeKill(pid, 'SIGKILL'), o.stopMs ?? 30_000);
        await exited;
        clearTimeout(timer);
      }
    })());

  try {
    const startupMs = o.startupMs ?? 60_000;
    const timeout = AbortSignal.timeout(startupMs);
    const base = await Promise.race([
      listening,
      exited.then((e) => Promise.reject(new Error(`the ${o.name} exited during startup (${e.code ?? e.signal})`))),
      aborted(AbortSignal.any([o.signal, timeout]), () => (timeout.aborted ? `the ${o.name} did not start within ${startupMs / 1000} s` : 'interrupted')),
    ]);
    for (;;) {
      const status = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(2_000) }).then((r) => r.status, () => 0);
      if (status === 200) break;
      if (o.signal.aborted || timeout.aborted) throw new Error(`the ${o.name} at ${base} did not answer /healthz`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return { name: o.name, pid, url: base, logFile: o.logFile, exited, stop };
  } catch (e) {
    await stop();
    if (o.signal.aborted) throw new Interrupted();
    throw new Error(`${(e as Error).message}; the end of ${o.logFile}:\n${logTail(o.logFile)}`, { cause: e });
  }
}

/** The last few KiB of a log file (for an error message). */
export function logTail(file: string): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.slice(-LOG_TAIL_BYTES);
  } catch {
    return '(no log)';
  }
}

function aborted(signal: AbortSignal, why: () => string): Promise<never> {
  return new Promise((_, reject) => {
    const fire = (): void => reject(new Error(why()));
    if (signal.aborted) fire();
    else signal.addEventListener('abort', fire, { once: true });
  });
}

function safeKill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}
