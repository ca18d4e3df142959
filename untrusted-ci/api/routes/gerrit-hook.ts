/**
 * `POST /hooks/gerrit`: Gerrit events as its webhooks plugin posts them (stream-events JSON), signed
 * by a relay with `X-Airlock-Signature: sha256=<HMAC of the raw body>` (the plugin itself cannot
 * sign: see sources/gerrit/verify.ts). The body is taken as raw bytes in this encapsulated scope
 * only, verified, then parsed by the pure parser. Answers: 202 with what was done (or why the
 * event was ignored), 401 bad signature, 400 malformed event, 413 too large, 429 rate-limited.
 */
import type { FastifyInstance } from 'fastify';
import { NotFoundError } from '../../../shared/errors.js';
import { parseGerritEvent } from '../../sources/gerrit/parse.js';
import { verifyWebhookSignature, WEBHOOK_SIGNATURE_HEADER } from '../../sources/gerrit/verify.js';
import { handleTrigger } from '../../sources/triggers.js';
import type { ApiDeps } from '../app.js';

export function registerGerritHook(app: FastifyInstance, deps: ApiDeps): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  app.post(
    '/hooks/gerrit',
    {
      config: { rateLimit: { max: deps.config.webhooks.ratePerMinute, timeWindow: '1 minute' } },
      schema: { description: 'Gerrit webhook (patchset-created, comment-added, change-merged, ref-updated), HMAC-signed over the raw body' },
    },
    async (req, reply) => {
      if (!deps.gerritSecret) throw new NotFoundError('the Gerrit webhook is not configured on this CI (webhooks.gerritSecretFile)');
      const raw = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      try {
        verifyWebhookSignature(raw, req.headers[WEBHOOK_SIGNATURE_HEADER], deps.gerritSecret);
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
      if (event.eventId && deps.store.seenEvent(event.eventId)) {
        deps.metrics.webhook('duplicate');
        return reply.status(202).send({ accepted: false, reason: 'already received (redelivery)' });
      }
      let outcome;
      try {
        outcome = handleTrigger(event, deps);
      } catch (e) {
        // Not acted on: let the review system's retry through.
        if (event.eventId) deps.store.forgetEvent(event.eventId);
        throw e;
      }
      deps.metrics.webhook(outcome.accepted ? 'accepted' : 'ignored');
      log.info({ kind: event.kind, outcome }, 'webhook handled');
      return reply.status(202).send(outcome);
    },
  );
}
