/**
 * The HTTP error body both services answer with: `{code, message, statusCode}` (docs/conventions.md "The error catalogue").
 */
import type { FastifyError, FastifyInstance } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { InternalError, InvalidInputError, isAirlockError, PayloadTooLargeError, RateLimitedError, type AirlockError, type WireError } from '../errors.js';

/** Any error → the wire shape: airlock errors keep their code; fastify's own 4xx get the nearest airlock code. */
export function toWire(err: unknown): WireError {
  if (isAirlockError(err)) return (err as AirlockError).toWire();
  if (hasZodFastifySchemaValidationErrors(err)) {
    const where = (err as { validationContext?: string }).validationContext ?? 'request';
    return new InvalidInputError(
      err.validation.map((v) => ({ file: where, path: v.instancePath.replace(/^\//, '').replace(/\//g, '.'), message: v.message ?? 'invalid', severity: 'error' as const })),
    ).toWire();
  }
  const f = err as Partial<FastifyError>;
  const status = typeof f.statusCode === 'number' ? f.statusCode : 500;
  if (status === 413) return new PayloadTooLargeError('request body too large').toWire();
  if (status === 429) return new RateLimitedError(f.message ?? 'rate limited').toWire();
  if (status >= 400 && status < 500) return { ...new InvalidInputError([{ file: 'request', path: '', message: f.message ?? 'bad request', severity: 'error' }]).toWire(), statusCode: status };
  return new InternalError('internal error; the service log has the details').toWire();
}

/** Every error answered in the wire shape (5xx logged), and unknown routes as AIRLOCK_E_NOT_FOUND. */
export function installWireErrors(app: FastifyInstance): void {
  app.setErrorHandler((err, req, reply) => {
    const wire = toWire(err);
    if (wire.statusCode >= 500) req.log.error({ err }, 'request failed');
    // As JSON whatever the route had set (a download that failed had set its own type).
    void reply.status(wire.statusCode).type('application/json; charset=utf-8').send(wire);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({ code: 'AIRLOCK_E_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}`, statusCode: 404 } satisfies WireError);
  });
}
