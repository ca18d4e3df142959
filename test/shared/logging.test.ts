/**
 * The one logger: each JSON line names its host and process, keeps the correlation ids of its
 * child, and censors credentials wherever the redaction paths find them.
 */
import { hostname } from 'node:os';
import { describe, expect, it } from 'vitest';
import { createLogger, withIds } from '#shared/logging.js';

function capture(): { lines: Record<string, unknown>[]; destination: { write(s: string): void } } {
  const lines: Record<string, unknown>[] = [];
  return { lines, destination: { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) } };
}

describe('createLogger', () => {
  it('stamps hostname, pid and the service name on every line, children included', () => {
    const { lines, destination } = capture();
    const log = createLogger({ name: 'airlock-ci', level: 'info', destination });
    log.info('plain');
    withIds(log, { change: '7,2', project: 'app' }).warn({ build: 3 }, 'with ids');
    log.debug('below the level');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({ level: 30, name: 'airlock-ci', hostname: hostname(), pid: process.pid, msg: 'plain' });
    expect(lines[1]).toMatchObject({ level: 40, name: 'airlock-ci', hostname: hostname(), pid: process.pid, change: '7,2', project: 'app', build: 3, msg: 'with ids' });
  });

  it('still censors credentials: passwords, tokens, an environment, an authorization header', () => {
    const { lines, destination } = capture();
    const log = createLogger({ level: 'info', destination });
    log.info({ review: { password: 'hunter2-pw' }, hint: { token: 'tok-123456' }, env: { AWS_SECRET: 's3cr3t' }, req: { headers: { authorization: 'Basic YWxpY2U6cHc=' } } }, 'creds');
    const text = JSON.stringify(lines);
    for (const secret of ['hunter2-pw', 'tok-123456', 's3cr3t', 'YWxpY2U6cHc=']) expect(text).not.toContain(secret);
    expect(lines[0]).toMatchObject({ review: { password: '[redacted]' }, hint: { token: '[redacted]' }, env: '[redacted]', req: { headers: { authorization: '[redacted]' } }, hostname: hostname(), pid: process.pid });
  });
});
