// The status page: follows GET /api/status/stream (server-sent events, one StatusView per change)
// and redraws the part that changed; running jobs' progress and "… ago" times tick every second
// against the server's clock. `#log/<build>/<job>` opens a job's live log.

import { api, LogView } from './log-view.js';
import { h, hintsText, renderHistory, renderPipeline, summaryText } from './render.js';

const RETRY_MS = 10_000;
const byId = (id) => document.getElementById(id);

const containers = { check: byId('check-queues'), gate: byId('gate-queues'), history: byId('history-list') };
/** What each container shows (its data as JSON) and the functions that refresh its clocks. */
const shown = {};
const ticks = {};
/** Server time minus local time, from the last snapshot: elapsed times are measured on the server's clock. */
let offset = 0;
const now = () => Date.now() + offset;
/** Finished builds already on the page; newly finished ones are announced. */
let known;

function apply(view) {
  offset = view.generatedAt - Date.now();
  for (const p of view.pipelines) if (containers[p.name]) redraw(p.name, p, () => renderPipeline(p, now()));
  redraw('history', view.history, () => renderHistory(view.history, now()));
  byId('summary').textContent = summaryText(view);
  const hints = hintsText(view.hints, now());
  byId('hints').textContent = hints?.text ?? '';
  byId('hints').hidden = !hints;
  byId('hints').classList.toggle('failing', Boolean(hints?.failing));
  announce(view.history);
}

function redraw(key, data, render) {
  const json = JSON.stringify(data);
  if (shown[key] === json) return;
  shown[key] = json;
  const focused = document.activeElement?.id;
  const { node, ticks: t } = render();
  containers[key].replaceChildren(node);
  ticks[key] = t;
  // A redraw must not throw the keyboard user back to the top.
  if (focused && !document.activeElement?.id) byId(focused)?.focus();
}

function announce(history) {
  const ids = new Set(history.map((b) => b.id));
  if (known) {
    const fresh = history.filter((b) => !known.has(b.id)).reverse();
    for (const b of fresh) {
      byId('announcer').append(h('p', {}, `Build #${b.id} (${b.pipeline}, change ${b.change.change},${b.change.patchset} of ${b.project}) finished: ${b.result ?? 'done'}.`));
    }
    const lines = byId('announcer').children;
    while (lines.length > 5) lines[0].remove();
  }
  known = ids;
}

function setConnection(text, state) {
  const el = byId('connection');
  el.textContent = text;
  el.dataset.state = state;
}

function connect() {
  const source = new EventSource(api('/api/status/stream'));
  source.addEventListener('status', (ev) => {
    try {
      apply(JSON.parse(ev.data));
      setConnection(`Live · updated ${new Date().toLocaleTimeString()}`, 'live');
    } catch (e) {
      setConnection(`Cannot show this update: ${e instanceof Error ? e.message : 'unknown error'}`, 'error');
    }
  });
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (too many watchers) or gone: show a snapshot, try the stream again later.
      setConnection('Not live: reconnecting in a few seconds…', 'offline');
      void poll();
      setTimeout(connect, RETRY_MS);
    } else {
      setConnection('Connection lost: reconnecting…', 'offline');
    }
  });
}

async function poll() {
  try {
    const r = await fetch(api('/api/status'), { headers: { accept: 'application/json' } });
    if (r.ok) apply(await r.json());
  } catch {
    // The next stream attempt says how things are.
  }
}

const logView = new LogView(byId('log'));

function route() {
  const m = /^#log\/(\d+)\/(.+)$/.exec(location.hash);
  if (!m) {
    if (location.hash === '' || location.hash === '#') logView.close();
    return;
  }
  let job;
  try {
    job = decodeURIComponent(m[2]);
  } catch {
    return;
  }
  logView.open(Number(m[1]), job);
}

byId('log-close').addEventListener('click', () => {
  history.pushState(null, '', location.pathname + location.search);
  logView.close();
  byId('main').focus();
});
window.addEventListener('hashchange', route);
setInterval(() => {
  const t = now();
  for (const list of Object.values(ticks)) for (const tick of list) tick(t);
}, 1000);

route();
connect();
