/**
 * How `airlock embargo …` shows the builder's answers as text. Pure (values in, strings out). Patch
 * and log text came from people and programs: it is passed through `sanitizeForTerminal`, so a
 * patch cannot drive the reader's terminal.
 */
import { sanitizeForTerminal } from '#shared/runner/log-capture.js';
import type { BreakInfo, EmbargoDetail, EmbargoResult, EmbargoSummary } from '../trusted-builder/embargo/wire.js';
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
    case 'replace':
      return `${r.id} now carries ${r.digest} (was ${r.previous}): ${r.queued ? 'a private build is queued' : 'the project has no published commit yet; its first promotion builds it'}\n`;
    case 'rebuild':
      return r.queued ? `${r.id}: a private build of its project's latest published commit is queued (airlock embargo list shows how it went)\n` : `${r.id}: its project has no published commit yet; its first promotion builds it\n`;
    case 'artifacts':
      return `${r.id}: ${r.build.reference}@${r.build.digest}\n${r.files.map((f) => `artifact:   ${f.name} (${Buffer.from(f.base64, 'base64').length} bytes)`).join('\n')}\n`;
  }
}

function formatList(list: readonly EmbargoSummary[]): string {
  if (list.length === 0) return 'no embargoes\n';
  return table(
    ['ID', 'STATE', 'PROJECT', 'SUBMITTED', 'BY', 'LAST'],
    list.map((e) => [e.id, stateOf(e), e.project, e.submittedAt, clean(e.submittedBy), lastEvent(e)]),
  );
}

/**
 * `active`, `retired`, or — when the last private build left it without a patched image —
 * `broken` (its own patch no longer applies, or the patched tests or build failed: act on it) or
 * `blocked` (another patch of the project's set does not apply: this one waits for that one).
 */
export function stateOf(e: EmbargoSummary): string {
  if (e.state !== 'active') return e.state;
  const broke = e.lastBreak;
  if (!broke || (e.lastBuild && e.lastBuild.at > broke.at)) return 'active';
  return isBlocked(broke) ? 'blocked' : 'broken';
}

function isBlocked(b: BreakInfo): boolean {
  return b.step === 'blocked' || (b.step === undefined && b.reason.startsWith('blocked:'));
}

/** The newest of: a patched image built, broken (or blocked) at a commit, retired. Digests and commits in full. */
function lastEvent(e: EmbargoSummary): string {
  if (e.retired) return `retired ${e.retired.at}`;
  const broke = e.lastBreak;
  const built = e.lastBuild;
  if (broke && (!built || broke.at >= built.at)) return `${isBlocked(broke) ? 'BLOCKED' : 'BROKEN'} at ${broke.commit} (${broke.at}): ${clean(broke.reason)}`;
  if (built) return `built on ${built.commit} as ${built.reference}@${built.digest} (${built.at})`;
  return 'not built yet';
}

function formatDetail(e: EmbargoDetail): string {
  const lines = [
    `embargo ${e.id}: ${stateOf(e)}`,
    `project:    ${e.project}`,
    `digest:     ${e.digest}`,
    `submitted:  ${e.submittedAt} by ${clean(e.submittedBy)}`,
    `last:       ${lastEvent(e)}`,
  ];
  if (e.retired) lines.push(`retired:    ${e.retired.at} by ${clean(e.retired.by)}: ${clean(e.retired.reason)}`);
  for (const x of e.replaced ?? []) lines.push(`replaced:   ${x.at} by ${clean(x.by)}: was ${x.digest}`);
  for (const b of e.breaks) lines.push(`break:      ${b.at} at ${b.commit}: ${clean(b.reason)}`);
  if (e.lastBuild) lines.push(`image:      ${e.lastBuild.reference}@${e.lastBuild.digest} (public commit ${e.lastBuild.commit}; check it with airlock embargo verify ${e.id})`);
  for (const a of e.artifacts) lines.push(`artifact:   ${clean(a.name)} (${a.size} bytes, sha256:${a.sha256}, ${a.at})`);
  if (e.artifacts.length === 0) lines.push('artifact:   none yet (no patched image was built)');
  lines.push(`log:        ${e.logBytes} bytes (airlock embargo logs ${e.id})`, '', clean(e.patch));
  const text = lines.join('\n');
  return text.endsWith('\n') ? text : `${text}\n`;
}
