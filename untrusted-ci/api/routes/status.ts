/**
 * The status page: `GET /` (and `/status`) serves a static page from `untrusted-ci/status/page/`
 * (plain HTML, CSS and JS modules, no build step), which reads `GET /api/status` (one snapshot) and
 * follows `GET /api/status/stream` (server-sent events: `event: status` with a snapshot at once and
 * after every change, heartbeats between) and, for a live log, `GET /api/builds/:id/events`.
 *
 * Everything the page shows may be written by an attacker (subjects, job names, log lines, config
 * messages): the page inserts text only, and its Content-Security-Policy allows scripts and styles
 * from these files alone, no inline code, no other origin. Only the files listed here are served.
 */
import { readFileSync } from 'node:fs';
import { PAGE_CSP } from '#shared/http/page-policy.js';
import { StatusView } from '../schemas/status.js';
import type { EventStream } from '../event-stream.js';
import { openEventStream, streamCapacityLeft } from '../event-stream.js';
import { RateLimitedError } from '#shared/errors.js';
import { StatusFeed } from '../../status/status-feed.js';
import { statusView } from '../../status/snapshot.js';
import type { ApiDeps, ZodApp } from '../app.js';

/** The page's policy (shared with the builder's page): its own files only, nothing inline. */
export { PAGE_CSP };

const PAGE_DIR = new URL('../../status/page/', import.meta.url);
const JS = 'text/javascript; charset=utf-8';
/** URL path → file in PAGE_DIR and its content type. */
const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/status': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/status/status.css': { file: 'status.css', type: 'text/css; charset=utf-8' },
  '/status/status.js': { file: 'status.js', type: JS },
  '/status/render.js': { file: 'render.js', type: JS },
  '/status/log-view.js': { file: 'log-view.js', type: JS },
  '/status/favicon.svg': { file: 'favicon.svg', type: 'image/svg+xml' },
};

/** Registers the page and its API, live through `deps.status` (a feed nobody notifies is made when none is given). */
export function registerStatusRoutes(app: ZodApp, deps: ApiDeps): void {
  const feed = deps.status ?? new StatusFeed({ snapshot: () => statusView(deps), logger: deps.logger });
  app.addHook('preClose', async () => feed.close());

  // Read once: a handful of small files, served from memory.
  const bodies = new Map([...new Set(Object.values(FILES).map((f) => f.file))].map((f) => [f, readFileSync(new URL(f, PAGE_DIR))]));
  for (const [url, { file, type }] of Object.entries(FILES)) {
    app.get(url, { schema: { hide: true } }, async (_req, reply) =>
      reply.type(type).header('content-security-policy', PAGE_CSP).header('cache-control', 'no-cache').header('referrer-policy', 'no-referrer').send(bodies.get(file)),
    );
  }

  app.get('/api/status', { schema: { description: 'The status page as data: per pipeline its change queues, items, jobs and progress; recent builds', response: { 200: StatusView } } }, async () =>
    feed.current(),
  );

  app.get(
    '/api/status/stream',
    { schema: { description: 'Server-sent events: `event: status` with the status (as GET /api/status) at once and after every change; heartbeats between. 429 when too many are open' } },
    async (req, reply) => {
      let stream: EventStream | undefined;
      if (!streamCapacityLeft(req.ip)) throw new RateLimitedError('too many event streams are open (for this address, or in all); try again shortly, or read GET /api/status');
      // Subscribed before the response starts: a full feed is answered 429 in the usual error shape.
      const sub = await feed.subscribe({ send: (json) => stream?.send('status', json), end: () => stream?.end() });
      stream = openEventStream(req, reply, { onEnd: sub.unsubscribe });
      stream.send('status', sub.first);
    },
  );
}
