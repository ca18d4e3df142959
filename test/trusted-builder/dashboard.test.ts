/**
 * The builder's page with fastify's inject: off without its login secret (404); HTTP Basic with a
 * challenge, constant answers for a wrong name or password, a limit on unproven attempts; the
 * headers of every answer; and the summary: promotions with their steps in order, refusals with
 * reasons, the audit tail with whitelisted fields — and nothing of the embargo lane even when the
 * audit log holds it, no secret, no record past a broken link of the chain.
 */
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { PAGE_CSP } from '#shared/http/page-policy.js';
import { createLogger } from '#shared/logging.js';
import { buildBuilderApi } from '../../trusted-builder/api/app.js';
import { AuditLog, type JsonValue } from '../../trusted-builder/audit/audit-log.js';
import { AuditDigest } from '../../trusted-builder/dashboard/audit-digest.js';
import { SHOWN_FIELDS } from '../../trusted-builder/dashboard/audit-view.js';
import { BasicAuth, parseBasic, parseDashboardLogin } from '../../trusted-builder/dashboard/basic-auth.js';
import { builderSummary } from '../../trusted-builder/dashboard/summary.js';
import type { BuilderSummary } from '../../trusted-builder/dashboard/summary-schema.js';
import { PromotionStore } from '../../trusted-builder/promote/promotion-store.js';
import { createBuilderMetrics } from '../../trusted-builder/api/metrics.js';
import { dashboardSecret } from '../../scripts/dashboard-password.js';

const dir = mkdtempSync(join(tmpdir(), 'airlock-dashboard-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const USER = 'sre-oncall';
const PASSWORD = 'correct horse battery staple';
const HASH = bcrypt.hashSync(PASSWORD, 4);
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const GOOD = basic(USER, PASSWORD);
const A = 'a'.repeat(40);
const B = 'b'.repeat(40);
const DIGEST = `sha256:${'d'.repeat(64)}`;
const HOSTILE = '<img src=x onerror=alert(1)>';
const EMBARGO_ID = 'emb-0123456789abcdef';
const PATCH_DIGEST = `sha256:${'e'.repeat(64)}`;
const T0 = Date.parse('2030-01-02T03:04:05.000Z');

let n = 0;
const apps: { close(): Promise<unknown> }[] = [];
afterEach(async () => {
  for (const a of apps.splice(0)) await a.close();
});

/** A builder API over an audit log holding `records` (in order) and a promotion store with `rows`. */
async function builder(o: { records?: [string, Record<string, JsonValue>][]; dashboard?: boolean } = {}) {
  const base = join(dir, `b${++n}`);
  const lookaside = join(base, 'lookaside');
  mkdirSync(join(lookaside, `team/app@${DIGEST.replace(':', '=')}`), { recursive: true });
  writeFileSync(join(lookaside, `team/app@${DIGEST.replace(':', '=')}/signature-1`), 'SIG');
  let t = T0;
  const audit = await AuditLog.open(join(base, 'audit.jsonl'), { now: () => (t += 1000) });
  for (const [kind, fields] of o.records ?? []) await audit.append(kind as never, fields);
  const store = new PromotionStore(':memory:', () => T0);
  const clock = { now: T0 };
  const metrics = createBuilderMetrics({ queued: () => store.count('queued'), running: () => store.count('running'), now: () => clock.now });
  store.watch(metrics.onPromotion);
  const digest = new AuditDigest(audit.file, { hiddenSecretPaths: ['airlock/embargo-key'] });
  const app = await buildBuilderApi({
    logger: createLogger({ level: 'silent' }),
    audit,
    hintSecret: Buffer.from('a hint secret of decent length'),
    promoter: { accept: () => ({ queued: true }) },
    lookasideDir: lookaside,
    ...(o.dashboard === false
      ? {}
      : {
          dashboard: {
            auth: new BasicAuth(parseDashboardLogin({ username: USER, passwordBcrypt: HASH }, 'test')),
            summary: () => builderSummary({ promotions: store, audit: digest, lookasideDir: lookaside, now: () => T0 }),
            metrics: metrics.registry,
          },
        }),
  });
  apps.push(app, audit, { close: async () => store.close() });
  const get = (url: string, authorization?: string) => app.inject({ method: 'GET', url, headers: authorization ? { authorization } : {} });
  return { app, audit, store, lookaside, get, clock };
}

/** What a real public promotion of demo/app@A and a refused demo/other@B leave in the log, plus the embargo lane's records. */
function history(lookaside: string): [string, Record<string, JsonValue>][] {
  const sigDir = join(lookaside, `team/app@${DIGEST.replace(':', '=')}`);
  const pa = { project: 'demo/app', commit: A };
  return [
    ['secret-read', { path: 'airlock/hint-hmac', store: 'file', purpose: 'builder' }],
    ['secret-read', { path: 'airlock/embargo-key', store: 'file', purpose: 'builder' }],
    ['embargo', { event: 'lane-open', key: 'F'.repeat(40), members: ['alice AAAA'], excluded: [] }],
    ['embargo', { event: 'submitted', embargo: EMBARGO_ID, digest: PATCH_DIGEST, by: 'alice' }],
    ['hint-refused', { reason: 'bad-signature', from: '10.0.0.9' }],
    ['hint-accepted', { ...pa, branch: 'master', ciRun: '17', queued: true }],
    ['verify-passed', { ...pa, branch: 'master', hintBranch: 'master', policy: 'sha256:policy' }],
    ['secret-read', { path: 'team/app/npm', store: 'file', purpose: 'step unit', ...pa }],
    ['tests-passed', { ...pa, jobs: ['unit'] }],
    ['image-built', { ...pa, image: 'sha256:image', bases: ['airlock/base:busybox@sha256:base'] }],
    ['leak-check', { ...pa, searched: 4, leaks: 0, where: [] }],
    ['pushed', { ...pa, reference: `127.0.0.1:5000/team/app:${A}`, digest: DIGEST, attempts: 1, unlisted: 'a field the page does not list' }],
    ['signed', { ...pa, digest: DIGEST, key: 'F'.repeat(40), signature: join(sigDir, 'signature-1'), provenance: join(sigDir, 'provenance.json') }],
    // The private lane of the same commit: its step's secret read, then the embargo record; and a
    // record naming the private namespace, which the promoter never writes today.
    ['secret-read', { path: 'team/app/npm', store: 'file', purpose: 'step unit', ...pa }],
    ['embargo', { event: 'published', embargoes: [EMBARGO_ID], patches: [PATCH_DIGEST] }],
    ['pushed', { ...pa, reference: `127.0.0.1:5000/private/team/app:${A}`, digest: DIGEST, attempts: 1 }],
    ['hint-accepted', { project: 'demo/other', commit: B, branch: HOSTILE, queued: true }],
    ['verify-refused', { project: 'demo/other', commit: B, step: 'policy', state: 'refused', reason: 'project demo/other is not in the promotion policy' }],
  ];
}

const summaryOf = async (b: Awaited<ReturnType<typeof builder>>): Promise<BuilderSummary> => {
  const r = await b.get('/v1/ui/summary', GOOD);
  expect(r.statusCode, r.body).toBe(200);
  return r.json();
};

describe('the builder page: on, off and its login', () => {
  it('does not exist without its login secret: 404 like any unknown route', async () => {
    const b = await builder({ dashboard: false });
    for (const url of ['/ui', '/ui/dashboard.js', '/v1/ui/summary']) {
      const r = await b.get(url, GOOD);
      expect(r.statusCode, url).toBe(404);
      expect(r.json()).toMatchObject({ code: 'AIRLOCK_E_NOT_FOUND' });
    }
  });

  it('answers 401 with a Basic challenge to no, wrong or malformed credentials, the same for a wrong name or password, revealing nothing', async () => {
    const b = await builder();
    const tries = [undefined, basic(USER, 'wrong'), basic('root', PASSWORD), basic(`${USER}x`, PASSWORD), 'Basic !!!', `Bearer ${PASSWORD}`, basic(USER, ''), `Basic ${Buffer.from(USER).toString('base64')}`];
    // Ten in all: the limit of unproven attempts a minute.
    const requests = [...tries.map((a) => ['/v1/ui/summary', a] as const), ['/ui', undefined] as const, ['/ui/render.js', basic(USER, 'wrong')] as const];
    for (const [url, authorization] of requests) {
      const r = await b.get(url, authorization);
      expect(r.statusCode, `${url} ${authorization}`).toBe(401);
      expect(r.headers['www-authenticate']).toBe('Basic realm="airlock trusted builder", charset="UTF-8"');
      expect(r.json()).toEqual({ code: 'AIRLOCK_E_UNAUTHORIZED', message: 'the builder page needs its user name and password', statusCode: 401 });
      expect(r.headers).toMatchObject({ 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', 'content-security-policy': "default-src 'none'; frame-ancestors 'none'" });
    }
  });

  it('serves the page files with its strict policy and the summary as JSON to the right login, never cached', async () => {
    const b = await builder();
    const files: [string, string][] = [
      ['/ui', 'text/html; charset=utf-8'],
      ['/ui/', 'text/html; charset=utf-8'],
      ['/ui/dashboard.js', 'text/javascript; charset=utf-8'],
      ['/ui/render.js', 'text/javascript; charset=utf-8'],
      ['/ui/dashboard.css', 'text/css; charset=utf-8'],
      ['/ui/favicon.svg', 'image/svg+xml'],
    ];
    for (const [url, type] of files) {
      const r = await b.get(url, GOOD);
      expect(r.statusCode, url).toBe(200);
      expect(r.headers).toMatchObject({ 'content-type': type, 'content-security-policy': PAGE_CSP, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', 'x-frame-options': 'DENY', 'referrer-policy': 'no-referrer' });
    }
    expect(PAGE_CSP).toContain("frame-ancestors 'none'");
    expect(PAGE_CSP).not.toContain('unsafe');
    const html = (await b.get('/ui', GOOD)).body;
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)/); // no inline script
    expect(html).not.toMatch(/\sstyle=|<style/);
    const s = await b.get('/v1/ui/summary', GOOD);
    expect(s.headers).toMatchObject({ 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'content-security-policy': "default-src 'none'; frame-ancestors 'none'" });
    expect(s.json()).toEqual({ version: 1, generatedAt: T0, chain: { ok: true, head: '0'.repeat(64) }, promotions: [], refusals: [], tail: [] });
    expect((await b.get('/ui/other.js', GOOD)).statusCode).toBe(404);
    expect((await b.get('/ui/../audit.jsonl', GOOD)).statusCode).toBe(404);
  });

  it('limits unproven attempts per client to 10 a minute (429 before bcrypt), while a proven login goes on', async () => {
    const b = await builder();
    expect((await b.get('/ui', GOOD)).statusCode).toBe(200); // attempt 1, now proven
    for (let i = 2; i <= 10; i++) expect((await b.get('/v1/ui/summary', basic(USER, `guess-${i}`))).statusCode).toBe(401);
    const limited = await b.get('/v1/ui/summary', basic(USER, 'guess-11'));
    expect(limited.statusCode).toBe(429);
    expect(limited.json()).toMatchObject({ code: 'AIRLOCK_E_RATE_LIMITED' });
    expect(limited.headers).toMatchObject({ 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0);
    // The right password in a header not yet proven counts too; the proven one is not counted.
    expect((await b.get('/v1/ui/summary', `basic ${GOOD.slice('Basic '.length)}`)).statusCode).toBe(429);
    expect((await b.get('/v1/ui/summary', GOOD)).statusCode).toBe(200);
  });
});

describe('the builder page: the summary', () => {
  it('lists the promotion with its steps in order, digest and lookaside links; the refusals with reasons; the audit tail as text', async () => {
    const b = await builder();
    for (const [kind, fields] of history(b.lookaside)) await b.audit.append(kind as never, fields);
    const sigDir = join(b.lookaside, `team/app@${DIGEST.replace(':', '=')}`);
    b.store.enqueue(`demo/app@${A}`, { version: 1, project: 'demo/app', branch: 'master', commit: A, ciRun: '17' });
    b.store.set(`demo/app@${A}`, 'published', { state: 'published', project: 'demo/app', commit: A, reference: `127.0.0.1:5000/team/app:${A}`, digest: DIGEST, signature: join(sigDir, 'signature-1'), provenance: join(sigDir, 'provenance.json') });
    b.store.enqueue(`demo/other@${B}`, { version: 1, project: 'demo/other', branch: 'master', commit: B });
    b.store.set(`demo/other@${B}`, 'refused', { state: 'refused', project: 'demo/other', commit: B, step: 'policy', reason: 'project demo/other is not in the promotion policy' });
    b.store.enqueue(`demo/app@${B}`, { version: 1, project: 'demo/app', branch: 'master', commit: B });
    const s = await summaryOf(b);

    const [queued, other, app] = s.promotions; // same updated_at: newest row first
    expect(queued).toMatchObject({ project: 'demo/app', commit: B, state: 'queued' });
    expect(queued!.steps.map((x) => x.outcome)).toEqual(['waiting', 'waiting', 'waiting', 'waiting', 'waiting', 'waiting']);
    expect(app).toMatchObject({
      project: 'demo/app',
      commit: A,
      branch: 'master',
      state: 'published',
      updatedAt: T0,
      reference: `127.0.0.1:5000/team/app:${A}`,
      digest: DIGEST,
      signatureUrl: `/lookaside/team/app@${DIGEST.replace(':', '=')}/signature-1`,
      provenanceUrl: `/lookaside/team/app@${DIGEST.replace(':', '=')}/provenance.json`,
      provenanceSignatureUrl: `/lookaside/team/app@${DIGEST.replace(':', '=')}/provenance.json.asc`,
    });
    expect(app!.steps.map((x) => [x.name, x.outcome, x.detail])).toEqual([
      ['verify', 'passed', 'on master'],
      ['tests', 'passed', 'unit'],
      ['build', 'passed', 'sha256:image'],
      ['leak-check', 'passed', 'searched for 4 secret values: none found'],
      ['push', 'passed', `127.0.0.1:5000/team/app:${A}`],
      ['sign', 'passed', `key ${'F'.repeat(40)}`],
    ]);
    expect((await b.get(app!.signatureUrl!)).body).toBe('SIG'); // public, no login needed
    expect(other).toMatchObject({ project: 'demo/other', state: 'refused', stoppedAt: 'policy', reason: 'project demo/other is not in the promotion policy' });
    expect(other!.steps.map((x) => x.outcome)).toEqual(['refused', 'skipped', 'skipped', 'skipped', 'skipped', 'skipped']);
    expect(other!.steps[0]!.detail).toBe('policy: project demo/other is not in the promotion policy');

    expect(s.refusals).toEqual([
      { at: expect.any(String), kind: 'verify-refused', project: 'demo/other', commit: B, step: 'policy', reason: 'project demo/other is not in the promotion policy' },
      { at: expect.any(String), kind: 'hint-refused', reason: 'bad-signature', from: '10.0.0.9' },
    ]);
    // The tail: every shown record in order, the hostile branch as a plain value, listed fields only.
    expect(s.tail.map((r) => r.kind)).toEqual(['secret-read', 'hint-refused', 'hint-accepted', 'verify-passed', 'secret-read', 'tests-passed', 'image-built', 'leak-check', 'pushed', 'signed', 'hint-accepted', 'verify-refused']);
    expect(s.tail[10]!.fields).toEqual([
      { name: 'project', value: 'demo/other' },
      { name: 'branch', value: HOSTILE },
      { name: 'commit', value: B },
      { name: 'queued', value: 'true' },
    ]);
    expect(s.tail[8]!.fields.map((f) => f.name)).toEqual(['project', 'commit', 'reference', 'digest', 'attempts']);
    expect(s.tail[4]!.fields).toContainEqual({ name: 'purpose', value: 'step unit' }); // the public lane's read
    expect(s.chain).toEqual({ ok: true, head: b.audit.head });
  });

  it('shows nothing of the embargo lane and no secret, though the audit log holds embargo records', async () => {
    const b = await builder();
    for (const [kind, fields] of history(b.lookaside)) await b.audit.append(kind as never, fields);
    b.store.enqueue(`demo/app@${A}`, { version: 1, project: 'demo/app', branch: 'master', commit: A });
    b.store.enqueue(`private/app@${A}`, { version: 1, project: 'private/app', branch: 'master', commit: A });
    const log = readFileSync(b.audit.file, 'utf8');
    expect(log).toContain(EMBARGO_ID); // the file has them…
    const body = (await b.get('/v1/ui/summary', GOOD)).body;
    const s = JSON.parse(body) as BuilderSummary;
    expect(s.tail.map((r) => r.kind)).not.toContain('embargo'); // …the page has none
    for (const hidden of [EMBARGO_ID, PATCH_DIGEST, 'private/', 'embargo', 'lane-open', 'alice', 'airlock/embargo-key', 'unlisted', 'a field the page does not list', PASSWORD, HASH]) {
      expect(body, hidden).not.toContain(hidden);
    }
    // The private lane's secret read of demo/app@A came after A was signed: left out, the public one kept.
    expect(s.tail.filter((r) => r.kind === 'secret-read' && r.fields.some((f) => f.value === 'step unit'))).toHaveLength(1);
    expect(s.promotions.map((p) => p.project)).toEqual(['demo/app']);
    // A new kind must be decided on: the table is total (type-checked), and `embargo` is never shown.
    expect(SHOWN_FIELDS.embargo).toBe('never');
    // The chain's head shown is that of the last shown record: hidden records appended (the
    // private lane ran) do not move it.
    const head = s.chain;
    await b.audit.append('secret-read', { path: 'team/app/npm', store: 'file', purpose: 'step unit', lane: 'private' });
    await b.audit.append('embargo', { event: 'published', embargoes: [EMBARGO_ID], patches: [PATCH_DIGEST] });
    expect(((await b.get('/v1/ui/summary', GOOD)).json() as BuilderSummary).chain).toEqual(head);
    expect(head).toMatchObject({ ok: true });
  });

  it('follows the log as it grows, waits for a line still being written, and stops at a broken link', async () => {
    const b = await builder({ records: [['hint-refused', { reason: 'stale-timestamp', from: '10.0.0.1' }]] });
    expect((await summaryOf(b)).tail).toHaveLength(1);
    await b.audit.append('hint-refused', { reason: 'replayed', from: '10.0.0.2' });
    const grown = await summaryOf(b);
    expect(grown.refusals.map((r) => r.reason)).toEqual(['replayed', 'stale-timestamp']);
    expect(grown.chain).toEqual({ ok: true, head: b.audit.head });
    await b.audit.close();
    // Half a line: not shown yet, and not a break.
    const forged = { seq: 3, at: new Date(T0).toISOString(), kind: 'hint-refused', reason: 'forged', prev: '0'.repeat(64), hash: '1'.repeat(64) };
    const line = `${JSON.stringify(forged)}\n`;
    appendFileSync(b.audit.file, line.slice(0, 20));
    expect((await summaryOf(b)).chain).toMatchObject({ ok: true });
    appendFileSync(b.audit.file, line.slice(20));
    appendFileSync(b.audit.file, line.replace('"seq":3', '"seq":4'));
    const broken = await summaryOf(b);
    expect(broken.chain).toEqual({ ok: false, line: 3, problem: 'hash does not match the record: the record was edited' });
    expect(broken.refusals.map((r) => r.reason)).toEqual(['replayed', 'stale-timestamp']);
    expect(JSON.stringify(broken)).not.toContain('forged');
  });
});

describe('the builder\'s metrics', () => {
  const hint = (commit: string) => ({ version: 1 as const, project: 'demo/app', branch: 'master', commit });
  const sample = (body: string, name: string): number | undefined => {
    const line = body.split('\n').find((l) => l.startsWith(`${name} `));
    return line === undefined ? undefined : Number(line.slice(name.length + 1));
  };

  it('are served at /metrics behind the page\'s login (401 with a challenge without it), and not at all without the login secret', async () => {
    const b = await builder();
    const none = await b.get('/metrics');
    expect(none.statusCode).toBe(401);
    expect(none.headers['www-authenticate']).toMatch(/^Basic /);
    expect(none.body).not.toContain('airlock_builder_');
    expect((await b.get('/metrics', basic(USER, 'wrong'))).statusCode).toBe(401);
    const ok = await b.get('/metrics', GOOD);
    expect(ok.statusCode).toBe(200);
    expect(ok.headers['content-type']).toMatch(/^text\/plain/);
    expect(ok.headers['cache-control']).toBe('no-store');
    expect(ok.body).toMatch(/^airlock_builder_start_time_seconds \d+$/m);
    // No process metrics: the embargo lane runs in this process, and its work would show in them.
    expect(ok.body).not.toMatch(/process_|nodejs_|heap/);
    for (const m of ok.body.matchAll(/^# TYPE (\S+) counter$/gm)) expect(m[1]).toMatch(/_total$/);
    for (const m of ok.body.matchAll(/^([a-z_:]+)[{ ]/gm)) expect(m[1]).toMatch(/^airlock_builder_/);
    const off = await builder({ dashboard: false });
    expect((await off.get('/metrics', GOOD)).statusCode).toBe(404);
  });

  it('count promotions by outcome with their durations, the queue, and when one last published', async () => {
    const b = await builder();
    const scrape = async () => (await b.get('/metrics', GOOD)).body;
    let body = await scrape();
    for (const outcome of ['published', 'refused', 'failed']) expect(sample(body, `airlock_builder_promotions_total{outcome="${outcome}"}`)).toBe(0);
    expect(sample(body, 'airlock_builder_last_publish_timestamp_seconds')).toBe(0);

    b.store.enqueue('demo/app@a', hint(A));
    b.store.enqueue('demo/app@b', hint(B));
    b.store.enqueue('demo/app@c', hint('c'.repeat(40)));
    body = await scrape();
    expect(sample(body, 'airlock_builder_promotions_queued')).toBe(3);

    b.store.set('demo/app@a', 'running');
    b.clock.now = T0 + 42_000;
    b.store.set('demo/app@a', 'published', { state: 'published' });
    b.store.set('demo/app@b', 'running');
    b.clock.now = T0 + 45_000;
    b.store.set('demo/app@b', 'refused', { state: 'refused' });
    b.store.set('demo/app@c', 'running');
    body = await scrape();
    expect(sample(body, 'airlock_builder_promotions_queued')).toBe(0);
    expect(sample(body, 'airlock_builder_promotions_running')).toBe(1);
    expect(sample(body, 'airlock_builder_promotions_total{outcome="published"}')).toBe(1);
    expect(sample(body, 'airlock_builder_promotions_total{outcome="refused"}')).toBe(1);
    expect(sample(body, 'airlock_builder_promotions_total{outcome="failed"}')).toBe(0);
    expect(sample(body, 'airlock_builder_promotion_duration_seconds_sum{outcome="published"}')).toBe(42);
    expect(sample(body, 'airlock_builder_promotion_duration_seconds_bucket{le="30",outcome="published"}')).toBe(0);
    expect(sample(body, 'airlock_builder_promotion_duration_seconds_bucket{le="60",outcome="published"}')).toBe(1);
    expect(sample(body, 'airlock_builder_promotion_duration_seconds_sum{outcome="refused"}')).toBe(3);
    expect(sample(body, 'airlock_builder_last_publish_timestamp_seconds')).toBe((T0 + 42_000) / 1000);
  });
});

describe('the login secret', () => {
  it('a line its checks cannot even process (nested 20,000 deep) breaks the chain there, on every read, and is never skipped', async () => {
    const b = await builder();
    await b.audit.append('hint-refused', { reason: 'bad-signature', from: '10.0.0.1' });
    const prev = (JSON.parse(readFileSync(b.audit.file, 'utf8').trim().split('\n').at(-1)!) as { hash: string }).hash;
    appendFileSync(b.audit.file, `{"seq":2,"at":"2026-01-01T00:00:00.000Z","kind":"hint-refused","prev":"${prev}","hash":"${'0'.repeat(64)}","reason":${'['.repeat(20_000)}${']'.repeat(20_000)}}\n`);
    for (let i = 0; i < 2; i++) {
      const s = ((await b.get('/v1/ui/summary', GOOD)).json()) as BuilderSummary;
      expect(s.chain).toMatchObject({ ok: false, line: 2 });
    }
  });

  it('refuses a password longer than bcrypt reads (72 bytes), though bcrypt alone would take any suffix', async () => {
    const long = 'p'.repeat(72);
    expect(() => dashboardSecret(USER, `${long}x`, 4)).toThrow(/72 bytes/);
    const auth = new BasicAuth(parseDashboardLogin({ username: USER, passwordBcrypt: bcrypt.hashSync(long, 4) }, 'test'));
    const basic = (pw: string) => `Basic ${Buffer.from(`${USER}:${pw}`).toString('base64')}`;
    expect(await auth.check(basic(long))).toBe(true);
    expect(await auth.check(basic(`${long}anything`))).toBe(false);
  });

  it('scripts/dashboard-password makes a value the builder accepts, and a malformed one is refused naming fields, never values', async () => {
    const v = dashboardSecret('airlock-sre', 'a long password', 4);
    expect(Object.keys(v)).toEqual(['username', 'passwordBcrypt']);
    expect(await bcrypt.compare('a long password', v.passwordBcrypt)).toBe(true);
    const auth = new BasicAuth(v);
    expect(await auth.check(basic('airlock-sre', 'a long password'))).toBe(true);
    expect(auth.known(basic('airlock-sre', 'a long password'))).toBe(true);
    expect(await auth.check(basic('airlock-sre', 'a long passwore'))).toBe(false);
    let err: unknown;
    try {
      parseDashboardLogin({ username: 'a:b', password: 'plain-text-pw', passwordBcrypt: 'not-a-hash' }, 'secret airlock/builder-dashboard');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
    const message = (err as Error).message;
    expect(message).toContain('secret airlock/builder-dashboard: username');
    expect(message).toContain('passwordBcrypt');
    expect(message).toContain('unknown field(s) password');
    expect(message).not.toContain('plain-text-pw');
    expect(message).not.toContain('not-a-hash');
    expect(parseBasic(basic('u', 'p:with:colons'))).toEqual({ username: 'u', password: 'p:with:colons' });
    expect(parseBasic('Basic dTpw extra')).toBeUndefined();
  });
});
