/**
 * The bootstrap refuses clearly, and changes nothing, where it cannot finish: not root, no apt-get.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

const script = new URL('../../scripts/bootstrap.sh', import.meta.url).pathname;

describe('bootstrap preconditions', () => {
  it('exits non-zero with a plain message when not run as root', () => {
    const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'bash', script], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('bootstrap: error: must run as root');
  });

  it('exits non-zero with a plain message when apt-get is missing', () => {
    const r = spawnSync('/bin/bash', [script], { encoding: 'utf8', env: { PATH: '/nonexistent' } });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('bootstrap: error: apt-get not found');
  });
});
