/**
 * Every script an operator runs answers `--help` (exit 0, on stdout) and refuses an unknown option
 * with exit 2 and its usage; `make-signing-key` writes the SecretStore's value itself, so that the
 * file SecretStore (and `vault kv put … @FILE`) takes it as it is and the builder's loaders accept it.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, describe, expect, it } from 'vitest';
import { loadEmbargoKey } from '../../trusted-builder/embargo/embargo-key.js';
import { FileSecretStore } from '../../trusted-builder/secrets/secret-store.js';
import { loadSigningKey } from '../../trusted-builder/sign/signer.js';

const tmp = mkdtempSync(join(tmpdir(), 'airlock-scripts-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function tsx(script: string, args: readonly string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', `scripts/${script}`, ...args], { encoding: 'utf8', input: '', env: { ...process.env, ...env } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function sh(script: string, args: readonly string[]) {
  const r = spawnSync('bash', [`scripts/${script}`, ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('--help', () => {
  it.each([
    ['make-signing-key.ts', 'SecretStore'],
    ['dashboard-password.ts', 'builder.dashboard'],
    ['registry-htpasswd.ts', 'CREDENTIALS_JSON'],
  ])('%s --help says how to use it', (script, says) => {
    const r = tsx(script, ['--help']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^usage: /);
    expect(r.stdout).toContain(says);
  });

  it.each([
    ['bootstrap.sh', 'make this machine ready'],
    ['base-images.sh', 'Build airlock\'s base images'],
  ])('%s --help prints its header and touches nothing', (script, says) => {
    const r = sh(script, ['--help']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(says);
    expect(r.stdout).not.toContain('set -euo');
  });

  it.each(['make-signing-key.ts', 'dashboard-password.ts'])('%s refuses an unknown option, naming it', (script) => {
    const r = tsx(script, ['--frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--frobnicate');
    expect(r.stderr).toContain('usage: ');
  });

  it.each(['bootstrap.sh', 'base-images.sh'])('%s refuses an argument it does not take', (script) => {
    const r = sh(script, ['--frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('unknown argument --frobnicate');
  });

  it('make-signing-key without --out says what is missing', () => {
    const r = tsx('make-signing-key.ts', []);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--out DIR is required');
  });
});

describe('make-signing-key writes what the SecretStore reads', () => {
  it.each([
    ['signing', [] as string[], 'AIRLOCK_SIGNING_KEY_PASSPHRASE', 'signing-key'],
    ['embargo', ['--embargo'], 'AIRLOCK_EMBARGO_KEY_PASSPHRASE', 'embargo-key'],
  ])('the %s key, protected by its passphrase', async (_kind, flags, env, file) => {
    const out = join(tmp, file);
    const r = tsx('make-signing-key.ts', [...flags, '--out', out], { [env]: 'correct horse' });
    expect(r.code, r.stderr).toBe(0);
    const fingerprint = r.stdout.trim();
    expect(fingerprint).toMatch(/^[0-9A-F]{40}$/);
    expect(statSync(join(out, `${file}.json`)).mode & 0o777).toBe(0o600);
    expect(statSync(join(out, `${file}.asc`)).mode & 0o777).toBe(0o600);

    // As the docs say: the JSON goes to <store>/airlock/<file>.json, unchanged.
    const store = join(tmp, `store-${file}`);
    mkdirSync(join(store, 'airlock'), { recursive: true, mode: 0o700 });
    copyFileSync(join(out, `${file}.json`), join(store, 'airlock', `${file}.json`));
    const secret = await new FileSecretStore(store).read(`airlock/${file}`);
    expect(secret.passphrase).toBe('correct horse');
    expect(secret.armored).toBe(readFileSync(join(out, `${file}.asc`), 'utf8'));
    if (file === 'embargo-key') {
      const key = await loadEmbargoKey(secret.armored!, secret.passphrase);
      expect(key.fingerprint.toUpperCase()).toBe(fingerprint);
    } else {
      const key = await loadSigningKey(secret.armored!, secret.passphrase);
      expect(key.fingerprint.toUpperCase()).toBe(fingerprint);
    }

    // Never overwrites: a second run into the same directory fails and leaves the files as they were.
    const before = readFileSync(join(out, `${file}.json`), 'utf8');
    const again = tsx('make-signing-key.ts', [...flags, '--out', out], { [env]: 'other' });
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('EEXIST');
    expect(readFileSync(join(out, `${file}.json`), 'utf8')).toBe(before);
  });
});

describe('registry-htpasswd writes one htpasswd for the logins of a registry', () => {
  const users = (file: string): string[] => readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => l.slice(0, l.indexOf(':')));
  const creds = (file: string): { username: string; password: string } => JSON.parse(readFileSync(file, 'utf8')) as { username: string; password: string };
  const holds = (htpasswd: string, c: { username: string; password: string }): boolean => {
    const line = readFileSync(htpasswd, 'utf8').split('\n').find((l) => l.startsWith(`${c.username}:`));
    return line !== undefined && bcrypt.compareSync(c.password, line.slice(c.username.length + 1));
  };

  it('one login, as before: creates the credentials, then changes nothing', () => {
    const dir = join(tmp, 'one');
    mkdirSync(dir);
    const first = tsx('registry-htpasswd.ts', [join(dir, 'credentials.json'), join(dir, 'htpasswd'), 'airlock-builder']);
    expect(first.stdout, first.stderr).toBe('changed\n');
    expect(holds(join(dir, 'htpasswd'), creds(join(dir, 'credentials.json')))).toBe(true);
    expect(tsx('registry-htpasswd.ts', [join(dir, 'credentials.json'), join(dir, 'htpasswd'), 'airlock-builder']).stdout).toBe('unchanged\n');
  });

  it('--users: every login in one htpasswd, each credentials file 0600; only exactly those users', () => {
    const dir = join(tmp, 'several');
    mkdirSync(dir);
    const [htpasswd, builder, team, consumer] = ['htpasswd', 'builder.json', 'team.json', 'consumer.json'].map((f) => join(dir, f)) as [string, string, string, string];
    const r = tsx('registry-htpasswd.ts', ['--users', htpasswd, `airlock-builder=${builder}`, `security-team=${team}`]);
    expect(r.stdout, r.stderr).toBe('changed\n');
    expect(users(htpasswd)).toEqual(['airlock-builder', 'security-team']);
    for (const f of [builder, team, htpasswd]) expect(statSync(f).mode & 0o777).toBe(0o600);
    expect(holds(htpasswd, creds(builder))).toBe(true);
    expect(holds(htpasswd, creds(team))).toBe(true);
    expect(creds(builder).password).not.toBe(creds(team).password);
    const passwords = [creds(builder).password, creds(team).password];
    // Again: nothing to do, no password rewritten.
    expect(tsx('registry-htpasswd.ts', ['--users', htpasswd, `airlock-builder=${builder}`, `security-team=${team}`]).stdout).toBe('unchanged\n');
    // A user the list does not name (a consumer's login added by hand) is taken out again.
    tsx('registry-htpasswd.ts', ['--users', htpasswd, `airlock-builder=${builder}`, `security-team=${team}`, `consumer=${consumer}`]);
    expect(users(htpasswd)).toEqual(['airlock-builder', 'security-team', 'consumer']);
    expect(tsx('registry-htpasswd.ts', ['--users', htpasswd, `airlock-builder=${builder}`, `security-team=${team}`]).stdout).toBe('changed\n');
    expect(users(htpasswd)).toEqual(['airlock-builder', 'security-team']);
    expect([creds(builder).password, creds(team).password]).toEqual(passwords);
  });

  it('--users refuses a malformed login and two files of one user, naming them', () => {
    const dir = join(tmp, 'bad');
    mkdirSync(dir);
    const bad = tsx('registry-htpasswd.ts', ['--users', join(dir, 'htpasswd'), 'airlock-builder']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('"airlock-builder" is not USERNAME=CREDENTIALS_JSON');
    tsx('registry-htpasswd.ts', ['--users', join(dir, 'htpasswd'), `same=${join(dir, 'a.json')}`]);
    const twice = tsx('registry-htpasswd.ts', ['--users', join(dir, 'htpasswd'), `same=${join(dir, 'a.json')}`, `same=${join(dir, 'b.json')}`]);
    expect(twice.code).toBe(1);
    expect(twice.stderr).toContain(`${join(dir, 'b.json')} and ${join(dir, 'a.json')} both hold user "same"`);
  });
});
