/**
 * `npm run bench:builder`: the trusted builder's promotion, hint → signed image in the registry,
 * for a sample project, against the raw baseline measured in the same run: `docker build` of the
 * same Dockerfile (network off, no cache: what the builder does) + `docker push` of it to the same
 * registry. The builder's figure is split: the test re-run (the project's gate jobs again), and
 * everything else (verify, hermetic build, leak check, push, sign), which is what the target
 * (≤ 1.5× raw) is about. Also: signing time per image (signature + provenance), alone.
 * Real parts throughout: git, Docker, a registry with htpasswd auth, skopeo, openpgp.
 * The last line is JSON.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDocker } from '#shared/docker/client.js';
import { signHint } from '#shared/hints/hint-auth.js';
import { createLogger } from '#shared/logging.js';
import { startBuilderService } from '../trusted-builder/service.js';
import { provenanceStatement } from '../trusted-builder/sign/provenance.js';
import { loadSigningKey } from '../trusted-builder/sign/signer.js';
import { signImage, simpleSigningPayload } from '../trusted-builder/sign/simple-signing.js';
import { generateSigningKey } from '../scripts/make-signing-key.js';
import { createRepo } from '../test/support/git-repo.js';
import { startRegistry } from '../test/support/registry.js';
import { builderRig } from '../test/support/builder-rig.js';

const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 3);
const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const BASE = 'airlock/base:busybox';
const HINT_SECRET = 'bench-hint-secret-of-some-length';
const DOCKERFILE = `FROM ${BASE}\nCOPY app.txt /app.txt\nRUN ["/bin/busybox", "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do head -c 1048576 /dev/zero > /tmp/blob$i; done; cat /app.txt > /built.txt"]\n`;
const CONFIG = `version: 1
environment: { image: ${BASE} }
jobs:
  unit:
    command: [sh, -c, "test -f app.txt && sleep 1"]
    pipelines: [gate]
publish:
  dockerfile: Dockerfile
`;

const docker = createDocker();
const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-builder-'));
const registry = await startRegistry({ auth: true });
const up = createRepo({ '.airlock.yaml': CONFIG, Dockerfile: DOCKERFILE, 'app.txt': 'bench 0\n' });
const builder = await startBuilderService(
  await builderRig({ dir, registry, project: { name: 'bench/app', url: up.dir, image: 'bench/app' }, hintSecret: HINT_SECRET, baseImage: BASE, runnerStateDir: STATE_DIR, builderId: 'https://airlock.invalid/bench' }),
  { logger: createLogger({ level: process.env.AIRLOCK_BENCH_LOG ?? 'silent' }) },
);

/** The raw baseline: docker build (no cache, network off) + docker push of the same Dockerfile and context. */
async function raw(n: number): Promise<number> {
  const ctx = join(dir, `raw-${n}`);
  mkdirSync(ctx, { recursive: true });
  writeFileSync(join(ctx, 'Dockerfile'), DOCKERFILE);
  writeFileSync(join(ctx, 'app.txt'), `raw ${n}\n`);
  const tag = `${registry.url}/bench/raw:${n}`;
  const t0 = performance.now();
  const stream = await docker.buildImage({ context: ctx, src: ['Dockerfile', 'app.txt'] }, { t: tag, networkmode: 'none', nocache: true, pull: false, rm: true, forcerm: true, version: '1' });
  await new Promise((res, rej) => docker.modem.followProgress(stream, (e: Error | null) => (e ? rej(e) : res(undefined))));
  const push = (await docker.getImage(tag).push({ authconfig: { username: registry.username, password: registry.password, serveraddress: registry.url } })) as NodeJS.ReadableStream;
  await new Promise((res, rej) =>
    docker.modem.followProgress(push, (e: Error | null, out: { error?: string }[]) => {
      const err = e ?? (out.find((o) => o.error) ? new Error(out.find((o) => o.error)!.error) : null);
      return err ? rej(err) : res(undefined);
    }),
  );
  const ms = performance.now() - t0;
  await docker.getImage(tag).remove({ force: true }).catch(() => undefined);
  return ms;
}

/** One promotion: hint → published; the test re-run's share read from the audit times. */
async function promote(n: number): Promise<{ totalMs: number; testsMs: number }> {
  const commit = up.commit({ 'app.txt': `bench ${n}\n` }, `bench ${n}`);
  const body = Buffer.from(JSON.stringify({ version: 1, project: 'bench/app', branch: 'master', commit }));
  const t0 = performance.now();
  const r = await builder.app.inject({ method: 'POST', url: '/v1/hints', payload: body, headers: { ...signHint(Buffer.from(HINT_SECRET), body, Math.floor(Date.now() / 1000)), 'content-type': 'application/json' } });
  if (r.statusCode !== 202) throw new Error(`hint: ${r.statusCode} ${r.body}`);
  await builder.promoter.idle();
  const totalMs = performance.now() - t0;
  const res = builder.promoter.result('bench/app', commit);
  if (res?.state !== 'published') throw new Error(`promotion ${n}: ${JSON.stringify(res)}`);
  const { readFileSync } = await import('node:fs');
  const records = readFileSync(builder.auditFile, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { kind: string; commit?: string; at: string });
  const at = (kind: string) => Date.parse(records.find((x) => x.kind === kind && x.commit === commit)?.at ?? '');
  // BENCH_TRACE=1: each audit record of this promotion, ms after the first.
  if (process.env.BENCH_TRACE === '1') {
    const mine = records.filter((x) => x.commit === commit);
    const first = Date.parse(mine[0]?.at ?? '');
    console.log(`  promotion ${n}: ${mine.map((x) => `${x.kind} +${Date.parse(x.at) - first}`).join(', ')} (total ${Math.round(totalMs)} ms)`);
  }
  return { totalMs, testsMs: at('tests-passed') - at('verify-passed') };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const r1 = (v: number): number => Math.round(v);

// Warm-up: the runner, the mirror, skopeo's first run.
await promote(0);
await raw(0);
const raws: number[] = [];
const totals: number[] = [];
const tests: number[] = [];
for (let i = 1; i <= SAMPLES; i++) {
  raws.push(await raw(i));
  const p = await promote(i);
  totals.push(p.totalMs);
  tests.push(p.testsMs);
}
const rawMs = median(raws);
const totalMs = median(totals);
const testsMs = median(tests);
const withoutTestsMs = median(totals.map((t, i) => t - tests[i]!));

// Signing alone: a simple-signing signature and a signed provenance statement, per image.
const signing = await loadSigningKey((await generateSigningKey({ name: 'airlock bench', email: 'bench@airlock.invalid' })).privateArmored);
const signs: number[] = [];
for (let i = 0; i < 20; i++) {
  const t0 = performance.now();
  const digest = `sha256:${i.toString(16).padStart(64, '0')}`;
  await signImage(signing, simpleSigningPayload({ dockerReference: `${registry.url}/bench/app:v${i}`, manifestDigest: digest, creator: 'bench', timestamp: 1 }));
  const now = new Date();
  await signing.signDetached(
    provenanceStatement({ subject: { name: `${registry.url}/bench/app`, digest }, builderId: 'https://airlock.invalid/bench', source: { repo: up.dir, commit: 'a'.repeat(40) }, policyDigest: digest, baseImages: [], steps: [], startedOn: now, finishedOn: now, invocationId: String(i) }),
  );
  signs.push(performance.now() - t0);
}
const signMs = Math.round(median(signs) * 10) / 10;

console.log(`raw docker build + push: ${r1(rawMs)} ms (median of ${SAMPLES})`);
console.log(`hint → signed image: ${r1(totalMs)} ms, of which the test re-run ${r1(testsMs)} ms`);
console.log(`without the test re-run: ${r1(withoutTestsMs)} ms = ${(withoutTestsMs / rawMs).toFixed(2)}× raw (target ≤ 1.5×); with it ${(totalMs / rawMs).toFixed(2)}×`);
console.log(`signing per image (signature + signed provenance): ${signMs} ms`);

await builder.close();
await registry.stop();
up.dispose();
rmSync(dir, { recursive: true, force: true });
console.log(
  JSON.stringify({
    bench: 'builder',
    samples: SAMPLES,
    rawBuildPushMs: r1(rawMs),
    promotion: { totalMs: r1(totalMs), testRerunMs: r1(testsMs), withoutTestsMs: r1(withoutTestsMs) },
    ratio: Math.round((withoutTestsMs / rawMs) * 100) / 100,
    ratioWithTests: Math.round((totalMs / rawMs) * 100) / 100,
    signingMsPerImage: signMs,
    target: 1.5,
    met: withoutTestsMs / rawMs <= 1.5,
  }),
);
