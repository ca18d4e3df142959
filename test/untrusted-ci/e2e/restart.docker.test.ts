/**
 * Nothing is lost when the service dies: `kill -9` mid-build, start again on the same data, and
 * every accepted change ends with a reported result — the interrupted build re-run from scratch,
 * the dead process's containers reaped, the queued ones run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { BuildView } from '#shared/schemas/api/builds.js';
import { LABEL_JOB, LABEL_OWNER } from '#shared/runner/labels.js';
import { createDocker } from '#shared/docker/client.js';
import { STATE_DIR, tempDir } from '../../support/docker.js';
import { createRepo } from '../../support/git-repo.js';

const CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  test:
    command: echo started; if [ -f slow ]; then sleep 3; fi; echo done
`;

const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
});

function startService(configFile: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/ci-child.ts', configFile], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (l) => {
      if (l.startsWith('LISTENING ')) resolve({ child, url: l.slice('LISTENING '.length) });
    });
    child.once('exit', (code) => reject(new Error(`service exited with ${code} before listening`)));
  });
}

async function api<T>(url: string, path: string, init?: RequestInit): Promise<T> {
  const r = await fetch(`${url}${path}`, { ...init, headers: { 'content-type': 'application/json' } });
  if (r.status >= 300) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return (await r.json()) as T;
}

describe('restart recovery', () => {
  it('re-runs the build a kill -9 interrupted and runs everything queued behind it', async () => {
    const up = createRepo({ '.airlock.yaml': CONFIG });
    const dataDir = tempDir('airlock-restart-');
    const configFile = join(dataDir, 'ci.yaml');
    writeFileSync(
      configFile,
      `version: 1\nlisten: { host: 127.0.0.1, port: 0 }\ndataDir: ${dataDir}/data\nrunnerStateDir: ${STATE_DIR}\nslots: 1\nimageGcEveryMs: 0\nprojects:\n  - { name: app, url: ${up.dir} }\n`,
    );
    const first = await startService(configFile);
    const ids: number[] = [];
    for (const n of [1, 2, 3]) {
      const c = up.change(n, 1, n === 1 ? { slow: '1' } : { [`f${n}`]: 'x' });
      const r = await api<{ builds: number[] }>(first.url, '/api/changes', { method: 'POST', body: JSON.stringify({ project: 'app', ref: c.ref, change: String(n) }) });
      ids.push(r.builds[0]!);
    }
    // Kill the service while the first build's job is running.
    const end = Date.now() + 60_000;
    for (;;) {
      const b = BuildView.parse(await api(first.url, `/api/builds/${ids[0]}`));
      if (b.jobs.some((j) => j.state === 'running')) break;
      if (Date.now() > end) throw new Error('build 1 never started');
      await new Promise((r) => setTimeout(r, 25));
    }
    first.child.kill('SIGKILL');
    await new Promise((r) => first.child.once('exit', r));

    const second = await startService(configFile);
    const results: BuildView[] = [];
    for (const id of ids) {
      for (;;) {
        const b = BuildView.parse(await api(second.url, `/api/builds/${id}`));
        if (b.state === 'finished') {
          results.push(b);
          break;
        }
        if (Date.now() > end + 60_000) throw new Error(`build ${id} never finished`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    expect(results.map((b) => b.result)).toEqual(['passed', 'passed', 'passed']);
    expect(results[0]!.attempt).toBe(2); // run again from scratch
    const log = await fetch(`${second.url}/api/builds/${ids[0]}/logs/test`).then((r) => r.text());
    expect(log).toBe('started\ndone\n');
    // The killed process's containers are gone (reaped by the new runner at start).
    const docker = createDocker();
    const left = await docker.listContainers({ all: true, filters: { label: [LABEL_OWNER] } });
    // (Another file's service may run a build of the same number: this one's command tells them apart.)
    const ours = left.filter((c) => c.Labels[LABEL_JOB]?.startsWith(`b${ids[0]}-a1-`) && c.Command.includes('echo started'));
    expect(ours).toEqual([]);
    second.child.kill('SIGTERM');
    await new Promise((r) => second.child.once('exit', r));
    up.dispose();
  });
});
