/**
 * The executor hosts' routes (untrusted-ci/api/routes/executors.ts) through `app.inject()`, wired
 * as api/app.ts wires them, with a RemoteJobs behind them that runs no job (no Docker needed):
 * nothing is read or parsed before the host's token is checked, however the path is spelled; the
 * content types each route takes; a token names its host.
 */
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import type Docker from 'dockerode';
import { UnauthorizedError } from '#shared/errors.js';
import { installWireErrors } from '#shared/http/wire.js';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { registerExecutorRoutes } from '../../../untrusted-ci/api/routes/executors.js';
import { RemoteJobs } from '../../../untrusted-ci/remote/dispatch.js';

const TOKEN_A = 'host-a-token-0123456789abcdef';
const TOKEN_B = 'host-b-token-0123456789abcdef';
const CAPACITY = { slots: 2, memory: 4 * 1024 ** 3, cpus: 2, runtimes: ['runc'] };
const RUN = 'a'.repeat(32);
const OPERATOR = 'the-operators-token-0123456789';

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function app(): Promise<{ app: FastifyInstance; remote: RemoteJobs }> {
  const remote = new RemoteJobs({ docker: {} as Docker, policy: loadJobPolicy(), leaseMs: 1000, logger: createLogger({ level: 'silent' }) });
  const a = Fastify({ bodyLimit: 1024 * 1024 });
  installWireErrors(a);
  // The operators' check as api/app.ts makes it is tested through buildApi (api.test.ts); here one that takes one token.
  const requireOperator = (authorization: string | undefined): void => {
    if (authorization !== `Bearer ${OPERATOR}`) throw new UnauthorizedError('the operators\' token');
  };
  await a.register(async (hosts) => registerExecutorRoutes(hosts, { remote, executorTokens: new Map([['a', TOKEN_A], ['b', TOKEN_B]]), requireOperator }));
  await a.ready();
  cleanups.push(() => remote.close());
  cleanups.push(() => a.close());
  return { app: a, remote };
}

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

describe('executor routes', () => {
  it('answers 401 before it reads a body, for every route and however the path is spelled', async () => {
    const { app: a } = await app();
    // Not JSON, and of a type no route takes: only the token check can answer these with 401.
    const paths = [
      '/api/executor/register',
      '/api/executor/claim',
      `/api/executor/runs/${RUN}/result`,
      `/api/executor/runs/${RUN}/log?seq=0`,
      '/api/%65xecutor/register',
      '/api/executor/%72egister',
      `/api/executor/runs/${RUN}/%72esult`,
    ];
    for (const url of paths) {
      for (const type of ['application/json', 'text/plain', 'application/octet-stream']) {
        for (const authorization of [undefined, 'Bearer wrong-token-0123456789abcdef', `Basic ${TOKEN_A}`]) {
          const res = await a.inject({ method: 'POST', url, headers: { 'content-type': type, ...(authorization ? { authorization } : {}) }, payload: '{not json' });
          expect({ url, type, authorization, status: res.statusCode }).toEqual({ url, type, authorization, status: 401 });
        }
      }
    }
    for (const url of [`/api/executor/runs/${RUN}/image`, `/api/executor/runs/${RUN}/source`]) expect((await a.inject({ method: 'GET', url })).statusCode).toBe(401);
    expect((await a.inject({ method: 'PUT', url: `/api/executor/runs/${RUN}/artifacts`, headers: { 'content-type': 'application/x-tar' }, payload: 'x'.repeat(4096) })).statusCode).toBe(401);
    // The list of hosts is the operators': no token, or a host's, is a 401.
    expect((await a.inject({ method: 'GET', url: '/api/executors' })).statusCode).toBe(401);
    expect((await a.inject({ method: 'GET', url: '/api/executors', headers: bearer(TOKEN_A) })).statusCode).toBe(401);
    expect((await a.inject({ method: 'GET', url: '/api/executors', headers: bearer(OPERATOR) })).statusCode).toBe(200);
  });

  it('with a token: a body that is not JSON is a 400, a type no route takes a 415, never a 500', async () => {
    const { app: a } = await app();
    const reg = (payload: string, type = 'application/json') => a.inject({ method: 'POST', url: '/api/executor/register', headers: { ...bearer(TOKEN_A), 'content-type': type }, payload });
    expect((await reg('{not json')).statusCode).toBe(400);
    expect((await reg('null')).statusCode).toBe(400);
    expect((await reg(JSON.stringify({ capacity: { ...CAPACITY, slots: -1 } }))).statusCode).toBe(400);
    expect((await reg(JSON.stringify({ capacity: CAPACITY }), 'text/plain')).statusCode).toBe(415);
    expect((await reg(JSON.stringify({ capacity: CAPACITY }), 'application/x-tar')).statusCode).toBe(400);
    const ok = await reg(JSON.stringify({ capacity: CAPACITY }));
    expect(ok.statusCode).toBe(200);
    expect(ok.json()).toEqual({ leaseMs: 1000 });
    const claim = await a.inject({ method: 'POST', url: '/api/executor/claim', headers: { ...bearer(TOKEN_A), 'content-type': 'application/json' }, payload: JSON.stringify({ free: { slots: 1, memory: 1, cpus: 1 } }) });
    expect(claim.statusCode).toBe(204);
  });

  it('a log piece is bytes (application/octet-stream, at most LOG_CHUNK_MAX): not a JSON body of a megabyte', async () => {
    const { app: a } = await app();
    const log = (type: string, payload: string) => a.inject({ method: 'POST', url: `/api/executor/runs/${RUN}/log?seq=0`, headers: { ...bearer(TOKEN_A), 'content-type': type }, payload });
    expect((await log('application/json', 'x'.repeat(512 * 1024))).statusCode).toBe(400);
    expect((await log('application/octet-stream', 'x'.repeat(512 * 1024))).statusCode).toBe(413);
    // The right type and size reach the queue: this run is not held by this host.
    expect((await log('application/octet-stream', 'x')).statusCode).toBe(409);
  });

  it('the token names the host: a host that is not registered cannot claim, and a bad run id is a 400', async () => {
    const { app: a } = await app();
    await a.inject({ method: 'POST', url: '/api/executor/register', headers: { ...bearer(TOKEN_A), 'content-type': 'application/json' }, payload: JSON.stringify({ capacity: CAPACITY }) });
    const claimB = await a.inject({ method: 'POST', url: '/api/executor/claim', headers: { ...bearer(TOKEN_B), 'content-type': 'application/json' }, payload: JSON.stringify({ free: { slots: 1, memory: 1, cpus: 1 } }) });
    expect(claimB.statusCode).toBe(409);
    const bad = await a.inject({ method: 'POST', url: '/api/executor/runs/..%2f..%2fetc/heartbeat', headers: bearer(TOKEN_A) });
    expect(bad.statusCode).toBe(400);
  });
});
