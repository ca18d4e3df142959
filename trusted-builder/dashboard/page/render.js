// The builder page's DOM, built from one BuilderSummary (trusted-builder/dashboard/summary-schema.ts).
//
// Much of what it shows was written by someone else: project and branch names from hints, git's
// and the registry's error messages, audit field values. So no markup is ever parsed: `el()` makes
// elements, `append` turns every string into a text node, attributes come from a fixed list, and
// links go only to this page's own anchors, its JSON, or the public lookaside.

const ATTRIBUTES = new Set([
  'class', 'href', 'title', 'datetime', 'scope', 'aria-label', 'aria-hidden',
  'data-project', 'data-commit', 'data-state', 'data-step', 'data-outcome', 'data-kind', 'data-field',
]);
const LINK = /^(#[a-z-]*|\/v1\/ui\/summary|\/lookaside\/[A-Za-z0-9._@=/-]+)$/;

/** An element; `attrs` values that are null, undefined or false are left out; strings become text. */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (!ATTRIBUTES.has(name)) throw new Error(`attribute ${name} is not on the page's list`);
    if (name === 'href' && !LINK.test(String(value))) throw new Error('not a link this page makes');
    node.setAttribute(name, String(value));
  }
  node.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false).map((c) => (typeof c === 'object' ? c : String(c))));
  return node;
}

/** `2026-05-01 12:03:04 UTC` from an ISO time or epoch milliseconds: the same for every viewer. */
export function when(at) {
  const iso = typeof at === 'number' ? new Date(at).toISOString() : String(at);
  return el('time', { datetime: iso }, iso.replace('T', ' ').replace(/(\.\d+)?Z$/, ' UTC'));
}

/** Each outcome and state as a symbol and a word: nothing is said by colour alone. */
const OUTCOMES = {
  passed: '✓', refused: '✗', failed: '✗', running: '▶', waiting: '·', skipped: '–', unknown: '?',
  published: '✓', queued: '·',
};
const STEP_NAMES = { verify: 'verify source', tests: 'tests', build: 'build image', 'leak-check': 'leak check', push: 'push', sign: 'sign' };
const REFUSAL_KINDS = { 'hint-refused': 'hint refused', 'verify-refused': 'refused by policy or verification', 'promotion-failed': 'promotion stopped' };

function badge(word) {
  return el('span', { class: `badge o-${word in OUTCOMES ? word : 'unknown'}` }, el('span', { 'aria-hidden': 'true' }, OUTCOMES[word] ?? '?'), ' ', word);
}

function empty(text) {
  return el('p', { class: 'empty' }, text);
}

function stepItem(step) {
  return el(
    'li',
    { class: 'step', 'data-step': step.name, 'data-outcome': step.outcome },
    badge(step.outcome),
    ' ',
    el('span', { class: 'step-name' }, STEP_NAMES[step.name] ?? step.name),
    step.detail ? el('span', { class: 'detail' }, step.detail) : null,
  );
}

function artifacts(p) {
  const rows = [];
  const row = (term, ...value) => rows.push(el('dt', {}, term), el('dd', {}, ...value));
  if (p.reference) row('Image', el('code', { class: 'reference' }, p.reference));
  if (p.digest) row('Digest', el('code', { class: 'digest' }, p.digest));
  if (p.signatureUrl) row('Signature', el('a', { href: p.signatureUrl, class: 'signature' }, p.signatureUrl.split('/').pop()));
  if (p.provenanceUrl) {
    const detached = p.provenanceSignatureUrl ? [' · ', el('a', { href: p.provenanceSignatureUrl, class: 'provenance-signature' }, 'its signature')] : [];
    row('Provenance', el('a', { href: p.provenanceUrl, class: 'provenance' }, 'SLSA provenance'), ...detached);
  }
  return rows.length ? el('dl', { class: 'artifacts' }, rows) : null;
}

function promotionItem(p) {
  return el(
    'li',
    { class: `promotion state-${p.state}`, 'data-project': p.project, 'data-commit': p.commit, 'data-state': p.state },
    el('div', { class: 'promotion-head' }, el('h3', {}, el('span', { class: 'project' }, p.project), ' ', el('code', { class: 'commit', title: p.commit }, p.commit.slice(0, 12))), badge(p.state)),
    el('p', { class: 'meta' }, p.branch !== undefined ? ['branch ', el('code', { class: 'branch' }, p.branch), ' · '] : null, 'updated ', when(p.updatedAt)),
    el('ol', { class: 'steps', 'aria-label': `Steps of ${p.project} ${p.commit.slice(0, 12)}` }, p.steps.map(stepItem)),
    p.reason !== undefined ? el('p', { class: 'reason' }, 'Stopped at ', el('strong', { class: 'stopped-at' }, p.stoppedAt ?? '?'), ': ', el('span', { class: 'reason-text' }, p.reason)) : null,
    artifacts(p),
  );
}

export function renderPromotions(list) {
  if (list.length === 0) return empty('No promotion yet.');
  return el('ul', { class: 'promotions' }, list.map(promotionItem));
}

function table(caption, heads, rows) {
  return el(
    'div',
    { class: 'table-wrap' },
    el('table', {}, el('caption', { class: 'visually-hidden' }, caption), el('thead', {}, el('tr', {}, heads.map((x) => el('th', { scope: 'col' }, x)))), el('tbody', {}, rows)),
  );
}

export function renderRefusals(list) {
  if (list.length === 0) return empty('No refusals.');
  const rows = list.map((r) =>
    el(
      'tr',
      { class: 'refusal', 'data-kind': r.kind, 'data-project': r.project },
      el('td', {}, when(r.at)),
      el('td', { class: 'what' }, REFUSAL_KINDS[r.kind] ?? r.kind),
      el('td', {}, r.project ? [el('span', { class: 'project' }, r.project), ' '] : null, r.commit ? el('code', { class: 'commit', title: r.commit }, r.commit.slice(0, 12)) : null, r.from ? ['from ', el('code', { class: 'from' }, r.from)] : null),
      el('td', { class: 'refusal-step' }, r.step ?? ''),
      el('td', { class: 'reason-text' }, r.reason, r.suppressedBefore ? el('span', { class: 'note' }, ` (and ${r.suppressedBefore} more before it, counted only)`) : null),
    ),
  );
  return table('Refusals, newest first', ['When', 'What', 'Project and commit', 'Step', 'Reason'], rows);
}

export function renderAudit(tail) {
  if (tail.length === 0) return empty('No records yet.');
  const rows = [...tail].reverse().map((r) =>
    el(
      'tr',
      { class: 'record', 'data-kind': r.kind },
      el('td', {}, when(r.at)),
      el('td', {}, el('code', { class: 'kind' }, r.kind)),
      el('td', {}, el('dl', { class: 'fields' }, r.fields.map((f) => el('div', { class: 'field', 'data-field': f.name }, el('dt', {}, f.name), el('dd', {}, f.value))))),
    ),
  );
  return table('Audit records, newest first', ['When', 'Kind', 'Fields'], rows);
}

/** The hash chain's state, in words. */
export function chainText(chain) {
  return chain.ok ? `Audit chain intact · head ${chain.head.slice(0, 16)}…` : `Audit chain BROKEN at line ${chain.line}: ${chain.problem} — nothing after it is shown`;
}
