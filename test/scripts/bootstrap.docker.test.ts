/**
 * The bootstrap refuses clearly, and changes nothing, where it cannot finish: not root, no apt-get.
 * Host tier: both cases run as root (the first drops to nobody itself; the second must get past
 * the root check to reach the apt-get one).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const script = new URL('../../scripts/bootstrap.sh', import.meta.url).pathname;

describe('bootstrap preconditions', () => {
  it('exits non-zero with a plain message when not run as root', () => {
    // The script goes in on stdin: the checkout may sit in a directory nobody else can read.
    const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'bash', '-s'], { encoding: 'utf8', input: readFileSync(script, 'utf8'), cwd: '/' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('bootstrap: error: must run as root');
  });

  it('exits non-zero with a plain message when apt-get is missing', () => {
    const r = spawnSync('/bin/bash', [script], { encoding: 'utf8', env: { PATH: '/nonexistent' } });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('bootstrap: error: apt-get not found');
  });
});
