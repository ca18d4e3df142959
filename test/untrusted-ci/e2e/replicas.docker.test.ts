/**
 * Two CI replicas on one PostgreSQL database (real PostgreSQL, real Docker, the Gerrit stand-in),
 * each a process of its own as `airlock ci serve` runs it:
 * - one leads (runs the gate and the scheduler), the other follows: it answers reads from the
 *   database and forwards the rest (a submission, Gerrit's webhooks) to the leader;
 * - `kill -9` of the leader in the middle of the gate: the follower takes the lease within
 *   seconds, runs the gate's lost work again, and every approved change merges — each asked to
 *   be submitted once, none lost;
 * - a leader that lost its lease cannot write the gate's state (the epoch fence).
 * A replica that steps down exits 75, as `airlock ci serve` does, and is started again as its
 * supervisor would (on a machine loaded enough to stall it past two thirds of the lease); each
 * replica's log is kept, and a wait that fails says what the replicas logged.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BuildView } from '#shared/schemas/api/builds.js';
import type { GateEventView } from '../../../untrusted-ci/store/gate-store.js';
import { STATE_DIR, tempDir } from '../../support/docker.js';
import { CI_ACCOUNT, startGerrit, type GerritRig } from '../../support/gerrit-rig.js';
import { sharedPostgres } from '../../support/postgres-shared.js';
import { freePort } from '../../support/registry.js';
import { until } from '../../support/until.js';

// The gate job takes long enough to kill the leader while it runs.
const CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  test:
    command: [sh, -c, "if [ -f slow ]; then sleep 6; fi; cat *.txt"]
`;
const PROJECT = 'demo/replicated';
const LEASE_MS = 3000;

const pg = await sharedPostgres();
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

interface Replica {
  name: string;
  child: ChildProcess;
  url: string;
  /** Its last log lines, across restarts. */
  log: string[];
  /** Times it exited 75 (stepped down) and was started again. */
  restarts: number;
  /** Set when the test ends it: it is not started again. */
  stopping?: boolean;
}

/** One replica process; started again when it exits 75 (a step-down), on the same port, as a supervisor would. */
function startReplica(name: string, configFile: string): Promise<Replica> {
  const r: Replica = { name, child: undefined as unknown as ChildProcess, url: '', log: [], restarts: 0 };
  const launch = (first: boolean): Promise<Replica> => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/ci-child.ts', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    r.child = child;
    const keep = (l: string): void => {
      r.log.push(l.slice(0, 2000));
      if (r.log.length > 300) r.log.shift();
    };
    // The log goes to stderr (shared/logging.ts): kept, not shown unless a wait fails.
    createInterface({ input: child.stderr! }).on('line', keep);
    return new Promise((resolve, reject) => {
      const lines = createInterface({ input: child.stdout! });
      lines.on('line', (l) => {
        keep(l);
        if (l.startsWith('LISTENING ')) resolve(((r.url = l.slice('LISTENING '.length)), r));
      });
      child.once('exit', (code) => {
        r.log.push(`[test] replica ${name} exited with ${code}`);
        if (code === 75 && !r.stopping) {
          r.restarts++;
          void launch(false).catch(() => undefined);
        }
        if (first) reject(new Error(`replica ${name} exited with ${code} before listening`));
      });
    });
  };
  return launch(true);
}

/** `until`, and on a timeout what each replica logged last. */
async function waitFor<T>(what: string, replicas: Replica[], probe: () => Promise<T | undefined>, timeoutMs: number, everyMs?: number): Promise<T> {
  try {
    // A replica being started again does not answer for a moment: asked again.
    return await until(what, () => probe().catch(() => undefined), timeoutMs, everyMs);
  } catch (e) {
    const logs = replicas.map((r) => `--- replica ${r.name} (restarted ${r.restarts} times), last lines:\n${r.log.slice(-60).join('\n')}`).join('\n');
    // And what the gate holds and the builds, from whichever replica answers.
    const state: string[] = [];
    for (const r of replicas) {
      for (const path of ['/api/gate', '/api/builds?limit=50']) {
        const got = await fetch(`${r.url}${path}`, { signal: AbortSignal.timeout(5000) }).then((x) => x.text(), (err: Error) => `(no answer: ${err.message})`);
        state.push(`--- ${r.name} ${path}: ${got.slice(0, 20_000)}`);
      }
    }
    throw new Error(`${(e as Error).message}\n${logs}\n${state.join('\n')}`);
  }
}

async function get<T>(r: Replica, path: string): Promise<{ status: number; body: T }> {
  const res = await fetch(`${r.url}${path}`);
  return { status: res.status, body: (await res.json()) as T };
}

describe.skipIf(pg.skip)('CI replicas on PostgreSQL', () => {
  let rig: GerritRig;
  let dir: string;
  let configs: Record<'a' | 'b', string>;
  beforeAll(async () => {
    rig = await startGerrit();
    rig.gerrit.createProject(PROJECT, { '.airlock.yaml': CONFIG, 'base.txt': 'base\n' });
    dir = tempDir('airlock-replicas-');
    const url = await pg.createDatabase();
    writeFileSync(join(dir, 'database.url'), `${url}\n`, { mode: 0o600 });
    writeFileSync(join(dir, 'gerrit.json'), JSON.stringify({ username: CI_ACCOUNT, password: rig.passwords[CI_ACCOUNT] }), { mode: 0o600 });
    writeFileSync(join(dir, 'hook.secret'), rig.hookSecret, { mode: 0o600 });
    // Fixed ports: a replica started again after a step-down answers where it did.
    const ports = { a: await freePort(), b: await freePort() };
    const config = (n: 'a' | 'b') => `version: 1
listen: { host: 127.0.0.1, port: ${ports[n]} }
dataDir: ${dir}/${n}
database: { engine: postgres, urlFile: ${dir}/database.url }
replicas: { leaseMs: ${LEASE_MS} }
runnerStateDir: ${STATE_DIR}
slots: 2
imageGcEveryMs: 0
projects:
  - { name: ${PROJECT}, url: ${rig.gerrit.gitUrl(PROJECT)} }
review: { kind: gerrit, url: ${rig.gerrit.url}, credentialsFile: ${dir}/gerrit.json, catchUpEveryMs: 2000 }
webhooks: { gerritSecretFile: ${dir}/hook.secret }
`;
    configs = { a: join(dir, 'a.yaml'), b: join(dir, 'b.yaml') };
    for (const n of ['a', 'b'] as const) {
      mkdirSync(join(dir, n), { recursive: true });
      writeFileSync(configs[n], config(n));
    }
  });
  afterAll(async () => {
    await rig?.gerrit.close();
  });

  // Its own waits name the step that did not come (their bounds add up to more than the default test timeout).
  it('one leads, the other forwards; kill -9 of the leader mid-gate: the other takes over and every change merges once', { timeout: 480_000 }, async () => {
    const a = await startReplica('a', configs.a);
    const b = await startReplica('b', configs.b);
    expect((await get<{ leading: boolean }>(a, '/healthz')).body.leading).toBe(true);
    expect((await get<{ leading: boolean }>(b, '/healthz')).body.leading).toBe(false);
    // Gerrit's webhooks go to the follower (as a load balancer might send them): it forwards them.
    rig.gerrit.addWebhook({ url: `${b.url}/hooks/gerrit/${encodeURIComponent(rig.hookSecret)}`, retryIntervalMs: 200, maxTries: 20 });

    const g = rig.gerrit;
    const first = g.upload({ project: PROJECT, owner: 'ada', subject: 'one', files: { 'one.txt': '1\n', slow: 'yes\n' } });
    const second = g.upload({ project: PROJECT, owner: 'ada', subject: 'two', files: { 'two.txt': '2\n' } });
    // The checks ran (on the leader), and the follower shows them from the database.
    await waitFor('both checks voted Verified +1', [a, b], async () => ([first, second].every((c) => g.changeState(c.number).votes.Verified?.[CI_ACCOUNT] === 1) ? true : undefined), 120_000);
    const checks = (await get<{ builds: BuildView[] }>(b, '/api/builds?limit=50')).body.builds;
    expect(checks.filter((x) => x.pipeline === 'check' && x.result === 'passed')).toHaveLength(2);
    // The follower forwards what only the leader knows (the gate's queues) and answers it.
    expect((await get<{ queues: unknown[] }>(b, '/api/gate')).status).toBe(200);

    for (const c of [first, second]) g.review(c.number, 'grace', { labels: { 'Code-Review': 2 } });
    // The first change's gate build is running on the leader: kill it there.
    await waitFor('the first gate build running', [a, b], async () => {
      const builds = (await get<{ builds: BuildView[] }>(b, '/api/builds?limit=50')).body.builds;
      return builds.some((x) => x.pipeline === 'gate' && x.state === 'running' && x.change.change === String(first.number)) ? true : undefined;
    }, 60_000);
    a.stopping = true;
    a.child.kill('SIGKILL');
    // Within seconds: the lease's time and a round of asking (bounded here generously: a noisy machine).
    await waitFor('the follower leads', [a, b], async () => ((await get<{ leading: boolean }>(b, '/healthz')).body.leading ? true : undefined), 30_000, 100);

    const merged = await waitFor('both changes merged', [a, b], async () => {
      const r = (await get<{ events: GateEventView[] }>(b, '/api/gate/events?kind=merged&limit=100')).body.events;
      return r.length >= 2 ? r : undefined;
    }, 180_000);
    expect(merged.map((e) => e.change).sort()).toEqual([String(first.number), String(second.number)].sort());
    for (const c of [first, second]) expect(g.changeState(c.number).status).toBe('MERGED');
    // Each was asked to be submitted once (the new leader re-read the change before asking again).
    const submits = g.requests.filter((r) => r.method === 'POST' && /\/submit$/.test(r.path) && r.status === 200);
    expect(submits.map((r) => decodeURIComponent(r.path)).sort()).toEqual([first, second].map((c) => `/changes/${PROJECT}~${c.number}/revisions/current/submit`).sort().map((p) => expect.stringContaining(p.split('/revisions')[0]!)));
    expect(submits).toHaveLength(2);
    b.stopping = true;
    b.child.kill('SIGTERM');
    await new Promise((r) => b.child.once('exit', r));
  });
});
