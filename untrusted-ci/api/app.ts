/**
 * The CI's HTTP API (fastify + the zod type provider). Everything that arrives here is
 * attacker-controlled: routes declare zod schemas, bodies are size-limited, the webhook is
 * rate-limited and verified over its raw bytes, and every error leaves as `{code, message,
 * statusCode}` with a 4xx for the caller's mistakes — never a stack, never a 500 for bad input.
 *
 * Routes: see the OpenAPI document at GET /openapi.json; the status page at GET / (routes/status.ts).
 * Every answer says `nosniff` and, unless a route sets its own, a Content-Security-Policy that
 * allows nothing: a stored log or a JSON body can never run as a page.
 */
import { timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest, type RawReplyDefaultExpression, type RawRequestDefaultExpression, type RawServerDefault } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import { RateLimitedError, UnauthorizedError } from '#shared/errors.js';
import { installWireErrors } from '#shared/http/wire.js';
import type { Logger } from '#shared/logging.js';
import type { ArtifactStore } from '../storage/artifact-store.js';
import type { CiConfig } from '../config.js';
import type { BuildEvents } from '../logs/build-events.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { BuildStore } from '../store/build-store.js';
import type { CiMetrics } from './metrics.js';
import { registerForwarding, type Forwarding } from './forward.js';
import { registerBuildRoutes } from './routes/builds.js';
import { registerChangeRoutes } from './routes/changes.js';
import { registerGerritHook } from './routes/gerrit-hook.js';
import { registerGateRoutes } from './routes/gate.js';
import type { GateRuntime } from '../pipelines/gate-runtime.js';
import type { GateStore } from '../store/gate-store.js';
import type { StatusFeed } from '../status/status-feed.js';
import type { ReviewState } from '../review/review-state.js';
import { registerStatusRoutes } from './routes/status.js';
import { executorTokenCheck, registerExecutorRoutes } from './routes/executors.js';
import type { RemoteJobs } from '../remote/dispatch.js';

/** For every answer that does not set its own policy (API, logs, metrics). */
const NOTHING_CSP = "default-src 'none'; frame-ancestors 'none'";

export interface ApiDeps {
  config: Readonly<CiConfig>;
  store: BuildStore;
  scheduler: Scheduler;
  events: BuildEvents;
  artifacts: ArtifactStore;
  metrics: CiMetrics;
  logger: Logger;
  gerritSecret?: Buffer;
  /** The token that may submit checks (`api.tokenFile`). */
  apiToken?: string;
  /** The token that may cancel builds (`api.cancelTokenFile`): another credential than submitting. */
  cancelToken?: string;
  /** The gate; absent in API-only tests. */
  gate?: GateRuntime;
  gateStore?: GateStore;
  /** The status page's live feed, notified by the service of every change; absent: one that only answers when asked. */
  status?: StatusFeed;
  /** What the CI knows of each change in the review system (absent: no review system). */
  reviewState?: ReviewState;
  /** Read a change again from the review system (events are hints; see sources/triggers.ts). */
  reread?: (project: string, change: string) => void;
  /** Replicas: what a follower forwards to the leader (api/forward.ts); absent: this process does everything. */
  forwarding?: Forwarding;
  /** Executor hosts (remote/dispatch.ts) and each one's token; absent: jobs run on this host only. */
  remote?: RemoteJobs;
  executorTokens?: ReadonlyMap<string, string>;
  /** The request timeout and the slowest upload an executor host may send (tests shorten them; see `SLOW_UPLOAD_RATE`). */
  timeouts?: { requestMs?: number; uploadBytesPerSecond?: number };
}

/** How long a request may take to arrive, headers and body: a slow or hostile client holds a socket no longer. */
export const REQUEST_TIMEOUT_MS = 30_000;
/**
 * The slowest an executor host's artifacts upload may come (bytes per second, 8 Mbit/s): it may
 * take the request timeout plus what the largest tar the job policy allows needs at this rate
 * (about six minutes under the shipped policy), not the request timeout alone.
 */
export const SLOW_UPLOAD_RATE = 1024 * 1024;

export type ZodApp = FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, FastifyBaseLogger, ZodTypeProvider>;
/**
 * Checks the bearer token an endpoint needs: `submit` (POST /api/changes), `cancel` (POST
 * /api/builds/:id/cancel), or `operator` (GET /api/executors: the cancel token, the operators' own).
 */
export type RequireToken = (authorization: string | undefined, action?: 'submit' | 'cancel' | 'operator') => void;

export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  const requestMs = deps.timeouts?.requestMs ?? REQUEST_TIMEOUT_MS;
  const uploadRate = deps.timeouts?.uploadBytesPerSecond ?? SLOW_UPLOAD_RATE;
  // Sockets whose request is an executor host's artifacts upload, let past the request timeout
  // (`allowSlowUpload`): each has its own deadline instead.
  const slowUploads = new WeakSet<Socket>();
  const app = Fastify({
    // Per-request lines only at warn and above: a public endpoint's traffic is not our log.
    loggerInstance: deps.logger.child({ component: 'api' }, { level: 'warn' }) as FastifyBaseLogger,
    bodyLimit: deps.config.api.bodyLimit,
    // Bound what a slow or hostile client can hold open. Node counts the request timeout from the
    // request's start to its body's end, and takes the larger of it and the headers timeout (60 s
    // by default): both are set, and checked every tenth of it (every 30 s by default).
    requestTimeout: requestMs,
    http: { requestTimeout: requestMs, headersTimeout: requestMs, connectionsCheckingInterval: Math.max(50, Math.min(30_000, Math.floor(requestMs / 10))) },
    connectionTimeout: 60_000,
    routerOptions: { maxParamLength: 500 },
    // Fastify's own answer (a 408, 431 or 400, then the socket closed), except for an upload let
    // past the request timeout (allowSlowUpload).
    clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket) {
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' && slowUploads.has(socket)) return;
      const [status, text, message] =
        err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Request Timeout', 'Client Timeout'] : err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Request Header Fields Too Large', 'Exceeded maximum allowed HTTP header size'] : [400, 'Bad Request', 'Client Error'];
      const body = JSON.stringify({ error: text, message, statusCode: status });
      if (socket.writable) socket.write(`HTTP/1.1 ${status} ${text}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\n\r\n${body}`);
      socket.destroy(err);
    },
  });
  /**
   * An executor host's artifacts upload (its token checked): it may take the request timeout plus
   * what the largest tar the job policy allows needs at `uploadRate`, then the socket is closed.
   */
  const allowSlowUpload = (req: FastifyRequest): void => {
    const bound = deps.remote?.uploadBound;
    const socket = req.raw.socket;
    if (bound === undefined || slowUploads.has(socket)) return;
    slowUploads.add(socket);
    const ms = requestMs + Math.ceil((bound / uploadRate) * 1000);
    const deadline = setTimeout(() => {
      deps.logger.warn({ url: req.url, ms }, 'an executor host\'s upload took longer than its size allows at the slowest rate taken: cut');
      socket.destroy();
    }, ms);
    deadline.unref();
    const done = (): void => {
      clearTimeout(deadline);
      slowUploads.delete(socket);
    };
    // Received whole (the request timeout no longer applies), or the connection is gone.
    req.raw.once('end', done);
    socket.once('close', done);
  };
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  installWireErrors(app);
  app.addHook('onSend', async (_req, reply) => {
    void reply.header('x-content-type-options', 'nosniff');
    if (!reply.hasHeader('content-security-policy')) void reply.header('content-security-policy', NOTHING_CSP);
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'airlock untrusted CI', version: '1', description: 'Changes, builds, queue, live logs and the Gerrit webhook of the public CI.' },
    },
    transform: jsonSchemaTransform,
  });
  await app.register(rateLimit, {
    global: false,
    errorResponseBuilder: (_req, ctx) => new RateLimitedError(`rate limit of ${ctx.max} requests per ${ctx.after} exceeded`),
  });

  // Submitting and cancelling are separate credentials: a bot that may submit cannot stop others'
  // builds. The cancel token is the operators': it also reads what only they see (the executor
  // hosts). Without any token (allowed only on loopback, see config.ts) all are open.
  const requireToken: RequireToken = (authorization: string | undefined, action = 'submit'): void => {
    const token = action === 'submit' ? deps.apiToken : deps.cancelToken;
    const name = action === 'operator' ? 'cancel token (api.cancelTokenFile), the operators\'' : `${action} token`;
    if (!token) {
      if (action === 'cancel' && deps.apiToken) throw new UnauthorizedError('cancelling takes its own token (api.cancelTokenFile), and this CI has none');
      if (action === 'operator' && deps.apiToken) throw new UnauthorizedError(`this endpoint needs the ${name}, and this CI has none`);
      return;
    }
    const given = Buffer.from(/^Bearer (.+)$/.exec(authorization ?? '')?.[1] ?? '', 'utf8');
    const want = Buffer.from(token, 'utf8');
    if (given.length !== want.length || !timingSafeEqual(given, want)) throw new UnauthorizedError(`this endpoint needs the ${name}: Authorization: Bearer <token>`);
  };
  // A follower checks an executor host's token too before it forwards (none configured: always 401, as the leader).
  if (deps.forwarding) registerForwarding(app, { ...deps.forwarding, requireToken, requireExecutorToken: executorTokenCheck(deps.executorTokens), allowSlowUpload });
  const z = app.withTypeProvider<ZodTypeProvider>();
  registerChangeRoutes(z, deps, requireToken);
  registerBuildRoutes(z, deps, requireToken);
  registerGateRoutes(z, deps);
  registerStatusRoutes(z, deps);
  await app.register(async (hooks) => registerGerritHook(hooks, deps));
  await app.register(async (hosts) => registerExecutorRoutes(hosts, { ...deps, requireOperator: (authorization) => requireToken(authorization, 'operator'), allowSlowUpload }));

  // `leading`: whether this replica runs the gate and the scheduler (leadership.ts).
  app.get('/healthz', { schema: { hide: true } }, async () => ({ ok: true, leading: deps.forwarding ? deps.forwarding.isLeader() : true }));
  app.get('/metrics', { schema: { hide: true } }, async (_req, reply) => {
    void reply.type(deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
