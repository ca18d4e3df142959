/**
 * How `airlock embargo …` shows the builder's answers as text. Pure (values in, strings out). Patch
 * and log text came from people and programs: it is passed through `sanitizeForTerminal`, so a
 * patch cannot drive the reader's terminal.
 */
import { sanitizeForTerminal } from '#shared/runner/log-capture.js';
import type { EmbargoDetail, EmbargoResult, EmbargoSummary } from '../trusted-builder/embargo/wire.js';
import { table } from './ci-render.js';

const clean = sanitizeForTerminal;

export function formatEmbargoResult(r: EmbargoResult): string {
  switch (r.action) {
    case 'submit':
      return r.existing ? `already embargoed as ${r.id} (${r.digest}): nothing changed\n` : `embargoed as ${r.id} (${r.digest})\n`;
    case 'list':
      return formatList(r.embargoes);
    case 'show':
      return formatDetail(r.embargo);
    case 'retire':
      return `${r.embargo.id} retired${r.embargo.retired ? ` by ${r.embargo.retired.by} at ${r.embargo.retired.at}: ${clean(r.embargo.retired.reason)}` : ''}\n`;
    case 'logs':
      return r.text === '' ? '' : clean(r.text.endsWith('\n') ? r.text : `${r.text}\n`);
  }
}

function formatList(list: readonly EmbargoSummary[]): string {
  if (list.length === 0) return 'no embargoes\n';
  return table(
    ['ID', 'STATE', 'PROJECT', 'SUBMITTED', 'BY', 'LAST'],
    list.map((e) => [e.id, e.state, e.project, e.submittedAt, clean(e.submittedBy), lastEvent(e)]),
  );
}

/** The newest of: a patched image built, broken at a commit, retired. */
function lastEvent(e: EmbargoSummary): string {
  if (e.retired) return `retired ${e.retired.at}`;
  const broke = e.lastBreak;
  const built = e.lastBuild;
  if (broke && (!built || broke.at >= built.at)) return `BROKEN at ${broke.commit.slice(0, 12)} (${broke.at})`;
  if (built) return `built on ${built.commit.slice(0, 12)} as ${built.reference}@${built.digest.slice(0, 19)} (${built.at})`;
  return 'not built yet';
}

function formatDetail(e: EmbargoDetail): string {
  const lines = [
    `embargo ${e.id}: ${e.state}`,
    `project:    ${e.project}`,
    `digest:     ${e.digest}`,
    `submitted:  ${e.submittedAt} by ${clean(e.submittedBy)}`,
    `last:       ${lastEvent(e)}`,
  ];
  if (e.retired) lines.push(`retired:    ${e.retired.at} by ${clean(e.retired.by)}: ${clean(e.retired.reason)}`);
  for (const b of e.breaks) lines.push(`break:      ${b.at} at ${b.commit}: ${clean(b.reason)}`);
  for (const a of e.artifacts) lines.push(`artifact:   ${clean(a.name)} (${a.size} bytes, sha256 ${a.sha256}, ${a.at})`);
  lines.push(`log:        ${e.logBytes} bytes (airlock embargo logs ${e.id})`, '', clean(e.patch));
  const text = lines.join('\n');
  return text.endsWith('\n') ? text : `${text}\n`;
}
