/**
 * `/api/executor/…`: what executor hosts call (protocol in untrusted-ci/remote/protocol.ts). Each
 * host has its own token (`executors.hosts[].tokenFile`): the token names the host, and a host
 * reaches only the runs it claimed (remote/dispatch.ts). Not listed in the OpenAPI document.
 *
 * `GET /api/executors`: the hosts heard from lately, their capacity and running jobs: operators'
 * information (where jobs run, on how much), so it takes the operators' token (`api.cancelTokenFile`,
 * `requireOperator`), not a host's: a host knows itself, and no other host is its business.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { InvalidInputError, NotFoundError, UnauthorizedError } from '#shared/errors.js';
import type { RemoteJobs } from '../../remote/dispatch.js';
import { ClaimRequest, LOG_CHUNK_MAX, RegisterRequest, RunId } from '../../remote/protocol.js';

export interface ExecutorApiDeps {
  remote?: RemoteJobs;
  /** Each host's name and token. */
  executorTokens?: ReadonlyMap<string, string>;
  /** Checks the operators' token that `GET /api/executors` needs (api/app.ts: the cancel token). */
  requireOperator: (authorization: string | undefined) => void;
  /** Lets an artifacts upload (its host's token checked) take longer than the request timeout, up to what its size needs (api/app.ts). */
  allowSlowUpload?: (req: FastifyRequest) => void;
}

const digest = (s: string | Buffer): Buffer => createHash('sha256').update(s).digest();
const ARTIFACTS_ROUTE = '/api/executor/runs/:run/artifacts';

/** The host a bearer token belongs to, or UnauthorizedError (every token is compared: no early exit on a match). */
export function executorTokenCheck(executorTokens: ReadonlyMap<string, string> | undefined): (authorization: string | undefined) => string {
  const tokens = [...(executorTokens ?? new Map<string, string>()).entries()].map(([name, t]) => ({ name, digest: digest(t) }));
  return (authorization) => {
    const given = /^Bearer (.+)$/.exec(authorization ?? '')?.[1];
    let who: string | undefined;
    if (given !== undefined) {
      const d = digest(given);
      for (const t of tokens) if (timingSafeEqual(d, t.digest) && who === undefined) who = t.name;
    }
    if (!who) throw new UnauthorizedError('this endpoint needs an executor host token (executors.hosts[].tokenFile): Authorization: Bearer <token>');
    return who;
  };
}

export function registerExecutorRoutes(app: FastifyInstance, deps: ExecutorApiDeps): void {
  const check = executorTokenCheck(deps.executorTokens);
  // Raw bodies here: a log piece is bytes, artifacts a tar stream; JSON is parsed by the routes.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: 1024 * 1024 }, (_req, body, done) => done(null, body));
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer', bodyLimit: LOG_CHUNK_MAX }, (_req, body, done) => done(null, body));
  app.addContentTypeParser('application/x-tar', (_req, payload, done) => done(null, payload));

  /** The host the bearer token belongs to. */
  const host = (req: FastifyRequest): string => check(req.headers.authorization);
  // Checked before any body is read: no one without a host token makes this process buffer or parse anything.
  const who = new WeakMap<FastifyRequest, string>();
  // By the route matched, not the URL as sent: the router decodes the path (/api/%65xecutor/… is
  // this route too), and a check of the raw URL let such a spelling have its body parsed first.
  app.addHook('onRequest', async (req) => {
    if (!req.routeOptions.url?.startsWith('/api/executor/')) return;
    who.set(req, host(req));
    // An artifacts tar may be large and its host's link slow: past the request timeout, to its own deadline.
    if (req.method === 'PUT' && req.routeOptions.url === ARTIFACTS_ROUTE) deps.allowSlowUpload?.(req);
  });
  const remote = (): RemoteJobs => {
    if (!deps.remote) throw new NotFoundError('this CI has no executor hosts (executors.hosts in ci.yaml)');
    return deps.remote;
  };
  const json = <T>(schema: z.ZodType<T>, body: unknown, what: string): T => {
    let value: unknown;
    try {
      value = JSON.parse(Buffer.isBuffer(body) ? body.toString('utf8') : '');
    } catch {
      throw new InvalidInputError([{ file: what, path: '', message: 'the body must be JSON (Content-Type: application/json)', severity: 'error' }]);
    }
    const r = schema.safeParse(value);
    if (!r.success) throw new InvalidInputError(r.error.issues.slice(0, 20).map((i) => ({ file: what, path: i.path.join('.'), message: i.message, severity: 'error' as const })));
    return r.data;
  };
  const hostOf = (req: FastifyRequest): string => who.get(req) ?? host(req);
  const runOf = (req: FastifyRequest): string => {
    const r = RunId.safeParse((req.params as { run?: unknown }).run);
    if (!r.success) throw new InvalidInputError([{ file: 'request', path: 'run', message: 'not a run id', severity: 'error' }]);
    return r.data;
  };
  const hide = { schema: { hide: true } };

  app.get('/api/executors', { ...hide, onRequest: async (req) => deps.requireOperator(req.headers.authorization) }, async () => ({ executors: deps.remote?.executors() ?? [], ...(deps.remote ? { jobs: deps.remote.counts } : {}) }));

  app.post('/api/executor/register', hide, async (req) => {
    const name = hostOf(req);
    const body = json(RegisterRequest, req.body, 'register');
    remote().register(name, body.capacity, body.version);
    return { leaseMs: remote().leaseMs };
  });

  app.post('/api/executor/claim', hide, async (req, reply) => {
    const name = hostOf(req);
    const body = json(ClaimRequest, req.body, 'claim');
    // The host gave up waiting (or went away): what would have been its job stays queued.
    const gone = new AbortController();
    reply.raw.once('close', () => gone.abort());
    const a = await remote().claim(name, body, gone.signal);
    if (!a) return reply.status(204).send();
    return a;
  });

  app.post('/api/executor/runs/:run/heartbeat', hide, async (req) => remote().heartbeat(hostOf(req), runOf(req)));

  app.post('/api/executor/runs/:run/start', hide, async (req) => remote().start(hostOf(req), runOf(req)));

  app.post('/api/executor/runs/:run/log', hide, async (req) => {
    const name = hostOf(req);
    const seq = Number((req.query as { seq?: unknown }).seq);
    if (!Number.isSafeInteger(seq) || seq < 0) throw new InvalidInputError([{ file: 'request', path: 'seq', message: 'must be an integer ≥ 0', severity: 'error' }]);
    // Only as octet-stream, whose parser holds a piece to LOG_CHUNK_MAX (a JSON body may be 1 MiB).
    if (!Buffer.isBuffer(req.body) || req.headers['content-type']?.split(';')[0]?.trim().toLowerCase() !== 'application/octet-stream')
      throw new InvalidInputError([{ file: 'request', path: '', message: 'a log piece is sent as application/octet-stream', severity: 'error' }]);
    return remote().log(name, runOf(req), seq, req.body);
  });

  app.get('/api/executor/runs/:run/image', hide, async (req, reply) => {
    const stream = await remote().image(hostOf(req), runOf(req));
    return reply.type('application/x-tar').send(stream);
  });

  app.get('/api/executor/runs/:run/source', hide, async (req, reply) => {
    const stream = remote().source(hostOf(req), runOf(req));
    return reply.type('application/x-tar').send(stream);
  });

  app.put(ARTIFACTS_ROUTE, hide, async (req) => {
    const name = hostOf(req);
    if (req.headers['content-type']?.split(';')[0]?.trim() !== 'application/x-tar') throw new InvalidInputError([{ file: 'request', path: '', message: 'artifacts are sent as application/x-tar', severity: 'error' }]);
    const files = await remote().artifacts(name, runOf(req), req.raw);
    return { files: files.length, bytes: files.reduce((n, f) => n + f.bytes, 0) };
  });

  app.post('/api/executor/runs/:run/result', hide, async (req) => {
    const name = hostOf(req);
    const run = runOf(req);
    let value: unknown;
    try {
      value = JSON.parse(Buffer.isBuffer(req.body) ? req.body.toString('utf8') : '');
    } catch {
      throw new InvalidInputError([{ file: 'result', path: '', message: 'the body must be JSON', severity: 'error' }]);
    }
    remote().result(name, run, value);
    return { ok: true };
  });
}
