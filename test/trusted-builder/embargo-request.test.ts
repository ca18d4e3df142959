/**
 * The embargo request protocol (trusted-builder/embargo/request.ts) with real OpenPGP: a member's
 * signed, encrypted request is admitted once; a non-member's, an unsigned, an expired, a replayed
 * (also after a restart), a tampered, a misaddressed or a malformed one is refused with its reason;
 * an answer is readable by the member who asked and nobody else, and only as the answer to that
 * request.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EmbargoKey } from '../../trusted-builder/embargo/embargo-key.js';
import { NonceStore } from '../../trusted-builder/embargo/nonce-store.js';
import { makeRequest, openRequest, openResponse, sealResponse } from '../../trusted-builder/embargo/request.js';
import { loadSecurityTeam, type SecurityTeam } from '../../trusted-builder/embargo/team.js';
import { EMBARGO_REQUEST_WINDOW_MS, type EmbargoResponse } from '../../trusted-builder/embargo/wire.js';
import { CANARY, CANARY_PATCH, makeBuilderKey, makeMember, writeTeam, type TestMember } from '../support/embargo.js';

const dir = mkdtempSync(join(tmpdir(), 'airlock-embargo-request-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let builder: EmbargoKey;
let alice: TestMember;
let bob: TestMember;
let mallory: TestMember;
let team: SecurityTeam;
let n = 0;
const nonceFile = () => join(dir, `nonces-${++n}.sqlite`);

beforeAll(async () => {
  [builder, alice, bob, mallory] = await Promise.all([makeBuilderKey().then((b) => b.key), makeMember('alice'), makeMember('bob'), makeMember('mallory')]);
  team = await loadSecurityTeam(writeTeam(join(dir, 'team'), [alice, bob]));
});

const ask = { action: 'submit', project: CANARY.project, patch: CANARY_PATCH } as const;
const open = (armored: string, nonces: NonceStore, now = Date.now()) => openRequest(armored, { key: builder, team, nonces, now });
const request = (from: TestMember, o: { now?: Date; nonce?: string } = {}) => makeRequest(ask, { memberKey: from.privateKey, builderKey: builder.publicKey, ...o });

/** The same message with one bit flipped inside the encrypted data. */
async function tamper(armored: string): Promise<string> {
  const bytes = (await openpgp.readMessage({ armoredMessage: armored })).write() as Uint8Array;
  const copy = Uint8Array.from(bytes);
  copy[copy.length - 40]! ^= 0x01;
  return openpgp.armor(openpgp.enums.armor.message, copy);
}

describe('embargo requests', () => {
  it('admits a member’s request once, with its content and the member', async () => {
    const nonces = new NonceStore(nonceFile());
    const { armored, request: sent } = await request(alice);
    expect(armored).toMatch(/^-----BEGIN PGP MESSAGE-----/);
    for (const s of Object.values(CANARY)) expect(armored).not.toContain(s);
    const r = await open(armored, nonces);
    expect(r).toMatchObject({ ok: true, member: { name: 'alice', fingerprint: alice.fingerprint }, request: { action: 'submit', project: CANARY.project, patch: CANARY_PATCH, nonce: sent.nonce } });
    expect(await open(armored, nonces)).toMatchObject({ ok: false, reason: 'replayed', status: 401 });
    nonces.close();
  });

  it('refuses a replay after a restart (the nonce table is durable), and prunes nonces past the window', async () => {
    const file = nonceFile();
    const first = new NonceStore(file);
    const { armored } = await request(bob);
    expect((await open(armored, first)).ok).toBe(true);
    first.close();
    const again = new NonceStore(file);
    expect(await open(armored, again)).toMatchObject({ ok: false, reason: 'replayed', member: { name: 'bob' } });
    // Past the window it is refused as expired, and its nonce is gone.
    const later = Date.now() + 2 * EMBARGO_REQUEST_WINDOW_MS + 1000;
    expect(await open(armored, again, later)).toMatchObject({ ok: false, reason: 'expired' });
    expect(again.admit('x', 'y-nonce-000000000000', later + 1, later)).toBe(true);
    expect(again.size).toBe(1);
    again.close();
  });

  it('refuses a request signed by a non-member, naming its key id', async () => {
    const { armored } = await request(mallory);
    const r = await open(armored, new NonceStore(nonceFile()));
    expect(r).toMatchObject({ ok: false, reason: 'not-a-member', status: 401, keyId: mallory.privateKey.getKeyID().toHex().toUpperCase() });
  });

  it('refuses an unsigned request', async () => {
    const message = await openpgp.createMessage({ text: JSON.stringify({ version: 1, action: 'list', issuedAt: new Date().toISOString(), nonce: 'n'.repeat(20) }) });
    const armored = await openpgp.encrypt({ message, encryptionKeys: builder.publicKey });
    expect(await open(armored, new NonceStore(nonceFile()))).toMatchObject({ ok: false, reason: 'unsigned', status: 401 });
  });

  it('refuses an expired request and one from too far in the future', async () => {
    const nonces = new NonceStore(nonceFile());
    const old = await request(alice, { now: new Date(Date.now() - EMBARGO_REQUEST_WINDOW_MS - 60_000) });
    expect(await open(old.armored, nonces)).toMatchObject({ ok: false, reason: 'expired', status: 401, member: { name: 'alice' } });
    const ahead = await request(alice, { now: new Date(Date.now() + EMBARGO_REQUEST_WINDOW_MS + 60_000) });
    expect(await open(ahead.armored, nonces)).toMatchObject({ ok: false, reason: 'expired' });
    // A clock a little ahead is fine.
    const skewed = await request(alice, { now: new Date(Date.now() + 60_000) });
    expect((await open(skewed.armored, nonces)).ok).toBe(true);
    expect(nonces.size).toBe(1);
  });

  it('refuses a decompression bomb without inflating it (anyone with the embargo public key can send one)', async () => {
    const nonces = new NonceStore(nonceFile());
    // 64 MiB of zeros compress to a few dozen KiB: what openpgp inflates unbounded by default.
    const bomb = await openpgp.createMessage({ binary: new Uint8Array(64 * 1024 * 1024) });
    const armored = await openpgp.encrypt({ message: bomb, encryptionKeys: builder.publicKey, signingKeys: mallory.privateKey, format: 'armored', config: { preferredCompressionAlgorithm: openpgp.enums.compression.zlib } });
    expect(armored.length).toBeLessThan(2 * 1024 * 1024); // within the endpoint's body limit
    if (global.gc) global.gc();
    const before = process.memoryUsage().arrayBuffers + process.memoryUsage().heapUsed;
    let peak = before;
    const watch = setInterval(() => (peak = Math.max(peak, process.memoryUsage().arrayBuffers + process.memoryUsage().heapUsed)), 1);
    const r = await open(armored, nonces);
    clearInterval(watch);
    expect(r).toMatchObject({ ok: false, reason: 'undecryptable', status: 400 });
    expect(r.ok === false && r.detail).toContain('larger than allowed once decompressed');
    // Inflating the whole bomb would take 64 MiB (and more, in copies); bounded, a few MiB at most.
    expect(peak - before).toBeLessThan(32 * 1024 * 1024);
    nonces.close();
  });

  it('refuses a tampered message, one encrypted to another key, and garbage, as undecryptable (400)', async () => {
    const nonces = new NonceStore(nonceFile());
    const { armored } = await request(alice);
    expect(await open(await tamper(armored), nonces)).toMatchObject({ ok: false, reason: 'undecryptable', status: 400 });
    const elsewhere = await makeRequest(ask, { memberKey: alice.privateKey, builderKey: mallory.privateKey.toPublic() });
    expect(await open(elsewhere.armored, nonces)).toMatchObject({ ok: false, reason: 'undecryptable' });
    expect(await open('hello', nonces)).toMatchObject({ ok: false, reason: 'undecryptable' });
    expect(nonces.size).toBe(0);
  });

  it('refuses a member’s signed message that is not a request (400), and a request with a second signature', async () => {
    const nonces = new NonceStore(nonceFile());
    const junk = await openpgp.encrypt({ message: await openpgp.createMessage({ text: '{"version":1,"action":"drop-tables"}' }), encryptionKeys: builder.publicKey, signingKeys: alice.privateKey });
    expect(await open(junk, nonces)).toMatchObject({ ok: false, reason: 'malformed', status: 400 });
    const body = JSON.stringify({ version: 1, action: 'list', issuedAt: new Date().toISOString(), nonce: 'n'.repeat(20) });
    const two = await openpgp.encrypt({ message: await openpgp.createMessage({ text: body }), encryptionKeys: builder.publicKey, signingKeys: [alice.privateKey, bob.privateKey] });
    expect(await open(two, nonces)).toMatchObject({ ok: false, reason: 'bad-signature', status: 401 });
  });

  it('seals an answer for the member who asked: not readable by another member or an outsider, bound to the request nonce', async () => {
    const { request: sent } = await request(alice);
    const response: EmbargoResponse = { version: 1, inReplyTo: sent.nonce, ok: true, result: { action: 'submit', id: 'emb-0123456789abcdef', digest: `sha256:${'a'.repeat(64)}`, existing: false } };
    const sealed = await sealResponse(response, builder, team.members.find((m) => m.name === 'alice')!);
    for (const s of Object.values(CANARY)) expect(sealed).not.toContain(s);
    expect(await openResponse(sealed, { memberKey: alice.privateKey, builderKey: builder.publicKey, nonce: sent.nonce })).toEqual(response);
    for (const other of [bob, mallory]) {
      await expect(openResponse(sealed, { memberKey: other.privateKey, builderKey: builder.publicKey, nonce: sent.nonce })).rejects.toThrow(/does not decrypt with this key/);
    }
    await expect(openResponse(sealed, { memberKey: alice.privateKey, builderKey: builder.publicKey, nonce: 'another-nonce-0000000' })).rejects.toThrow(/for another request/);
    // An answer that is not signed by the builder key is not trusted.
    const forged = await openpgp.encrypt({ message: await openpgp.createMessage({ text: JSON.stringify(response) }), encryptionKeys: alice.privateKey.toPublic(), signingKeys: mallory.privateKey });
    await expect(openResponse(forged, { memberKey: alice.privateKey, builderKey: builder.publicKey, nonce: sent.nonce })).rejects.toThrow(/not signed by the builder key/);
  });

  it('refuses to make a request the builder would refuse (a patch that is not a diff)', async () => {
    await expect(makeRequest({ action: 'submit', project: 'a/b', patch: 'just text' }, { memberKey: alice.privateKey, builderKey: builder.publicKey })).rejects.toThrow(/not a unified diff/);
  });
});
