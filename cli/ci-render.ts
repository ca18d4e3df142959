/**
 * How the CI commands show builds as text: tables, one build in detail, the one-line job progress
 * and the plain event lines. Pure (values and a clock in, strings out), so the output is tested as
 * data; writing to a terminal is progress.ts's and ci.ts's job.
 */
import { formatIssues } from '#shared/errors.js';
import type { BuildEvent, BuildView, JobState, QueueView } from '#shared/schemas/api/builds.js';
import { buildName } from './build-ref.js';

/** One glyph per job state, as the progress line and `status` show them. */
export const JOB_GLYPH: Record<JobState, string> = {
  waiting: '·',
  running: '▶',
  passed: '✓',
  failed: '✗',
  skipped: '-',
  cancelled: '⊘',
  error: '!',
};

/** `850ms`, `12.3s`, `4m05s`, `2h07m`. */
export function formatDuration(ms: number): string {
  const t = Math.max(0, ms);
  if (t < 1000) return `${Math.round(t)}ms`;
  if (t < 60_000) return `${(t / 1000).toFixed(1)}s`;
  const s = Math.floor(t / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
}

/** What a build is at now: its result once finished, else its state. */
export function buildStatus(b: Pick<BuildView, 'state' | 'result'>): string {
  return b.state === 'finished' ? (b.result ?? 'finished') : b.state;
}

/** Rows as aligned columns (the last column is not padded). */
export function table(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n') + '\n';
}

/** The queue's summary line and the recent builds, newest first. */
export function formatOverview(queue: QueueView, builds: readonly BuildView[], now: number): string {
  const head = `slots: ${queue.busy}/${queue.slots} busy · ${queue.running.length} running · ${queue.queued.length} queued\n`;
  if (builds.length === 0) return `${head}no builds\n`;
  const rows = builds.map((b) => [
    buildName(b.id),
    b.pipeline,
    b.project,
    `${b.change.change},${b.change.patchset}`,
    buildStatus(b),
    b.finishedAt !== undefined && b.startedAt !== undefined ? formatDuration(b.finishedAt - b.startedAt) : b.startedAt !== undefined ? formatDuration(now - b.startedAt) : '',
    `${formatDuration(now - b.enqueuedAt)} ago`,
    b.reason ?? '',
  ]);
  return head + '\n' + table(['BUILD', 'PIPELINE', 'PROJECT', 'CHANGE', 'STATUS', 'TOOK', 'QUEUED', 'REASON'], rows);
}

/** One build in detail: what it tested, how it ended, each job, and the config issues. */
export function formatBuild(b: BuildView, now: number): string {
  const lines = [
    `build ${buildName(b.id)} · ${b.pipeline} · ${b.project} ${b.branch} · change ${b.change.change},${b.change.patchset} by ${b.change.author}`,
    `status: ${buildStatus(b)}${b.reason ? ` (${b.reason})` : ''}${b.attempt > 1 ? ` · attempt ${b.attempt}` : ''}`,
  ];
  if (b.startedAt !== undefined) lines.push(`took:   ${formatDuration((b.finishedAt ?? now) - b.startedAt)}${b.finishedAt === undefined ? ' so far' : ''}`);
  if (b.commit) lines.push(`commit: ${b.commit}`);
  if (b.environment) lines.push(`image:  ${b.environment.image}${b.environment.cached ? ' (cached)' : ''}`);
  let out = lines.join('\n') + '\n';
  if (b.jobs.length > 0) {
    const rows = b.jobs.map((j) => [
      `${JOB_GLYPH[j.state]} ${j.name}`,
      j.state + (j.voting ? '' : ' (non-voting)'),
      j.exitCode !== undefined ? String(j.exitCode) : '',
      j.startedAt !== undefined ? formatDuration((j.finishedAt ?? now) - j.startedAt) : '',
      j.reason ?? '',
    ]);
    out += '\n' + table(['JOB', 'STATE', 'EXIT', 'TOOK', 'REASON'], rows);
  }
  if (b.issues.length > 0) out += `\nissues:\n${formatIssues(b.issues).replace(/^/gm, '  ')}\n`;
  return out;
}

/** The live line: `✓ build  ▶ test  · report  12.3s`. */
export function progressLine(jobs: ReadonlyMap<string, JobState>, status: string, elapsedMs: number | undefined): string {
  const parts = [...jobs].map(([name, state]) => `${JOB_GLYPH[state]} ${name}`);
  const tail = elapsedMs === undefined ? status : `${status} ${formatDuration(elapsedMs)}`;
  return [...parts, tail].join('  ');
}

/** A state change as one plain line (when stderr is not a terminal); undefined for log pieces. */
export function eventLine(buildId: number, e: BuildEvent): string | undefined {
  const reason = e.type !== 'log' && e.reason ? ` (${e.reason})` : '';
  if (e.type === 'job') return `build ${buildName(buildId)}: job ${e.job} ${e.state}${reason}`;
  if (e.type === 'build') return `build ${buildName(buildId)}: ${e.state === 'finished' ? (e.result ?? 'finished') : e.state}${reason}`;
  return undefined;
}
