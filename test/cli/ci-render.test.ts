/**
 * The CI commands' text output and error mapping, pure: progress line, TTY and plain progress on a
 * fake stream, durations, and API error answers back to AirlockErrors.
 */
import { describe, expect, it } from 'vitest';
import { errorFromAnswer, issuesOf, parseServerUrl } from '../../cli/ci-client.js';
import { eventLine, formatBuild, formatDuration, progressLine } from '../../cli/ci-render.js';
import { createProgress } from '../../cli/progress.js';
import { formatIssues } from '#shared/errors.js';
import { BuildView } from '#shared/schemas/api/builds.js';

const build = BuildView.parse({
  id: 7,
  pipeline: 'check',
  project: 'demo/app',
  branch: 'master',
  change: { id: 1, project: 'demo/app', branch: 'master', change: '101', patchset: 2, ref: 'refs/changes/01/101/2', author: 'alice', source: 'api', createdAt: 0 },
  state: 'running',
  attempt: 1,
  enqueuedAt: 0,
  startedAt: 1000,
  jobs: [
    { name: 'build', state: 'passed', voting: true, exitCode: 0, startedAt: 1000, finishedAt: 3500 },
    { name: 'test', state: 'running', voting: true, startedAt: 3500 },
    { name: 'report', state: 'waiting', voting: false },
  ],
});

describe('CI text output', () => {
  it('formats durations', () => {
    expect([850, 12_345, 245_000, 7_620_000].map(formatDuration)).toEqual(['850ms', '12.3s', '4m05s', '2h07m']);
  });

  it('draws the progress line from job states', () => {
    const jobs = new Map(build.jobs.map((j) => [j.name, j.state]));
    expect(progressLine(jobs, 'running', 12_300)).toBe('✓ build  ▶ test  · report  running 12.3s');
    expect(progressLine(new Map(), 'queued', undefined)).toBe('queued');
  });

  it('shows one build with its jobs and its config issues as file: path: message', () => {
    const b = { ...build, state: 'finished' as const, result: 'config-error' as const, reason: 'bad config', finishedAt: 5000, issues: [{ file: '.airlock.yaml', path: 'jobs.test.command', message: 'required', severity: 'error' as const }] };
    const text = formatBuild(b, 10_000);
    expect(text).toContain('build #7 · check · demo/app master · change 101,2 by alice');
    expect(text).toContain('status: config-error (bad config)');
    expect(text).toMatch(/✓ build\s+passed\s+0\s+2\.5s/);
    expect(text).toMatch(/· report\s+waiting \(non-voting\)/);
    expect(text).toContain('issues:\n  .airlock.yaml: jobs.test.command: required\n');
  });

  it('writes plain lines for state changes only', () => {
    expect(eventLine(7, { type: 'job', job: 'test', state: 'failed', reason: 'exited with code 1' })).toBe('build #7: job test failed (exited with code 1)');
    expect(eventLine(7, { type: 'build', state: 'finished', result: 'passed' })).toBe('build #7: passed');
    expect(eventLine(7, { type: 'log', job: 'test', text: 'x' })).toBeUndefined();
  });

  it('on a terminal, redraws one line and keeps it out of the log', () => {
    const out: string[] = [];
    let t = 1000;
    const p = createProgress({ build, out: { write: (s: string) => out.push(s), isTTY: true, columns: 200 }, now: () => t });
    expect(out.pop()).toBe('\r\u001b[2K✓ build  ▶ test  · report  running 0ms');
    const log: string[] = [];
    p.log('half a line', (s) => log.push(s), true);
    expect(out.splice(0)).toEqual(['\r\u001b[2K']); // erased, and not drawn again mid-line
    t = 3000;
    p.log(' ends\n', (s) => log.push(s), true);
    expect(out.splice(0)).toEqual(['\r\u001b[2K✓ build  ▶ test  · report  running 2.0s']);
    p.update({ type: 'job', job: 'test', state: 'passed' });
    expect(out.pop()).toContain('✓ test');
    p.close();
    expect(out.pop()).toBe('\r\u001b[2K');
    expect(log.join('')).toBe('half a line ends\n');
  });

  it('off a terminal, writes one line per state change', () => {
    const out: string[] = [];
    const p = createProgress({ build, out: { write: (s: string) => out.push(s) } });
    p.log('x', () => {}, true);
    p.update({ type: 'job', job: 'test', state: 'passed' });
    p.update({ type: 'build', state: 'finished', result: 'passed' });
    p.close();
    expect(out).toEqual(['build #7: job test passed\n', 'build #7: passed\n']);
  });
});

describe('CI API errors', () => {
  it("keeps the server's code where this airlock knows it; 4xx → exit-2 classes, 5xx → InternalError", () => {
    const nf = errorFromAnswer(404, JSON.stringify({ code: 'AIRLOCK_E_NOT_FOUND', message: 'no build 9', statusCode: 404 }), 'GET /api/builds/9');
    expect([nf.code, nf.message, nf.httpStatus]).toEqual(['AIRLOCK_E_NOT_FOUND', 'no build 9', 404]);
    const message = formatIssues([
      { file: 'body', path: 'ref', message: 'must be a full ref: x', severity: 'error' },
      { file: 'body', path: '', message: 'whole', severity: 'error' },
    ]);
    const bad = errorFromAnswer(400, JSON.stringify({ code: 'AIRLOCK_E_INVALID_INPUT', message, statusCode: 400 }), 'POST /api/changes');
    expect([bad.code, bad.message]).toEqual(['AIRLOCK_E_INVALID_INPUT', message]);
    const odd = errorFromAnswer(418, JSON.stringify({ code: 'AIRLOCK_E_TEAPOT', message: 'short and stout', statusCode: 418 }), 'GET /x');
    expect([odd.code, odd.httpStatus < 500, odd.message]).toEqual(['AIRLOCK_E_INVALID_INPUT', true, 'GET /x: (root): AIRLOCK_E_TEAPOT: short and stout']);
    const proxy = errorFromAnswer(502, '<html>bad gateway</html>', 'GET /api/queue');
    expect([proxy.code, proxy.message]).toEqual(['AIRLOCK_E_INTERNAL', 'GET /api/queue answered 502: <html>bad gateway</html>']);
  });

  it('reads issues back from their formatted lines', () => {
    expect(issuesOf('body: (root): x\nfree text')).toEqual([
      { file: 'body', path: '', message: 'x', severity: 'error' },
      { file: 'server', path: '', message: 'free text', severity: 'error' },
    ]);
  });

  it('accepts only http(s) server URLs', () => {
    expect(parseServerUrl('http://127.0.0.1:8080').port).toBe('8080');
    expect(() => parseServerUrl('ftp://x')).toThrow(/server: "ftp:\/\/x" is not an http/);
    expect(() => parseServerUrl('nope')).toThrow(/AIRLOCK_E_INVALID_INPUT|not an http/);
  });
});
