/**
 * `POST /hooks/gerrit` and `POST /hooks/gerrit/<secret>`: Gerrit events as its webhooks plugin
 * posts them (stream-events JSON), authenticated by the shared secret in the URL path, as the
 * password of HTTP basic authentication, or by a relay's `X-Airlock-Signature: sha256=<HMAC of the
 * raw body>` (sources/gerrit/verify.ts says why each is acceptable). The body is taken as raw bytes
 * in this encapsulated scope only, verified, then parsed by the pure parser. Answers: 202 with
 * what was done (or why the event was ignored), 401 bad credentials (with a Basic challenge when
 * none came), 400 malformed event, 413 too large, 429 rate-limited.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ConflictError, NotFoundError, UnauthorizedError } from '#shared/errors.js';
import { parseGerritEvent } from '../../sources/gerrit/parse.js';
import { verifyWebhook, WEBHOOK_SIGNATURE_HEADER } from '../../sources/gerrit/verify.js';
import { handleTrigger } from '../../sources/triggers.js';
import type { ApiDeps } from '../app.js';

export function registerGerritHook(app: FastifyInstance, deps: ApiDeps): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  const config = { rateLimit: { max: deps.config.webhooks.ratePerMinute, timeWindow: '1 minute' } };
  const handler = (token: (req: FastifyRequest) => string | undefined) => async (req: FastifyRequest, reply: FastifyReply) => {
    if (!deps.gerritSecret) throw new NotFoundError('the Gerrit webhook is not configured on this CI (webhooks.gerritSecretFile)');
    const raw = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const t = token(req);
    const auth = req.headers.authorization;
    const signature = req.headers[WEBHOOK_SIGNATURE_HEADER];
    try {
      if (t === undefined && auth === undefined && signature === undefined) {
        void reply.header('www-authenticate', 'Basic realm="airlock webhooks"');
        throw new UnauthorizedError(`no credential: put the secret in the URL (/hooks/gerrit/<secret>), as the basic-auth password, or sign the body (${WEBHOOK_SIGNATURE_HEADER})`);
      }
      verifyWebhook(raw, { ...(t !== undefined ? { token: t } : {}), ...(auth !== undefined ? { authorization: auth } : {}), ...(signature !== undefined ? { signature } : {}) }, deps.gerritSecret);
    } catch (e) {
      deps.metrics.webhook('rejected');
      throw e;
    }
    let event;
    try {
      event = parseGerritEvent(raw);
    } catch (e) {
      deps.metrics.webhook('rejected');
      throw e;
    }
    const log = deps.logger.child({ eventId: 'eventId' in event ? event.eventId : undefined });
    if (event.kind === 'ignored') {
      deps.metrics.webhook('ignored');
      log.info({ event: event.event, reason: event.reason }, 'webhook ignored');
      return reply.status(202).send({ accepted: false, reason: event.reason });
    }
    if (event.eventId && (await deps.store.seenEvent(event.eventId))) {
      deps.metrics.webhook('duplicate');
      return reply.status(202).send({ accepted: false, reason: 'already received (redelivery)' });
    }
    let outcome;
    try {
      outcome = await handleTrigger(event, deps);
    } catch (e) {
      // Not acted on: let the review system's retry through.
      if (event.eventId) await deps.store.forgetEvent(event.eventId).catch(() => undefined);
      if (e instanceof ConflictError) {
        // A late event about an older patch set: a retry cannot change that, so say so and stop it.
        deps.metrics.webhook('ignored');
        log.info({ kind: event.kind, reason: e.message }, 'webhook ignored');
        return reply.status(202).send({ accepted: false, reason: e.message });
      }
      throw e;
    }
    deps.metrics.webhook(outcome.accepted ? 'accepted' : 'ignored');
    log.info({ kind: event.kind, outcome }, 'webhook handled');
    return reply.status(202).send(outcome);
  };
  const description = 'Gerrit webhook (patchset-created, comment-added, change-merged, change-abandoned, change-restored, wip-state-changed, private-state-changed, ref-updated)';
  app.post('/hooks/gerrit', { config, schema: { description: `${description}; basic-auth password or X-Airlock-Signature` } }, handler(() => undefined));
  app.post<{ Params: { secret: string } }>('/hooks/gerrit/:secret', { config, schema: { hide: true } }, handler((req) => (req.params as { secret: string }).secret));
}
