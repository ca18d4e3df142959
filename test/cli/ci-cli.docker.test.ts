/**
 * `airlock submit | status | logs` end to end: the real command (a child process) against a real
 * service on a real port, with a real git upstream and real Docker. The CLI runs asynchronously:
 * the service lives in this process and must keep answering while the command waits.
 */
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEvent, BuildView, QueueView } from '#shared/schemas/api/builds.js';
import { startTestCi, type TestCi } from '../support/ci.js';
import { createRepo, type TestRepo } from '../support/git-repo.js';
import { runAirlock } from '../support/run-child.js';

const config = (command: string): string => `version: 1\nenvironment: { image: airlock/base:busybox }\njobs:\n  test:\n    command: ${command}\n`;

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

let server = '';
function airlock(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return runAirlock(args, { AIRLOCK_SERVER: server, AIRLOCK_LOG_LEVEL: 'error', ...env }).then((r) => ({ status: r.code, stdout: r.stdout, stderr: r.stderr }));
}

/** A port nobody listens on: one the kernel just handed out and took back. */
function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

describe('airlock submit / status / logs against a running CI', () => {
  let up: TestRepo;
  let ci: TestCi;
  beforeAll(async () => {
    up = createRepo({ '.airlock.yaml': config('echo hi') });
    ci = await startTestCi({ projects: [{ name: 'demo/app', url: up.dir }], listen: { host: '127.0.0.1', port: 0 } });
    server = await ci.service.listen();
  });
  afterAll(async () => {
    await ci?.close();
    up?.dispose();
  });

  it('submit --wait --json follows a passing build; status and logs show it', async () => {
    const sub = await airlock(['submit', '--project', 'demo/app', '--ref', 'refs/heads/master', '--change', 'c1', '--author', 'alice', '--wait', '--json']);
    expect(sub.status, sub.stderr).toBe(0);
    const b = BuildView.parse(JSON.parse(sub.stdout));
    expect(b).toMatchObject({ state: 'finished', result: 'passed', project: 'demo/app', change: { change: 'c1', author: 'alice' } });
    // The CI's build id, as #id, on stderr before the wait (also with --json, whose stdout is JSON only).
    expect(sub.stderr).toContain(`airlock: build #${b.id} queued: demo/app change c1,1; following it`);

    const [one, all, logs, logsJson, logsFinished, queued] = await Promise.all([
      airlock(['status', String(b.id), '--json']),
      airlock(['status', '--json', '--project', 'demo/app']),
      airlock(['logs', String(b.id)]),
      airlock(['logs', String(b.id), '--json']),
      airlock(['logs', '-f', String(b.id)]), // already finished: shown as without -f
      airlock(['submit', '--project', 'demo/app', '--ref', 'refs/heads/master', '--change', 'c2']),
    ]);
    expect([queued.status, queued.stderr]).toEqual([0, '']);
    expect(queued.stdout).toMatch(/^build #\d+ queued: check of demo\/app change c2,1\n$/);
    expect(one.status).toBe(0);
    expect(BuildView.parse(JSON.parse(one.stdout)).jobs.map((j) => [j.name, j.state])).toEqual([['test', 'passed']]);
    expect(all.status).toBe(0);
    const overview = JSON.parse(all.stdout) as { queue: unknown; builds: unknown[] };
    QueueView.parse(overview.queue);
    expect(overview.builds.map((x) => BuildView.parse(x).id)).toContain(b.id);
    expect(logs.status).toBe(0);
    expect(logs.stdout).toBe('hi\n');
    expect(logs.stderr).toContain(`airlock: build #${b.id} passed`);
    expect(logsJson.stdout.trim().split('\n').map((l) => BuildEvent.parse(JSON.parse(l)))).toEqual([
      { type: 'log', job: 'test', text: 'hi\n' },
      { type: 'build', state: 'finished', result: 'passed', reason: '1 voting job passed' },
    ]);
    expect([logsFinished.status, logsFinished.stdout]).toEqual([0, 'hi\n']);
  });

  it('logs -f streams a running build to its end; --json gives every event; a failed build exits 1', async () => {
    // Long enough to outlive the CLI's own start (tsx), so -f meets it running.
    const slow = up.change(201, 1, { '.airlock.yaml': config('echo start && sleep 8 && echo hi') });
    const failing = up.change(202, 1, { '.airlock.yaml': config('echo nope && sleep 1 && exit 3') });
    const id = await ci.submit({ project: 'demo/app', ref: slow.ref, change: '201' });
    const [follow, followJson, failed] = await Promise.all([
      airlock(['logs', '-f', String(id)]),
      airlock(['logs', '--follow', '--json', String(id)]),
      airlock(['submit', '--project', 'demo/app', '--ref', failing.ref, '--change', '202', '--wait']),
    ]);
    expect(follow.status, follow.stderr).toBe(0);
    expect(follow.stdout).toBe('start\nhi\n');
    // On a loaded machine the CLI (tsx start-up) may meet the build already finished: then it prints
    // the stored logs, which is also right. When it met it running, the live extras must be there.
    if (follow.stderr.includes(`build #${id}: job test running`)) {
      expect(follow.stderr).toContain(`merged ${slow.ref} onto master`); // the setup log goes with the progress
      expect(follow.stderr).toContain(`build #${id}: passed`); // stderr is not a terminal: one plain line per state change
    } else expect(follow.stderr).toContain(`airlock: build #${id} passed`);

    expect(followJson.status).toBe(0);
    const events = followJson.stdout.trim().split('\n').map((l) => BuildEvent.parse(JSON.parse(l)));
    expect(events.filter((e) => e.type === 'log' && e.job === 'test').map((e) => (e as { text: string }).text).join('')).toBe('start\nhi\n');
    expect(events.at(-1)).toMatchObject({ type: 'build', state: 'finished', result: 'passed' });

    expect(failed.status, failed.stderr).toBe(1);
    expect(failed.stdout).toMatch(/^build #\d+ · check · demo\/app master · change 202,1 by anonymous\nstatus: failed \(failed: test\)/);
    expect(failed.stdout).toMatch(/✗ test\s+failed\s+3/);
    const failedId = Number(/build #(\d+) queued/.exec(failed.stderr)?.[1]);
    const failedLogs = await airlock(['logs', String(failedId), '--job', 'test']);
    expect(failedLogs.status).toBe(1);
    expect(failedLogs.stdout).toBe('nope\n');
  });

  it('exits 2 with the server\'s code for what the server refuses, and 3 when it cannot be reached', async () => {
    const port = await closedPort();
    const [unknown, badRef, missing, unreachable] = await Promise.all([
      airlock(['submit', '--project', 'no/such', '--ref', 'refs/heads/master']),
      airlock(['submit', '--project', 'demo/app', '--ref', 'master', '--json']),
      airlock(['status', '999999']),
      airlock(['status'], { AIRLOCK_SERVER: `http://127.0.0.1:${port}` }),
    ]);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain('airlock: AIRLOCK_E_NOT_FOUND: project no/such is not registered with this CI');
    expect(badRef.status).toBe(2);
    expect(JSON.parse(badRef.stdout)).toMatchObject({ error: { code: 'AIRLOCK_E_INVALID_INPUT', statusCode: 400 } });
    expect(badRef.stderr).toContain('body: ref: must be a full ref name');
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain('AIRLOCK_E_NOT_FOUND: no build #999999');
    expect(unreachable.status).toBe(3);
    expect(unreachable.stderr).toContain(`airlock: AIRLOCK_E_INTERNAL: cannot reach the CI at http://127.0.0.1:${port}: ECONNREFUSED`);
  });
});
