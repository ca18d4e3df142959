/**
 * `airlock job run` end to end: the real command, the real engine, its exit codes and --json.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { JobResult } from '#shared/runner/result.js';
import { BUSYBOX, tempDir } from '../support/docker.js';

const airlock = (args: string[], cwd = process.cwd()) =>
  spawnSync(process.execPath, [join(process.cwd(), 'bin/airlock.js'), ...args], { cwd, encoding: 'utf8', env: { ...process.env, AIRLOCK_LOG_LEVEL: 'error' } });

describe('airlock job run', () => {
  it('--json prints one result object that parses against the schema; exit 0 when the job passes', () => {
    const src = tempDir();
    writeFileSync(join(src, 'hello.txt'), 'from the workspace\n');
    const out = join(tempDir(), 'art');
    const r = airlock(['job', 'run', '--json', '--image', BUSYBOX, '--memory', '128m', '--timeout', '20s', '--workspace', src, '--artifacts', 'made/*', '--artifacts-dir', out, '--', 'sh', '-c', 'cat hello.txt; mkdir made; echo x > made/x.txt']);
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const result = JobResult.parse(JSON.parse(lines[0]!));
    expect(result.passed).toBe(true);
    expect(result.log).toBe('from the workspace\n');
    expect(result.limits.memory).toBe(128 * 1024 * 1024);
    expect(readFileSync(join(out, 'made/x.txt'), 'utf8')).toBe('x\n');
  });

  it('streams the log, says why the job failed on stderr, and exits 1', () => {
    const r = airlock(['job', 'run', '--image', BUSYBOX, '--timeout', '20s', '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('out\n');
    expect(r.stderr).toContain('err\n');
    expect(r.stderr).toMatch(/job cli-[0-9a-f]+: exited with code 7 \(runc/);
  });

  it('exits 2 naming the field when a flag asks for more than policy allows, and runs nothing', () => {
    const r = airlock(['job', 'run', '--json', '--image', BUSYBOX, '--memory', '64g', '--', 'true']);
    expect(r.status).toBe(2);
    expect(JSON.parse(r.stdout)).toMatchObject({ error: { code: 'AIRLOCK_E_POLICY_VIOLATION' } });
    expect(r.stderr).toContain('limits.memory: asks for 64 GiB, policy allows at most 1 GiB');
  });

  it('exits 2 on malformed input: a bad size, an image that is not there, runsc for an image that failed the self-test', () => {
    const bad = airlock(['job', 'run', '--image', BUSYBOX, '--memory', 'lots', '--', 'true']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/AIRLOCK_E_INVALID_INPUT: command line: limits\.memory: not a size/);
    const missing = airlock(['job', 'run', '--image', 'airlock/nope:1', '--', 'true']);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain('AIRLOCK_E_IMAGE_NOT_FOUND');
    const nodir = airlock(['job', 'run', '--image', BUSYBOX, '--workspace', '/nonexistent/airlock-src', '--', 'true']);
    expect(nodir.status).toBe(2);
    expect(nodir.stderr).toContain('AIRLOCK_E_INVALID_INPUT: job cli-');
    expect(nodir.stderr).toContain('source.dir: "/nonexistent/airlock-src" is not a readable directory');
    const runsc = airlock(['job', 'run', '--image', 'airlock/base:bookworm', '--runtime', 'runsc', '--', 'true']);
    expect(runsc.status).toBe(2);
    expect(runsc.stderr).toContain('AIRLOCK_E_RUNTIME_UNAVAILABLE');
  });

  it('sanitises terminal escapes in the streamed log', () => {
    const r = airlock(['job', 'run', '--image', BUSYBOX, '--timeout', '20s', '--', 'printf', '\\033]0;owned\\007ok\\n']);
    expect(r.status).toBe(0);
    expect(r.stdout).not.toContain('\u001b');
    expect(r.stdout).toContain('ok');
  });
});
