/**
 * Executor hosts, end to end: the CI service (real git, SQLite, Docker) with two executor hosts,
 * each `airlock executor serve` as a process of its own in a network namespace of its own with its
 * own Docker engine (test/support/hosts.ts), reaching the CI over its veth only.
 *
 * - A build's jobs run on the hosts, not on the CI's engine: the environment image is loaded into
 *   a host's engine from the CI (the hosts start without it), the logs come back live, an artifact
 *   comes back into the artifact store, a job that needs two others runs after them.
 * - `kill -9` of the executor running a job: its sentinel stops the job's container on that host,
 *   the CI takes the job back when its lease runs out, the other host runs it, and the build
 *   passes. At no moment do both hosts run the job.
 */
import { type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_JOB } from '#shared/runner/labels.js';
import { artifactPrefix } from '../../../untrusted-ci/storage/keys.js';
import { createRepo, type TestRepo } from '../../support/git-repo.js';
import { startTestCi, type TestCi } from '../../support/ci.js';
import { startHost, type TestHost } from '../../support/hosts.js';
import { BUSYBOX } from '../../support/docker.js';
import { until } from '../../support/until.js';

const BIN = new URL('../../../bin/airlock.js', import.meta.url).pathname;
const API_TOKEN = 'submit-token-0123456789abcdef';
const CANCEL_TOKEN = 'cancel-token-0123456789abcdef';
const LEASE_MS = 3000;

const CONFIG = `version: 1
environment: { image: ${BUSYBOX} }
jobs:
  a:
    command: [sh, -c, "echo from-a; mkdir -p out; echo made-by-a > out/a.txt"]
    artifacts: [out/a.txt]
  b:
    command: [sh, -c, "echo from-b; cat README.md"]
  c:
    command: [sh, -c, "echo from-c"]
    needs: [a, b]
  slow:
    command: [sh, -c, "echo slow-started; touch /tmp/waiting; i=0; until [ -f /tmp/go ]; do i=$((i+1)); if [ $i -gt 1200 ]; then exit 1; fi; sleep 0.1; done; echo slow-went"]
`;

interface Executor {
  host: TestHost;
  name: string;
  proc?: ChildProcess;
}

/** Job containers of build `id` running in an engine. */
async function jobContainers(docker: Docker, id: number): Promise<{ id: string; job: string }[]> {
  const list = await docker.listContainers({ filters: { label: [LABEL_JOB] } });
  return list.map((c) => ({ id: c.Id, job: c.Labels[LABEL_JOB] ?? '' })).filter((c) => c.job.startsWith(`b${id}-`));
}

async function waiting(docker: Docker, container: string): Promise<boolean> {
  try {
    const exec = await docker.getContainer(container).exec({ Cmd: ['test', '-f', '/tmp/waiting'] });
    const stream = await exec.start({});
    stream.resume();
    await new Promise((r) => stream.on('end', r));
    return (await exec.inspect()).ExitCode === 0;
  } catch {
    return false;
  }
}

async function touchGo(docker: Docker, container: string): Promise<void> {
  const exec = await docker.getContainer(container).exec({ Cmd: ['touch', '/tmp/go'] });
  const stream = await exec.start({});
  stream.resume();
  await new Promise((r) => stream.on('end', r));
}

describe('executor hosts: jobs run on other Docker hosts (network namespaces, engines of their own)', () => {
  let up: TestRepo;
  let ci: TestCi;
  let url: string;
  const executors: Executor[] = [];

  const startExecutor = (e: Executor): void => {
    const file = join(e.host.dir, 'executor.yaml');
    const port = new URL(url).port;
    writeFileSync(
      file,
      JSON.stringify({
        name: e.name,
        ci: { url: `http://${e.host.ciAddress}:${port}`, tokenFile: 'executor.token' },
        docker: `unix://${e.host.dockerSocket}`,
        slots: 2,
        capacity: { cpus: 2, memory: '4GiB' },
        stateDir: e.host.stateDir,
        workDir: join(e.host.dir, 'work'),
      }),
    );
    e.proc = e.host.spawn(process.execPath, [BIN, 'executor', 'serve', '--config', file], { env: { ...process.env, AIRLOCK_LOG_LEVEL: 'info' }, logFile: join(e.host.dir, `executor-${Date.now()}.log`) });
  };

  beforeAll(async () => {
    up = createRepo({ '.airlock.yaml': CONFIG, 'README.md': 'the readme\n' });
    // The hosts start without the environment's image: it comes from the CI.
    const hosts = await Promise.all([startHost({ images: [] }), startHost({ images: [] })]);
    hosts.forEach((host, i) => executors.push({ host, name: `exec-${i + 1}` }));
    for (const e of executors) writeFileSync(join(e.host.dir, 'executor.token'), `token-of-${e.name}-0123456789`, { mode: 0o600 });
    const tokens = { api: join(executors[0]!.host.dir, 'api.token'), cancel: join(executors[0]!.host.dir, 'cancel.token') };
    writeFileSync(tokens.api, API_TOKEN, { mode: 0o600 });
    writeFileSync(tokens.cancel, CANCEL_TOKEN, { mode: 0o600 });
    ci = await startTestCi({
      projects: [{ name: 'demo/remote', url: up.dir }],
      slots: 4,
      listen: { host: '0.0.0.0', port: 0 },
      api: { tokenFile: tokens.api, cancelTokenFile: tokens.cancel },
      executors: { leaseMs: LEASE_MS, hosts: executors.map((e) => ({ name: e.name, tokenFile: join(e.host.dir, 'executor.token') })) },
    });
    url = await ci.service.listen();
    for (const e of executors) startExecutor(e);
    await until('both executor hosts registered', async () => {
      const r = (await ci.service.app.inject({ method: 'GET', url: '/api/executors', headers: { authorization: `Bearer ${CANCEL_TOKEN}` } })).json() as { executors: { name: string }[] };
      return r.executors.length === 2 ? true : undefined;
    }, 60_000);
    const metrics = (await ci.service.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(metrics).toMatch(/^airlock_ci_executor_hosts 2$/m);
  }, 180_000);

  afterAll(async () => {
    for (const e of executors) e.proc?.kill('SIGKILL');
    await ci?.close();
    await Promise.all(executors.map((e) => e.host.stop()));
    up?.dispose();
  }, 120_000);

  const submit = async (change: string, ref: string): Promise<number> => {
    const r = await ci.service.app.inject({ method: 'POST', url: '/api/changes', headers: { authorization: `Bearer ${API_TOKEN}` }, payload: { project: 'demo/remote', ref, change, patchset: 1, pipeline: 'check' } });
    if (r.statusCode !== 202) throw new Error(`submit answered ${r.statusCode}: ${r.body}`);
    return (r.json() as { builds: number[] }).builds[0]!;
  };
  const logOf = async (id: number, job: string): Promise<string> => (await ci.service.app.inject({ method: 'GET', url: `/api/builds/${id}/logs/${job}` })).body;

  it('runs the jobs on the hosts: image loaded from the CI, logs and an artifact back, needs respected; the slow job is then killed with its executor and runs again on the other host', async () => {
    const change = up.change(301, 1, { 'x.txt': 'x\n' });
    const id = await submit('301', change.ref);

    // The slow job: wait for its container on one host, then kill -9 that host's executor.
    // (Only the slow job makes /tmp/waiting.)
    const slowOn = async (docker: Docker): Promise<{ id: string; job: string } | undefined> => {
      for (const c of await jobContainers(docker, id)) if (await waiting(docker, c.id)) return c;
      return undefined;
    };
    const { e: first, c: slow } = await until('the slow job running on a host', async () => {
      for (const e of executors) {
        const c = await slowOn(e.host.docker);
        if (c) return { e, c };
      }
      return undefined;
    }, 120_000);
    const other = executors.find((e) => e !== first)!;
    expect(await jobContainers(ci.service.docker, id)).toEqual([]); // nothing of it on the CI's own engine
    first.proc!.kill('SIGKILL');

    // Its sentinel stops the container; then the other host gets the job (after the lease).
    await until("the killed executor's job container stopped", async () => ((await jobContainers(first.host.docker, id)).some((c) => c.id === slow.id) ? undefined : true), 30_000);
    const again = await until('the slow job running on the other host', () => slowOn(other.host.docker), 60_000);
    expect(again.job).toBe(slow.job);
    // Never on both at once.
    expect((await jobContainers(first.host.docker, id)).filter((c) => c.job === slow.job)).toEqual([]);
    await touchGo(other.host.docker, again.id);

    const b = await ci.waitFor(id, 120_000);
    expect(b.result, JSON.stringify(b)).toBe('passed');
    expect(b.jobs.map((j) => [j.name, j.state])).toEqual([
      ['a', 'passed'],
      ['b', 'passed'],
      ['c', 'passed'],
      ['slow', 'passed'],
    ]);
    expect(await logOf(id, 'a')).toContain('from-a');
    expect(await logOf(id, 'b')).toContain('the readme'); // the source came along
    const slowLog = await logOf(id, 'slow');
    expect(slowLog).toContain(`on executor host ${first.name}`);
    expect(slowLog).toContain(`executor host ${first.name} stopped answering`);
    expect(slowLog).toContain(`on executor host ${other.name}`);
    expect(slowLog).toContain('slow-went');
    for (const job of ['a', 'b', 'c']) expect(await logOf(id, job)).toMatch(/on executor host exec-[12]/);
    // The artifact, through the CI's own extraction, in the artifact store.
    const art = await ci.service.artifacts.getBuffer(`${artifactPrefix(String(id), 'a')}out/a.txt`, 1024);
    expect(art.toString()).toBe('made-by-a\n');
    // The environment's image came from the CI into the host's engine that ran the slow job again.
    const imageId = (await ci.service.docker.getImage(BUSYBOX).inspect()).Id;
    expect((await other.host.docker.getImage(imageId).inspect()).Id).toBe(imageId);
  }, 400_000);

  it('refuses what is not an executor host, and a host the runs of another', async () => {
    const noToken = await ci.service.app.inject({ method: 'POST', url: '/api/executor/claim', payload: { free: { slots: 1, memory: 1, cpus: 1 } } });
    expect(noToken.statusCode).toBe(401);
    const apiToken = await ci.service.app.inject({ method: 'POST', url: '/api/executor/claim', headers: { authorization: `Bearer ${API_TOKEN}` }, payload: { free: { slots: 1, memory: 1, cpus: 1 } } });
    expect(apiToken.statusCode).toBe(401);
    const foreign = await ci.service.app.inject({
      method: 'POST',
      url: `/api/executor/runs/${'0'.repeat(32)}/heartbeat`,
      headers: { authorization: `Bearer token-of-exec-1-0123456789` },
      payload: {},
    });
    expect(foreign.statusCode).toBe(409);
  });
});
