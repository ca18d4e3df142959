/**
 * A build's independent jobs run at the same time, through the real service, scheduler,
 * CheckBuildExecutor, runner and Docker. Each of `left` and `right` waits in its container for a
 * marker file that only the test puts there (with `docker exec`), and the test puts it in only once
 * it sees both containers of the build running: so each job can end only if the other was running
 * at the same moment. Run one after the other, the first would wait alone and fail (its own bound),
 * and the test would never see the two together. `after`, which needs both, runs once both passed.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_JOB } from '#shared/runner/labels.js';
import { createRepo, type TestRepo } from '../../support/git-repo.js';
import { startTestCi, type TestCi } from '../../support/ci.js';
import { until } from '../../support/until.js';

// The wait's bound only ends a job that waits alone; nothing here asserts how long anything took.
const WAIT = `echo waiting; touch /tmp/waiting; i=0; until [ -f /tmp/go ]; do i=$((i+1)); if [ $i -gt 900 ]; then echo alone; exit 1; fi; sleep 0.1; done; echo went`;
const CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  left:
    command: [sh, -c, "${WAIT}"]
  right:
    command: [sh, -c, "${WAIT}"]
  after:
    command: [sh, -c, "echo after both"]
    needs: [left, right]
`;

function docker(args: string[]): string {
  return execFileSync('docker', args, { encoding: 'utf8' }).trim();
}

/** Whether the job in container `name` has reached its wait (it made /tmp/waiting). */
function waiting(name: string): boolean {
  try {
    docker(['exec', name, 'test', '-f', '/tmp/waiting']);
    return true;
  } catch {
    return false; // not there yet (or the container just ended)
  }
}

describe('a build runs its independent jobs at once (real Docker)', () => {
  let up: TestRepo;
  let ci: TestCi;
  beforeAll(async () => {
    up = createRepo({ '.airlock.yaml': CONFIG });
    // Two slots and room for two jobs of the policy's 1 CPU, whatever this machine has.
    ci = await startTestCi({ projects: [{ name: 'demo/parallel', url: up.dir }], slots: 2, capacity: { cpus: 2 } });
  });
  afterAll(async () => {
    await ci?.close();
    up?.dispose();
  });

  it('left and right run together, each waiting for a marker the test gives only while both run; after runs once both passed', async () => {
    const change = up.change(201, 1, { 'x.txt': 'x\n' });
    const id = await ci.submit({ project: 'demo/parallel', ref: change.ref, change: '201', patchset: 1 });
    // The build's job containers (labelled with the job spec's id, b<build>-a<attempt>-j<index>).
    const running = () => docker(['ps', '--filter', `label=${LABEL_JOB}`, '--format', `{{.Names}} {{.Label "${LABEL_JOB}"}}`]).split('\n').filter((l) => l.includes(` b${id}-`));
    const both = await until('both jobs of the build running at once', async () => {
      const rows = running();
      if (rows.length < 2) return undefined;
      // Both have reached their wait, not merely been created (the engine keeps no log to read).
      const names = rows.map((r) => r.split(' ')[0]!);
      return names.every((n) => waiting(n)) ? names : undefined;
    }, 90_000);
    expect(both).toHaveLength(2);
    for (const name of both) docker(['exec', name, 'touch', '/tmp/go']);

    const b = await ci.waitFor(id, 120_000);
    expect(b.result, JSON.stringify(b)).toBe('passed');
    expect(b.jobs.map((j) => [j.name, j.state])).toEqual([
      ['left', 'passed'],
      ['right', 'passed'],
      ['after', 'passed'],
    ]);
    for (const job of ['left', 'right']) {
      const log = await ci.service.app.inject({ method: 'GET', url: `/api/builds/${id}/logs/${job}` });
      expect(log.body).toContain('went');
      expect(log.body).not.toContain('alone');
    }
  });
});
