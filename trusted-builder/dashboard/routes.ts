/**
 * The builder's page, for SRE: `GET /ui` (plain HTML, CSS and JS modules from
 * trusted-builder/dashboard/page/, no build step), `GET /v1/ui/summary` (its data,
 * summary-schema.ts) and `GET /metrics` (Prometheus text, api/metrics.ts; a scraper sends the same
 * Basic credentials), registered only when the login secret exists (trusted-builder/service.ts);
 * otherwise these paths are 404 like any unknown route. The metrics sit behind the login because
 * the builder is the trusted tier: when it is busy, and with what outcome, is SRE's to see, not the
 * public's (the untrusted CI, which holds nothing of the kind, serves its own openly).
 *
 * Every request here needs HTTP Basic credentials (basic-auth.ts). A request whose header has not
 * passed recently counts against a limit of `ATTEMPTS_PER_MINUTE` per client address, checked
 * before bcrypt runs: a guesser gets 429, and a viewer who logged in is never counted again
 * while the login is remembered. Every answer here — 401 and 429 included — carries
 * `Cache-Control: no-store`, `nosniff`, no referrer and a Content-Security-Policy: the page's own
 * files only (shared/http/page-policy.ts), anything else `default-src 'none'`; no framing either way.
 * The page inserts everything as text.
 */
import { readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import { serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import { RateLimitedError, UnauthorizedError } from '#shared/errors.js';
import { PAGE_CSP } from '#shared/http/page-policy.js';
import type { BasicAuth } from './basic-auth.js';
import { BuilderSummary } from './summary-schema.js';

/** What the page needs: its login, and its data (dashboard/summary.ts, wired in service.ts). */
export interface DashboardDeps {
  auth: BasicAuth;
  summary: () => Promise<BuilderSummary>;
  /** The builder's Prometheus metrics (api/metrics.ts), served at `/metrics` behind the same login; absent: no `/metrics`. */
  metrics?: { contentType: string; metrics(): Promise<string> };
}

/** Requests a minute per client address with credentials not yet proven (failed logins, mostly). */
const ATTEMPTS_PER_MINUTE = 10;
/** For every answer here that is not one of the page's files. */
const NOTHING_CSP = "default-src 'none'; frame-ancestors 'none'";
const PAGE_DIR = new URL('./page/', import.meta.url);
const JS = 'text/javascript; charset=utf-8';
const HTML = 'text/html; charset=utf-8';
/** URL path → file in PAGE_DIR and its content type: nothing else is served. */
const FILES: Record<string, { file: string; type: string }> = {
  '/ui': { file: 'index.html', type: HTML },
  '/ui/': { file: 'index.html', type: HTML },
  '/ui/dashboard.css': { file: 'dashboard.css', type: 'text/css; charset=utf-8' },
  '/ui/dashboard.js': { file: 'dashboard.js', type: JS },
  '/ui/render.js': { file: 'render.js', type: JS },
  '/ui/favicon.svg': { file: 'favicon.svg', type: 'image/svg+xml' },
};

export async function registerDashboard(app: FastifyInstance, d: DashboardDeps): Promise<void> {
  // Read once: a handful of small files, served from memory.
  const bodies = new Map([...new Set(Object.values(FILES).map((f) => f.file))].map((f) => [f, readFileSync(new URL(f, PAGE_DIR))]));
  await app.register(async (ui) => {
    ui.setValidatorCompiler(validatorCompiler);
    ui.setSerializerCompiler(serializerCompiler);
    const attempts = ui.createRateLimit({ max: ATTEMPTS_PER_MINUTE, timeWindow: 60_000 });

    ui.addHook('onSend', async (_req, reply) => {
      void reply.header('cache-control', 'no-store').header('x-content-type-options', 'nosniff').header('referrer-policy', 'no-referrer').header('x-frame-options', 'DENY');
      if (!reply.hasHeader('content-security-policy')) void reply.header('content-security-policy', NOTHING_CSP);
    });
    // preHandler, not onRequest: nothing of the route runs before it, and the 401/429 bodies go
    // through the scope's onSend like every other answer.
    ui.addHook('preHandler', async (req, reply) => {
      const authorization = req.headers.authorization;
      if (d.auth.known(authorization)) return;
      const limit = await attempts(req);
      if (!limit.isAllowed && limit.isExceeded) {
        const e = new RateLimitedError(`more than ${ATTEMPTS_PER_MINUTE} login attempts a minute; try again in ${limit.ttlInSeconds} s`);
        return reply.status(e.httpStatus).header('retry-after', String(limit.ttlInSeconds)).send(e.toWire());
      }
      if (await d.auth.check(authorization)) return;
      const e = new UnauthorizedError('the builder page needs its user name and password');
      return reply.status(e.httpStatus).header('www-authenticate', d.auth.challenge).send(e.toWire());
    });

    for (const [url, { file, type }] of Object.entries(FILES)) {
      ui.get(url, async (_req, reply) => reply.type(type).header('content-security-policy', PAGE_CSP).send(bodies.get(file)));
    }
    ui.withTypeProvider<ZodTypeProvider>().get('/v1/ui/summary', { schema: { response: { 200: BuilderSummary } } }, async () => d.summary());
    const metrics = d.metrics;
    if (metrics) ui.get('/metrics', async (_req, reply) => reply.type(metrics.contentType).send(await metrics.metrics()));
  });
}
