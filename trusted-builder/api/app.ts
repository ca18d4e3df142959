/**
 * The trusted builder's HTTP surface (fastify), deliberately small:
 * - `POST /v1/hints`: a promotion hint `{version, project, branch, commit, ciRun?}`, authenticated
 *   by HMAC-SHA256 over `timestamp.body` (shared/hints/hint-auth.ts) with a 5-minute window and a
 *   per-process replay guard. A bad or missing signature, a stale timestamp or a replay is 401;
 *   a malformed hint 400. Every refusal and every acceptance is an audit record (past 60 refusals a
 *   minute they are counted into the next record instead: a flood must not fill the disk), and a
 *   client may send 300 hints a minute (then 429). An accepted hint
 *   is only a trigger (202): the promoter re-derives every fact from its own clone and policy.
 * - `POST /v1/promotions/status`: `{project, commit}`, signed like a hint (no replay guard: a read),
 *   answered `{state, result?}` (the promotion's result once it ended) or 404. What
 *   `airlock builder promote` polls; nothing in it is more than the builder's page shows.
 * - `GET /lookaside/…`: the image signatures, as static files (the lookaside layout consumers'
 *   `registries.d` points at). Public by design: signatures are meant to be fetched.
 * - `POST /v1/embargo` (only when the embargo lane is on; otherwise 404 like any unknown route): one
 *   armored OpenPGP message, signed by a security team member and encrypted to the builder's
 *   embargo key (trusted-builder/embargo/wire.ts), answered 200 with an armored message encrypted
 *   to that member. A refusal is 400/401 with one fixed message; the reason is in the audit log.
 *   At most 30 requests a minute per client (then 429, before any decryption).
 * - `GET /ui`, `GET /v1/ui/summary` and `GET /metrics` (only when the page's login secret exists;
 *   otherwise 404): the builder's page for SRE and its Prometheus metrics, behind HTTP Basic
 *   (trusted-builder/dashboard/routes.ts).
 * - `GET /healthz`.
 * Nothing here reveals a secret, a policy detail or an embargoed item; error bodies are
 * `{code, message, statusCode}` with messages that name only what the caller sent.
 */
import { createReadStream } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { z } from 'zod';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import { InvalidInputError, NotFoundError, RateLimitedError, UnauthorizedError } from '#shared/errors.js';
import { installWireErrors } from '#shared/http/wire.js';
import { ReplayGuard, verifyHint } from '#shared/hints/hint-auth.js';
import type { Logger } from '#shared/logging.js';
import { MAX_PROMOTION_HINT_BYTES, PromotionHint } from '#shared/schemas/promotion-hint.js';
import { parseOrThrow } from '#shared/schemas/issues.js';
import type { AuditLog } from '../audit/audit-log.js';
import { RefusalThrottle } from '../audit/throttle.js';
import { registerDashboard, type DashboardDeps } from '../dashboard/routes.js';
import { MAX_EMBARGO_REQUEST_BYTES } from '../embargo/wire.js';

/** Takes an authenticated hint; answers at once (the promotion runs in the background). */
export interface HintSink {
  accept(hint: PromotionHint): { queued: boolean; reason?: string; retryOf?: string };
  /** Where a promotion stands (absent: `POST /v1/promotions/status` answers 404 for everything). */
  status?(project: string, commit: string): { state: string; result?: unknown } | undefined;
}

/** What `POST /v1/promotions/status` is asked: which promotion. */
const PromotionQuery = PromotionHint.pick({ project: true, commit: true }).strict();
type PromotionQuery = z.infer<typeof PromotionQuery>;

/** Answers an embargo request (trusted-builder/embargo/lane.ts); throws a 400/401 AirlockError to refuse it. */
export interface EmbargoSink {
  handle(armored: string, from: string): Promise<string>;
}

export interface BuilderApiDeps {
  logger: Logger;
  audit: AuditLog;
  /** The HMAC key (read from the SecretStore at start). */
  hintSecret: Buffer;
  promoter: HintSink;
  /** Root of the lookaside tree served under /lookaside/. */
  lookasideDir: string;
  /** The embargo lane; absent: the lane is off and `/v1/embargo` does not exist. */
  embargo?: EmbargoSink;
  /** The builder's page and its login; absent: the page is off and `/ui` does not exist. */
  dashboard?: DashboardDeps;
  now?: () => number;
}

/** Per client address: a CI sends one hint per merge; a burst of merges stays well below this. */
const HINTS_PER_MINUTE = 300;
/** Per client address: each request costs a decryption and a signature check. */
const EMBARGO_REQUESTS_PER_MINUTE = 30;
/** Refused hints recorded one by one per minute; beyond, counted (see RefusalThrottle). */
const REFUSALS_AUDITED_PER_MINUTE = 60;

export async function buildBuilderApi(d: BuilderApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: d.logger.child({ component: 'api' }, { level: 'warn' }) as FastifyBaseLogger,
    bodyLimit: MAX_PROMOTION_HINT_BYTES,
    requestTimeout: 30_000,
    connectionTimeout: 60_000,
  });
  const now = d.now ?? Date.now;
  const replay = new ReplayGuard();
  installWireErrors(app);
  const throttle = new RefusalThrottle(REFUSALS_AUDITED_PER_MINUTE, now);
  const refused = async (reason: string, from: string): Promise<void> => {
    const t = throttle.take();
    if (!t.record) return;
    const suppressed: Record<string, number> = t.suppressedBefore > 0 ? { suppressedBefore: t.suppressedBefore } : {};
    // The service log says what the audit log says (the same throttle), so an operator sees it.
    d.logger.warn({ reason, from, ...suppressed }, 'promotion hint refused');
    await d.audit.append('hint-refused', { reason, from, ...suppressed });
  };
  await app.register(rateLimit, {
    global: false,
    errorResponseBuilder: (_req, ctx) => new RateLimitedError(`rate limit of ${ctx.max} requests per ${ctx.after} exceeded`),
  });

  await app.register(async (hints) => {
    // The signature covers the raw bytes: no JSON parser may touch them first.
    hints.removeAllContentTypeParsers();
    hints.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
    hints.post('/v1/hints', { config: { rateLimit: { max: HINTS_PER_MINUTE, timeWindow: '1 minute' } } }, async (req, reply) => {
      const raw = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const seconds = Math.floor(now() / 1000);
      const v = verifyHint(d.hintSecret, raw, req.headers, seconds);
      const admitted = v.ok ? replay.admit(v, seconds) : v;
      if (!admitted.ok) {
        await refused(admitted.reason, req.ip);
        throw new UnauthorizedError(`promotion hint refused: ${admitted.reason}`);
      }
      let hint: PromotionHint;
      try {
        hint = parseJsonBody(PromotionHint, raw, 'hint');
      } catch (e) {
        await refused('malformed', req.ip);
        throw e;
      }
      const r = d.promoter.accept(hint);
      await d.audit.append('hint-accepted', {
        project: hint.project,
        branch: hint.branch,
        commit: hint.commit,
        ...(hint.ciRun ? { ciRun: hint.ciRun } : {}),
        queued: r.queued,
        ...(r.reason ? { note: r.reason } : {}),
        ...(r.retryOf ? { retryOf: r.retryOf } : {}),
      });
      return reply.status(202).send({ accepted: true, queued: r.queued, ...(r.reason ? { reason: r.reason } : {}), ...(r.retryOf ? { retryOf: r.retryOf } : {}) });
    });
    // Where a promotion stands, for whoever holds the hint key (`airlock builder promote` polls it).
    // Signed like a hint, over the body; a read changes nothing, so no replay guard.
    hints.post('/v1/promotions/status', { config: { rateLimit: { max: HINTS_PER_MINUTE, timeWindow: '1 minute' } } }, async (req) => {
      const raw = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const v = verifyHint(d.hintSecret, raw, req.headers, Math.floor(now() / 1000));
      if (!v.ok) {
        await refused(v.reason, req.ip);
        throw new UnauthorizedError(`promotion status refused: ${v.reason}`);
      }
      const q = parseJsonBody(PromotionQuery, raw, 'promotion status');
      const status = d.promoter.status?.(q.project, q.commit);
      if (!status) throw new NotFoundError(`no promotion of ${q.project}@${q.commit}`);
      return status;
    });
  });

  const lane = d.embargo;
  if (lane) {
    await app.register(async (embargo) => {
      // The body is an armored OpenPGP message whatever the client calls it; read as text, capped.
      embargo.removeAllContentTypeParsers();
      embargo.addContentTypeParser('*', { parseAs: 'string', bodyLimit: MAX_EMBARGO_REQUEST_BYTES }, (_req, body, done) => done(null, body));
      embargo.post('/v1/embargo', { bodyLimit: MAX_EMBARGO_REQUEST_BYTES, config: { rateLimit: { max: EMBARGO_REQUESTS_PER_MINUTE, timeWindow: '1 minute' } } }, async (req, reply) => {
        const answer = await lane.handle(typeof req.body === 'string' ? req.body : '', req.ip);
        return reply.status(200).type('application/pgp-encrypted').header('cache-control', 'no-store').send(answer);
      });
    });
  }

  const root = resolve(d.lookasideDir);
  app.get('/lookaside/*', async (req, reply) => {
    const rel = decodeURIComponent((req.params as { '*': string })['*']);
    const file = resolve(join(root, rel));
    if (rel.includes('\0') || !file.startsWith(root + sep)) throw new NotFoundError('no such signature');
    const st = await lstat(file).catch(() => undefined);
    if (!st?.isFile()) throw new NotFoundError('no such signature');
    return reply.type('application/octet-stream').send(createReadStream(file));
  });

  if (d.dashboard) await registerDashboard(app, d.dashboard);

  app.get('/healthz', async () => ({ ok: true }));
  return app;
}

/** A signed body's JSON, checked against `schema`: InvalidInputError naming `file` when it is not JSON or not valid. */
function parseJsonBody<T>(schema: z.ZodType<T>, raw: Buffer, file: string): T {
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8')) as unknown;
  } catch {
    throw new InvalidInputError([{ file, path: '', message: 'not JSON', severity: 'error' }]);
  }
  return parseOrThrow(schema, value, file);
}
