/**
 * Every script an operator runs answers `--help` (exit 0, on stdout) and refuses an unknown option
 * with exit 2 and its usage; `make-signing-key` writes the SecretStore's value itself, so that the
 * file SecretStore (and `vault kv put … @FILE`) takes it as it is and the builder's loaders accept it.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
