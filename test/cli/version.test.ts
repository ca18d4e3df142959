/**
 * `airlock --version` through the real entry point (bin/airlock.js in a child process): the
 * package's own version, as package.json says at the time it runs.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const bin = new URL('../../bin/airlock.js', import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

describe('airlock --version', () => {
  it('prints `airlock <version>` from package.json and exits 0; -V is the same', () => {
    expect(pkg.version).toMatch(/^\d+\.\d+\.\d+/);
    for (const flag of ['--version', '-V']) {
      const r = spawnSync(process.execPath, [bin, flag], { encoding: 'utf8', cwd: '/' });
      expect(r.stderr).toBe('');
      expect(r.stdout).toBe(`airlock ${pkg.version}\n`);
      expect(r.status).toBe(0);
    }
  });
});
