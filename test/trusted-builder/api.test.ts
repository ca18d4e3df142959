/**
 * The builder's HTTP surface with fastify's inject: hint authentication (HMAC over timestamp and
 * body, 5-minute window, replays), validation, the audit trail of every decision, and the
 * lookaside files.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { signHint } from '#shared/hints/hint-auth.js';
import { createLogger } from '#shared/logging.js';
import type { PromotionHint } from '#shared/schemas/promotion-hint.js';
import { buildBuilderApi } from '../../trusted-builder/api/app.js';
import { AuditLog, verifyAuditLog } from '../../trusted-builder/audit/audit-log.js';

const dir = mkdtempSync(join(tmpdir(), 'airlock-builder-api-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const SECRET = Buffer.from('a hint secret of decent length');
const NOW = 1_800_000_000_000;

let n = 0;
async function api(clock: () => number = () => NOW) {
  const auditFile = join(dir, `audit-${++n}.jsonl`);
  const audit = await AuditLog.open(auditFile);
  const accepted: PromotionHint[] = [];
  const lookaside = join(dir, `lookaside-${n}`);
  mkdirSync(join(lookaside, 'team/app@sha256=abc'), { recursive: true });
  writeFileSync(join(lookaside, 'team/app@sha256=abc/signature-1'), 'SIG');
  writeFileSync(join(dir, 'outside.txt'), 'secret-ish');
  const logs: Record<string, unknown>[] = [];
  const app = await buildBuilderApi({
    logger: createLogger({ level: 'info', destination: { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) } }),
    audit,
    hintSecret: SECRET,
    promoter: { accept: (h) => (accepted.push(h), { queued: true }) },
    lookasideDir: lookaside,
    now: clock,
  });
  const records = () => readFileSync(auditFile, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { app, accepted, auditFile, records, logs };
}

const HINT = { version: 1, project: 'demo/app', branch: 'master', commit: 'a'.repeat(40), ciRun: '17' };
function post(app: Awaited<ReturnType<typeof api>>['app'], body: string | Buffer, o: { ts?: number; secret?: Buffer; headers?: Record<string, string> } = {}) {
  const raw = Buffer.from(body);
  const headers = { ...signHint(o.secret ?? SECRET, raw, o.ts ?? NOW / 1000), 'content-type': 'application/json', ...o.headers };
  return app.inject({ method: 'POST', url: '/v1/hints', payload: raw, headers });
}

describe('POST /v1/hints', () => {
  it('accepts a signed hint (202), hands it on, and audits it', async () => {
    const a = await api();
    const r = await post(a.app, JSON.stringify(HINT));
    expect(r.statusCode, r.body).toBe(202);
    expect(r.json()).toEqual({ accepted: true, queued: true });
    expect(a.accepted).toEqual([HINT]);
    expect(a.records()).toMatchObject([{ kind: 'hint-accepted', project: 'demo/app', commit: HINT.commit, ciRun: '17' }]);
    expect(await verifyAuditLog(a.auditFile)).toMatchObject({ ok: true, records: 1 });
  });

  it('refuses a bad signature, a wrong secret, a stale timestamp, missing headers and a replay with 401, each audited', async () => {
    const a = await api();
    const body = JSON.stringify(HINT);
    const tampered = await a.app.inject({ method: 'POST', url: '/v1/hints', payload: body.replace('master', 'main'), headers: { ...signHint(SECRET, Buffer.from(body), NOW / 1000), 'content-type': 'application/json' } });
    const wrong = await post(a.app, body, { secret: Buffer.from('another secret of decent length') });
    const stale = await post(a.app, body, { ts: NOW / 1000 - 301 });
    const future = await post(a.app, body, { ts: NOW / 1000 + 301 });
    const bare = await a.app.inject({ method: 'POST', url: '/v1/hints', payload: body, headers: { 'content-type': 'application/json' } });
    expect(await post(a.app, body).then((r) => r.statusCode)).toBe(202);
    const replayed = await post(a.app, body);
    for (const r of [tampered, wrong, stale, future, bare, replayed]) {
      expect(r.statusCode, r.body).toBe(401);
      expect(r.json()).toMatchObject({ code: 'AIRLOCK_E_UNAUTHORIZED' });
      expect(r.body).not.toContain(SECRET.toString());
    }
    expect(a.accepted).toHaveLength(1);
    expect(a.records().map((x) => [x.kind, x.reason])).toEqual([
      ['hint-refused', 'bad-signature'],
      ['hint-refused', 'bad-signature'],
      ['hint-refused', 'stale-timestamp'],
      ['hint-refused', 'stale-timestamp'],
      ['hint-refused', 'missing-header'],
      ['hint-accepted', undefined],
      ['hint-refused', 'replayed'],
    ]);
    expect(await verifyAuditLog(a.auditFile)).toMatchObject({ ok: true, records: 7 });
    // The service log carries each refusal too, at warn, with its reason.
    expect(a.logs.filter((l) => l.msg === 'promotion hint refused').map((l) => [l.level, l.reason])).toEqual([
      [40, 'bad-signature'],
      [40, 'bad-signature'],
      [40, 'stale-timestamp'],
      [40, 'stale-timestamp'],
      [40, 'missing-header'],
      [40, 'replayed'],
    ]);
  });

  it('answers 400 to a signed body that is not a valid hint, naming the field; 413 to a huge one', async () => {
    const a = await api();
    const notJson = await post(a.app, '{"version": 1,');
    expect(notJson.statusCode).toBe(400);
    const badCommit = await post(a.app, JSON.stringify({ ...HINT, commit: 'HEAD', url: 'https://evil.invalid/repo.git' }));
    expect(badCommit.statusCode).toBe(400);
    expect(badCommit.json().message).toMatch(/commit/);
    const huge = await post(a.app, JSON.stringify({ ...HINT, ciRun: 'x'.repeat(10_000) }));
    expect(huge.statusCode).toBe(413);
    expect(a.accepted).toEqual([]);
    expect(a.records().map((x) => x.kind)).toEqual(['hint-refused', 'hint-refused']);
  });
});

describe('POST /v1/hints under a flood', () => {
  it('records 60 refusals a minute one by one, counts the rest into the next record, and answers 429 past 300 hints a minute', async () => {
    let t = NOW;
    const a = await api(() => t);
    for (let i = 0; i < 75; i++) expect((await post(a.app, JSON.stringify(HINT), { secret: Buffer.from('wrong') })).statusCode).toBe(401);
    expect(a.records()).toHaveLength(60);
    t += 60_000;
    expect((await post(a.app, JSON.stringify(HINT), { secret: Buffer.from('wrong') })).statusCode).toBe(401);
    expect(a.records().at(-1)).toMatchObject({ kind: 'hint-refused', suppressedBefore: 15 });
    let status = 0;
    for (let i = 0; i < 300 && status !== 429; i++) status = (await post(a.app, 'x', { secret: Buffer.from('wrong') })).statusCode;
    expect(status).toBe(429);
  });
});

describe('GET /lookaside', () => {
  it('serves signature files and nothing outside the tree', async () => {
    const { app } = await api();
    const ok = await app.inject({ method: 'GET', url: '/lookaside/team/app@sha256=abc/signature-1' });
    expect(ok.statusCode).toBe(200);
    expect(ok.body).toBe('SIG');
    expect((await app.inject({ method: 'GET', url: '/lookaside/team/app@sha256=abc/signature-2' })).statusCode).toBe(404);
    for (const url of ['/lookaside/../outside.txt', '/lookaside/%2e%2e/outside.txt', '/lookaside/team/..%2f..%2foutside.txt', '/lookaside/team']) {
      const r = await app.inject({ method: 'GET', url });
      expect(r.statusCode, url).toBe(404);
      expect(r.body).not.toContain('secret-ish');
    }
    expect((await app.inject({ method: 'GET', url: '/healthz' })).json()).toEqual({ ok: true });
  });
});

describe('POST /v1/promotions/status', () => {
  it('answers who holds the hint key where a promotion stands (the same request twice too); 401 unsigned, 404 unknown, 400 malformed', async () => {
    const audit = await AuditLog.open(join(dir, `audit-status.jsonl`));
    const known = { project: 'demo/app', commit: HINT.commit };
    const app = await buildBuilderApi({
      logger: createLogger({ level: 'silent' }),
      audit,
      hintSecret: SECRET,
      promoter: {
        accept: () => ({ queued: true }),
        status: (project, commit) => (project === known.project && commit === known.commit ? { state: 'failed', result: { step: 'push', reason: 'registry down' } } : undefined),
      },
      lookasideDir: join(dir, 'lookaside-status'),
      now: () => NOW,
    });
    const ask = (body: string, secret = SECRET) => {
      const raw = Buffer.from(body);
      return app.inject({ method: 'POST', url: '/v1/promotions/status', payload: raw, headers: { ...signHint(secret, raw, NOW / 1000), 'content-type': 'application/json' } });
    };
    for (let i = 0; i < 2; i++) {
      const r = await ask(JSON.stringify(known));
      expect(r.statusCode, r.body).toBe(200);
      expect(r.json()).toEqual({ state: 'failed', result: { step: 'push', reason: 'registry down' } });
    }
    expect((await ask(JSON.stringify(known), Buffer.from('another key'))).statusCode).toBe(401);
    expect((await app.inject({ method: 'POST', url: '/v1/promotions/status', payload: JSON.stringify(known), headers: { 'content-type': 'application/json' } })).statusCode).toBe(401);
    const unknown = await ask(JSON.stringify({ ...known, project: 'demo/other' }));
    expect([unknown.statusCode, (unknown.json() as { message: string }).message]).toEqual([404, `no promotion of demo/other@${HINT.commit}`]);
    expect((await ask(JSON.stringify({ ...known, extra: 1 }))).statusCode).toBe(400);
    expect((await ask('not json')).statusCode).toBe(400);
    await app.close();
    await audit.close();
  });
});
