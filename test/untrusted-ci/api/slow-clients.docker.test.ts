/**
 * Slow clients against the real API (`buildApi`, listening on a loopback port; the request timeout
 * shortened to one second): an executor host's artifacts upload may take as long as its size needs
 * at the slowest rate taken, and a download (its image) as long as the host reads; a slowloris
 * anywhere else, or on the upload route without a host's token, is still cut. The clients are raw
 * sockets writing a few bytes at a time; a follower (api/forward.ts) forwards to a leader on
 * another port. The RemoteJobs behind the routes looks the job's image up in the real engine
 * (busybox); no job runs.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tar from 'tar-stream';
import type { FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { buildApi } from '../../../untrusted-ci/api/app.js';
import { createCiMetrics } from '../../../untrusted-ci/api/metrics.js';
import { buildCiConfig } from '../../../untrusted-ci/config.js';
import { BuildEvents } from '../../../untrusted-ci/logs/build-events.js';
import { RemoteJobs } from '../../../untrusted-ci/remote/dispatch.js';
import type { Assignment } from '../../../untrusted-ci/remote/protocol.js';
import { Scheduler } from '../../../untrusted-ci/scheduler/scheduler.js';
import { FsArtifactStore } from '../../../untrusted-ci/storage/fs-artifact-store.js';
import { BuildStore } from '../../../untrusted-ci/store/build-store.js';
import { FakeExecutor } from '../../support/fake-executor.js';
import { BUSYBOX, spec, STATE_DIR } from '../../support/docker.js';
import { testDatabase } from '../../support/store-engines.js';
import { until } from '../../support/until.js';

const HOST_TOKEN = 'the-token-of-executor-host-exec-1';
const REQUEST_MS = 1000;
const CAPACITY = { slots: 2, memory: 4 * 1024 ** 3, cpus: 2, runtimes: ['runc' as const] };

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

/** The API as `airlock ci serve` builds it, with one executor host and a request timeout of a second; `uploadSeconds`: how long the largest tar the policy allows may take. */
async function listen(uploadSeconds: number, leader?: string): Promise<{ port: number; remote: RemoteJobs; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-slow-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'exec-1.token'), HOST_TOKEN);
  const loaded = buildCiConfig(
    { version: 1, dataDir: join(dir, 'data'), slots: 1, projects: [{ name: 'app', url: '/srv/git/app.git' }], executors: { hosts: [{ name: 'exec-1', tokenFile: 'exec-1.token' }] } },
    'test-config',
    dir,
  );
  const logger = createLogger({ level: 'silent' });
  const db = await testDatabase();
  cleanups.push(() => db.close());
  const store = new BuildStore(db);
  const events = new BuildEvents(join(dir, 'builds'));
  const artifacts = new FsArtifactStore(join(dir, 'artifacts'));
  const scheduler = new Scheduler({ store, executor: new FakeExecutor({ events, store }), reporters: [], slots: 1, logger });
  cleanups.push(() => scheduler.close());
  const metrics = createCiMetrics({ queued: async () => ({ check: 0, gate: 0 }), busy: () => 0, slots: 1 });
  const remote = new RemoteJobs({ docker: createDocker(), policy: loadJobPolicy(), runnerStateDir: STATE_DIR, leaseMs: 60_000, logger });
  cleanups.push(() => remote.close());
  const app: FastifyInstance = await buildApi({
    config: loaded.config,
    store,
    scheduler,
    events,
    artifacts,
    metrics,
    logger,
    remote,
    ...(loaded.executorTokens ? { executorTokens: loaded.executorTokens } : {}),
    // A follower: what only the leader does goes to `leader` (api/forward.ts).
    ...(leader ? { forwarding: { isLeader: () => false, leader: async () => leader, logger } } : {}),
    timeouts: { requestMs: REQUEST_MS, uploadBytesPerSecond: remote.uploadBound / uploadSeconds },
  });
  cleanups.push(() => app.close());
  await app.listen({ host: '127.0.0.1', port: 0 });
  return { port: (app.server.address() as AddressInfo).port, remote, dir };
}

/** A job with an artifact glob, claimed by exec-1: its run takes an upload. */
async function heldRun(remote: RemoteJobs, dir: string): Promise<Assignment> {
  remote.register('exec-1', CAPACITY);
  void remote.run({ build: 1, job: 'j', spec: spec({ image: BUSYBOX, command: ['true'], artifacts: ['out/*'] }), artifactsDir: join(dir, 'art') }).catch(() => undefined);
  return until('a claim', () => remote.claim('exec-1', { free: { slots: 1, memory: CAPACITY.memory, cpus: 2 }, waitMs: 0 }), 20_000, 10);
}

async function tarBytes(content = 'made slowly\n'): Promise<Buffer> {
  const pack = tar.pack();
  pack.entry({ name: 'artifacts/out/a.txt' }, content);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

/**
 * A raw HTTP/1.1 request whose body is written `piece` bytes every `everyMs`; resolves to what came
 * back by the time the server closed the connection. `body` undefined: the body never ends.
 */
function slowRequest(port: number, head: string, body: Buffer | undefined, piece: number, everyMs: number): Promise<{ status: number | undefined; text: string; sent: number }> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let text = '';
    let sent = 0;
    socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
    socket.on('error', () => undefined);
    const timer = setInterval(() => {
      if (socket.destroyed || socket.writableEnded) return;
      if (body && sent >= body.length) return;
      const next = body ? body.subarray(sent, sent + piece) : Buffer.alloc(piece, 0x61);
      sent += next.length;
      socket.write(next);
    }, everyMs);
    socket.on('close', () => {
      clearInterval(timer);
      const status = /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1];
      resolve({ status: status ? Number(status) : undefined, text, sent });
    });
    socket.write(head);
  });
}

/** `keepAlive`: the server closes the connection only when it gives up on the request (not after its answer). */
const put = (run: string, length: number, token: string | undefined, keepAlive = false): string =>
  `PUT /api/executor/runs/${run}/artifacts HTTP/1.1\r\nHost: ci\r\nContent-Type: application/x-tar\r\nContent-Length: ${length}\r\n${token ? `Authorization: Bearer ${token}\r\n` : ''}${keepAlive ? '' : 'Connection: close\r\n'}\r\n`;

describe('slow clients against the API', () => {
  it('an executor host\'s artifacts upload may take many request timeouts, as its size allows; and it is taken whole', async () => {
    // The largest tar the policy allows may take a day here: only the request timeout could cut this one.
    const { port, remote, dir } = await listen(86_400);
    const a = await heldRun(remote, dir);
    const body = await tarBytes();
    // 2 KiB in 64-byte pieces every 100 ms: at least three seconds, three request timeouts.
    const r = await slowRequest(port, put(a.run, body.length, HOST_TOKEN), body, 64, 100);
    expect(r.sent).toBe(body.length);
    expect(r.status, r.text).toBe(200);
    expect(r.text).toContain('"files":1');
  }, 60_000);

  it('through a follower too: it lets the upload it forwards take as long (once the host\'s token is checked)', async () => {
    const { port: leaderPort, remote, dir } = await listen(86_400);
    const { port } = await listen(86_400, `http://127.0.0.1:${leaderPort}`);
    const a = await heldRun(remote, dir);
    const body = await tarBytes();
    const r = await slowRequest(port, put(a.run, body.length, HOST_TOKEN), body, 64, 100);
    expect(r.status, r.text).toBe(200);
    expect(r.text).toContain('"files":1');
  }, 60_000);

  it('an upload slower than the slowest rate taken is cut at its own deadline, even while it still sends', async () => {
    // The largest tar may take two seconds past the request timeout: this body never ends.
    const { port, remote, dir } = await listen(2);
    const a = await heldRun(remote, dir);
    // A tar of 1 MiB within the caps, at 320 bytes a second: it would take almost an hour.
    const body = await tarBytes('x'.repeat(1024 * 1024));
    const r = await slowRequest(port, put(a.run, body.length, HOST_TOKEN), body, 16, 50);
    expect(r.status, r.text).toBeUndefined(); // closed, never answered
    expect(r.sent).toBeLessThan(body.length);
  }, 60_000);

  it('a slowloris elsewhere, or on the upload route without a host\'s token, is cut at the request timeout', async () => {
    const { port, remote, dir } = await listen(86_400);
    const a = await heldRun(remote, dir);
    // A body that never ends: the API answers 401 at once (no host's token) or, for a change,
    // waits for it; the request timeout closes both connections. Headers that never end are cut too.
    const noToken = slowRequest(port, put(a.run, 1024 * 1024, undefined, true), undefined, 16, 50);
    const wrongToken = slowRequest(port, put(a.run, 1024 * 1024, 'not-a-host-token-0123456789', true), undefined, 16, 50);
    const change = slowRequest(port, 'POST /api/changes HTTP/1.1\r\nHost: ci\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n', undefined, 16, 50);
    const headers = new Promise<{ status: number | undefined }>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      let text = '';
      socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
      socket.on('error', () => undefined);
      socket.write('GET /api/queue HTTP/1.1\r\nHost: ci\r\n');
      const t = setInterval(() => socket.destroyed || socket.write('X-Slow: a\r\n'), 50);
      socket.on('close', () => {
        clearInterval(t);
        resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]) || undefined });
      });
    });
    const [n, w, c, h] = await Promise.all([noToken, wrongToken, change, headers]);
    for (const r of [n, w]) expect(r.status).toBe(401); // then closed: this promise resolves on close
    expect(c.status).toBe(408);
    expect(h.status).toBe(408);
  }, 60_000);

  it('a download (the job\'s image) is not cut by the request timeout while the host reads it slowly', async () => {
    const { port, remote, dir } = await listen(86_400);
    const a = await heldRun(remote, dir);
    const got = await new Promise<{ status: number | undefined; bytes: number; complete: boolean }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: `/api/executor/runs/${a.run}/image`, headers: { authorization: `Bearer ${HOST_TOKEN}`, connection: 'close' } }, (res) => {
        let bytes = 0;
        res.pause();
        // Nothing read for three request timeouts, then the rest.
        setTimeout(() => {
          res.on('data', (d: Buffer) => (bytes += d.length));
          res.on('end', () => resolve({ status: res.statusCode, bytes, complete: res.complete }));
          res.resume();
        }, 3 * REQUEST_MS);
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
    expect(got.status).toBe(200);
    expect(got.complete).toBe(true);
    expect(got.bytes).toBeGreaterThan(1024 * 1024); // a docker save of busybox, whole
  }, 60_000);
});
