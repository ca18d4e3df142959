// The builder's page: reads GET /v1/ui/summary every few seconds (the browser sends the Basic
// credentials it was given for this site) and redraws the sections whose data changed.

import { chainText, renderAudit, renderPromotions, renderRefusals } from './render.js';

const EVERY_MS = 5000;
const byId = (id) => document.getElementById(id);
/**
 * An API URL on this page's origin. The page's own login invites opening it as
 * http://user:password@host/ui; a relative URL would then carry those credentials, and Chromium
 * refuses to fetch such a URL. The origin has none (the browser still sends the login it was given).
 */
const api = (path) => new URL(path, location.origin).href;
const sections = [
  ['promotion-list', (s) => s.promotions, renderPromotions],
  ['refusal-list', (s) => s.refusals, renderRefusals],
  ['audit-list', (s) => s.tail, renderAudit],
];
/** What each section shows (its data as JSON): unchanged data is not redrawn (focus and selection stay). */
const shown = {};

function setConnection(text, state) {
  const p = byId('connection');
  p.textContent = text;
  p.dataset.state = state;
}

function apply(summary) {
  for (const [id, pick, render] of sections) {
    const json = JSON.stringify(pick(summary));
    if (shown[id] === json) continue;
    shown[id] = json;
    byId(id).replaceChildren(render(pick(summary)));
  }
  const chain = byId('chain');
  chain.textContent = chainText(summary.chain);
  chain.dataset.state = summary.chain.ok ? 'ok' : 'broken';
}

async function refresh() {
  let again = true;
  try {
    const r = await fetch(api('/v1/ui/summary'), { headers: { accept: 'application/json' }, cache: 'no-store' });
    if (r.status === 401) {
      // Polling on would only count as failed logins.
      again = false;
      return setConnection('Not logged in: reload the page to log in again.', 'error');
    }
    if (!r.ok) return setConnection(`The builder answered ${r.status}; trying again…`, 'error');
    apply(await r.json());
    setConnection(`Updated ${new Date().toLocaleTimeString()} · every ${EVERY_MS / 1000} s`, 'live');
  } catch (e) {
    setConnection(`Cannot reach the builder (${e instanceof Error ? e.message : 'unknown error'}); trying again…`, 'error');
  } finally {
    if (again) setTimeout(refresh, EVERY_MS);
  }
}

void refresh();
