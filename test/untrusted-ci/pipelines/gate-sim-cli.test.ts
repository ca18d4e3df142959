/**
 * `airlock gate-sim` end to end: the real command as a child process (node + tsx's loader, as
 * bin/airlock.js runs it), on a fixture, on broken scenarios, and on stdin.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '../../..');
const FIXTURE = join(ROOT, 'test/scenarios/03_gate_later_fails_first');
const scratch = mkdtempSync(join(tmpdir(), 'airlock-gate-sim-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function gateSim(args: string[], input?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin/airlock.js'), 'gate-sim', ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    input: input ?? '',
    timeout: 60_000,
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function write(name: string, text: string): string {
  const file = join(scratch, name);
  writeFileSync(file, text);
  return file;
}

describe('airlock gate-sim', () => {
  const expected: unknown = JSON.parse(readFileSync(join(FIXTURE, 'expected.json'), 'utf8'));
  const scenarioText = readFileSync(join(FIXTURE, 'scenario.yaml'), 'utf8');

  it('prints exactly one JSON line, equal to the fixture', () => {
    const r = gateSim([join(FIXTURE, 'scenario.yaml')]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.endsWith('\n')).toBe(true);
    expect(r.stdout.slice(0, -1)).not.toContain('\n');
    expect(JSON.parse(r.stdout)).toEqual(expected);
  });

  it('reads the scenario from stdin with -', () => {
    const r = gateSim(['-'], scenarioText);
    expect(r.status).toBe(0);
    expect(r.stdout.split('\n')).toHaveLength(2);
    expect(JSON.parse(r.stdout)).toEqual(expected);
  });

  it('exits 2 on a scenario with errors, naming the path of each problem', () => {
    const file = write(
      'broken.yaml',
      [
        'pipeline: gate',
        'queues: {first: [org/p1], second: [org/p2, org/p1]}',
        'changes:',
        '  - {id: A, project: org/p1, dependsOn: [Z]}',
        '  - {id: B, project: org/p2}',
        'events:',
        '  - {approve: A}',
        '  - {submit: B}',
        '',
      ].join('\n'),
    );
    const r = gateSim([file]);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('AIRLOCK_E_INVALID_INPUT');
    expect(r.stderr).toContain(`${file}: changes[0].dependsOn[0]: no change Z`);
    expect(r.stderr).toContain(`${file}: events[1].submit: the gate is triggered by approve, not submit`);
    expect(r.stderr).toContain(`${file}: queues.second: project org/p1 is already in queue first`);
  });

  it('exits 2 on YAML that does not parse, and on keys the format does not have', () => {
    const bad = write('bad.yaml', 'pipeline: gate\nchanges: [{id: A\n');
    const r = gateSim([bad]);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`${bad}: (root): YAML:`);

    const unknown = write('unknown-key.yaml', 'pipeline: gate\nchanges: [{id: A, project: org/p1, colour: red}]\n');
    const u = gateSim([unknown]);
    expect(u.status).toBe(2);
    expect(u.stderr).toContain(`${unknown}: changes[0]:`);
    expect(u.stderr).toContain('colour');
  });

  it('names stdin as <stdin> in its errors', () => {
    const r = gateSim(['-'], 'pipeline: check\nchanges: [{id: A, project: p}]\nevents: [{approve: A}]\n');
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('<stdin>: events[0].approve: the check pipeline is triggered by submit, not approve');
  });
});
