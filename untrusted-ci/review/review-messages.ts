/**
 * What airlock says in the review system, as Zuul does: one message per result, its verdict, one
 * line per job with a link to its log, and a link to the status page; and the Verified vote that
 * goes with it. Pure: a build (or a gate report) in, `{labels, message}` out.
 *
 * Votes (`VotesConfig`, defaults as Zuul's usual Gerrit setup): check passes +1, fails -1; the gate
 * sets Verified 0 when it starts testing a change (a stale check +1 must not let someone submit it
 * meanwhile), +2 just before it asks for the submit, -2 when the change fails in the gate (a failed
 * job, a conflict, a broken config, a change it needs failed, or the submit was refused). A build
 * airlock itself could not run (`error`) gets a message and no vote: it is not the change's fault.
 * Cancelled and superseded builds say nothing (a newer patch set or the gate speaks instead).
 */
import type { BuildView, JobView } from '#shared/schemas/api/builds.js';
import { truncateUtf8 } from '../sources/gerrit/parse.js';

export interface VotesConfig {
  label: string;
  check: { pass: number; fail: number };
  gate: { pass: number; fail: number };
}

export const DEFAULT_VOTES: VotesConfig = { label: 'Verified', check: { pass: 1, fail: -1 }, gate: { pass: 2, fail: -2 } };

export interface Said {
  labels?: Record<string, number>;
  message: string;
}

/** Largest message posted (Gerrit's default `change.commentSizeLimit` is 16 KiB). */
const MAX_MESSAGE_BYTES = 15 * 1024;

/** Where builds can be looked at: the CI's public base URL (its status page). */
export type Links = { publicUrl: string };

function jobLine(b: BuildView, j: JobView, links: Links): string {
  const secs = j.startedAt !== undefined && j.finishedAt !== undefined ? ` in ${Math.max(0, Math.round((j.finishedAt - j.startedAt) / 1000))}s` : '';
  const why = j.state !== 'passed' && j.reason ? ` (${oneLine(j.reason)})` : '';
  const log = j.logBytes !== undefined ? ` ${links.publicUrl}/api/builds/${b.id}/logs/${encodeURIComponent(j.name)}` : '';
  return `- ${j.name}${log} : ${j.state.toUpperCase()}${secs}${why}${j.voting ? '' : ' (non-voting)'}`;
}

function oneLine(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f]+/g, ' ').slice(0, 300);
}

function body(b: BuildView | undefined, headline: string, links: Links): string {
  const lines = [headline, ''];
  if (b) {
    for (const j of b.jobs) lines.push(jobLine(b, j, links));
    if (b.jobs.length > 0) lines.push('');
    lines.push(`Build #${b.id}: ${links.publicUrl}/api/builds/${b.id}`);
  }
  lines.push(`Status: ${links.publicUrl}/`);
  return truncateUtf8(lines.join('\n'), MAX_MESSAGE_BYTES);
}

/** What to say of a finished check build, or undefined to say nothing. */
export function checkMessage(b: BuildView, votes: VotesConfig, links: Links): Said | undefined {
  const label = votes.label;
  switch (b.result) {
    case 'passed':
      return { labels: { [label]: votes.check.pass }, message: body(b, 'Build succeeded (check pipeline).', links) };
    case 'failed':
      return { labels: { [label]: votes.check.fail }, message: body(b, 'Build failed (check pipeline).', links) };
    case 'merge-conflict':
      return { labels: { [label]: votes.check.fail }, message: body(b, `Merge failed (check pipeline): ${oneLine(b.reason ?? 'merge conflict')}. Rebase the change and upload it again.`, links) };
    case 'config-error':
      if (noJobs(b)) return { message: body(b, 'No job runs in the check pipeline for this change (.airlock.yaml): nothing to vote on.', links) };
      return { labels: { [label]: votes.check.fail }, message: body(b, `Configuration error (check pipeline): ${oneLine(b.reason ?? '')}${b.issues.length > 0 ? `\n\n${b.issues.slice(0, 20).map((i) => `${i.file}: ${i.path || '(root)'}: ${oneLine(i.message)}`).join('\n')}` : ''}`, links) };
    case 'error':
      return { message: body(b, `airlock could not run this build (check pipeline): ${oneLine(b.reason ?? 'internal error')}. This is not a verdict on the change; comment "recheck" to try again.`, links) };
    default:
      return undefined;
  }
}

/** A project with no job in the check pipeline (only gate jobs): not a broken config to vote against (warnings beside it do not count). */
function noJobs(b: BuildView): boolean {
  const errors = b.issues.filter((i) => i.severity === 'error');
  return errors.length === 1 && errors[0]!.path === 'jobs' && errors[0]!.message === 'no job runs in the check pipeline';
}

/** The gate's report kinds (the model's ReportResult) and what each says. */
export function gateMessage(result: string, message: string, b: BuildView | undefined, votes: VotesConfig, links: Links): Said | undefined {
  const label = votes.label;
  const fail = (headline: string): Said => ({ labels: { [label]: votes.gate.fail }, message: body(b, headline, links) });
  switch (result) {
    case 'SUCCESS':
      return undefined; // said with the +2 just before the submit
    case 'FAILURE':
      return fail(`Build failed (gate pipeline). ${oneLine(message)}`);
    case 'MERGE_CONFLICT':
      return fail(`Merge failed (gate pipeline): ${oneLine(message)}. Rebase the change and upload it again.`);
    case 'CONFIG_ERROR':
      return fail(`Configuration error (gate pipeline): ${oneLine(message)}`);
    case 'DEPENDENCY_FAILED':
      return fail(`This change depends on a change that failed to merge (gate pipeline): ${oneLine(message)}`);
    case 'MERGE_FAILURE':
      return fail(`Build succeeded (gate pipeline), but the review system did not merge the change: ${oneLine(message)}`);
    case 'DEQUEUED':
    case 'NO_JOBS':
    default:
      return { message: body(undefined, `${oneLine(message)} (gate pipeline)`, links) };
  }
}

/** What the gate says when it starts testing a change. */
export function gateStartMessage(votes: VotesConfig, links: Links): Said {
  return { labels: { [votes.label]: 0 }, message: body(undefined, 'Starting gate jobs.', links) };
}

/** What the gate says with its +2, just before it asks for the submit. */
export function gatePassMessage(b: BuildView | undefined, votes: VotesConfig, links: Links): Said {
  return { labels: { [votes.label]: votes.gate.pass }, message: body(b, 'Build succeeded (gate pipeline).', links) };
}
