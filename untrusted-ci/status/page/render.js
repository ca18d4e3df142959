// The status page's DOM, built from one StatusView (untrusted-ci/api/schemas/status.ts).
//
// Every string in a snapshot may be written by an attacker: change subjects, authors, job names,
// reasons, config messages. So nothing here parses markup: `h()` makes elements, puts text in as
// text nodes, sets only the attributes on its list, and takes only same-site links, which this
// file builds from build ids and encoded job names. No HTML string ever reaches the DOM.

const ATTRIBUTES = new Set([
  'id', 'class', 'href', 'title', 'role', 'datetime', 'scope', 'tabindex', 'max', 'value',
  'aria-label', 'aria-labelledby', 'aria-describedby', 'aria-hidden',
  'data-pipeline', 'data-queue', 'data-change', 'data-build', 'data-job', 'data-state', 'data-result',
]);

/** An element with attributes and children (strings become text nodes; null and false are skipped). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (!ATTRIBUTES.has(name)) throw new Error(`attribute ${name} is not on the page's list`);
    if (name === 'href' && !/^(#|\/(?!\/))/.test(String(value))) throw new Error('only links within this site');
    el.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
  }
  return el;
}

/** `850 ms`, `12 s`, `4 min 5 s`, `10 min`, `2 h 7 min`. */
export function duration(ms) {
  const t = Math.max(0, ms);
  if (t < 1000) return `${Math.round(t)} ms`;
  const s = Math.floor(t / 1000);
  const two = (big, bigUnit, small, smallUnit) => (small === 0 ? `${big} ${bigUnit}` : `${big} ${bigUnit} ${small} ${smallUnit}`);
  if (s < 60) return `${s} s`;
  if (s < 3600) return two(Math.floor(s / 60), 'min', s % 60, 's');
  return two(Math.floor(s / 3600), 'h', Math.floor(s / 60) % 60, 'min');
}

function ago(at, now) {
  return `${duration(Math.max(0, now - at))} ago`;
}

/** Each state as a symbol and a word: the page never says anything by colour alone. */
const JOB_STATES = {
  waiting: ['·', 'waiting'],
  running: ['▶', 'running'],
  passed: ['✓', 'passed'],
  failed: ['✗', 'failed'],
  skipped: ['–', 'skipped'],
  cancelled: ['⊘', 'cancelled'],
  error: ['!', 'error'],
};
const BUILD_RESULTS = {
  passed: '✓',
  failed: '✗',
  'merge-conflict': '⚠',
  'config-error': '⚠',
  error: '!',
  cancelled: '⊘',
  superseded: '↷',
};

function badge(kind, glyph, word) {
  return h('span', { class: `badge s-${kind}` }, h('span', { 'aria-hidden': 'true' }, glyph), ' ', word);
}
function jobBadge(state) {
  const [glyph, word] = JOB_STATES[state] ?? ['?', String(state)];
  return badge(state in JOB_STATES ? state : 'other', glyph, word);
}
function resultBadge(build) {
  if (build.state === 'running') return jobBadge('running');
  if (build.state !== 'finished') return badge('waiting', '·', 'queued');
  const result = build.result ?? 'finished';
  return badge(result in BUILD_RESULTS ? result : 'other', BUILD_RESULTS[result] ?? '?', result);
}

/** `/api/builds/12/logs/test`: a finished job's whole log, served as plain text. */
function logUrl(buildId, job) {
  return `/api/builds/${Number(buildId)}/logs/${encodeURIComponent(job)}`;
}
/** `#log/12/test`: this page's live log view of a job. */
export function liveLogHash(buildId, job) {
  return `#log/${Number(buildId)}/${encodeURIComponent(job)}`;
}

/**
 * A job's progress: elapsed time against what the job took recently (else against its timeout).
 * Returns what to show; `max` undefined makes an indeterminate progress bar.
 */
function progressOf(job, now) {
  const name = job.name;
  if (job.startedAt !== undefined && job.finishedAt !== undefined) {
    return { max: 1, value: 1, text: `took ${duration(job.finishedAt - job.startedAt)}`, label: `${name}: ${job.state}, took ${duration(job.finishedAt - job.startedAt)}` };
  }
  if (job.state === 'running' && job.startedAt !== undefined) {
    const elapsed = Math.max(0, now - job.startedAt);
    if (job.expectedMs) {
      const text = elapsed <= job.expectedMs ? `${duration(elapsed)} of about ${duration(job.expectedMs)}` : `${duration(elapsed)}, longer than the usual ${duration(job.expectedMs)}`;
      return { max: job.expectedMs, value: Math.min(elapsed, job.expectedMs), text, label: `${name}: running for ${text}` };
    }
    if (job.timeoutMs) {
      const text = `${duration(elapsed)} · limit ${duration(job.timeoutMs)}`;
      return { max: job.timeoutMs, value: Math.min(elapsed, job.timeoutMs), text, label: `${name}: running for ${text}` };
    }
    return { max: undefined, value: undefined, text: duration(elapsed), label: `${name}: running for ${duration(elapsed)}` };
  }
  const usual = job.expectedMs ? `usually ${duration(job.expectedMs)}` : '';
  return { max: 1, value: 0, text: usual, label: `${name}: ${job.state}${usual ? `, ${usual}` : ''}` };
}

function setProgress(bar, text, job, now) {
  const p = progressOf(job, now);
  if (p.max === undefined) {
    bar.removeAttribute('max');
    bar.removeAttribute('value');
  } else {
    bar.max = p.max;
    bar.value = p.value;
  }
  bar.setAttribute('aria-label', p.label);
  text.textContent = p.text;
}

function jobRow(job, build, now, ticks) {
  const bar = h('progress', {});
  const time = h('span', { class: 'job-time' });
  setProgress(bar, time, job, now);
  if (job.state === 'running') ticks.push((t) => setProgress(bar, time, job, t));
  const started = build && (job.startedAt !== undefined || job.state === 'running');
  return h(
    'li',
    { class: 'job', 'data-job': job.name, 'data-state': job.state },
    h('span', { class: 'job-name' }, job.name, job.voting ? null : h('span', { class: 'non-voting' }, ' (non-voting)')),
    bar,
    jobBadge(job.state),
    time,
    job.reason ? h('span', { class: 'reason' }, job.reason) : null,
    started
      ? h('a', { href: liveLogHash(build.id, job.name), id: `log-link-${build.id}-${slug(job.name)}` }, build.state === 'finished' ? 'log' : 'live log', h('span', { class: 'visually-hidden' }, ` of ${job.name}`))
      : null,
  );
}

/** An id-safe form of a name (ids must be unique and stable; the name itself stays text). */
function slug(name) {
  let out = '';
  for (const ch of String(name)) out += /[A-Za-z0-9_-]/.test(ch) ? ch : `_${ch.codePointAt(0).toString(16)}`;
  return out;
}

/** A config error's problems, one per line: file, where in it, what is wrong. */
function issueList(issues) {
  if (!issues || issues.length === 0) return null;
  return h(
    'ul',
    { class: 'issues', 'aria-label': 'Configuration problems' },
    issues.map((i) => h('li', { class: `issue issue-${i.severity === 'warning' ? 'warning' : 'error'}` }, h('span', { class: 'issue-severity' }, i.severity === 'warning' ? 'warning: ' : 'error: '), h('code', {}, i.file), i.path ? [' at ', h('code', {}, i.path)] : ' (top level)', ': ', i.message)),
  );
}

function itemState(item) {
  if (item.failing.length > 0) return 'failing';
  if (!item.active) return 'inactive';
  if (item.build?.state === 'running') return 'running';
  return 'queued';
}

function itemView(pipeline, item, index, now, ticks) {
  const label = `${item.change},${item.patchset}`;
  const id = `item-${pipeline}-${index}`;
  const state = itemState(item);
  const base = item.branch || 'branch';
  const testedOn = item.testedOn.length > 0 ? `${base} + ${item.testedOn.join(' + ')}` : `the tip of ${base}`;
  const build = item.build;
  return h(
    'li',
    { class: `item item-${state}${item.live ? '' : ' non-live'}`, 'data-change': item.change, 'data-state': state },
    h(
      'article',
      { 'aria-labelledby': id },
      h('h4', { id }, h('span', { class: 'change' }, label), ' ', h('span', { class: 'project' }, item.project)),
      item.subject ? h('p', { class: 'subject' }, item.subject) : null,
      h('p', { class: 'meta' }, 'by ', h('span', { class: 'author' }, item.author ?? 'unknown'), ' · tested on ', h('span', { class: 'tested-on' }, testedOn), ' · queued ', timeAgo(item.enqueuedAt, now, ticks)),
      item.live ? null : h('p', { class: 'note' }, 'Not tested itself: shown because a change behind it needs it.'),
      item.active ? null : h('p', { class: 'note' }, 'Waiting outside the window: it runs when the changes ahead of it leave.'),
      item.failing.length > 0 ? h('p', { class: 'failing-note' }, h('strong', {}, h('span', { 'aria-hidden': 'true' }, '✗ '), 'Failing: '), item.failing.join('; ')) : null,
      build
        ? h('p', { class: 'build', 'data-build': build.id }, `Build #${build.id}: `, resultBadge(build), build.attempt > 1 ? ` (attempt ${build.attempt})` : '', build.reason ? h('span', { class: 'reason' }, build.reason) : null)
        : h('p', { class: 'build' }, 'No build yet.'),
      issueList(build?.issues),
      item.jobs.length > 0 ? h('ul', { class: 'jobs', 'aria-label': `Jobs of ${label}` }, item.jobs.map((j) => jobRow(j, build, now, ticks))) : h('p', { class: 'note' }, 'Jobs are listed once its configuration is read.'),
    ),
  );
}

function timeAgo(at, now, ticks) {
  const el = h('time', { datetime: new Date(at).toISOString() }, ago(at, now));
  ticks.push((t) => (el.textContent = ago(at, t)));
  return el;
}

/** One pipeline's queues. Returns the node and the functions that refresh its clocks. */
export function renderPipeline(pipeline, now) {
  const ticks = [];
  const items = pipeline.queues.reduce((n, q) => n + q.items.length, 0);
  if (items === 0) return { node: h('p', { class: 'empty' }, `No changes in the ${pipeline.name} pipeline.`), ticks };
  const node = h(
    'div',
    {},
    pipeline.queues.map((q, qi) => {
      const id = `queue-${pipeline.name}-${qi}`;
      const count = `${q.items.length} change${q.items.length === 1 ? '' : 's'}`;
      return h(
        'section',
        { class: 'queue', 'aria-labelledby': id, 'data-pipeline': pipeline.name, 'data-queue': q.name },
        h('h3', { id }, `Queue ${q.name}`),
        h('p', { class: 'queue-meta' }, count, q.window !== undefined ? ` · window ${q.window}` : ''),
        h('ol', { class: 'items' }, q.items.map((item, i) => itemView(pipeline.name, item, `${qi}-${i}`, now, ticks))),
      );
    }),
  );
  return { node, ticks };
}

/** The recent finished builds as a table, config problems under their build. */
export function renderHistory(builds, now) {
  const ticks = [];
  if (builds.length === 0) return { node: h('p', { class: 'empty' }, 'No finished builds yet.'), ticks };
  const rows = builds.map((b) => {
    const took = b.startedAt !== undefined && b.finishedAt !== undefined ? duration(b.finishedAt - b.startedAt) : '';
    const logs = b.jobs.filter((j) => j.startedAt !== undefined);
    return h(
      'tr',
      { 'data-build': b.id, 'data-result': b.result ?? 'finished' },
      h('th', { scope: 'row' }, `#${b.id}`),
      h('td', {}, b.pipeline),
      h('td', {}, h('span', { class: 'change' }, `${b.change.change},${b.change.patchset}`), ' ', h('span', { class: 'project' }, b.project), b.change.subject ? h('span', { class: 'subject' }, b.change.subject) : null),
      h('td', {}, resultBadge(b), b.reason ? h('span', { class: 'reason' }, b.reason) : null, issueList(b.issues)),
      h('td', {}, took),
      h('td', {}, b.finishedAt !== undefined ? timeAgo(b.finishedAt, now, ticks) : ''),
      h(
        'td',
        {},
        logs.length === 0
          ? '—'
          : h('ul', { class: 'log-links' }, logs.map((j) => h('li', {}, h('a', { href: logUrl(b.id, j.name) }, j.name), ' ', jobBadge(j.state)))),
      ),
    );
  });
  const table = h(
    'table',
    {},
    h('caption', { class: 'visually-hidden' }, 'Recently finished builds, newest first'),
    h('thead', {}, h('tr', {}, ['Build', 'Pipeline', 'Change', 'Result', 'Took', 'Finished', 'Job logs'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows),
  );
  return { node: h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Recent builds' }, table), ticks };
}

/** The header's one line: slots and what each pipeline holds. */
export function summaryText(view) {
  const parts = view.pipelines.map((p) => {
    const n = p.queues.reduce((s, q) => s + q.items.length, 0);
    return `${p.name}: ${n} change${n === 1 ? '' : 's'}`;
  });
  return `${view.busy} of ${view.slots} executor slot${view.slots === 1 ? '' : 's'} busy · ${parts.join(' · ')}`;
}

/**
 * The promotion hints' line (absent when hints are not configured, or nothing waits and nothing
 * fails): the backlog, and the failing delivery with its reason (which names the builder's URL).
 */
export function hintsText(hints, now) {
  if (!hints || (hints.pending === 0 && !hints.failing)) return undefined;
  const waiting = `${hints.pending} promotion hint${hints.pending === 1 ? '' : 's'} waiting for the trusted builder`;
  if (!hints.failing) return { text: waiting, failing: false };
  const secs = Math.max(0, Math.round((now - hints.failing.at) / 1000));
  return { text: `${waiting} · last delivery failed ${duration(secs * 1000)} ago: ${hints.failing.reason}`, failing: true };
}
