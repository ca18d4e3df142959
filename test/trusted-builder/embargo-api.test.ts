/**
 * `POST /v1/embargo` over fastify's inject, with the lane opened as the service opens it: the
 * security team's round trip (submit, list, show, logs, retire) through real OpenPGP; refusals of a
 * non-member, an expired, a replayed (also after a restart), a tampered and an oversized request,
 * each with the same fixed message and an audit record; answers nobody else can read; and the
 * canary in no HTTP body, audit record or log line.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { buildBuilderApi } from '../../trusted-builder/api/app.js';
import { AuditLog, verifyAuditLog } from '../../trusted-builder/audit/audit-log.js';
import { EMBARGO_REFUSED_MESSAGE } from '../../trusted-builder/embargo/lane.js';
import { WARNING_NOTICE } from '../../trusted-builder/notify/webhook.js';
import { makeRequest, openResponse } from '../../trusted-builder/embargo/request.js';
import { EMBARGO_REQUEST_WINDOW_MS, MAX_EMBARGO_REQUEST_BYTES, type EmbargoAsk, type EmbargoResponse } from '../../trusted-builder/embargo/wire.js';
import { CANARY, CANARY_PATCH, canaryHits, makeBuilderKey, makeMember, type TestMember } from '../support/embargo.js';
import { laneApi, type LaneApi } from '../support/embargo-lane.js';

const root = mkdtempSync(join(tmpdir(), 'airlock-embargo-api-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let builderArmored: string;
let builderPub: openpgp.PublicKey;
let alice: TestMember;
let bob: TestMember;
let mallory: TestMember;
beforeAll(async () => {
  const b = await makeBuilderKey();
  builderArmored = b.armored;
  builderPub = b.key.publicKey;
  [alice, bob, mallory] = await Promise.all([makeMember('alice'), makeMember('bob'), makeMember('mallory')]);
});

let n = 0;
const open = (dir = join(root, `case-${++n}`)) => laneApi(dir, { builderArmored, members: [alice, bob], projects: [CANARY.project] });

const post = (api: LaneApi, body: string) => api.app.inject({ method: 'POST', url: '/v1/embargo', payload: body, headers: { 'content-type': 'application/pgp-encrypted' } });

/** Send `ask` as `who`; the decrypted answer (and the raw HTTP body). */
async function send(api: LaneApi, who: TestMember, ask: EmbargoAsk, o: { now?: Date } = {}): Promise<{ status: number; body: string; answer?: EmbargoResponse; armored: string }> {
  const { armored, request } = await makeRequest(ask, { memberKey: who.privateKey, builderKey: builderPub, ...o });
  const r = await post(api, armored);
  const answer = r.statusCode === 200 ? await openResponse(r.body, { memberKey: who.privateKey, builderKey: builderPub, nonce: request.nonce }) : undefined;
  return { status: r.statusCode, body: r.body, armored, ...(answer ? { answer } : {}) };
}

const records = (api: LaneApi) => readFileSync(api.auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);

describe('POST /v1/embargo', () => {
  it('is absent (404, like any unknown route) when the lane is off', async () => {
    const app = await buildBuilderApi({ logger: createLogger({ level: 'silent' }), audit: await AuditLog.open(join(root, 'off.jsonl')), hintSecret: Buffer.from('s'), promoter: { accept: () => ({ queued: false }) }, lookasideDir: root });
    const r = await app.inject({ method: 'POST', url: '/v1/embargo', payload: 'x' });
    expect(r.statusCode).toBe(404);
    expect(r.json()).toMatchObject({ code: 'AIRLOCK_E_NOT_FOUND' });
  });

  it('submit → list → show → logs → retire for members, answered sealed; the canary appears in no body, audit record or log line', async () => {
    // A member's retirement warns the team (opaque, signed) as the builder's own retirements do.
    const hooked: string[] = [];
    const hook = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => (hooked.push(Buffer.concat(chunks).toString('utf8')), res.writeHead(204).end()));
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
    const api = await laneApi(join(root, `case-${++n}`), { builderArmored, members: [alice, bob], projects: [CANARY.project], webhook: `http://127.0.0.1:${(hook.address() as AddressInfo).port}/warn` });
    const submitted = await send(api, alice, { action: 'submit', project: CANARY.project, patch: CANARY_PATCH });
    expect(submitted.status).toBe(200);
    expect(submitted.body).toMatch(/^-----BEGIN PGP MESSAGE-----/);
    const result = submitted.answer?.ok ? submitted.answer.result : undefined;
    if (result?.action !== 'submit') throw new Error(`unexpected answer ${JSON.stringify(submitted.answer)}`);
    const id = result.id;

    // The promoter's side writes a log; then the team reads it all back.
    await api.lane.store.appendLog(id, `tests passed with ${CANARY.file}\n`);
    const list = await send(api, bob, { action: 'list' });
    expect(list.answer).toMatchObject({ ok: true, result: { action: 'list', embargoes: [{ id, project: CANARY.project, state: 'active', submittedBy: 'alice' }] } });
    const show = await send(api, bob, { action: 'show', id });
    expect(show.answer).toMatchObject({ ok: true, result: { action: 'show', embargo: { id, patch: CANARY_PATCH } } });
    const logs = await send(api, alice, { action: 'logs', id });
    expect(logs.answer).toMatchObject({ ok: true, result: { action: 'logs', id, text: `tests passed with ${CANARY.file}\n`, truncated: false } });
    const retired = await send(api, bob, { action: 'retire', id, reason: `public as ${CANARY.message}` });
    expect(retired.answer).toMatchObject({ ok: true, result: { action: 'retire', embargo: { id, state: 'retired', retired: { by: 'bob' } } } });
    expect(await api.lane.store.active(CANARY.project)).toEqual([]);

    for (const r of [submitted, list, show, logs, retired]) expect(canaryHits(r.body)).toEqual([]);
    expect(canaryHits(api.logs.join(''))).toEqual([]);
    await api.close(); // waits for the warning
    hook.close();
    expect(hooked.map((b) => JSON.parse(b) as unknown)).toEqual([{ version: 2, event: 'embargo-changed', notice: WARNING_NOTICE, at: expect.any(String), nonce: expect.any(String) }]);
    expect(records(api).filter((r) => r.event === 'warned')).toEqual([expect.objectContaining({ embargo: id, delivered: true, attempts: 1 })]);
    expect(canaryHits(readFileSync(api.auditFile))).toEqual([]);
    expect(records(api).filter((r) => r.event !== 'warned').map((r) => [r.event, r.action, r.by, r.embargo])).toEqual([
      ['lane-open', undefined, undefined, undefined],
      ['submitted', undefined, 'alice', id],
      ['request', 'submit', 'alice', id],
      ['request', 'list', 'bob', undefined],
      ['request', 'show', 'bob', id],
      ['request', 'logs', 'alice', id],
      ['retired', undefined, 'bob', id],
      ['request', 'retire', 'bob', id],
    ]);
    expect(await verifyAuditLog(api.auditFile)).toMatchObject({ ok: true });
  });

  it('answers what goes wrong after admission inside the sealed answer: an unknown id, a project not in policy, a patch that is not a diff', async () => {
    const api = await open();
    const unknown = await send(api, alice, { action: 'show', id: 'emb-0000000000000000' });
    expect(unknown.status).toBe(200);
    expect(unknown.answer).toMatchObject({ ok: false, error: { code: 'AIRLOCK_E_NOT_FOUND' } });
    const project = await send(api, alice, { action: 'submit', project: 'not/in-policy', patch: CANARY_PATCH });
    expect(project.answer).toMatchObject({ ok: false, error: { code: 'AIRLOCK_E_INVALID_INPUT', message: expect.stringContaining('not a project of the promotion policy') } });
    expect(records(api).filter((r) => r.event === 'request').map((r) => [r.ok, r.code])).toEqual([
      [false, 'AIRLOCK_E_NOT_FOUND'],
      [false, 'AIRLOCK_E_INVALID_INPUT'],
    ]);
    expect(canaryHits(readFileSync(api.auditFile), { project: false })).toEqual([]);
    expect(readFileSync(api.auditFile, 'utf8')).not.toContain('not/in-policy');
    await api.close();
  });

  it('refuses a non-member, an expired, a replayed, a tampered, a garbage and an oversized request with one fixed message, each audited', async () => {
    const api = await open();
    const nonMember = await send(api, mallory, { action: 'submit', project: CANARY.project, patch: CANARY_PATCH });
    const expired = await send(api, alice, { action: 'list' }, { now: new Date(Date.now() - EMBARGO_REQUEST_WINDOW_MS - 30_000) });
    const first = await send(api, alice, { action: 'list' });
    expect(first.status).toBe(200);
    const replayed = await post(api, first.armored);
    const msg = await openpgp.readMessage({ armoredMessage: first.armored });
    const bytes = Uint8Array.from(msg.write() as Uint8Array);
    bytes[bytes.length - 30]! ^= 0x10;
    const tampered = await post(api, openpgp.armor(openpgp.enums.armor.message, bytes));
    const garbage = await post(api, 'not an OpenPGP message');
    const huge = await post(api, 'x'.repeat(MAX_EMBARGO_REQUEST_BYTES + 1));

    expect([nonMember.status, expired.status, replayed.statusCode, tampered.statusCode, garbage.statusCode, huge.statusCode]).toEqual([401, 401, 401, 400, 400, 413]);
    for (const body of [nonMember.body, expired.body, replayed.body, tampered.body, garbage.body]) {
      expect((JSON.parse(body) as { message: string }).message).toMatch(new RegExp(`^(request: \\(root\\): )?${EMBARGO_REFUSED_MESSAGE}$`));
      expect(canaryHits(body)).toEqual([]);
    }
    const refused = records(api).filter((r) => r.event === 'request-refused');
    expect(refused.map((r) => r.reason)).toEqual(['not-a-member', 'expired', 'replayed', 'undecryptable', 'undecryptable']);
    expect(refused[0]).toMatchObject({ keyId: mallory.privateKey.getKeyID().toHex().toUpperCase(), from: expect.any(String) });
    expect(refused[1]).toMatchObject({ by: 'alice' });
    expect(api.lane.store.list()).toEqual([]);
    expect(canaryHits(readFileSync(api.auditFile))).toEqual([]);
    expect(canaryHits(api.logs.join(''))).toEqual([]);
    await api.close();
  });

  it('refuses a request replayed after a restart of the builder (store and nonces reopened)', async () => {
    const dir = join(root, `case-${++n}`);
    const before = await open(dir);
    const sent = await send(before, alice, { action: 'submit', project: CANARY.project, patch: CANARY_PATCH });
    expect(sent.status).toBe(200);
    await before.close();
    const after = await open(dir);
    const again = await post(after, sent.armored);
    expect(again.statusCode).toBe(401);
    expect(after.lane.store.list()).toHaveLength(1);
    expect(records(after).at(-1)).toMatchObject({ event: 'request-refused', reason: 'replayed' });
    await after.close();
  });

  it("answers only the member who asked: neither another member nor an outsider can read it", async () => {
    const api = await open();
    const { armored, request } = await makeRequest({ action: 'submit', project: CANARY.project, patch: CANARY_PATCH }, { memberKey: alice.privateKey, builderKey: builderPub });
    const r = await post(api, armored);
    expect(r.statusCode).toBe(200);
    for (const other of [bob, mallory]) {
      await expect(openResponse(r.body, { memberKey: other.privateKey, builderKey: builderPub, nonce: request.nonce })).rejects.toThrow(/does not decrypt/);
    }
    await expect(openResponse(r.body, { memberKey: alice.privateKey, builderKey: builderPub, nonce: request.nonce })).resolves.toMatchObject({ ok: true });
    await api.close();
  });
});
