/**
 * `npm run bench:deps`: `npm ci` of a lockfile of about 50 packages (express 4 and what it needs)
 * through the CI's package path — inside a package network's namespace (a holder container's, as a
 * job's), through the socat relay, the egress front and verdaccio — cold (an empty proxy cache) and
 * warm (the proxy's cache filled by the cold run), against the same `npm ci` straight from the
 * registry on the host, measured in the same run. Every `npm ci` starts with an empty npm cache of
 * its own, so what is measured is the path to the packages. Real parts throughout: the npm registry,
 * verdaccio, the engine. Goals: warmRatio ≤ 0.5, coldRatio ≤ 1.3. The last line is JSON.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDocker } from '#shared/docker/client.js';
import { DEFAULT_HOLDER_IMAGE, openPackageNetwork } from '#shared/egress/package-network.js';
import { newOwnerId } from '#shared/runner/owner.js';
import { Egress } from '../untrusted-ci/egress/egress.js';
import { EgressPolicy } from '../untrusted-ci/egress/policy.js';

const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 3);
const PACKAGE_JSON = { name: 'bench-deps', version: '1.0.0', private: true, dependencies: { express: '4.21.2' } };

const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-deps-'));
chmodSync(dir, 0o711); // the proxies' own user passes through it
const project = join(dir, 'project');

function sh(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    c.on('error', reject);
    c.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`))));
  });
}

/** One `npm ci` in the project with a fresh npm cache; `prefix` runs it elsewhere (nsenter into a namespace). Milliseconds. */
let runs = 0;
async function npmCi(registry: string, prefix: string[] = []): Promise<number> {
  rmSync(join(project, 'node_modules'), { recursive: true, force: true });
  const cache = join(dir, `npm-cache-${++runs}`);
  const argv = [...prefix, 'npm', 'ci', '--no-audit', '--no-fund', '--loglevel=error', `--cache=${cache}`, `--registry=${registry}`];
  const t0 = performance.now();
  await sh(argv[0]!, argv.slice(1), { cwd: project, env: { ...process.env, npm_config_update_notifier: 'false' } });
  const ms = performance.now() - t0;
  rmSync(cache, { recursive: true, force: true });
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

// The project and its lockfile (resolved once, not timed).
await sh('mkdir', ['-p', project]);
writeFileSync(join(project, 'package.json'), JSON.stringify(PACKAGE_JSON, null, 2));
await sh('npm', ['install', '--package-lock-only', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: project });
const lock = JSON.parse(readFileSync(join(project, 'package-lock.json'), 'utf8')) as { packages: Record<string, unknown> };
const packages = Object.keys(lock.packages).filter((k) => k !== '').length;

// Straight from the registry, on the host.
const direct: number[] = [];
for (let i = 0; i < SAMPLES; i++) direct.push(await npmCi('https://registry.npmjs.org/'));
// npm's own work, with no network at all: `npm ci --offline` from a filled npm cache. No cache in
// front of a registry can take a run below this.
const floor: number[] = [];
{
  const cache = join(dir, 'npm-cache-floor');
  await sh('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error', `--cache=${cache}`], { cwd: project });
  for (let i = 0; i < SAMPLES; i++) {
    rmSync(join(project, 'node_modules'), { recursive: true, force: true });
    const t0 = performance.now();
    await sh('npm', ['ci', '--offline', '--no-audit', '--no-fund', '--loglevel=error', `--cache=${cache}`], { cwd: project });
    floor.push(performance.now() - t0);
  }
  rmSync(cache, { recursive: true, force: true });
}

// Through the package path: a package network as a job gets, npm run inside its namespace.
const docker = createDocker();
const policy = EgressPolicy.parse({ version: 1, sources: { npm: { registry: 'https://registry.npmjs.org/' } }, allow: { jobs: ['npm'] } });
const egress = await Egress.start({ stateDir: dir, policy });
const run = egress.forRun('jobs', () => undefined)!;
const net = await openPackageNetwork({ docker, image: DEFAULT_HOLDER_IMAGE, dir: join(dir, 'pn'), owner: newOwnerId(), runId: 'bench-deps', handlers: run.handlers });
let result: Record<string, unknown>;
try {
  const pid = (await docker.getContainer(net.holderId).inspect()).State.Pid;
  const inside = ['nsenter', `--net=/proc/${pid}/ns/net`, '--'];
  const cold = await npmCi('http://127.0.0.1:4873/', inside);
  const warm: number[] = [];
  for (let i = 0; i < SAMPLES; i++) warm.push(await npmCi('http://127.0.0.1:4873/', inside));
  const d = median(direct);
  const f = median(floor);
  const w = median(warm);
  result = {
    packages,
    samples: SAMPLES,
    directMs: Math.round(d),
    coldMs: Math.round(cold),
    warmMs: Math.round(w),
    floorMs: Math.round(f),
    coldRatio: Number((cold / d).toFixed(2)),
    warmRatio: Number((w / d).toFixed(2)),
    // The best warmRatio any cache could reach here, and the share of the network time the warm cache leaves.
    floorRatio: Number((f / d).toFixed(2)),
    warmNetworkRatio: Number(((w - f) / Math.max(1, d - f)).toFixed(2)),
    proxy: run.summary().trim(),
    goals: { coldRatio: 1.3, warmRatio: 0.5 },
  };
  console.log(`npm ci of ${packages} packages: straight from the registry ${Math.round(d)} ms (median of ${SAMPLES}); through the CI's cache cold ${Math.round(cold)} ms (${result.coldRatio}×), warm ${Math.round(w)} ms (${result.warmRatio}×); npm's own work with no network ${Math.round(f)} ms (${result.floorRatio}×)`);
} finally {
  await net.close();
  await egress.stop();
  rmSync(dir, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
