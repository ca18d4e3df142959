/**
 * Two CI replicas on one PostgreSQL database, with an executor host, end to end: each replica a
 * process of its own (`test/support/ci-child.ts`), the Gerrit stand-in, and one executor host in a
 * network namespace of its own with its own Docker engine (test/support/hosts.ts), whose `ci.url`
 * is the *follower*: every call it makes (register, the long-polled claim, the image and source
 * downloads, heartbeats, log pieces, the artifacts tar, the result) is forwarded to the leader.
 *
 * - The follower checks the host's token itself: with the leader gone, a request without a host's
 *   token still gets 401 from it.
 * - The leader goes while the build's job runs on the host, two ways: `kill -9` (its connections
 *   are refused at once, and the follower, on the same machine, sees the holder's process gone and
 *   takes the lease at its next ask), and SIGSTOP (a leader that no longer answers and does not
 *   close its connections, as a machine cut off: the follower waits for the lease to run out). The
 *   host's run under the old leader ends (its heartbeats reach no leader, or the new one refuses
 *   the run: the executor stops the container, its sentinel would too), the follower leads, and
 *   after its one-lease hold hands the job out again as the build's next attempt; the build
 *   passes, its result is posted to Gerrit once, and the re-run's log and artifact reach the
 *   artifact store the replicas share. At no moment does the host's engine run two containers of
 *   the job. After SIGSTOP, the host's claim forwarded to the stopped leader ends once the lease
 *   passes (api/forward.ts), not at the host's own timeout.
 *
 * KEEP_LOG=<path> keeps each scenario's executor log at <path>.<n>.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_JOB } from '#shared/runner/labels.js';
import type { BuildView } from '#shared/schemas/api/builds.js';
import { FsArtifactStore } from '../../../untrusted-ci/storage/fs-artifact-store.js';
import { artifactPrefix, logKey } from '../../../untrusted-ci/storage/keys.js';
import { tempDir } from '../../support/docker.js';
import { CI_ACCOUNT, startGerrit, type GerritRig } from '../../support/gerrit-rig.js';
import { startHost, type TestHost } from '../../support/hosts.js';
import { sharedPostgres } from '../../support/postgres-shared.js';
import { until } from '../../support/until.js';

const BIN = new URL('../../../bin/airlock.js', import.meta.url).pathname;
const API_TOKEN = 'submit-token-0123456789abcdef';
const CANCEL_TOKEN = 'cancel-token-0123456789abcdef';
const HOST_TOKEN = 'token-of-exec-1-0123456789abcdef';
/** Short leases: the takeover and the job's hand-over take a few of them. */
const REPLICA_LEASE_MS = 3000;
const EXECUTOR_LEASE_MS = 3000;

// The job waits for /tmp/go (the test makes it in the re-run's container) and then leaves an artifact.
const CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  slow:
    command: [sh, -c, "echo slow-started; cat README.md; touch /tmp/waiting; i=0; until [ -f /tmp/go ]; do i=$((i+1)); if [ $i -gt 1200 ]; then exit 1; fi; sleep 0.1; done; echo slow-went; mkdir -p out; echo made-by-slow > out/slow.txt"]
    artifacts: [out/slow.txt]
`;

const pg = await sharedPostgres();
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

interface Replica {
  name: string;
  child: ChildProcess;
  /** Reached from this (the root) namespace. */
  url: string;
  port: number;
}

function startReplica(name: string, configFile: string): Promise<Replica> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/ci-child.ts', configFile], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (l) => {
      if (!l.startsWith('LISTENING ')) return;
      const port = Number(new URL(l.slice('LISTENING '.length)).port);
      resolve({ name, child, url: `http://127.0.0.1:${port}`, port });
    });
    child.once('exit', (code) => reject(new Error(`replica ${name} exited with ${code} before listening`)));
  });
}

async function get<T>(r: Replica, path: string, token?: string): Promise<{ status: number; body: T }> {
  const res = await fetch(`${r.url}${path}`, token ? { headers: { authorization: `Bearer ${token}` } } : {});
  return { status: res.status, body: (await res.json()) as T };
}

/** A call as an executor host makes it, to a replica. */
async function hostCall(r: Replica, path: string, token: string | undefined, body: unknown): Promise<number> {
  const res = await fetch(`${r.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  await res.arrayBuffer();
  return res.status;
}

/** Running job containers of build `id` on an engine. */
async function jobContainers(docker: Docker, id: number): Promise<{ id: string; job: string }[]> {
  const list = await docker.listContainers({ filters: { label: [LABEL_JOB] } });
  return list.map((c) => ({ id: c.Id, job: c.Labels[LABEL_JOB] ?? '' })).filter((c) => c.job.startsWith(`b${id}-`));
}

/** Runs `cmd` in a container; its exit code once the engine has it (undefined: the container is gone). */
async function execIn(docker: Docker, container: string, cmd: string[]): Promise<number | undefined> {
  try {
    const exec = await docker.getContainer(container).exec({ Cmd: cmd });
    const stream = await exec.start({});
    stream.resume();
    await new Promise((r) => stream.on('end', r));
    // The output's end can come before the engine has reaped the process (ExitCode null meanwhile).
    for (;;) {
      const i = await exec.inspect();
      if (!i.Running && typeof i.ExitCode === 'number') return i.ExitCode;
      await new Promise((r) => setTimeout(r, 20));
    }
  } catch {
    return undefined;
  }
}

describe.skipIf(pg.skip)('CI replicas with an executor host pointed at the follower', () => {
  let rig: GerritRig;
  let host: TestHost;
  let executor: ChildProcess | undefined;
  let executorLog = '';

  beforeAll(async () => {
    rig = await startGerrit();
    // The host starts without the environment's image: it comes from the leader, through the follower.
    host = await startHost({ images: [] });
    writeFileSync(join(host.dir, 'executor.token'), HOST_TOKEN, { mode: 0o600 });
  }, 180_000);

  afterAll(async () => {
    executor?.kill('SIGKILL');
    await host?.stop();
    await rig?.gerrit.close();
  }, 120_000);

  /** Two replicas on a database of their own, sharing one artifact store, for one project; `a` leads. */
  async function replicas(project: string): Promise<{ a: Replica; b: Replica; dir: string }> {
    const dir = tempDir('airlock-replicas-executors-');
    const url = await pg.createDatabase();
    const secret = (name: string, value: string): void => writeFileSync(join(dir, name), value, { mode: 0o600 });
    secret('database.url', `${url}\n`);
    secret('gerrit.json', JSON.stringify({ username: CI_ACCOUNT, password: rig.passwords[CI_ACCOUNT] }));
    secret('hook.secret', rig.hookSecret);
    secret('api.token', API_TOKEN);
    secret('cancel.token', CANCEL_TOKEN);
    secret('exec-1.token', HOST_TOKEN);
    // Both listen beyond loopback (the host reaches them over its veth) and share one artifact
    // store, as replicas on several machines would share a bucket.
    const config = (n: string): string => `version: 1
listen: { host: 0.0.0.0, port: 0 }
dataDir: ${dir}/${n}
database: { engine: postgres, urlFile: ${dir}/database.url }
replicas: { leaseMs: ${REPLICA_LEASE_MS} }
artifactStore: { kind: fs, root: ${dir}/artifacts }
api: { tokenFile: ${dir}/api.token, cancelTokenFile: ${dir}/cancel.token }
slots: 2
imageGcEveryMs: 0
projects:
  - { name: ${project}, url: ${rig.gerrit.gitUrl(project)} }
review: { kind: gerrit, url: ${rig.gerrit.url}, credentialsFile: ${dir}/gerrit.json, catchUpEveryMs: 2000 }
webhooks: { gerritSecretFile: ${dir}/hook.secret }
executors: { leaseMs: ${EXECUTOR_LEASE_MS}, hosts: [{ name: exec-1, tokenFile: ${dir}/exec-1.token }] }
`;
    for (const n of ['a', 'b']) {
      mkdirSync(join(dir, n), { recursive: true });
      writeFileSync(join(dir, `${n}.yaml`), config(n));
    }
    const a = await startReplica('a', join(dir, 'a.yaml'));
    const b = await startReplica('b', join(dir, 'b.yaml'));
    expect((await get<{ leading: boolean }>(a, '/healthz')).body.leading).toBe(true);
    expect((await get<{ leading: boolean }>(b, '/healthz')).body.leading).toBe(false);
    return { a, b, dir };
  }

  /** `airlock executor serve` on the host, its ci.url the follower's (over the host's own link). */
  async function startExecutor(b: Replica, n: number): Promise<void> {
    const file = join(host.dir, `executor-${n}.yaml`);
    writeFileSync(
      file,
      JSON.stringify({
        name: 'exec-1',
        ci: { url: `http://${host.ciAddress}:${b.port}`, tokenFile: 'executor.token' },
        docker: `unix://${host.dockerSocket}`,
        slots: 2,
        capacity: { cpus: 2, memory: '4GiB' },
        stateDir: host.stateDir,
        workDir: join(host.dir, 'work'),
      }),
    );
    // KEEP_LOG=<path>: the executor's log is kept at <path>.<n> for a look after the run.
    executorLog = process.env.KEEP_LOG ? `${process.env.KEEP_LOG}.${n}` : join(host.dir, `executor-${n}.log`);
    executor = host.spawn(process.execPath, [BIN, 'executor', 'serve', '--config', file], { env: { ...process.env, AIRLOCK_LOG_LEVEL: 'info' }, logFile: executorLog });
    // Registered with the leader, through the follower (which forwards /api/executors too; the
    // operators' token, the cancel token, lists the hosts).
    await until('the executor host registered', async () => ((await get<{ executors?: { name: string }[] }>(b, '/api/executors', CANCEL_TOKEN)).body.executors?.some((e) => e.name === 'exec-1') ? true : undefined), 60_000);
  }

  /**
   * A change's check build runs its job on the host; the leader `a` is stopped (`how`) while the
   * job runs; the follower `b` takes over and the build passes on the host, reported once.
   */
  async function scenario(n: number, how: (a: Replica) => Promise<void>): Promise<void> {
    // A project of its own: the replicas of another scenario's project would build its changes too (catch-up).
    const project = `demo/replicated-remote-${n}`;
    rig.gerrit.createProject(project, { '.airlock.yaml': CONFIG, 'README.md': 'the readme\n' });
    const { a, b, dir } = await replicas(project);
    await startExecutor(b, n);
    rig.gerrit.addWebhook({ url: `${b.url}/hooks/gerrit/${encodeURIComponent(rig.hookSecret)}`, retryIntervalMs: 200, maxTries: 50 });
    const g = rig.gerrit;
    const change = g.upload({ project, owner: 'ada', subject: `remote ${n}`, files: { 'x.txt': `${n}\n` } });
    const build = await until('the check build', async () => (await get<{ builds: BuildView[] }>(b, '/api/builds?limit=50')).body.builds.find((x) => x.change.change === String(change.number)), 60_000);

    // Every running container of the build's job on the host's engine, sampled until the end: never two at once.
    const seen: string[] = [];
    let most = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const now = await jobContainers(host.docker, build.id).catch(() => []);
        most = Math.max(most, now.length);
        for (const c of now) if (!seen.includes(c.id)) seen.push(c.id);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const waitingOn = async (): Promise<{ id: string; job: string } | undefined> => {
      for (const c of await jobContainers(host.docker, build.id)) if ((await execIn(host.docker, c.id, ['test', '-f', '/tmp/waiting'])) === 0) return c;
      return undefined;
    };
    const first = await until('the job running on the host', waitingOn, 120_000);
    expect(first.job).toMatch(/^b\d+-a1-/);
    await how(a);

    // The follower checks a host's token itself: the leader does not answer, so a 401 is the follower's.
    expect(await hostCall(b, '/api/executor/claim', undefined, { free: { slots: 1, memory: 1, cpus: 1 }, waitMs: 0 })).toBe(401);
    expect(await hostCall(b, '/api/executor/claim', API_TOKEN, { free: { slots: 1, memory: 1, cpus: 1 }, waitMs: 0 })).toBe(401);
    expect(await hostCall(b, `/api/executor/runs/${'0'.repeat(32)}/heartbeat`, 'not-a-host-token', {})).toBe(401);

    // The host's run under the old leader ends: its container stops.
    await until("the old leader's run stopped on the host", async () => ((await jobContainers(host.docker, build.id)).some((c) => c.id === first.id) ? undefined : true), 30_000);
    await until('the follower leads', async () => ((await get<{ leading: boolean }>(b, '/healthz')).body.leading ? true : undefined), 30_000, 100);
    // The new leader hands the job out again: the build's next attempt, so a new job id.
    const again = await until('the job running again on the host', async () => {
      const c = await waitingOn();
      return c && c.id !== first.id ? c : undefined;
    }, 60_000);
    expect(again.job).toMatch(/^b\d+-a2-/);
    expect(await execIn(host.docker, again.id, ['touch', '/tmp/go'])).toBe(0);

    await until('the check voted Verified +1', async () => (g.changeState(change.number).votes.Verified?.[CI_ACCOUNT] === 1 ? true : undefined), 60_000);
    await until('no job container left on the host', async () => ((await jobContainers(host.docker, build.id)).length === 0 ? true : undefined), 30_000);
    sampling = false;
    await sampler;
    const done = (await get<BuildView>(b, `/api/builds/${build.id}`)).body;
    expect(done.result, JSON.stringify(done)).toBe('passed');
    expect(done.attempt).toBe(2);
    expect(done.jobs.map((j) => [j.name, j.state])).toEqual([['slow', 'passed']]);
    // Reported once: one review posted by the CI on the change.
    const reviews = g.requests.filter((r) => r.method === 'POST' && r.user === CI_ACCOUNT && r.status === 200 && /\/review$/.test(r.path) && decodeURIComponent(r.path).includes(`~${change.number}/`));
    expect(reviews).toHaveLength(1);

    // Never two containers of the job at once on the host; two in all (the old leader's run, the new one's).
    expect(most).toBe(1);
    expect(seen).toEqual([first.id, again.id]);

    // The re-run's log and artifact, in the artifact store the replicas share, and through the new leader.
    const store = new FsArtifactStore(join(dir, 'artifacts'));
    const log = (await store.getBuffer(logKey(String(build.id), 'slow'), 1024 * 1024)).toString();
    expect(log).toContain('on executor host exec-1');
    expect(log).toContain('the readme'); // the source came along
    expect(log).toContain('slow-went');
    expect((await store.getBuffer(`${artifactPrefix(String(build.id), 'slow')}out/slow.txt`, 1024)).toString()).toBe('made-by-slow\n');
    expect(await fetch(`${b.url}/api/builds/${build.id}/logs/slow`).then((r) => r.text())).toContain('slow-went');

    executor?.kill('SIGKILL');
    b.child.kill('SIGTERM');
    await new Promise((r) => (b.child.exitCode !== null || b.child.signalCode !== null ? r(undefined) : b.child.once('exit', r)));
  }

  const exited = (c: ChildProcess): Promise<unknown> => new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r(undefined) : c.once('exit', r)));

  it('kill -9 of the leader while the job runs on the host: the follower leads and hands it out again after its hold; the build passes, reported once', { timeout: 300_000 }, async () => {
    await scenario(1, async (a) => {
      a.child.kill('SIGKILL');
      await exited(a.child);
    });
  });

  it('the leader stops answering (SIGSTOP, as a machine cut off) while the job runs: the host fences its run, the follower leads after the lease and hands the job out again', { timeout: 300_000 }, async () => {
    let stopped: Replica | undefined;
    try {
      await scenario(2, async (a) => {
        stopped = a;
        a.child.kill('SIGSTOP');
      });
      const log = readFileSync(executorLog, 'utf8');
      expect(log).toContain('no heartbeat reached the CI for two thirds of the lease');
      // The host's claim, forwarded to the stopped leader, was ended by the follower once the lease
      // passed (a 503, claimed again), not by the host's own timeout (20 s of waiting and 15 more).
      expect(log).not.toContain('aborted due to timeout');
    } finally {
      stopped?.child.kill('SIGKILL');
    }
  });
});
