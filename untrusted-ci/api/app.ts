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
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type RawReplyDefaultExpression, type RawRequestDefaultExpression, type RawServerDefault } from 'fastify';
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
}

export type ZodApp = FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, FastifyBaseLogger, ZodTypeProvider>;
/**
 * Checks the bearer token an endpoint needs: `submit` (POST /api/changes), `cancel` (POST
 * /api/builds/:id/cancel), or `operator` (GET /api/executors: the cancel token, the operators' own).
 */
export type RequireToken = (authorization: string | undefined, action?: 'submit' | 'cancel' | 'operator') => void;

export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    // Per-request lines only at warn and above: a public endpoint's traffic is not our log.
    loggerInstance: deps.logger.child({ component: 'api' }, { level: 'warn' }) as FastifyBaseLogger,
    bodyLimit: deps.config.api.bodyLimit,
    // Bound what a slow or hostile client can hold open.
    requestTimeout: 30_000,
    connectionTimeout: 60_000,
    routerOptions: { maxParamLength: 500 },
  });
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
  if (deps.forwarding) registerForwarding(app, { ...deps.forwarding, requireToken, requireExecutorToken: executorTokenCheck(deps.executorTokens) });
  const z = app.withTypeProvider<ZodTypeProvider>();
  registerChangeRoutes(z, deps, requireToken);
  registerBuildRoutes(z, deps, requireToken);
  registerGateRoutes(z, deps);
  registerStatusRoutes(z, deps);
  await app.register(async (hooks) => registerGerritHook(hooks, deps));
  await app.register(async (hosts) => registerExecutorRoutes(hosts, { ...deps, requireOperator: (authorization) => requireToken(authorization, 'operator') }));

  // `leading`: whether this replica runs the gate and the scheduler (leadership.ts).
  app.get('/healthz', { schema: { hide: true } }, async () => ({ ok: true, leading: deps.forwarding ? deps.forwarding.isLeader() : true }));
  app.get('/metrics', { schema: { hide: true } }, async (_req, reply) => {
    void reply.type(deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
