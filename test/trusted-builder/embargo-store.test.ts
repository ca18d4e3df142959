/**
 * The embargo store (trusted-builder/embargo/store.ts) on a real directory with real OpenPGP: the
 * promoter's API round trip, persistence across a restart, at-rest files and the audit log free of
 * the canary, files readable by each team member's own key, re-encryption when the team changes,
 * and refusal of files that were altered, swapped or planted.
 */
import { readdirSync, readFileSync, renameSync, rmSync, writeFileSync, mkdtempSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditLog, verifyAuditLog } from '../../trusted-builder/audit/audit-log.js';
import type { EmbargoKey } from '../../trusted-builder/embargo/embargo-key.js';
import { EmbargoStore, patchDigest } from '../../trusted-builder/embargo/store.js';
import { loadSecurityTeam } from '../../trusted-builder/embargo/team.js';
import { CANARY, CANARY_PATCH, canaryHits, filesUnder, makeBuilderKey, makeMember, writeTeam, type TestMember } from '../support/embargo.js';

const root = mkdtempSync(join(tmpdir(), 'airlock-embargo-store-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let builder: EmbargoKey;
let alice: TestMember;
let bob: TestMember;
let carol: TestMember;
beforeAll(async () => {
  [builder, alice, bob, carol] = await Promise.all([makeBuilderKey().then((b) => b.key), makeMember('alice'), makeMember('bob'), makeMember('carol')]);
});

let n = 0;
async function fixture(members: TestMember[] = [alice, bob]) {
  const dir = join(root, `case-${++n}`);
  const auditFile = join(dir, 'audit.jsonl');
  const audit = await AuditLog.open(auditFile);
  const openStore = async (team = members) => EmbargoStore.open({ dir: join(dir, 'embargo'), key: builder, team: await loadSecurityTeam(writeTeam(join(dir, `team-${team.map((m) => m.name).join('-')}`), team)), audit });
  return { dir, audit, auditFile, openStore, store: await openStore() };
}

const COMMIT = 'c'.repeat(40);
const OTHER_PATCH = 'diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n';
const sealedFiles = (dir: string) => readdirSync(join(dir, 'embargo', 'files')).filter((f) => f.endsWith('.pgp'));

describe('embargo store', () => {
  it('submit → active → get/list/status → break → build → logs → artifacts → retire, and it all survives a restart', async () => {
    const f = await fixture();
    const s = f.store;
    const sub = await s.submit(CANARY.project, CANARY_PATCH, 'alice');
    expect(sub).toEqual({ id: expect.stringMatching(/^emb-[0-9a-f]{16}$/), digest: patchDigest(CANARY_PATCH), existing: false });
    expect(await s.submit(CANARY.project, CANARY_PATCH, 'bob')).toEqual({ ...sub, existing: true });
    const other = await s.submit('other/project', OTHER_PATCH, 'bob');

    expect(await s.active(CANARY.project)).toEqual([{ id: sub.id, project: CANARY.project, patch: CANARY_PATCH, digest: sub.digest, submittedBy: 'alice', submittedAt: expect.any(String) }]);
    expect(s.list().map((e) => e.id)).toEqual([sub.id, other.id]);
    expect(s.list({ project: 'other/project' }).map((e) => e.id)).toEqual([other.id]);
    expect(s.status(sub.id)).toEqual({ id: sub.id, project: CANARY.project, state: 'active', broken: false });

    await s.recordBreak(sub.id, { commit: COMMIT, reason: 'does not apply' });
    expect(s.status(sub.id)).toMatchObject({ broken: true, lastBreak: { commit: COMMIT, reason: 'does not apply' } });
    await new Promise((r) => setTimeout(r, 5));
    await s.recordBuild(sub.id, { commit: 'd'.repeat(40), reference: '127.0.0.1:5000/private/team/app:dddd', digest: `sha256:${'e'.repeat(64)}` });
    expect(s.status(sub.id)).toMatchObject({ broken: false, lastBuild: { commit: 'd'.repeat(40) } });

    await s.appendLog(sub.id, `job unit: ${CANARY.content} passed\n`);
    await s.appendLog(sub.id, 'second chunk\n');
    expect(await s.logs(sub.id)).toBe(`job unit: ${CANARY.content} passed\nsecond chunk\n`);
    const art = await s.putArtifact(sub.id, 'report.txt', Buffer.from(`report ${CANARY.content}`));
    await s.putArtifact(sub.id, 'report.txt', Buffer.from('report v2'));
    expect(Buffer.from(await s.artifact(sub.id, 'report.txt')).toString()).toBe('report v2');
    expect(art).toMatchObject({ name: 'report.txt', size: `report ${CANARY.content}`.length });

    const detail = await s.get(sub.id);
    expect(detail).toMatchObject({ id: sub.id, project: CANARY.project, patch: CANARY_PATCH, breaks: [{ commit: COMMIT }], artifacts: [{ name: 'report.txt', size: 9 }], logBytes: expect.any(Number) });

    const retired = await s.retire(sub.id, `fixed upstream in ${CANARY.message}`, 'bob');
    expect(retired).toMatchObject({ id: sub.id, state: 'retired', retired: { by: 'bob', reason: `fixed upstream in ${CANARY.message}` } });
    expect(await s.retire(sub.id, 'again', 'alice')).toEqual(retired);
    expect(await s.active(CANARY.project)).toEqual([]);
    expect((await s.retire(other.id, 'the public history has it')).retired?.by).toBe('airlock (automatic)');

    await s.close();
    const again = await f.openStore();
    expect(await again.get(sub.id)).toEqual(await s.get(sub.id));
    expect(await again.logs(sub.id)).toContain(CANARY.content);
    await expect(again.get('emb-0000000000000000')).rejects.toMatchObject({ code: 'AIRLOCK_E_NOT_FOUND' });
    await expect(again.submit('a/b', 'not a diff', 'alice')).rejects.toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
  });

  it('replaces an active patch in place (same id, old digest kept, old file gone); refuses a retired one, the same patch, a twin', async () => {
    const f = await fixture();
    const s = f.store;
    const sub = await s.submit(CANARY.project, CANARY_PATCH, 'alice');
    const twin = await s.submit(CANARY.project, OTHER_PATCH, 'alice');
    const rebased = CANARY_PATCH.replace('return 0;', 'return 0; ');
    await s.recordBreak(sub.id, { commit: COMMIT, step: 'apply', reason: 'apply: does not apply' });
    const filesBefore = sealedFiles(f.dir).length;
    expect(await s.replacePatch(sub.id, rebased, 'bob')).toEqual({ digest: patchDigest(rebased), previous: sub.digest });
    expect(sealedFiles(f.dir)).toHaveLength(filesBefore); // one new patch file, the old one removed
    expect(await s.get(sub.id)).toMatchObject({ id: sub.id, state: 'active', digest: patchDigest(rebased), patch: rebased, submittedBy: 'alice', replaced: [{ by: 'bob', digest: sub.digest }], breaks: [{ step: 'apply' }] });
    expect((await s.active(CANARY.project)).map((x) => x.digest)).toEqual([patchDigest(rebased), twin.digest]);
    await expect(s.replacePatch(sub.id, rebased, 'bob')).rejects.toThrow(/already embargo emb-[0-9a-f]{16}'s .*nothing to replace/);
    await expect(s.replacePatch(sub.id, OTHER_PATCH, 'bob')).rejects.toThrow(new RegExp(`already embargoed as ${twin.id}`));
    await s.retire(sub.id, 'public', 'bob');
    await expect(s.replacePatch(sub.id, CANARY_PATCH, 'bob')).rejects.toMatchObject({ code: 'AIRLOCK_E_CONFLICT', message: expect.stringMatching(/is retired: submit the new patch/) });
    const audit = readFileSync(f.auditFile, 'utf8');
    expect(audit).toContain(`"event":"replaced","embargo":"${sub.id}","digest":"${patchDigest(rebased)}","previous":"${sub.digest}","by":"bob"`);
    await s.close();
    expect(await (await f.openStore()).get(sub.id)).toMatchObject({ patch: rebased });
  });

  it('keeps nothing in clear: no canary string in any at-rest file name or byte, nor in the audit log (which names only ids and digests)', async () => {
    const f = await fixture();
    const { id, digest } = await f.store.submit(CANARY.project, CANARY_PATCH, 'alice');
    await f.store.appendLog(id, `applying ${CANARY.file}: ${CANARY.message}\n`);
    await f.store.putArtifact(id, `${CANARY.file}.log`, Buffer.from(CANARY.content));
    await f.store.recordBreak(id, { commit: COMMIT, reason: `${CANARY.file} does not apply` });
    await f.store.retire(id, CANARY.message, 'alice');
    await f.store.close();
    for (const file of filesUnder(f.dir).filter((x) => !x.rel.startsWith('team-'))) {
      expect(canaryHits(file.rel), file.rel).toEqual([]);
      expect(canaryHits(file.data), file.rel).toEqual([]);
    }
    expect(sealedFiles(f.dir).every((x) => /^([0-9a-f]{32}|index)\.pgp$/.test(x))).toBe(true);
    const audit = readFileSync(f.auditFile, 'utf8');
    expect(audit).not.toContain(COMMIT);
    const records = audit.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records.map((r) => r.event)).toEqual(['submitted', 'break', 'retired']);
    expect(records[0]).toMatchObject({ kind: 'embargo', embargo: id, digest, by: 'alice' });
    expect(await verifyAuditLog(f.auditFile)).toMatchObject({ ok: true });
  });

  it('seals every file to each team member: a member decrypts it with their own key, an outsider cannot', async () => {
    const f = await fixture();
    await f.store.submit(CANARY.project, CANARY_PATCH, 'alice');
    const files = sealedFiles(f.dir);
    expect(files.length).toBe(2); // the index and the patch
    for (const name of files) {
      const message = () => openpgp.readMessage({ binaryMessage: readFileSync(join(f.dir, 'embargo', 'files', name)) });
      for (const m of [alice, bob]) {
        const { data } = await openpgp.decrypt({ message: await message(), decryptionKeys: m.privateKey, verificationKeys: builder.publicKey, expectSigned: true, format: 'binary' });
        expect(Buffer.from(data).toString('utf8')).toMatch(/^airlock-embargo-file v1 /);
      }
      await expect(openpgp.decrypt({ message: await message(), decryptionKeys: carol.privateKey })).rejects.toThrow();
    }
  });

  it('re-encrypts everything when the team changes: a removed member reads nothing, a new one everything', async () => {
    const f = await fixture([alice, bob]);
    const { id } = await f.store.submit(CANARY.project, CANARY_PATCH, 'alice');
    await f.store.appendLog(id, 'a log line\n');
    await f.store.close();
    const store = await f.openStore([alice, carol]);
    expect((await store.get(id)).patch).toBe(CANARY_PATCH);
    for (const name of sealedFiles(f.dir)) {
      const message = () => openpgp.readMessage({ binaryMessage: readFileSync(join(f.dir, 'embargo', 'files', name)) });
      await expect(openpgp.decrypt({ message: await message(), decryptionKeys: bob.privateKey })).rejects.toThrow();
      await expect(openpgp.decrypt({ message: await message(), decryptionKeys: carol.privateKey })).resolves.toBeDefined();
    }
    const rekeyed = readFileSync(f.auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).at(-1);
    expect(rekeyed).toMatchObject({ event: 'rekeyed', files: 3 });
  });

  it('refuses files that were swapped, altered, or planted with only the public key; sweeps stray files', async () => {
    const f = await fixture();
    const { id } = await f.store.submit(CANARY.project, CANARY_PATCH, 'alice');
    await f.store.appendLog(id, 'log\n');
    await f.store.close();
    const dir = join(f.dir, 'embargo', 'files');
    const data = sealedFiles(f.dir).filter((x) => x !== 'index.pgp');
    // Swap the patch and the log chunk.
    renameSync(join(dir, data[0]!), join(dir, 'tmp.swap'));
    renameSync(join(dir, data[1]!), join(dir, data[0]!));
    renameSync(join(dir, 'tmp.swap'), join(dir, data[1]!));
    const swapped = await f.openStore();
    await expect(swapped.get(id)).rejects.toThrow(/another file's content/);
    // A patch planted by someone who can write the directory and knows the public key.
    for (const name of data) {
      const plant = await openpgp.encrypt({ message: await openpgp.createMessage({ binary: Buffer.from(`airlock-embargo-file v1 ${name.slice(0, -4)}\n${OTHER_PATCH}`) }), encryptionKeys: builder.publicKey, format: 'binary' });
      writeFileSync(join(dir, name), plant);
    }
    await expect(swapped.get(id)).rejects.toThrow(/is not signed by it/);
    await expect(swapped.logs(id)).rejects.toThrow(/is not signed by it/);
    const planted = readFileSync(join(dir, data[0]!));
    // Stray files are removed at open; a broken index refuses the open.
    copyFileSync(join(dir, 'index.pgp'), join(dir, `${'f'.repeat(32)}.pgp`));
    writeFileSync(join(dir, 'index.pgp.tmp-abc'), 'half');
    await f.openStore();
    expect(readdirSync(dir)).not.toContain(`${'f'.repeat(32)}.pgp`);
    expect(readdirSync(dir)).not.toContain('index.pgp.tmp-abc');
    writeFileSync(join(dir, 'index.pgp'), planted);
    await expect(f.openStore()).rejects.toMatchObject({ code: 'AIRLOCK_E_STORAGE_FAILED' });
    rmSync(join(dir, 'index.pgp'));
    await expect(f.openStore()).rejects.toThrow(/sealed files but no index/);
  });
});
