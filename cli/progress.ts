/**
 * Following a build on stderr while its log goes to stdout. On a terminal, one line redrawn in
 * place (`✓ build  ▶ test  · report  running 12.3s`); elsewhere, one plain line per state change.
 *
 * Log that lands on the same terminal (the setup log on stderr, or a stdout that is the terminal)
 * must never have the live line inside it: the line is erased before each such piece and drawn
 * again only when the log is at the start of a line (a piece that ends mid-line keeps the live
 * line away until the log's next newline).
 */
import type { BuildEvent, BuildView, JobState } from '#shared/schemas/api/builds.js';
import { eventLine, progressLine } from './ci-render.js';

const REDRAW_MS = 1000;
const ERASE_LINE = '\r\u001b[2K';

/** A stream as progress needs it: process.stderr, or a fake in tests. */
export interface ProgressOut {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface Progress {
  /**
   * Write a piece of log through `write`, keeping the live line out of it. `sharesTerminal`: the
   * piece lands on the terminal the live line is on (stderr, or a stdout that is that terminal).
   */
  log(text: string, write: (text: string) => void, sharesTerminal: boolean): void;
  /** A job or build state change. */
  update(e: BuildEvent): void;
  /** Erase the live line and stop redrawing. */
  close(): void;
}

export function createProgress(o: { build: BuildView; out: ProgressOut; now?: () => number }): Progress {
  const now = o.now ?? Date.now;
  const jobs = new Map<string, JobState>(o.build.jobs.map((j) => [j.name, j.state]));
  let status: string = o.build.state;
  // The server's clock may differ from ours: time from when we saw the build start, or from its startedAt if it already runs.
  let startedAt = o.build.state === 'running' ? Math.min(now(), o.build.startedAt ?? now()) : undefined;
  const track = (e: BuildEvent): void => {
    if (e.type === 'job' && e.job !== 'setup') jobs.set(e.job, e.state);
    if (e.type === 'build') {
      status = e.state === 'finished' ? (e.result ?? 'finished') : e.state;
      if (e.state === 'running' && startedAt === undefined) startedAt = now();
    }
  };

  if (!o.out.isTTY) {
    return {
      log: (text, write) => write(text),
      update(e) {
        track(e);
        const line = eventLine(o.build.id, e);
        if (line) o.out.write(`${line}\n`);
      },
      close() {},
    };
  }

  let shown = false;
  // Whether the log on the shared terminal is at the start of a line: only then may the live line be drawn.
  let atLineStart = true;
  let closed = false;
  const draw = (): void => {
    if (closed || !atLineStart) return;
    const line = progressLine(jobs, status, startedAt === undefined ? undefined : now() - startedAt);
    const width = Math.max(20, (o.out.columns ?? 80) - 1);
    o.out.write(ERASE_LINE + (line.length > width ? `${line.slice(0, width - 1)}…` : line));
    shown = true;
  };
  const erase = (): void => {
    if (shown) o.out.write(ERASE_LINE);
    shown = false;
  };
  const timer = setInterval(draw, REDRAW_MS);
  timer.unref();
  draw();
  return {
    log(text, write, sharesTerminal) {
      if (sharesTerminal) erase();
      write(text);
      if (sharesTerminal && text.length > 0) atLineStart = text.endsWith('\n');
      draw();
    },
    update(e) {
      track(e);
      draw();
    },
    close() {
      closed = true;
      clearInterval(timer);
      erase();
    },
  };
}
