/**
 * The CI's egress end to end, on real parts: apt-cacher-ng and verdaccio started by the CI's code,
 * the real npm registry and Debian mirror behind them, a real job container on the package network.
 * An allowed fetch works, anything else is refused and counted, the second run is served from the
 * cache (counted), and the size bound empties it.
 */
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type Docker from 'dockerode';
import type { JobRunner } from '#shared/runner/job-runner.js';
import { Egress, type RunKind } from '../../../untrusted-ci/egress/egress.js';
import type { EgressEvent } from '../../../untrusted-ci/egress/front.js';
import { EgressPolicy } from '../../../untrusted-ci/egress/policy.js';
import { BUSYBOX, expectNothingLeft, makeRunner, spec, tempDir } from '../../support/docker.js';
import { envImages, input, makeRig } from '../environments/env-support.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
let docker: Docker;
let stateDirOf = '';
let runner: JobRunner;
let egress: Egress;
const events: { kind: RunKind; e: EgressEvent }[] = [];

const policy = EgressPolicy.parse({
  version: 1,
  sources: { debian: { mirrors: ['http://deb.debian.org/debian'] }, npm: { registry: 'https://registry.npmjs.org/' } },
  allow: { environments: ['debian'], jobs: ['debian', 'npm'] },
  cache: { maxSize: '1GiB' },
});

beforeAll(async () => {
  ({ docker, runner } = await makeRunner());
  const stateDir = tempDir('airlock-egress-');
  stateDirOf = stateDir;
  chmodSync(stateDir, 0o711); // the proxies' own user passes through it
  egress = await Egress.start({ stateDir, policy, onEvent: (kind, e) => events.push({ kind, e }) });
}, 60_000);
afterAll(async () => {
  await egress?.stop();
  await expectNothingLeft(docker, runner.owner, runner);
});

const FETCH = [
  // the tarball, from the npm port (busybox wget ignores no_proxy: the proxy variable is dropped here)
  'env -u http_proxy wget -q -O /tmp/n.tgz "${npm_config_registry}is-number/-/is-number-7.0.0.tgz" && sha1sum /tmp/n.tgz',
  // Debian's signed index, through the apt proxy
  'wget -q -O - http://deb.debian.org/debian/dists/bookworm/InRelease | grep "^Origin:"',
  // a host off the allowlist
  'wget -q -O /dev/null http://example.com/ 2>&1; echo "example: $?"',
  // the registry's other endpoints
  'env -u http_proxy wget -q -O /dev/null "${npm_config_registry}-/v1/search?text=x" 2>&1; echo "search: $?"',
].join('\n');

async function fetchRun(): Promise<{ log: string; summary: string }> {
  const lines: string[] = [];
  const run = egress.forRun('jobs', (l) => lines.push(l));
  expect(run).toBeDefined();
  const r = await runner.run(spec({ image: BUSYBOX, command: ['sh', '-c', FETCH], network: 'packages' }), { packages: run!.handlers });
  expect(r.exitCode, r.log).toBe(0);
  return { log: `${r.log}${lines.join('')}`, summary: run!.summary() };
}

/** The log's refused and failed request lines (what a failed count is made of), for an assertion's message. */
function problems(log: string): string {
  const lines = log.split('\n').filter((l) => l.includes('[airlock] packages: '));
  return lines.length > 0 ? lines.join('\n') : '(no refused or failed request in the log)';
}

describe('egress through the caching proxies', () => {
  it('fetches what is allowed, refuses the rest with a reason in the log, and serves the second run from the cache', async () => {
    const first = await fetchRun();
    expect(first.log).toMatch(/[0-9a-f]{40}\s+\/tmp\/n\.tgz/);
    expect(first.log).toContain('Origin: Debian');
    expect(first.log).toContain('example: 1');
    expect(first.log).toContain('search: 1');
    expect(first.log).toMatch(/refused GET http:\/\/example\.com\/: example\.com is not an allowed package source/);
    expect(first.log).toMatch(/refused GET \/-\/v1\/search/);
    expect(first.summary, problems(first.log)).toMatch(/2 refused, 0 failed/);
    expect(first.summary).toMatch(/0 from the cache, 2 fetched/);

    const second = await fetchRun();
    expect(second.summary, problems(second.log)).toMatch(/2 from the cache, 0 fetched, 2 refused, 0 failed/);
    expect(events.filter((x) => x.e.outcome === 'hit').map((x) => x.e.source).sort()).toEqual(['debian', 'npm']);
    expect(events.every((x) => x.kind === 'jobs')).toBe(true);
  }, 120_000);

  it('started the proxies at the first run that asked, as their own user', () => {
    const uid = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('airlock-proxy:'))?.split(':')[2];
    expect(uid).toBeDefined();
    const pids = egress.proxies!.pids();
    expect(pids).toHaveLength(2);
    for (const pid of pids) expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s`, 'm'));
    // Root owns every directory above what they write: they cannot plant a link where root writes.
    const dir = join(stateDirOf, 'egress');
    for (const d of ['', 'cache', 'conf', 'conf/apt-cacher-ng']) expect(statSync(join(dir, d)).uid, d).toBe(0);
    for (const d of ['cache/debian', 'cache/npm', 'run', 'log']) expect(String(statSync(join(dir, d)).uid), d).toBe(uid);
  });

  it('a run of a kind the policy gives no source is not served', () => {
    const p = EgressPolicy.parse({ ...policy, allow: { environments: [], jobs: ['npm'] } });
    expect(p.allow.environments).toEqual([]);
    expect(egress.forRun('environments', () => undefined)?.allowed).toEqual(['debian']);
  });

  it('an environment build installs a Debian package through the proxy; its second build is served from the cache', async () => {
    const rig = makeRig();
    const dockerfile = [
      'FROM airlock/base:bookworm',
      // apt honours http_proxy, a build argument the CI passes; the base image's sources are deb.debian.org
      'RUN apt-get update -o Acquire::Languages=none && apt-get install -y --no-install-recommends jq && jq --version',
      // the proxy's other ports and the internet are out of reach from a RUN step too
      'RUN if wget -q -T 3 -O /dev/null http://example.com/ 2>/dev/null || curl -s -m 3 http://127.0.0.1:5000/ >/dev/null 2>&1; then exit 1; fi; echo isolated',
    ].join('\n');
    const build = async (project: string) => {
      const lines: string[] = [];
      const run = egress.forRun('environments', (l) => lines.push(l));
      const r = await rig.builder.ensure(await input(rig, project, dockerfile, {}, { packages: run!.handlers, onLog: (l) => lines.push(l) }));
      r.release();
      return { r, log: lines.join('\n'), summary: run!.summary() };
    };
    try {
      const first = await build('egress-env-a');
      expect(first.r.cached).toBe(false);
      expect(first.log).toMatch(/jq-1\.6/);
      expect(first.log).toContain('network: packages only');
      expect(first.summary, problems(first.log)).toMatch(/\(debian\): \d+ requests, \d+ from the cache, [1-9]\d* fetched, 0 refused, 0 failed/);
      // another project, the same packages: built again (another tag), its .debs from the cache
      const second = await build('egress-env-b');
      expect(second.r.cached).toBe(false);
      expect(Number(/(\d+) from the cache/.exec(second.summary)?.[1]), `${second.summary}${problems(second.log)}`).toBeGreaterThanOrEqual(3);
      // jobs of this policy may not use Debian: the environments' front is not the jobs'
      expect(egress.forRun('jobs', () => undefined)?.allowed).toEqual(['debian', 'npm']);
    } finally {
      for (const i of await envImages(rig.docker, 'egress-env-')) await rig.docker.getImage(i.Id).remove({ force: true }).catch(() => undefined);
    }
  }, 300_000);

  it('the proxies die with the CI process that started them (kill -9 included)', async () => {
    const stateDir = tempDir('airlock-egress-crash-');
    chmodSync(stateDir, 0o711);
    const script = [
      "import { PackageProxies } from './untrusted-ci/egress/proxies.ts';",
      "import { EgressPolicy } from './untrusted-ci/egress/policy.ts';",
      `const policy = EgressPolicy.parse(${JSON.stringify({ version: 1, sources: { npm: { registry: 'https://registry.npmjs.org/' }, debian: { mirrors: ['http://deb.debian.org/debian'] } }, allow: { jobs: ['npm', 'debian'] } })});`,
      `const p = await PackageProxies.start({ dir: ${JSON.stringify(join(stateDir, 'egress'))}, policy });`,
      "console.log(JSON.stringify(p.pids()));",
      'setInterval(() => undefined, 1000);',
    ].join('\n');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    const pids = await new Promise<number[]>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(JSON.parse(out.split('\n')[0]!) as number[]);
      });
      child.on('exit', (code) => reject(new Error(`the child exited ${code} before starting the proxies`)));
    });
    expect(pids).toHaveLength(2);
    const alive = () => pids.filter((pid) => existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z '));
    expect(alive()).toHaveLength(2);
    child.kill('SIGKILL');
    for (let i = 0; i < 100 && alive().length > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(alive()).toEqual([]);
  }, 60_000);

  it('the size bound removes the least recently used files', async () => {
    const report = await (await import('../../../untrusted-ci/egress/cache-gc.js')).pruneCache(egress.proxies!.cacheDirs, 0);
    expect(report.files).toBeGreaterThanOrEqual(2);
    expect(report.keptBytes).toBe(0);
    const third = await fetchRun();
    expect(third.summary, problems(third.log)).toMatch(/0 from the cache, 2 fetched/);
  }, 120_000);
});
