/** Lower bounds: a "tighter" request must still be one the kernel and the engine enforce. */
import { describe, expect, it } from 'vitest';
import { LimitsRequest } from '#shared/schemas/limits.js';
import { JobSpec } from '#shared/schemas/job-spec.js';

describe('LimitsRequest lower bounds', () => {
  it.each([
    ['cpus', 1e-10],
    ['cpus', 0.001],
    ['memory', '1m'],
    ['memory', 1],
    ['workspace', 1],
    ['workspace', '8m'],
    ['tmp', 1024],
    ['timeout', '10ms'],
  ])('refuses %s = %j, naming the field', (key, value) => {
    const r = LimitsRequest.safeParse({ [key]: value });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.path).toEqual([key]);
  });

  it.each([
    ['cpus', 0.01],
    ['memory', '16m'],
    ['workspace', '16m'],
    ['tmp', '1m'],
    ['timeout', '100ms'],
  ])('accepts %s = %j', (key, value) => {
    expect(LimitsRequest.safeParse({ [key]: value }).success).toBe(true);
  });
});

describe('JobSpec size caps', () => {
  const base = { id: 'j', image: 'airlock/base:busybox' };
  it('refuses a command line over 1 MiB in all', () => {
    const r = JobSpec.safeParse({ ...base, command: Array.from({ length: 20 }, () => 'x'.repeat(64 * 1024)) });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.message).toMatch(/command is longer than/);
  });
  it('refuses more than 256 environment variables', () => {
    const env = Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`V${i}`, '1']));
    expect(JobSpec.safeParse({ ...base, command: ['true'], env }).success).toBe(false);
  });
  it('has no source field: the caller names the source, not the spec', () => {
    const r = JobSpec.safeParse({ ...base, command: ['true'], source: { dir: '/etc/ssh' } });
    expect(r.success).toBe(false);
  });
});
