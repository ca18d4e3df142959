/**
 * The CI's HTTP API through `app.inject()` (no ports), built by `buildApi` from real parts: SQLite
 * BuildStore in memory, the Scheduler with the FakeExecutor, BuildEvents and an FsArtifactStore in
 * a temp dir, the store reporter, metrics, a silent logger. Every hostile or broken request must get
 * a 4xx in the `{code, message, statusCode}` shape — never a 500.
 */
import { testDatabase } from '../../support/store-engines.js';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { BuildEvent, BuildView, ChangeLookup, QueueView, SubmitAnswer, ChangeView, LOOKUP_PROJECTS, type SubmitChangeInput } from '#shared/schemas/api/builds.js';
import { FsArtifactStore } from '../../../untrusted-ci/storage/fs-artifact-store.js';
import { logKey, resultKey } from '../../../untrusted-ci/storage/keys.js';
import type { GateRuntime } from '../../../untrusted-ci/pipelines/gate-runtime.js';
import { buildApi } from '../../../untrusted-ci/api/app.js';
import { createCiMetrics } from '../../../untrusted-ci/api/metrics.js';
import { buildCiConfig, type CiConfigInput } from '../../../untrusted-ci/config.js';
import { BuildEvents } from '../../../untrusted-ci/logs/build-events.js';
import { createStoreReporter } from '../../../untrusted-ci/reporting/store-reporter.js';
import { Scheduler } from '../../../untrusted-ci/scheduler/scheduler.js';
import { signWebhookBody, WEBHOOK_SIGNATURE_HEADER } from '../../../untrusted-ci/sources/gerrit/verify.js';
import { BuildStore } from '../../../untrusted-ci/store/build-store.js';
import type { Db } from '../../../untrusted-ci/store/database.js';
import { FakeExecutor } from '../../support/fake-executor.js';
import { ReviewState } from '../../../untrusted-ci/review/review-state.js';
import { RemoteJobs } from '../../../untrusted-ci/remote/dispatch.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import type Docker from 'dockerode';

const SECRET = 'a-webhook-secret-of-32-characters!';
const TOKEN = 'an-api-token-that-is-long-enough';
const CANCEL_TOKEN = 'another-token-that-may-cancel-builds';
const HOST_TOKEN = 'an-executor-host-token-of-exec-1';
const FIXTURES = new URL('../../fixtures/gerrit/', import.meta.url);
const fixture = (name: string): Buffer => readFileSync(new URL(name, FIXTURES));

interface Api {
  app: FastifyInstance;
  store: BuildStore;
  scheduler: Scheduler;
  executor: FakeExecutor;
  artifacts: FsArtifactStore;
  events: BuildEvents;
  /** With `executors`: the queue for executor hosts (it runs no job here: no engine behind it). */
  remote?: RemoteJobs;
}

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function makeApi(o: { config?: Partial<CiConfigInput>; hookSecret?: boolean; token?: boolean; cancelToken?: boolean; gate?: GateRuntime; review?: boolean; executors?: boolean } = {}): Promise<Api> {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-api-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'hook.secret'), SECRET);
  writeFileSync(join(dir, 'api.token'), TOKEN);
  writeFileSync(join(dir, 'cancel.token'), CANCEL_TOKEN);
  writeFileSync(join(dir, 'exec-1.token'), HOST_TOKEN);
  writeFileSync(join(dir, 'gerrit.json'), JSON.stringify({ username: 'airlock-ci', password: 'an-http-password' }));
  const loaded = buildCiConfig(
    {
      version: 1,
      dataDir: join(dir, 'data'),
      slots: 1,
      api: { bodyLimit: '16k', ...(o.token ? { tokenFile: 'api.token' } : {}), ...(o.cancelToken ? { cancelTokenFile: 'cancel.token' } : {}) },
      projects: [
        { name: 'app', url: '/srv/git/app.git' },
        { name: 'TestRepo1', url: '/srv/git/TestRepo1.git' },
        { name: 'picky', url: '/srv/git/picky.git', branches: ['main'] },
      ],
      ...(o.executors ? { executors: { hosts: [{ name: 'exec-1', tokenFile: 'exec-1.token' }] } } : {}),
      ...o.config,
      webhooks: { ...(o.hookSecret !== false ? { gerritSecretFile: 'hook.secret' } : {}), ...o.config?.webhooks },
    },
    'test-config',
    dir,
  );
  const logger = createLogger({ level: 'silent' });
  const db: Db = (await testDatabase());
  const store = new BuildStore(db);
  const events = new BuildEvents(join(dir, 'builds'));
  const artifacts = new FsArtifactStore(join(dir, 'artifacts'));
  const executor = new FakeExecutor({ events, store });
  let metrics: ReturnType<typeof createCiMetrics> | undefined;
  const scheduler = new Scheduler({ store, executor, reporters: [createStoreReporter(artifacts)], slots: loaded.config.slots, logger, onChange: (b) => metrics?.onBuild(b) });
  metrics = createCiMetrics({
    queued: async () => {
      const q = await store.queued();
      return { check: q.filter((b) => b.pipeline === 'check').length, gate: q.filter((b) => b.pipeline === 'gate').length };
    },
    busy: () => scheduler.busy,
    slots: loaded.config.slots,
  });
  const unwatch = events.watch((build, e) => metrics?.onEvent(build, e));
  cleanups.push(unwatch);
  const remote = o.executors ? new RemoteJobs({ docker: {} as Docker, policy: loadJobPolicy(), leaseMs: 1000, logger }) : undefined;
  if (remote) cleanups.push(() => remote.close());
  const app = await buildApi({
    config: loaded.config,
    store,
    scheduler,
    events,
    artifacts,
    metrics,
    logger,
    ...(loaded.gerritSecret ? { gerritSecret: loaded.gerritSecret } : {}),
    ...(loaded.apiToken ? { apiToken: loaded.apiToken } : {}),
    ...(loaded.cancelToken ? { cancelToken: loaded.cancelToken } : {}),
    ...(o.gate ? { gate: o.gate } : {}),
    ...(o.review ? { reviewState: new ReviewState(db, { rule: { label: 'Code-Review', value: 2 }, self: 'airlock-ci' }) } : {}),
    ...(remote ? { remote } : {}),
    ...(loaded.executorTokens ? { executorTokens: loaded.executorTokens } : {}),
  });
  await scheduler.start();
  cleanups.push(() => db.close());
  cleanups.push(() => scheduler.close());
  cleanups.push(() => executor.release('*'));
  cleanups.push(() => app.close());
  return { app, store, scheduler, executor, artifacts, events, ...(remote ? { remote } : {}) };
}

const CHANGE: SubmitChangeInput = { project: 'app', ref: 'refs/changes/01/1/1', change: '1', patchset: 1, author: 'alice', subject: 'fix' };

function post(api: Api, payload: unknown, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return api.app.inject({ method: 'POST', url: '/api/changes', payload: payload as object, headers });
}

/** A 4xx in the wire error shape, with this status and code. */
function expectError(r: LightMyRequestResponse, status: number, code: string): { code: string; message: string; statusCode: number } {
  expect(r.statusCode, r.body).toBe(status);
  const body = r.json() as { code: string; message: string; statusCode: number };
  expect(Object.keys(body).sort()).toEqual(['code', 'message', 'statusCode']);
  expect(body).toMatchObject({ code, statusCode: status });
  expect(typeof body.message).toBe('string');
  return body;
}

function hook(api: Api, body: Buffer | string, signature?: string | null): Promise<LightMyRequestResponse> {
  const raw = Buffer.isBuffer(body) ? body : Buffer.from(body);
  const headers: Record<string, string> = { 'content-type': 'application/json; charset=UTF-8' };
  if (signature !== null) headers[WEBHOOK_SIGNATURE_HEADER] = signature ?? signWebhookBody(raw, Buffer.from(SECRET));
  return api.app.inject({ method: 'POST', url: '/hooks/gerrit', payload: raw, headers });
}

/** Counts writes to a response after its end: on a real socket each is an uncaught ERR_STREAM_WRITE_AFTER_END. */
function countWritesAfterEnd(app: FastifyInstance): { count: number } {
  const late = { count: 0 };
  app.addHook('onRequest', async (_req, reply) => {
    const raw = reply.raw;
    const write = raw.write.bind(raw) as (...a: unknown[]) => boolean;
    raw.write = ((...args: unknown[]) => {
      if (raw.writableEnded) late.count++;
      return write(...args);
    }) as typeof raw.write;
  });
  return late;
}

describe('POST /api/changes', () => {
  it('accepts a change with 202 and has it in the database before answering', async () => {
    const api = await makeApi();
    api.executor.hold('*');
    const r = await post(api, CHANGE);
    expect(r.statusCode, r.body).toBe(202);
    const answer = SubmitAnswer.parse(r.json());
    expect(answer.change).toMatchObject({ project: 'app', branch: 'master', change: '1', patchset: 1, ref: 'refs/changes/01/1/1', author: 'alice', subject: 'fix', source: 'api' });
    expect(answer.builds).toHaveLength(1);
    expect(await api.store.build(answer.builds[0]!)).toMatchObject({ pipeline: 'check', project: 'app' });
    const back = await api.app.inject({ method: 'GET', url: `/api/changes/${answer.change.id}` });
    expect(back.statusCode).toBe(200);
    const parsed = (back.json() as { change: unknown; builds: unknown[] });
    expect(ChangeView.parse(parsed.change)).toEqual(answer.change);
    expect(parsed.builds.map((b) => BuildView.parse(b).id)).toEqual(answer.builds);
  });

  it('fills defaults: branch master, patchset 1, the ref as change id, check pipeline', async () => {
    const api = await makeApi();
    api.executor.hold('*');
    const sha = 'a'.repeat(40);
    const r = await post(api, { project: 'app', ref: sha });
    expect(r.statusCode, r.body).toBe(202);
    expect(SubmitAnswer.parse(r.json()).change).toMatchObject({ change: sha, patchset: 1, branch: 'master', author: 'anonymous' });
  });

  it.each<[string, unknown]>([
    ['an unknown key', { ...CHANGE, extra: 1 }],
    ['a wrong type', { ...CHANGE, patchset: '1' }],
    ['a negative patchset', { ...CHANGE, patchset: -1 }],
    ['a missing ref', { project: 'app' }],
    ['an option as ref', { ...CHANGE, ref: '--upload-pack=touch /tmp/x' }],
    ['a ref with ..', { ...CHANGE, ref: 'refs/../x' }],
    ['a short ref', { ...CHANGE, ref: 'main' }],
    ['a ref with a space', { ...CHANGE, ref: 'refs/heads/a b' }],
    ['a bad branch', { ...CHANGE, branch: '-x' }],
    ['a bad change id', { ...CHANGE, change: 'a b' }],
    ['an unknown pipeline', { ...CHANGE, pipeline: 'deploy' }],
    ['an array', [CHANGE]],
    ['a string', 'refs/heads/main'],
    ['null', null],
  ])('answers 400 to %s', async (_name, body) => {
    const api = await makeApi();
    const r = await api.app.inject({ method: 'POST', url: '/api/changes', payload: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
    expectError(r, 400, 'AIRLOCK_E_INVALID_INPUT');
    expect(await api.store.builds({})).toEqual([]);
  });

  it('names every bad field in one answer', async () => {
    const api = await makeApi();
    const body = expectError(await post(api, { project: 'app', ref: 'refs/../x', branch: 'a..b' }), 400, 'AIRLOCK_E_INVALID_INPUT');
    expect(body.message).toMatch(/ref/);
    expect(body.message).toMatch(/branch/);
  });

  it('answers 400 to a branch the project is not checked on', async () => {
    const api = await makeApi();
    expectError(await post(api, { ...CHANGE, project: 'picky', branch: 'dev' }), 400, 'AIRLOCK_E_INVALID_INPUT');
    expect((await post(api, { ...CHANGE, project: 'picky', branch: 'main' })).statusCode).toBe(202);
  });

  it('answers 404 to an unregistered project', async () => {
    const api = await makeApi();
    expectError(await post(api, { ...CHANGE, project: 'nope' }), 404, 'AIRLOCK_E_NOT_FOUND');
  });

  it('answers 409 to an outdated patchset', async () => {
    const api = await makeApi();
    api.executor.hold('*');
    expect((await post(api, { ...CHANGE, patchset: 2 })).statusCode).toBe(202);
    expectError(await post(api, { ...CHANGE, patchset: 1 }), 409, 'AIRLOCK_E_CONFLICT');
  });

  it('answers 400 to a body that is not JSON, and 415 to a content type it does not parse', async () => {
    const api = await makeApi();
    const send = (payload: string | undefined, contentType?: string): Promise<LightMyRequestResponse> =>
      api.app.inject({ method: 'POST', url: '/api/changes', ...(payload !== undefined ? { payload } : {}), headers: contentType ? { 'content-type': contentType } : {} });
    expectError(await send('{"project": ', 'application/json'), 400, 'AIRLOCK_E_INVALID_INPUT');
    expectError(await send('{"__proto__": {"x": 1}}', 'application/json'), 400, 'AIRLOCK_E_INVALID_INPUT');
    expectError(await send('{"project": "app"}', 'text/plain'), 400, 'AIRLOCK_E_INVALID_INPUT'); // a string, not an object
    expectError(await send('project=app&ref=refs/heads/x', 'application/x-www-form-urlencoded'), 415, 'AIRLOCK_E_INVALID_INPUT');
    expectError(await send('{"project": "app"}'), 415, 'AIRLOCK_E_INVALID_INPUT');
    expectError(await send(undefined), 400, 'AIRLOCK_E_INVALID_INPUT');
    expect(await api.store.builds({})).toEqual([]);
  });

  it('answers 413 to a body over the limit', async () => {
    const api = await makeApi();
    expectError(await post(api, { ...CHANGE, subject: 'x'.repeat(20_000) }), 413, 'AIRLOCK_E_PAYLOAD_TOO_LARGE');
  });

  it('requires the API token when one is configured, with one constant message', async () => {
    const api = await makeApi({ token: true });
    const none = expectError(await post(api, CHANGE), 401, 'AIRLOCK_E_UNAUTHORIZED');
    const wrong = expectError(await post(api, CHANGE, { authorization: `Bearer ${TOKEN.slice(0, -1)}x` }), 401, 'AIRLOCK_E_UNAUTHORIZED');
    const short = expectError(await post(api, CHANGE, { authorization: 'Bearer x' }), 401, 'AIRLOCK_E_UNAUTHORIZED');
    const basic = expectError(await post(api, CHANGE, { authorization: `Basic ${TOKEN}` }), 401, 'AIRLOCK_E_UNAUTHORIZED');
    // Checked before the body: a caller without the token learns nothing about the schema.
    expectError(await post(api, { nonsense: true }), 401, 'AIRLOCK_E_UNAUTHORIZED');
    expect(new Set([none.message, wrong.message, short.message, basic.message]).size).toBe(1);
    expect(none.message).not.toContain(TOKEN);
    expect(await api.store.builds({})).toEqual([]);
    const ok = await post(api, CHANGE, { authorization: `Bearer ${TOKEN}` });
    expect(ok.statusCode, ok.body).toBe(202);
    const id = SubmitAnswer.parse(ok.json()).builds[0]!;
    expectError(await api.app.inject({ method: 'POST', url: `/api/builds/${id}/cancel` }), 401, 'AIRLOCK_E_UNAUTHORIZED');
    // Reading stays open.
    expect((await api.app.inject({ method: 'GET', url: `/api/builds/${id}` })).statusCode).toBe(200);
  });

  it('cancelling takes its own token: the submit token cannot cancel, and without a cancel token nobody can', async () => {
    const api = await makeApi({ token: true, cancelToken: true });
    api.executor.hold('*');
    const id = SubmitAnswer.parse((await post(api, CHANGE, { authorization: `Bearer ${TOKEN}` })).json()).builds[0]!;
    const cancel = (token?: string) => api.app.inject({ method: 'POST', url: `/api/builds/${id}/cancel`, headers: token ? { authorization: `Bearer ${token}` } : {} });
    expectError(await cancel(TOKEN), 401, 'AIRLOCK_E_UNAUTHORIZED');
    expectError(await post(api, CHANGE, { authorization: `Bearer ${CANCEL_TOKEN}` }), 401, 'AIRLOCK_E_UNAUTHORIZED');
    expect((await cancel(CANCEL_TOKEN)).statusCode).toBe(202);
    const onlySubmit = await makeApi({ token: true });
    onlySubmit.executor.hold('*');
    const id2 = SubmitAnswer.parse((await post(onlySubmit, CHANGE, { authorization: `Bearer ${TOKEN}` })).json()).builds[0]!;
    const refused = expectError(await onlySubmit.app.inject({ method: 'POST', url: `/api/builds/${id2}/cancel`, headers: { authorization: `Bearer ${TOKEN}` } }), 401, 'AIRLOCK_E_UNAUTHORIZED');
    expect(refused.message).toContain('its own token');
  });

  it('GET /api/executors is the operators\': it takes the cancel token, not the submit token nor a host\'s; the status page stays open', async () => {
    const api = await makeApi({ token: true, cancelToken: true, executors: true });
    api.remote?.register('exec-1', { slots: 2, memory: 1024 ** 3, cpus: 2, runtimes: ['runc'] });
    const get = (a: Api, token?: string) => a.app.inject({ method: 'GET', url: '/api/executors', headers: token ? { authorization: `Bearer ${token}` } : {} });
    for (const token of [undefined, TOKEN, HOST_TOKEN, `${CANCEL_TOKEN}x`]) {
      const refused = expectError(await get(api, token), 401, 'AIRLOCK_E_UNAUTHORIZED');
      expect(refused.message).not.toContain('exec-1');
    }
    const ok = await get(api, CANCEL_TOKEN);
    expect(ok.statusCode).toBe(200);
    expect((ok.json() as { executors: { name: string }[] }).executors.map((e) => e.name)).toEqual(['exec-1']);
    // What the status page reads needs no token.
    for (const url of ['/', '/api/status', '/api/queue']) expect((await api.app.inject({ method: 'GET', url })).statusCode, url).toBe(200);
    // A CI with no cancel token: nobody reads it (not the submit token either).
    const onlySubmit = await makeApi({ token: true, executors: true });
    expect(expectError(await get(onlySubmit, TOKEN), 401, 'AIRLOCK_E_UNAUTHORIZED').message).toContain('api.cancelTokenFile');
  });

  it('never answers 5xx, whatever JSON arrives', async () => {
    const api = await makeApi();
    const field = fc.oneof(fc.jsonValue(), fc.string(), fc.integer(), fc.constantFrom('app', 'picky', 'refs/heads/main', 'refs/changes/01/1/1', 'a'.repeat(40), 'check', 'gate', ''));
    const body = fc.oneof(
      fc.jsonValue(),
      fc.record(
        { project: fc.oneof(fc.constantFrom('app', 'picky'), field), ref: field, branch: field, change: field, patchset: fc.oneof(fc.integer({ min: -2, max: 5 }), field), author: field, subject: field, pipeline: field },
        { requiredKeys: [] },
      ),
    );
    await fc.assert(
      fc.asyncProperty(body, async (b) => {
        const r = await api.app.inject({ method: 'POST', url: '/api/changes', payload: JSON.stringify(b), headers: { 'content-type': 'application/json' } });
        expect(r.statusCode, r.body).toBeLessThan(500);
        if (r.statusCode >= 400) expect(Object.keys(r.json() as object).sort()).toEqual(['code', 'message', 'statusCode']);
      }),
      { numRuns: 300 },
    );
  });
});

describe('builds, queue, logs, events', () => {
  it('serves builds, one build and the queue in their wire shapes', async () => {
    const api = await makeApi();
    api.executor.hold('*');
    const a = SubmitAnswer.parse((await post(api, CHANGE)).json()).builds[0]!;
    const b = SubmitAnswer.parse((await post(api, { ...CHANGE, change: '2', ref: 'refs/changes/02/2/1' })).json()).builds[0]!;
    await api.executor.until((x) => x.held.length === 1);
    const list = await api.app.inject({ method: 'GET', url: '/api/builds?limit=10' });
    expect(list.statusCode).toBe(200);
    const builds = (list.json() as { builds: unknown[] }).builds.map((x) => BuildView.parse(x));
    expect(builds.map((x) => x.id)).toEqual([b, a]);
    const one = BuildView.parse((await api.app.inject({ method: 'GET', url: `/api/builds/${a}` })).json());
    expect(one).toMatchObject({ id: a, state: 'running', attempt: 1 });
    const queue = QueueView.parse((await api.app.inject({ method: 'GET', url: '/api/queue' })).json());
    expect(queue).toMatchObject({ slots: 1, busy: 1 });
    expect(queue.running.map((x) => x.id)).toEqual([a]);
    expect(queue.queued.map((x) => [x.id, x.pipeline])).toEqual([[b, 'check']]);
    const filtered = (await api.app.inject({ method: 'GET', url: '/api/builds?state=queued&project=app' })).json() as { builds: BuildView[] };
    expect(filtered.builds.map((x) => x.id)).toEqual([b]);
  });

  it('GET /api/changes?change= finds a change by its review id: each project with it, its current patch set, each patch set\'s latest build', async () => {
    const api = await makeApi();
    const submit = async (c: Partial<SubmitChangeInput>): Promise<number> => SubmitAnswer.parse((await post(api, { ...CHANGE, ...c })).json()).builds[0]!;
    const ps1 = await submit({ patchset: 1 });
    const ps2 = await submit({ patchset: 2, ref: 'refs/changes/01/1/2' });
    const ps2again = await submit({ patchset: 2, ref: 'refs/changes/01/1/2' });
    const other = await submit({ project: 'TestRepo1', patchset: 1 });
    await api.scheduler.idle();
    // An approval may record a patch set no build has run for yet.
    await api.store.recordChange({ project: 'app', branch: 'master', change: '1', patchset: 3, ref: 'refs/changes/01/1/3', author: 'alice', source: 'gerrit' });
    const get = async (q: string): Promise<ChangeLookup> => {
      const r = await api.app.inject({ method: 'GET', url: `/api/changes?${q}` });
      expect(r.statusCode, r.body).toBe(200);
      return ChangeLookup.parse(r.json());
    };
    expect(await get('change=1&project=app')).toEqual({
      changes: [{ project: 'app', change: '1', current: 3, patchsets: [{ patchset: 3 }, { patchset: 2, build: Math.max(ps2, ps2again) }, { patchset: 1, build: ps1 }] }],
      more: false,
    });
    expect(await get('change=1&project=app&patchset=1')).toEqual({ changes: [{ project: 'app', change: '1', current: 3, patchsets: [{ patchset: 1, build: ps1 }] }], more: false });
    expect(await get('change=1&project=app&patchset=9')).toEqual({ changes: [{ project: 'app', change: '1', current: 3, patchsets: [] }], more: false });
    const both = await get('change=1');
    expect(both.changes.map((c) => [c.project, c.current, c.patchsets[0]?.build])).toEqual([
      ['TestRepo1', 1, other],
      ['app', 3, undefined],
    ]);
    expect(await get('change=2')).toEqual({ changes: [], more: false });
    expect(await get('change=1&project=picky')).toEqual({ changes: [], more: false });
  });

  it('GET /api/changes?change= is bounded: at most LOOKUP_PROJECTS projects, and says there are more', async () => {
    const api = await makeApi();
    for (let i = 0; i <= LOOKUP_PROJECTS; i++) {
      await api.store.recordChange({ project: `p${String(i).padStart(2, '0')}`, branch: 'master', change: '5', patchset: 1, ref: 'refs/changes/05/5/1', author: 'a', source: 'api' });
    }
    const r = ChangeLookup.parse((await api.app.inject({ method: 'GET', url: '/api/changes?change=5' })).json());
    expect(r.changes).toHaveLength(LOOKUP_PROJECTS);
    expect(r.more).toBe(true);
  });

  it.each([
    ['GET', '/api/changes', 400],
    ['GET', '/api/changes?change=', 400],
    ['GET', '/api/changes?change=a%20b', 400],
    ['GET', `/api/changes?change=${'x'.repeat(201)}`, 400],
    ['GET', '/api/changes?change=1&patchset=0', 400],
    ['GET', '/api/changes?change=1&patchset=two', 400],
    ['GET', '/api/changes?change=1&sort=id', 400],
    ['GET', '/api/builds/abc', 400],
    ['GET', '/api/builds/0', 400],
    ['GET', '/api/builds/-1', 400],
    ['GET', '/api/builds/99999999999999999999', 400],
    ['GET', '/api/builds/42', 404],
    ['GET', '/api/changes/x', 400],
    ['GET', '/api/changes/42', 404],
    ['GET', '/api/builds?limit=0', 400],
    ['GET', '/api/builds?state=exploded', 400],
    ['GET', '/api/builds?sort=id', 400],
    ['POST', '/api/builds/42/cancel', 404],
    ['GET', '/api/builds/42/logs/unit', 404],
    ['GET', '/api/builds/1/logs/..%2Fetc', 400],
    ['GET', '/api/nope', 404],
    ['DELETE', '/api/builds/1', 404],
  ] as const)('%s %s → %i', async (method, url, status) => {
    const api = await makeApi();
    const r = await api.app.inject({ method, url });
    expect(r.statusCode, r.body).toBe(status);
    expect(Object.keys(r.json() as object).sort()).toEqual(['code', 'message', 'statusCode']);
  });

  it('cancels a running build with 202', async () => {
    const api = await makeApi();
    api.executor.hold('*');
    const id = SubmitAnswer.parse((await post(api, CHANGE)).json()).builds[0]!;
    await api.executor.until((x) => x.held.length === 1);
    const r = await api.app.inject({ method: 'POST', url: `/api/builds/${id}/cancel` });
    expect(r.statusCode, r.body).toBe(202);
    expect(BuildView.parse(r.json()).id).toBe(id);
    await api.scheduler.idle();
    expect(await api.store.build(id)).toMatchObject({ result: 'cancelled', reason: 'cancelled by request' });
  });

  it('serves a job log from the artifact store, and 404 for a job the build does not have', async () => {
    const api = await makeApi();
    const id = SubmitAnswer.parse((await post(api, CHANGE)).json()).builds[0]!;
    await api.scheduler.idle();
    await api.artifacts.put(logKey(String(id), 'unit'), 'hello from unit\n');
    const r = await api.app.inject({ method: 'GET', url: `/api/builds/${id}/logs/unit` });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/plain/);
    expect(r.body).toBe('hello from unit\n');
    expectError(await api.app.inject({ method: 'GET', url: `/api/builds/${id}/logs/lint` }), 404, 'AIRLOCK_E_NOT_FOUND');
  });

  it('replays a finished build’s events over SSE and ends with event: end', async () => {
    const api = await makeApi();
    const late = countWritesAfterEnd(api.app);
    const id = SubmitAnswer.parse((await post(api, CHANGE)).json()).builds[0]!;
    await api.scheduler.idle();
    // The store reporter wrote the result next to the logs.
    expect(BuildView.parse(JSON.parse((await api.artifacts.getBuffer(resultKey(String(id)), 1 << 20)).toString('utf8')))).toMatchObject({ id, result: 'passed' });
    const r = await api.app.inject({ method: 'GET', url: `/api/builds/${id}/events` });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/event-stream/);
    const frames = r.body.split('\n\n').filter(Boolean).map((f) => ({ event: /^event: (.*)$/m.exec(f)?.[1], data: /^data: (.*)$/m.exec(f)?.[1] }));
    expect(frames.at(-1)).toEqual({ event: 'end', data: '{}' });
    const events = frames.slice(0, -1).map((f) => BuildEvent.parse(JSON.parse(f.data!)));
    expect(frames.slice(0, -1).map((f) => f.event)).toEqual(events.map((e) => e.type));
    expect(events).toEqual([
      { type: 'job', job: 'unit', state: 'running' },
      { type: 'log', job: 'unit', text: 'unit of 1,1\n' },
      { type: 'job', job: 'unit', state: 'passed' },
      { type: 'build', state: 'finished', result: 'passed', reason: '1 voting job passed' },
    ]);
    expect(late.count).toBe(0);
  });

  it('ends the SSE stream of a build cancelled before it ran with its result', async () => {
    const api = await makeApi();
    const late = countWritesAfterEnd(api.app);
    api.executor.hold('*');
    await post(api, CHANGE);
    const id = SubmitAnswer.parse((await post(api, { ...CHANGE, change: '2', ref: 'refs/changes/02/2/1' })).json()).builds[0]!;
    await api.app.inject({ method: 'POST', url: `/api/builds/${id}/cancel` });
    const r = await api.app.inject({ method: 'GET', url: `/api/builds/${id}/events` });
    expect(r.body).toBe(`event: build\ndata: ${JSON.stringify({ type: 'build', state: 'finished', result: 'cancelled', reason: 'cancelled by request' })}\n\nevent: end\ndata: {}\n\n`);
    expect(late.count).toBe(0);
  });

  it('sends a build cancelled while it runs once, then its result from the record', async () => {
    const api = await makeApi();
    const late = countWritesAfterEnd(api.app);
    api.executor.hold('*');
    const id = SubmitAnswer.parse((await post(api, CHANGE)).json()).builds[0]!;
    await api.executor.until((x) => x.history.length === 1);
    api.events.publish(id, { type: 'log', job: 'unit', text: 'before the cancel\n' });
    const pending = api.app.inject({ method: 'GET', url: `/api/builds/${id}/events` });
    // The stream ends without a final event (the executor throws); the route asks the record.
    await new Promise((r) => setTimeout(r, 50));
    await api.app.inject({ method: 'POST', url: `/api/builds/${id}/cancel` });
    const frames = (await pending).body.split('\n\n').filter(Boolean);
    expect(frames).toEqual([
      `event: log\ndata: ${JSON.stringify({ type: 'log', job: 'unit', text: 'before the cancel\n' })}`,
      `event: build\ndata: ${JSON.stringify({ type: 'build', state: 'finished', result: 'cancelled', reason: 'cancelled by request' })}`,
      'event: end\ndata: {}',
    ]);
    expect(late.count).toBe(0);
  });

  it('exposes queue depth and build results as Prometheus metrics', async () => {
    const api = await makeApi();
    await post(api, CHANGE);
    await api.scheduler.idle();
    const r = await api.app.inject({ method: 'GET', url: '/metrics' });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/plain/);
    expect(r.body).toMatch(/^airlock_ci_queue_depth\{pipeline="check"\} 0$/m);
    expect(r.body).toMatch(/^airlock_ci_builds_total\{pipeline="check",result="passed"\} 1$/m);
    expect(r.body).toMatch(/^airlock_ci_slots 1$/m);
  });

  it('counts jobs as they start and finish, with their durations by result; process metrics carry the prefix once', async () => {
    const api = await makeApi();
    api.executor.fail('2');
    await post(api, CHANGE);
    await post(api, { ...CHANGE, ref: 'refs/changes/02/2/1', change: '2' });
    await api.scheduler.idle();
    const body = (await api.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(body).toMatch(/^airlock_ci_jobs_started_total\{pipeline="check"\} 2$/m);
    expect(body).toMatch(/^airlock_ci_jobs_finished_total\{pipeline="check",result="passed"\} 1$/m);
    expect(body).toMatch(/^airlock_ci_jobs_finished_total\{pipeline="check",result="failed"\} 1$/m);
    expect(body).toMatch(/^airlock_ci_job_duration_seconds_count\{pipeline="check",result="passed"\} 1$/m);
    expect(body).toMatch(/^airlock_ci_job_duration_seconds_count\{pipeline="check",result="failed"\} 1$/m);
    expect(body).toMatch(/^# TYPE airlock_ci_process_cpu_seconds_total counter$/m);
    expect(body).toMatch(/^# TYPE airlock_ci_nodejs_heap_size_total_bytes gauge$/m);
    expect(body).not.toContain('process_process_');
    // Every counter ends in _total; every sample name carries the service's prefix.
    for (const m of body.matchAll(/^# TYPE (\S+) counter$/gm)) expect(m[1]).toMatch(/_total$/);
    for (const m of body.matchAll(/^([a-z_:]+)[{ ]/gm)) expect(m[1]).toMatch(/^airlock_ci_/);
  });

  it('publishes an OpenAPI 3.1 document with the API’s paths', async () => {
    const api = await makeApi();
    const r = await api.app.inject({ method: 'GET', url: '/openapi.json' });
    expect(r.statusCode).toBe(200);
    const doc = r.json() as { openapi: string; info: { title: string; version: string }; paths: Record<string, Record<string, { responses?: Record<string, unknown>; requestBody?: { content: Record<string, { schema: unknown }> } }>> };
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.info.title).toBeTruthy();
    expect(doc.info.version).toBeTruthy();
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/api/changes', '/api/changes/{id}', '/api/builds', '/api/builds/{id}', '/api/builds/{id}/events', '/api/queue', '/hooks/gerrit']));
    expect(Object.keys(doc.paths)).not.toContain('/metrics'); // hidden
    const submit = doc.paths['/api/changes']!.post!;
    expect(submit.requestBody!.content['application/json']!.schema).toMatchObject({ type: 'object', required: expect.arrayContaining(['project', 'ref']) });
    expect(Object.keys(submit.responses!)).toContain('202');
    const METHODS = new Set(['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace']);
    for (const [path, item] of Object.entries(doc.paths)) {
      expect(path).toMatch(/^\//);
      expect(path).not.toMatch(/:/); // fastify's :id is translated to {id}
      for (const [method, op] of Object.entries(item)) {
        if (!METHODS.has(method)) continue;
        expect(op.responses, `${method} ${path}`).toBeTypeOf('object');
        for (const code of Object.keys(op.responses!)) expect(code).toMatch(/^(?:[1-5]\d\d|[1-5]XX|default)$/);
      }
    }
  });
});

describe('POST /hooks/gerrit', () => {
  it('accepts a signed patchset-created of a registered project and queues a build', async () => {
    const api = await makeApi();
    api.executor.hold('*');
    const r = await hook(api, fixture('patchset-created.json'));
    expect(r.statusCode, r.body).toBe(202);
    const out = r.json() as { accepted: boolean; builds: number[]; superseded: number[] };
    expect(out).toMatchObject({ accepted: true, superseded: [] });
    expect(await api.store.build(out.builds[0]!)).toMatchObject({
      project: 'TestRepo1',
      branch: 'patch_create',
      pipeline: 'check',
      change: { change: '2', patchset: 1, ref: 'refs/changes/02/2/1', author: 'admin', source: 'gerrit' },
    });
  });

  it('answers a redelivery of the same body as a duplicate, and queues nothing more', async () => {
    const api = await makeApi();
    api.executor.hold('*');
    const body = fixture('patchset-created.json');
    expect((await hook(api, body)).statusCode).toBe(202);
    const again = await hook(api, body);
    expect(again.statusCode).toBe(202);
    expect(again.json()).toEqual({ accepted: false, reason: 'already received (redelivery)' });
    expect(await api.store.builds({})).toHaveLength(1);
  });

  describe('review events and the gate', () => {
    /** Records what the webhook asks of the gate (the gate itself is tested end to end in e2e/). */
    const recorder = () => {
      const calls: string[] = [];
      const gate = {
        approval: (c: { change: string; patchset: number; project: string }, approved: boolean) => calls.push(`${approved ? 'approve' : 'unapprove'} ${c.project} ${c.change},${c.patchset}`),
        patchset: (c: { change: string; patchset: number }) => calls.push(`patchset ${c.change},${c.patchset}`),
        mergedElsewhere: (project: string, change: string) => calls.push(`merged ${project} ${change}`),
        abandoned: (project: string, change: string) => calls.push(`abandoned ${project} ${change}`),
        restored: (project: string, change: string) => calls.push(`restored ${project} ${change}`),
      };
      return { calls, gate: gate as unknown as GateRuntime };
    };
    const config = { projects: [{ name: 'TestRepo', url: '/srv/git/TestRepo.git' }, { name: 'TestRepo1', url: '/srv/git/TestRepo1.git' }] };
    type Json = Record<string, unknown> & { approvals: { type: string; value: string; oldValue?: string }[]; author: Record<string, string>; change: Record<string, unknown>; patchSet: Record<string, unknown> };
    const base = (): Json => JSON.parse(fixture('comment-added.json').toString('utf8')) as Json;
    /** A comment-added by `who` with these votes (`[label, value, oldValue?]`), and a comment. */
    const comment = (who: string, votes: [string, string, string?][], text = 'Patch Set 2:') => {
      const d = base();
      d.author = { name: who, username: who, email: `${who}@example.com` };
      d.approvals = votes.map(([type, value, oldValue]) => ({ type, description: type, value, ...(oldValue !== undefined ? { oldValue } : {}) }));
      d.comment = text;
      return JSON.stringify(d);
    };
    /** Another event about the same change (abandoned, restored, wip, private). */
    const about = (type: string, extra: Record<string, unknown> = {}, change: Record<string, unknown> = {}) => {
      const d = base() as unknown as Record<string, unknown>;
      for (const k of ['author', 'approvals', 'comment']) delete d[k];
      return JSON.stringify({ ...d, ...extra, type, change: { ...(d.change as object), ...change } });
    };

    it('Code-Review +2 from a reviewer approves the patchset for the gate and records the change; the owner\'s own does not', async () => {
      const r0 = recorder();
      const api = await makeApi({ config, gate: r0.gate, review: true });
      // The fixture's voter is the change's owner (admin): self-approval does not count.
      expect((await hook(api, fixture('comment-added.json'))).json()).toMatchObject({ accepted: false });
      const r = await hook(api, comment('grace', [['Code-Review', '2', '0']]));
      expect(r.statusCode, r.body).toBe(202);
      expect(r.json()).toEqual({ accepted: true, builds: [], superseded: [], gate: 'approved' });
      expect(r0.calls).toEqual(['approve TestRepo 1,2']);
      expect(await api.store.latestChange('TestRepo', '1')).toMatchObject({ patchset: 2, branch: 'test_branch', source: 'gerrit' });
      expect(await api.store.builds({})).toEqual([]);
    });

    it('tracks votes per reviewer: another reviewer\'s +1 keeps the approval; the +2 taken back or anyone\'s -2 withdraws it', async () => {
      const r0 = recorder();
      const api = await makeApi({ config, gate: r0.gate, review: true });
      expect((await hook(api, comment('grace', [['Code-Review', '2', '0']]))).json()).toMatchObject({ accepted: true, gate: 'approved' });
      expect((await hook(api, comment('bob', [['Code-Review', '1', '0']]))).json()).toMatchObject({ accepted: false });
      expect((await hook(api, comment('bob', [['Code-Review', '-2', '1']]))).json()).toMatchObject({ accepted: true, gate: 'unapproved' });
      expect((await hook(api, comment('bob', [['Code-Review', '0', '-2']]))).json()).toMatchObject({ accepted: true, gate: 'approved' });
      expect((await hook(api, comment('grace', [['Code-Review', '1', '2']]))).json()).toMatchObject({ accepted: true, gate: 'unapproved' });
      expect(r0.calls).toEqual(['approve TestRepo 1,2', 'unapprove TestRepo 1,2', 'approve TestRepo 1,2', 'unapprove TestRepo 1,2']);
    });

    it('airlock\'s own vote never approves, and a vote on another label changes nothing', async () => {
      const r0 = recorder();
      const api = await makeApi({ config, gate: r0.gate, review: true });
      expect((await hook(api, comment('airlock-ci', [['Code-Review', '2', '0']]))).json()).toMatchObject({ accepted: false });
      expect((await hook(api, comment('grace', [['Verified', '1', '0']]))).json()).toMatchObject({ accepted: false });
      expect(r0.calls).toEqual([]);
    });

    it('abandoned leaves the gate and stops its checks; restored comes back approved', async () => {
      const r0 = recorder();
      const api = await makeApi({ config, gate: r0.gate, review: true });
      api.executor.hold('*');
      await hook(api, comment('grace', [['Code-Review', '2', '0']]));
      const check = await hook(api, comment('grace', [['Code-Review', '2']], 'Patch Set 2:\n\nrecheck'));
      const build = (check.json() as { builds: number[] }).builds[0]!;
      expect((await hook(api, about('change-abandoned', { abandoner: { username: 'ada' }, reason: 'no' }, { status: 'ABANDONED' }))).json()).toMatchObject({ accepted: true, gate: 'abandoned' });
      await api.scheduler.idle();
      expect(await api.store.build(build)).toMatchObject({ state: 'finished', result: 'cancelled' });
      expect((await hook(api, about('change-restored', { restorer: { username: 'ada' } }))).json()).toMatchObject({ accepted: true, gate: 'restored' });
      expect(r0.calls).toEqual(['approve TestRepo 1,2', 'abandoned TestRepo 1', 'unapprove TestRepo 1,2', 'restored TestRepo 1', 'approve TestRepo 1,2']);
    });

    it('work in progress and private take the change out; private also stops its checks', async () => {
      const r0 = recorder();
      const api = await makeApi({ config, gate: r0.gate, review: true });
      await hook(api, comment('grace', [['Code-Review', '2', '0']]));
      expect((await hook(api, about('wip-state-changed', { changer: { username: 'ada' } }, { wip: true }))).json()).toMatchObject({ accepted: true, gate: 'unapproved' });
      expect((await hook(api, about('wip-state-changed', { changer: { username: 'ada' } }, {}))).json()).toMatchObject({ accepted: true, gate: 'approved' });
      expect((await hook(api, about('private-state-changed', { changer: { username: 'ada' } }, { private: true }))).json()).toMatchObject({ accepted: true, gate: 'unapproved' });
      expect(r0.calls).toEqual(['approve TestRepo 1,2', 'unapprove TestRepo 1,2', 'approve TestRepo 1,2', 'unapprove TestRepo 1,2']);
    });

    it('"recheck" runs the check again; other comments do not', async () => {
      const api = await makeApi({ config, gate: recorder().gate, review: true });
      api.executor.hold('*');
      expect((await hook(api, comment('ada', [], 'Patch Set 2:\n\nrecheck'))).json()).toMatchObject({ accepted: true, builds: [1] });
      expect((await hook(api, comment('ada', [], 'Patch Set 2:\n\nplease do not recheck this'))).json()).toMatchObject({ accepted: false });
      expect((await api.store.builds({})).map((b) => [b.pipeline, b.change.change, b.change.patchset])).toEqual([['check', '1', 2]]);
    });

    it('a trivial rebase keeps the approval for the new patch set; a rework does not', async () => {
      const r0 = recorder();
      const api = await makeApi({ config, gate: r0.gate, review: true });
      api.executor.hold('*');
      await hook(api, comment('grace', [['Code-Review', '2', '0']]));
      const ps = (n: number, kind: string) => {
        const d = JSON.parse(fixture('patchset-created.json').toString('utf8')) as { change: Record<string, unknown>; patchSet: Record<string, unknown> };
        d.change = { ...d.change, project: 'TestRepo', number: 1, branch: 'test_branch' };
        d.patchSet = { ...d.patchSet, number: n, ref: `refs/changes/01/1/${n}`, kind };
        return JSON.stringify(d);
      };
      await hook(api, ps(3, 'TRIVIAL_REBASE'));
      await hook(api, ps(4, 'REWORK'));
      expect(r0.calls).toEqual(['approve TestRepo 1,2', 'patchset 1,3', 'approve TestRepo 1,3', 'patchset 1,4']);
    });

    it('change-merged takes the change out of the gate; a patchset tells the gate of the new patchset', async () => {
      const r0 = recorder();
      const api = await makeApi({ config, gate: r0.gate, review: true });
      api.executor.hold('*');
      expect((await hook(api, fixture('change-merged.json'))).json()).toMatchObject({ accepted: true, gate: 'merged' });
      expect((await hook(api, fixture('patchset-created.json'))).json()).toMatchObject({ accepted: true });
      expect(r0.calls).toEqual(['merged TestRepo 1', 'patchset 2,1']);
    });

    it('without a review system, an approval is acknowledged and nothing enters the gate', async () => {
      const r0 = recorder();
      const api = await makeApi({ config, gate: r0.gate });
      expect((await hook(api, fixture('comment-added.json'))).json()).toEqual({ accepted: false, reason: 'no review system is configured: the gate takes no changes' });
      expect(r0.calls).toEqual([]);
    });
  });

  describe('webhook authentication', () => {
    const body = () => fixture('change-abandoned.json');
    const send = (api: Api, url: string, headers: Record<string, string> = {}) => api.app.inject({ method: 'POST', url, payload: body(), headers: { 'content-type': 'application/json', ...headers } });

    it('takes the secret in the URL path, as Gerrit\'s webhooks plugin can send it', async () => {
      const api = await makeApi();
      expect((await send(api, `/hooks/gerrit/${encodeURIComponent(SECRET)}`)).statusCode).toBe(202);
      const wrong = expectError(await send(api, '/hooks/gerrit/not-the-secret'), 401, 'AIRLOCK_E_UNAUTHORIZED');
      expect(wrong.message).not.toContain(SECRET);
    });

    it('takes the secret as the basic-auth password, and challenges a request that brings no credential', async () => {
      const api = await makeApi();
      const basic = (user: string, pass: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}` });
      expect((await send(api, '/hooks/gerrit', basic('gerrit', SECRET))).statusCode).toBe(202);
      expectError(await send(api, '/hooks/gerrit', basic('gerrit', 'nope')), 401, 'AIRLOCK_E_UNAUTHORIZED');
      const bare = await send(api, '/hooks/gerrit');
      expectError(bare, 401, 'AIRLOCK_E_UNAUTHORIZED');
      expect(bare.headers['www-authenticate']).toBe('Basic realm="airlock webhooks"');
    });
  });

  it('acknowledges an event type it ignores with 202 accepted: false', async () => {
    const api = await makeApi();
    const r = await hook(api, fixture('change-abandoned.json'));
    expect(r.statusCode).toBe(202);
    expect(r.json()).toMatchObject({ accepted: false, reason: expect.any(String) });
    expect(await api.store.builds({})).toEqual([]);
  });

  it('acknowledges a patchset of a project it does not check without queueing it', async () => {
    const api = await makeApi();
    const body = fixture('patchset-created.json').toString('utf8').replaceAll('TestRepo1', 'Unknown');
    const r = await hook(api, body);
    expect(r.statusCode).toBe(202);
    expect(r.json()).toMatchObject({ accepted: false });
    expect(await api.store.builds({})).toEqual([]);
  });

  it('answers 401 to an unsigned or wrongly signed body, and 400 to signed garbage', async () => {
    const api = await makeApi();
    const body = fixture('patchset-created.json');
    const unsigned = expectError(await hook(api, body, null), 401, 'AIRLOCK_E_UNAUTHORIZED');
    const bad = expectError(await hook(api, body, signWebhookBody(body, Buffer.from('another-secret-of-some-length'))), 401, 'AIRLOCK_E_UNAUTHORIZED');
    expectError(await hook(api, body, 'sha256=zz'), 401, 'AIRLOCK_E_UNAUTHORIZED');
    for (const m of [unsigned.message, bad.message]) expect(m).not.toContain(SECRET);
    expectError(await hook(api, '{"type": "patchset-created", '), 400, 'AIRLOCK_E_INVALID_INPUT');
    expectError(await hook(api, '{"type": "patchset-created"}'), 400, 'AIRLOCK_E_INVALID_INPUT');
    expectError(await hook(api, Buffer.from([0xff, 0xfe, 0x00])), 400, 'AIRLOCK_E_INVALID_INPUT');
    expect(await api.store.builds({})).toEqual([]);
  });

  it('takes any content type, since the signature covers the raw bytes', async () => {
    const api = await makeApi();
    const body = fixture('change-abandoned.json');
    const r = await api.app.inject({ method: 'POST', url: '/hooks/gerrit', payload: body, headers: { 'content-type': 'text/plain', [WEBHOOK_SIGNATURE_HEADER]: signWebhookBody(body, Buffer.from(SECRET)) } });
    expect(r.statusCode, r.body).toBe(202);
  });

  it('is 404 when no webhook secret is configured', async () => {
    const api = await makeApi({ hookSecret: false });
    expectError(await hook(api, fixture('patchset-created.json')), 404, 'AIRLOCK_E_NOT_FOUND');
  });

  it('rate-limits per client: the request past the limit gets 429', async () => {
    const api = await makeApi({ config: { webhooks: { ratePerMinute: 3 } } });
    const body = fixture('change-abandoned.json');
    for (let i = 0; i < 3; i++) expect((await hook(api, body)).statusCode).toBe(202);
    expectError(await hook(api, body), 429, 'AIRLOCK_E_RATE_LIMITED');
    // Another client is not limited by the first one.
    const other = await api.app.inject({ method: 'POST', url: '/hooks/gerrit', payload: body, remoteAddress: '192.0.2.7', headers: { 'content-type': 'application/json', [WEBHOOK_SIGNATURE_HEADER]: signWebhookBody(body, Buffer.from(SECRET)) } });
    expect(other.statusCode).toBe(202);
    // The API is not rate-limited by the webhook's budget.
    expect((await api.app.inject({ method: 'GET', url: '/api/queue' })).statusCode).toBe(200);
  });

  it('answers 413 to a body over the limit', async () => {
    const api = await makeApi();
    const big = Buffer.from(JSON.stringify({ type: 'patchset-created', pad: 'x'.repeat(20_000) }));
    expectError(await hook(api, big), 413, 'AIRLOCK_E_PAYLOAD_TOO_LARGE');
  });

  it('with a review system, refuses an API check that takes a number (the review system\'s change ids)', async () => {
    const api = await makeApi({ config: { review: { kind: 'gerrit', url: 'https://review.example.org', credentialsFile: 'gerrit.json' } } });
    api.executor.hold('*');
    const r = await post(api, { ...CHANGE, change: '7' });
    expect(expectError(r, 400, 'AIRLOCK_E_INVALID_INPUT').message).toContain("numbers are the review system's change ids");
    expect((await post(api, { ...CHANGE, change: 'api-7' })).statusCode).toBe(202);
  });

  it('acknowledges a patchset older than one already queued with 202 accepted: false (a retry cannot change it), not 500', async () => {
    const api = await makeApi();
    api.executor.hold('*');
    const v2 = fixture('patchset-created.json').toString('utf8').replace('"number": 1,', '"number": 2,').replace('refs/changes/02/2/1', 'refs/changes/02/2/2');
    expect((await hook(api, v2)).statusCode).toBe(202);
    const late = await hook(api, fixture('patchset-created.json'));
    expect(late.statusCode).toBe(202);
    expect(late.json()).toEqual({ accepted: false, reason: 'change 2 of TestRepo1 is already at patchset 2; patchset 1 is outdated' });
    expect(await api.store.builds({})).toHaveLength(1);
  });
});
