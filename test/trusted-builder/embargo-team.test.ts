/**
 * The security team directory (trusted-builder/embargo/team.ts) with real OpenPGP keys: members
 * load by file name; a private key, a duplicate, a key that cannot encrypt, a v6 key and stray
 * files are refused naming the file; an expired or revoked key leaves only that member out.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PolicyInvalidError } from '#shared/errors.js';
import { generateSigningKey } from '../../scripts/make-signing-key.js';
import { loadEmbargoKey } from '../../trusted-builder/embargo/embargo-key.js';
import { loadSecurityTeam } from '../../trusted-builder/embargo/team.js';
import { makeMember, writeTeam, type TestMember } from '../support/embargo.js';

const root = mkdtempSync(join(tmpdir(), 'airlock-team-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(root, `team-${++n}`);

let alice: TestMember;
let bob: TestMember;
beforeAll(async () => {
  [alice, bob] = await Promise.all([makeMember('alice'), makeMember('bob')]);
});

async function refusal(dir: string): Promise<PolicyInvalidError> {
  try {
    await loadSecurityTeam(dir);
  } catch (e) {
    expect(e).toBeInstanceOf(PolicyInvalidError);
    return e as PolicyInvalidError;
  }
  throw new Error('the team loaded');
}

describe('security team directory', () => {
  it('loads one member per <name>.asc, ignoring README.md, and finds members by any key id', async () => {
    const dir = writeTeam(fresh(), [alice, bob]);
    writeFileSync(join(dir, 'README.md'), '# team\n');
    const team = await loadSecurityTeam(dir);
    expect(team.members.map((m) => [m.name, m.fingerprint])).toEqual([
      ['alice', alice.fingerprint],
      ['bob', bob.fingerprint],
    ]);
    expect(team.excluded).toEqual([]);
    const sub = alice.privateKey.subkeys[0]!.getKeyID();
    expect(team.memberFor(sub)?.name).toBe('alice');
    expect(team.memberFor(bob.privateKey.getKeyID())?.name).toBe('bob');
    expect(team.fingerprints).toEqual([alice.fingerprint, bob.fingerprint].sort());
  });

  it('the shipped policies/security-team loads (no members, only its README)', async () => {
    const team = await loadSecurityTeam('policies/security-team');
    expect(team.members).toEqual([]);
  });

  it('refuses a private key put there by mistake, naming the file', async () => {
    const dir = writeTeam(fresh(), [bob]);
    writeFileSync(join(dir, 'alice.asc'), alice.privateArmored);
    const e = await refusal(dir);
    expect(e.issues).toHaveLength(1);
    expect(e.issues[0]!.file).toBe(join(dir, 'alice.asc'));
    expect(e.message).toMatch(/PRIVATE key/);
    expect(e.message).not.toContain(alice.privateArmored.split('\n')[3]!);
  });

  it('refuses the same key under two names, a key that cannot encrypt, a v6 key, garbage, two keys in a file and stray files', async () => {
    const dir = writeTeam(fresh(), [alice]);
    writeFileSync(join(dir, 'alice-again.asc'), alice.publicArmored);
    writeFileSync(join(dir, 'signer.asc'), (await generateSigningKey({ name: 's', email: 's@x.invalid' })).publicArmored);
    const v6 = await openpgp.generateKey({ type: 'curve25519', userIDs: [{ name: 'six' }], format: 'armored', config: { v6Keys: true } });
    writeFileSync(join(dir, 'six.asc'), v6.publicKey);
    writeFileSync(join(dir, 'junk.asc'), 'not a key');
    writeFileSync(join(dir, 'pair.asc'), `${alice.publicArmored}\n${bob.publicArmored}`);
    const both = new Uint8Array([...(await makeMember('c1')).privateKey.toPublic().write(), ...(await makeMember('c2')).privateKey.toPublic().write()]);
    writeFileSync(join(dir, 'both.asc'), openpgp.armor(openpgp.enums.armor.publicKey, both));
    writeFileSync(join(dir, 'bob.gpg'), bob.publicArmored);
    writeFileSync(join(dir, '-bad name.asc'), bob.publicArmored);
    const e = await refusal(dir);
    const byFile = (f: string) => e.issues.filter((i) => i.file === join(dir, f)).map((i) => i.message).join(' | ');
    expect(byFile('alice.asc')).toBe(`the key (fingerprint ${alice.fingerprint}) shares a key id with ${join(dir, 'alice-again.asc')} (fingerprint ${alice.fingerprint}): one key, one member`);
    expect(byFile('signer.asc')).toMatch(/no encryption subkey/);
    expect(byFile('six.asc')).toMatch(/v6 key/);
    expect(byFile('junk.asc')).toMatch(/not an armored OpenPGP public key/);
    expect(byFile('pair.asc')).toMatch(/holds 2 armored blocks/);
    expect(byFile('both.asc')).toMatch(/holds 2 keys/);
    expect(byFile('bob.gpg')).toMatch(/not a member key/);
    expect(byFile('-bad name.asc')).toMatch(/not a member name/);
  });

  it('leaves out an expired and a revoked member (a warning naming the file), keeps the others', async () => {
    const dir = writeTeam(fresh(), [alice]);
    const old = await openpgp.generateKey({ type: 'ecc', userIDs: [{ name: 'old' }], keyExpirationTime: 60, date: new Date(Date.now() - 3_600_000), format: 'object' });
    writeFileSync(join(dir, 'old.asc'), old.publicKey.armor());
    const gone = await openpgp.generateKey({ type: 'ecc', userIDs: [{ name: 'gone' }], date: new Date(Date.now() - 3_600_000), format: 'object' });
    const revoked = await openpgp.revokeKey({ key: gone.privateKey, format: 'object' });
    writeFileSync(join(dir, 'gone.asc'), revoked.publicKey.armor());
    const team = await loadSecurityTeam(dir);
    expect(team.members.map((m) => m.name)).toEqual(['alice']);
    expect(team.excluded.map((w) => [w.file, w.severity])).toEqual([
      [join(dir, 'gone.asc'), 'warning'],
      [join(dir, 'old.asc'), 'warning'],
    ]);
    expect(team.excluded[0]!.message).toMatch(/revoked/);
    expect(team.excluded[1]!.message).toMatch(/expired/);
  });

  it('refuses a missing directory', async () => {
    const e = await refusal(join(root, 'nope'));
    expect(e.message).toMatch(/cannot read the security team directory/);
  });
});

describe('embargo key', () => {
  it('loads an encryption-capable key (passphrase-protected too) and refuses the image-signing kind of key', async () => {
    const m = await makeMember('k', 'pw');
    await expect(loadEmbargoKey(m.privateArmored, 'pw', { source: 'secret airlock/embargo-key' })).resolves.toMatchObject({ fingerprint: m.fingerprint });
    await expect(loadEmbargoKey(m.privateArmored, undefined, { source: 'secret airlock/embargo-key' })).rejects.toThrow(/passphrase-protected/);
    await expect(loadEmbargoKey(m.privateArmored, 'wrong', { source: 'secret airlock/embargo-key' })).rejects.toThrow(/does not decrypt/);
    const signing = await generateSigningKey({ name: 's', email: 's@x.invalid' });
    await expect(loadEmbargoKey(signing.privateArmored, undefined, { source: 'secret airlock/embargo-key' })).rejects.toThrow(/secret airlock\/embargo-key: encryption: no valid encryption subkey/);
    await expect(loadEmbargoKey(m.publicArmored, undefined, { source: 's' })).rejects.toThrow(/not an armored OpenPGP private key/);
    mkdirSync(fresh());
  });
});
