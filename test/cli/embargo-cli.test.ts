/**
 * `airlock embargo …` as the security team runs it: the real command in its own process, against a
 * builder API listening on 127.0.0.1 with the lane on. One member's key is made by the real gpg 2.2
 * (passphrase-protected, exported armored, passphrase from AIRLOCK_KEY_PASSPHRASE), and gpg — not
 * airlock — then decrypts an embargoed file at rest with it. A non-member's key exits 2 with the
 * builder's fixed refusal; nothing of the canary reaches the builder's audit log or log lines.
 */
import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CANARY, CANARY_PATCH, canaryHits, makeBuilderKey, makeMember, type TestMember } from '../support/embargo.js';
import { laneApi, type LaneApi } from '../support/embargo-lane.js';
import { generateSigningKey } from '../../scripts/make-signing-key.js';
import { provenanceStatement } from '../../trusted-builder/sign/provenance.js';
import { loadSigningKey } from '../../trusted-builder/sign/signer.js';
import { signImage, simpleSigningPayload } from '../../trusted-builder/sign/simple-signing.js';

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'airlock-embargo-cli-'));
const gnupg = join(dir, 'gnupg');
const GPG_PASSPHRASE = 'correct horse battery staple';

let api: LaneApi;
let url: string;
let alice: TestMember;
let mallory: TestMember;
let builderFingerprint: string;

const gpg = (args: string[], input?: string): string =>
  execFileSync('gpg', ['--homedir', gnupg, '--batch', '--pinentry-mode', 'loopback', '--passphrase', GPG_PASSPHRASE, ...args], { encoding: 'utf8', ...(input !== undefined ? { input } : {}), stdio: ['pipe', 'pipe', 'pipe'] });

beforeAll(async () => {
  execFileSync('mkdir', ['-m', '0700', gnupg]);
  // gpg's own modern default: ed25519 signing primary + cv25519 encryption subkey.
  gpg(['--quick-generate-key', 'Gina Gpg <gina@security.invalid>', 'future-default', 'default', 'never']);
  writeFileSync(join(dir, 'gina.key.asc'), gpg(['--armor', '--export-secret-keys', 'gina@security.invalid']), { mode: 0o600 });
  const gina = { name: 'gina', publicArmored: gpg(['--armor', '--export', 'gina@security.invalid']) } as TestMember;
  const builder = await makeBuilderKey();
  builderFingerprint = builder.key.fingerprint;
  [alice, mallory] = await Promise.all([makeMember('alice', 'alice-pass'), makeMember('mallory')]);
  writeFileSync(join(dir, 'alice.key.asc'), alice.privateArmored, { mode: 0o600 });
  writeFileSync(join(dir, 'mallory.key.asc'), mallory.privateArmored, { mode: 0o600 });
  writeFileSync(join(dir, 'builder.pub.asc'), builder.key.publicArmored);
  writeFileSync(join(dir, 'fix.patch'), CANARY_PATCH);
  api = await laneApi(join(dir, 'builder'), { builderArmored: builder.armored, members: [alice, gina], projects: [CANARY.project] });
  url = await api.app.listen({ host: '127.0.0.1', port: 0 });
}, 60_000);

afterAll(async () => {
  await api?.close();
  try {
    execFileSync('gpgconf', ['--homedir', gnupg, '--kill', 'gpg-agent']);
  } catch {
    // no agent started
  }
  rmSync(dir, { recursive: true, force: true });
});

/** The real CLI in its own process (async: this process serves the builder meanwhile). */
async function airlock(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [join(process.cwd(), 'bin/airlock.js'), 'embargo', ...args], {
      env: { ...process.env, AIRLOCK_BUILDER_URL: url, AIRLOCK_BUILDER_KEY: join(dir, 'builder.pub.asc'), AIRLOCK_KEY_PASSPHRASE: '', ...env },
      encoding: 'utf8',
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

describe('airlock embargo', () => {
  it('submit, list, show, logs and retire with a gpg-made, passphrase-protected key; gpg reads the files at rest', async () => {
    const gina = { AIRLOCK_KEY_PASSPHRASE: GPG_PASSPHRASE };
    const key = ['--key', join(dir, 'gina.key.asc')];
    const submitted = await airlock(['submit', '--project', CANARY.project, '--patch', join(dir, 'fix.patch'), ...key], gina);
    expect(submitted, submitted.stderr).toMatchObject({ code: 0 });
    const id = /embargoed as (emb-[0-9a-f]{16}) \(sha256:[0-9a-f]{64}\)/.exec(submitted.stdout)?.[1];
    expect(id, submitted.stdout).toBeDefined();

    const list = await airlock(['list', ...key], gina);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`^ID +STATE +PROJECT +SUBMITTED +BY +LAST\\n${id} +active +${CANARY.project} .* gina +not built yet\\n$`));

    await api.lane.store.appendLog(id!, `unit: ok \u001b[31m${CANARY.content}\n`);
    const show = await airlock(['show', id!, ...key], gina);
    expect(show.code).toBe(0);
    expect(show.stdout).toContain(`embargo ${id}: active`);
    expect(show.stdout).toContain(CANARY_PATCH);
    const logs = await airlock(['logs', id!, ...key, '--json'], gina);
    expect(JSON.parse(logs.stdout)).toMatchObject({ action: 'logs', id, truncated: false });
    const plain = await airlock(['logs', id!, ...key], gina);
    expect(plain.stdout).toBe(`unit: ok \ufffd[31m${CANARY.content}\n`);

    // gpg, with the member's own key, decrypts what the builder stored (and sees the builder signed it).
    gpg(['--import', join(dir, 'builder.pub.asc')]);
    const files = readdirSync(join(dir, 'builder', 'embargo', 'files')).map((f) => join(dir, 'builder', 'embargo', 'files', f));
    // Status lines on stdout with the plaintext: each file is signed by the builder's embargo key.
    const texts = files.map((f) => gpg(['--status-fd', '1', '--decrypt', f]));
    for (const t of texts) expect(t).toMatch(new RegExp(`^\\[GNUPG:\\] VALIDSIG [0-9A-F]{40} .* ${builderFingerprint}$`, 'm'));
    expect(texts.some((t) => t.includes(CANARY_PATCH))).toBe(true);

    const retired = await airlock(['retire', id!, '--reason', 'disclosed', ...key], gina);
    expect(retired.stdout).toMatch(new RegExp(`^${id} retired by gina at .*: disclosed\\n$`));
    expect((await airlock(['list', ...key], gina)).stdout).toMatch(/retired/);
  });

  it('takes an openpgp.js key with its passphrase from AIRLOCK_KEY_PASSPHRASE, and says so when it is missing', async () => {
    const ok = await airlock(['list', '--key', join(dir, 'alice.key.asc'), '--json'], { AIRLOCK_KEY_PASSPHRASE: 'alice-pass' });
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ action: 'list' });
    const missing = await airlock(['list', '--key', join(dir, 'alice.key.asc')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/passphrase-protected and no passphrase was given/);
  });

  it('a non-member is refused (exit 2, the fixed message), a missing builder key or an unknown id say so', async () => {
    const refused = await airlock(['submit', '--project', CANARY.project, '--patch', join(dir, 'fix.patch'), '--key', join(dir, 'mallory.key.asc')]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/AIRLOCK_E_UNAUTHORIZED: embargo request refused/);
    const noBuilderKey = await airlock(['list', '--key', join(dir, 'alice.key.asc')], { AIRLOCK_BUILDER_KEY: '', AIRLOCK_KEY_PASSPHRASE: 'alice-pass' });
    expect(noBuilderKey.code).toBe(2);
    expect(noBuilderKey.stderr).toMatch(/builder-key: missing/);
    const unknown = await airlock(['show', 'emb-0000000000000000', '--key', join(dir, 'alice.key.asc')], { AIRLOCK_KEY_PASSPHRASE: 'alice-pass' });
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/AIRLOCK_E_NOT_FOUND: no embargo "emb-0000000000000000"/);
    const badPatch = join(dir, 'not.patch');
    writeFileSync(badPatch, 'just words');
    chmodSync(badPatch, 0o600);
    const notDiff = await airlock(['submit', '--project', CANARY.project, '--patch', badPatch, '--key', join(dir, 'alice.key.asc')], { AIRLOCK_KEY_PASSPHRASE: 'alice-pass' });
    expect(notDiff.code).toBe(2);
    expect(notDiff.stderr).toMatch(/not a unified diff/);
  });

  it('verify: checks the last patched image’s signature and provenance with the signing key, full digests; refuses a mismatch or another key', async () => {
    const alicePass = { AIRLOCK_KEY_PASSPHRASE: 'alice-pass' };
    const key = ['--key', join(dir, 'alice.key.asc')];
    const submitted = await airlock(['submit', '--project', CANARY.project, '--patch', join(dir, 'fix.patch'), ...key, '--json'], alicePass);
    const { id, digest: patch } = JSON.parse(submitted.stdout) as { id: string; digest: string };
    // What the private lane leaves (embargo-lane.ts): real signatures by a real signing key.
    const signing = await loadSigningKey((await generateSigningKey({ name: 'airlock builder', email: 'b@airlock.invalid' })).privateArmored);
    const other = await loadSigningKey((await generateSigningKey({ name: 'someone else', email: 'x@airlock.invalid' })).privateArmored);
    writeFileSync(join(dir, 'signing.pub.asc'), signing.publicArmored);
    writeFileSync(join(dir, 'other.pub.asc'), other.publicArmored);
    const none = await airlock(['verify', id, ...key, '--signing-key', join(dir, 'signing.pub.asc')], alicePass);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/has no patched image yet/);

    const commit = '1'.repeat(40);
    const digest = `sha256:${'2'.repeat(64)}`;
    const reference = `127.0.0.1:5001/private/team/app:${commit}`;
    const build = async (by: typeof signing, o: { digest?: string; patches?: string[] } = {}): Promise<void> => {
      const now = new Date();
      const statement = provenanceStatement({ subject: { name: '127.0.0.1:5001/private/team/app', digest: o.digest ?? digest }, builderId: 'https://airlock.invalid/builder', source: { repo: 'https://example.invalid/app.git', commit }, policyDigest: `sha256:${'3'.repeat(64)}`, baseImages: [], steps: [], startedOn: now, finishedOn: now, invocationId: 'i', patches: (o.patches ?? [patch]).map((d) => ({ digest: d })) });
      const files: [string, Uint8Array][] = [
        ['image.signature', await signImage(by, simpleSigningPayload({ dockerReference: reference, manifestDigest: digest, creator: 'airlock trusted-builder', timestamp: now }))],
        ['provenance.json', statement],
        ['provenance.json.asc', Buffer.from(await by.signDetached(statement))],
      ];
      for (const [name, bytes] of files) await api.lane.store.putArtifact(id, name, bytes);
      await api.lane.store.recordBuild(id, { commit, reference, digest });
    };
    await build(signing);
    const ok = await airlock(['verify', id, ...key, '--signing-key', join(dir, 'signing.pub.asc')], alicePass);
    expect(ok, ok.stderr).toMatchObject({ code: 0 });
    expect(ok.stdout).toContain(`embargo ${id}: the patched image verifies\nimage:      ${reference}@${digest}\ncommit:     ${commit}\nsigned by:  ${signing.fingerprint.toUpperCase()}`);
    expect(ok.stdout).toContain(`patches:    ${patch}`);
    const json = await airlock(['verify', id, ...key, '--signing-key', join(dir, 'signing.pub.asc'), '--json', '--lookaside', join(dir, 'team-lookaside')], alicePass);
    const signatureFile = join(dir, 'team-lookaside', `private/team/app@sha256=${'2'.repeat(64)}`, 'signature-1');
    expect(JSON.parse(json.stdout)).toMatchObject({ id, digest, reference, commit, subject: `127.0.0.1:5001/private/team/app@${digest}`, lookaside: signatureFile });
    expect(readFileSync(signatureFile)).toEqual(Buffer.from(await api.lane.store.artifact(id, 'image.signature')));
    // `show` lists the image and the three artifacts, digests in full.
    const show = await airlock(['show', id, ...key], alicePass);
    expect(show.stdout).toContain(`image:      ${reference}@${digest}`);
    expect(show.stdout.match(/^artifact: +(image\.signature|provenance\.json|provenance\.json\.asc) \(\d+ bytes, sha256:[0-9a-f]{64}, /gm)).toHaveLength(3);

    const refused = async (why: RegExp, signingKey = 'signing.pub.asc'): Promise<void> => {
      const r = await airlock(['verify', id, ...key, '--signing-key', join(dir, signingKey)], alicePass);
      expect(r.code, r.stdout).toBe(2);
      expect(r.stderr).toMatch(/AIRLOCK_E_SIGNATURE_INVALID/);
      expect(r.stderr).toMatch(why);
    };
    await refused(/the image signature does not verify with the signing key/, 'other.pub.asc');
    await build(other);
    await refused(/the image signature does not verify with the signing key/);
    await build(signing, { digest: `sha256:${'4'.repeat(64)}` });
    await refused(/the provenance's subject digest is sha256:4{64}, not the image's sha256:2{64}/);
    await build(signing, { patches: [`sha256:${'5'.repeat(64)}`] });
    await refused(/does not list this embargo's patch/);
    const priv = await airlock(['verify', id, ...key, '--signing-key', join(dir, 'alice.key.asc')], alicePass);
    expect(priv.stderr).toMatch(/is a private key: pass the builder's public signing key/);
  });

  it('replace and rebuild: the rebase under the same id, a build queued; refused for a retired embargo or the same patch', async () => {
    const alicePass = { AIRLOCK_KEY_PASSPHRASE: 'alice-pass' };
    const key = ['--key', join(dir, 'alice.key.asc')];
    const patch = CANARY_PATCH.replace('return 0;', 'return 1;');
    writeFileSync(join(dir, 'v1.patch'), patch);
    writeFileSync(join(dir, 'v2.patch'), patch.replace('return 1;', 'return 2;'));
    const { id, digest } = JSON.parse((await airlock(['submit', '--project', CANARY.project, '--patch', join(dir, 'v1.patch'), ...key, '--json'], alicePass)).stdout) as { id: string; digest: string };
    api.built.length = 0;
    const replaced = await airlock(['replace', id, '--patch', join(dir, 'v2.patch'), ...key], alicePass);
    expect(replaced, replaced.stderr).toMatchObject({ code: 0 });
    expect(replaced.stdout).toMatch(new RegExp(`^${id} now carries sha256:[0-9a-f]{64} \\(was ${digest}\\): a private build is queued\n$`));
    const same = await airlock(['replace', id, '--patch', join(dir, 'v2.patch'), ...key], alicePass);
    expect(same.code).toBe(2);
    expect(same.stderr).toMatch(/AIRLOCK_E_CONFLICT: .*nothing to replace/);
    const rebuilt = await airlock(['rebuild', id, ...key], alicePass);
    expect(rebuilt.stdout).toBe(`${id}: a private build of its project's latest published commit is queued (airlock embargo list shows how it went)\n`);
    expect((await airlock(['show', id, ...key], alicePass)).stdout).toMatch(new RegExp(`^replaced: +\\S+ by alice: was ${digest}$`, 'm'));
    // A member's retirement queues a build too (the others of the project may apply again).
    await airlock(['retire', id, ...key], alicePass);
    expect(api.built).toEqual([CANARY.project, CANARY.project, CANARY.project]);
    const late = await airlock(['rebuild', id, ...key], alicePass);
    expect(late.code).toBe(2);
    expect(late.stderr).toMatch(/is retired: nothing of it is built any more/);
    const retiredReplace = await airlock(['replace', id, '--patch', join(dir, 'v1.patch'), ...key], alicePass);
    expect(retiredReplace.stderr).toMatch(/is retired: submit the new patch with airlock embargo submit/);
  });

  it('leaves nothing of the canary in the builder’s audit log or log lines', () => {
    expect(canaryHits(readFileSync(api.auditFile))).toEqual([]);
    expect(canaryHits(api.logs.join(''))).toEqual([]);
  });
});
