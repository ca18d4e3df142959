/**
 * The promoter's orchestration on the pure tier: real git (the builder's own verifier and mirror,
 * the embargo lane's patch workspace), the real queue, audit log, config, tests and sign stages,
 * a real signing key; the stages that need the engine or the registry (environment, build, leak
 * check, push) and the job runner are in-memory stand-ins of their ports, each recording what it
 * was asked. The docker tier (promote.docker.test.ts, embargo-lane.docker.test.ts…) runs the real
 * ones.
 *
 * Covered: the stage order; the dependencies stage (one npm package from a registry on 127.0.0.1,
 * listed in the provenance; refused without a policy for it); a refusal or failure at each stage (what the result says, what is
 * audited, and that no later stage runs); the budget of a build; needs ordering and skipping; the
 * embargo lane running the same stages in its private lane.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import * as openpgp from 'openpgp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import { generateSigningKey } from '../../scripts/make-signing-key.js';
import { AuditLog, type AuditRecord } from '../../trusted-builder/audit/audit-log.js';
import { parsePromotionPolicy } from '../../trusted-builder/policy/promotion.js';
import { SecretsPolicy } from '../../trusted-builder/policy/secrets.js';
import { realStages, type PromotionStages } from '../../trusted-builder/promote/pipeline.js';
import { Promoter, type EmbargoPort, type PromoterDeps } from '../../trusted-builder/promote/promoter.js';
import { PromotionStore } from '../../trusted-builder/promote/promotion-store.js';
import { Stop, type Lane } from '../../trusted-builder/promote/stages/lane.js';
import type { SecretStore, SecretValue } from '../../trusted-builder/secrets/secret-store.js';
import { loadSigningKey, type SigningKey } from '../../trusted-builder/sign/signer.js';
import { parseSimpleSigningPayload } from '../../trusted-builder/sign/simple-signing.js';
import { SourceVerifier } from '../../trusted-builder/verify/source.js';
import { FakeRunner } from '../support/fake-runner.js';
import { createRepo, type TestRepo } from '../support/git-repo.js';

const dir = mkdtempSync(join(tmpdir(), 'airlock-promoter-'));
const PROJECT = 'demo/app';
const IMAGE = 'team/app';
const REGISTRY = 'registry.invalid:5000';
/** The embargo lane's own registry: its pushes and signatures name it, never REGISTRY. */
const EMBARGO_REGISTRY = 'embargo-registry.invalid:5001';
const TOKEN = 'npm-token-value-0123456789';
const config = (jobs: string) => `version: 1\nenvironment: { image: airlock/base:busybox }\njobs:\n${jobs}publish:\n  dockerfile: Dockerfile\n`;
const JOBS = `  build:\n    command: [sh, -c, "echo build"]\n    pipelines: [gate]\n  unit:\n    command: [sh, -c, "echo unit"]\n    needs: [build]\n    pipelines: [gate]\n  lint:\n    command: [sh, -c, "echo lint"]\n    pipelines: [gate]\n  after:\n    command: [sh, -c, "echo after"]\n    needs: [unit]\n    pipelines: [gate]\n`;
/** A package on a registry of this test's own on 127.0.0.1 (the pure tier reaches no other network; the real registry is in deps/npm.net.test.ts). */
const TARBALL = Buffer.from('not really a tarball: the stage checks digests, npm checks the rest');
const IS_NUMBER_INTEGRITY = `sha512-${createHash('sha512').update(TARBALL).digest('base64')}`;
const PUBLISH_JOB = `  publish-npm:\n    command: [sh, -c, "npm publish"]\n    pipelines: [gate]\n`;

let up: TestRepo;
let key: SigningKey;
let jobPolicy: JobPolicy;
let n = 0;

beforeAll(async () => {
  up = createRepo({ '.airlock.yaml': config(JOBS), Dockerfile: 'FROM airlock/base:busybox\nCOPY app.txt /app.txt\n', 'app.txt': 'hello\n' });
  key = await loadSigningKey((await generateSigningKey({ name: 'airlock test builder', email: 'builder@airlock.invalid' })).privateArmored);
  jobPolicy = loadJobPolicy();
}, 60_000);
afterAll(() => {
  up?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** An in-memory secret store (the SecretStore port): what it hands out is "in use". */
class MemorySecrets implements SecretStore {
  readonly kind = 'memory';
  readonly used: string[] = [];
  constructor(private readonly values: Record<string, SecretValue>) {}
  async read(path: string): Promise<SecretValue> {
    const v = this.values[path];
    if (!v) throw new Error(`no ${path}`);
    this.used.push(...Object.values(v));
    return { ...v };
  }
  inUse(): readonly string[] {
    return [...new Set(this.used)];
  }
  async close(): Promise<void> {}
}

/** The embargo store's port, in memory. */
class MemoryEmbargo implements EmbargoPort {
  readonly logs = new Map<string, string>();
  readonly breaks: { id: string; commit: string; reason: string }[] = [];
  readonly builds: { id: string; reference: string }[] = [];
  readonly artifacts = new Map<string, Buffer>();
  constructor(readonly patches: { id: string; patch: string; digest: string }[]) {}
  async active(): Promise<readonly { id: string; patch: string; digest: string }[]> {
    return this.patches;
  }
  async retire(): Promise<unknown> {
    throw new Error('not expected');
  }
  async appendLog(id: string, text: string): Promise<unknown> {
    this.logs.set(id, (this.logs.get(id) ?? '') + text);
    return undefined;
  }
  async recordBreak(id: string, b: { commit: string; reason: string }): Promise<unknown> {
    this.breaks.push({ id, ...b });
    return undefined;
  }
  async recordBuild(id: string, b: { commit: string; reference: string; digest: string }): Promise<unknown> {
    this.builds.push({ id, reference: b.reference });
    return undefined;
  }
  async putArtifact(id: string, name: string, bytes: Uint8Array): Promise<unknown> {
    this.artifacts.set(`${id} ${name}`, Buffer.from(bytes));
    return undefined;
  }
}

interface RigOptions {
  runner?: FakeRunner;
  jobPolicy?: JobPolicy;
  grants?: Record<string, { command: string[]; secrets: string[] }>;
  /** Stages replaced on top of the engine-free stand-ins (e.g. one that refuses). */
  stages?: Partial<PromotionStages>;
  embargo?: MemoryEmbargo;
  /** The promotion policy's `dependencies` section, as YAML (absent: none). */
  dependencies?: string;
}

async function rig(o: RigOptions = {}) {
  const id = String(++n);
  const audit = await AuditLog.open(join(dir, `audit-${id}.jsonl`));
  const store = new PromotionStore(join(dir, `promotions-${id}.sqlite`));
  const runner = o.runner ?? new FakeRunner();
  const lookasideDir = join(dir, `lookaside-${id}`);
  const privateLookasideDir = join(dir, `private-lookaside-${id}`);
  const workDir = join(dir, `work-${id}`);
  const calls: { stage: string; repository: string }[] = [];
  const logs: Record<string, unknown>[] = [];
  /** Where each push went, with which login (the stand-in push stage records what the real one would use). */
  const pushes: { reference: string; username: string }[] = [];
  const deps: PromoterDeps = {
    // Never reached: the stages that use the engine are stand-ins, and they build nothing to remove.
    docker: new Docker({ socketPath: join(dir, 'no-engine.sock') }),
    runner,
    verifier: new SourceVerifier(join(dir, `git-${id}`)),
    policy: parsePromotionPolicy(
      `version: 1\nbuilderId: https://airlock.invalid/trusted-builder/test\nregistry: ${REGISTRY}\nembargoRegistry: ${EMBARGO_REGISTRY}\n${o.dependencies ? `dependencies: ${o.dependencies}\n` : ''}projects:\n  - {name: ${PROJECT}, url: ${up.dir}, protectedBranches: [master], image: ${IMAGE}, review: none}\n`,
      'promotion.yaml',
    ),
    secretsPolicy: SecretsPolicy.parse({ version: 1, builder: { signingKey: 'b/key', registry: 'b/registry', hintSecret: 'b/hint' }, grants: o.grants ? { [PROJECT]: o.grants } : {} }),
    secrets: new MemorySecrets({ 'team/app/npm': { token: TOKEN } }),
    jobPolicy: o.jobPolicy ?? jobPolicy,
    audit,
    signingKey: key,
    registryCredentials: { username: 'u', password: 'p' },
    lookasideDir,
    workDir,
    logger: createLogger({ level: 'info', destination: { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) } }),
    store,
    ...(o.embargo ? { embargo: o.embargo, privateLookasideDir, embargoRegistryCredentials: { username: 'builder-e', password: 'pe' } } : {}),
  };
  const real = realStages(deps, Date.now);
  const stub: Partial<PromotionStages> = {
    environment: async () => `sha256:${'e'.repeat(64)}`,
    build: async () => ({ imageId: `sha256:${'1'.repeat(64)}`, bases: [{ name: 'airlock/base:busybox', digest: `sha256:${'b'.repeat(64)}` }], log: [], step: { name: 'publish-image', command: ['docker', 'build'], exitCode: 0 } }),
    leakCheck: async (l) => join(l.work, 'image.tar'),
    push: async (l) => {
      const reference = `${l.registry.host}/${l.repository}:${l.commit}`;
      pushes.push({ reference, username: l.registry.credentials.username });
      return { reference, digest: `sha256:${'d'.repeat(64)}`, attempts: 1 };
    },
  };
  const all: PromotionStages = { ...real, ...stub, ...o.stages };
  const recorded = Object.fromEntries(
    Object.entries(all).map(([stage, fn]) => [
      stage,
      (...args: unknown[]) => {
        const lane = args[0] as Partial<Lane>;
        calls.push({ stage, repository: typeof lane.repository === 'string' ? lane.repository : '(none)' });
        return (fn as (...a: unknown[]) => unknown)(...args);
      },
    ]),
  ) as unknown as PromotionStages;
  const promoter = new Promoter({ ...deps, stages: recorded });
  const records = (): AuditRecord[] =>
    readFileSync(join(dir, `audit-${id}.jsonl`), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as AuditRecord);
  const close = async () => {
    await promoter.drain();
    store.close();
    await audit.close();
  };
  return { promoter, runner, calls, pushes, records, logs, lookasideDir, privateLookasideDir, workDir, close, stages: () => calls.map((c) => c.stage) };
}

const hint = (commit: string, project = PROJECT) => ({ version: 1 as const, project, branch: 'master', commit });
const PUBLIC_STAGES = ['verify', 'config', 'dependencies', 'environment', 'tests', 'build', 'leakCheck', 'push', 'sign'];

describe('Promoter (pure tier: stages through their ports)', () => {
  it('runs the stages in order, the jobs in needs order, and publishes what it signed; each stage audited', async () => {
    const r = await rig();
    const commit = up.tip();
    const out = await r.promoter.promote(hint(commit));
    expect(out).toMatchObject({ state: 'published', project: PROJECT, commit, branch: 'master', reference: `${REGISTRY}/${IMAGE}:${commit}`, digest: `sha256:${'d'.repeat(64)}` });
    expect(r.stages()).toEqual(PUBLIC_STAGES);
    expect(r.calls.slice(1).every((c) => c.repository === IMAGE)).toBe(true);
    expect(r.runner.ran.map((x) => x.job)).toEqual(['build', 'unit', 'lint', 'after']);
    expect(r.runner.ran.every((x) => /^trusted-[0-9a-f-]{12}-[a-z]+$/.test(x.id))).toBe(true);
    expect(r.runner.drains).toBe(1);
    const kinds = r.records().map((x) => x.kind);
    expect(kinds).toEqual(['verify-passed', 'tests-passed', 'signed']);
    expect(r.records()[1]).toMatchObject({ project: PROJECT, commit, jobs: ['build', 'unit', 'lint', 'after'] });
    // The provenance the sign stage wrote names each test step with its exit code, then the image.
    if (out.state !== 'published') throw new Error('not published');
    const statement = JSON.parse(readFileSync(out.provenance, 'utf8')) as { predicate: { buildDefinition: { internalParameters: { steps: { name: string; exitCode?: number }[]; review?: unknown } } } };
    expect(statement.predicate.buildDefinition.internalParameters.steps.map((s) => `${s.name}=${s.exitCode}`)).toEqual(['test:build=0', 'test:unit=0', 'test:lint=0', 'test:after=0', 'publish-image=0']);
    expect(statement.predicate.buildDefinition.internalParameters.review).toBe('none');
    expect(existsSync(`${out.provenance}.asc`) && existsSync(out.signature)).toBe(true);
    // The work dir of the promotion is gone.
    expect(readdirSync(r.workDir)).toEqual([]);
    await r.close();
  });

  it('refuses a project the policy does not list before any stage, and audits it as a verify refusal', async () => {
    const r = await rig();
    const out = await r.promoter.promote(hint(up.tip(), 'demo/other'));
    expect(out).toMatchObject({ state: 'refused', step: 'policy', reason: 'project demo/other is not in the promotion policy' });
    expect(r.stages()).toEqual([]);
    expect(r.records()).toMatchObject([{ kind: 'verify-refused', project: 'demo/other', step: 'policy', state: 'refused' }]);
    await r.close();
  });

  it('refuses a commit on no protected branch at verify; nothing after it runs', async () => {
    const r = await rig();
    const change = up.change(101, 1, { 'app.txt': 'unreviewed\n' });
    const out = await r.promoter.promote(hint(change.sha));
    expect(out).toMatchObject({ state: 'refused', step: 'verify' });
    expect(out.state !== 'published' && out.reason).toContain('is not on a protected branch of demo/app');
    expect(r.stages()).toEqual(['verify']);
    expect(r.records()).toMatchObject([{ kind: 'verify-refused', step: 'verify', state: 'refused' }]);
    await r.close();
  });

  it('refuses a broken .airlock.yaml at config, and jobs over the build budget before any job runs', async () => {
    const r = await rig({ jobPolicy: { ...jobPolicy, build: { ...jobPolicy.build, jobs: 2 } } });
    const broken = up.commit({ '.airlock.yaml': 'version: 1\njobs: [not, a, map]\n' });
    const out = await r.promoter.promote(hint(broken));
    expect(out).toMatchObject({ state: 'refused', step: 'config' });
    expect(r.stages()).toEqual(['verify', 'config']);
    expect(r.records().at(-1)).toMatchObject({ kind: 'promotion-failed', step: 'config', state: 'refused' });

    // No publish section: nothing to publish, refused at config, saying what to add.
    const unpublished = up.commit({ '.airlock.yaml': config(JOBS).replace(/publish:\n.*\n$/, '') });
    const none = await r.promoter.promote(hint(unpublished));
    expect(none).toMatchObject({ state: 'refused', step: 'config' });
    expect(none.state !== 'published' && none.reason).toContain('.airlock.yaml: publish: required (the Dockerfile of the published image: publish: { dockerfile: Dockerfile })');

    const four = up.commit({ '.airlock.yaml': config(JOBS) });
    const over = await r.promoter.promote(hint(four));
    expect(over).toMatchObject({ state: 'refused', step: 'config' });
    expect(over.state !== 'published' && over.reason).toContain('4 jobs run in the gate pipeline; the policy allows at most 2 per build');
    expect(r.stages().slice(4)).toEqual(['verify', 'config', 'dependencies', 'environment', 'tests']);
    expect(r.runner.ran).toEqual([]);
    await r.close();
  });

  it('a failing job: its dependents are skipped, the others still run, the voting failures are audited, nothing is built', async () => {
    const r = await rig({ runner: new FakeRunner((s) => (s.env.AIRLOCK_JOB === 'unit' ? 'failed' : 'passed')) });
    const out = await r.promoter.promote(hint(up.commit({ 'app.txt': 'tests fail\n', '.airlock.yaml': config(JOBS) })));
    expect(out).toMatchObject({ state: 'failed', step: 'tests', reason: 'tests failed on the trusted rebuild: unit, after' });
    expect(r.runner.ran.map((x) => x.job)).toEqual(['build', 'unit', 'lint']);
    expect(r.stages()).toEqual(['verify', 'config', 'dependencies', 'environment', 'tests']);
    expect(r.records().map((x) => x.kind)).toEqual(['verify-passed', 'tests-failed', 'promotion-failed']);
    expect(r.records()[1]).toMatchObject({ jobs: ['unit', 'after'] });
    expect(r.runner.drains).toBe(0);
    await r.close();
  });

  it('gives a granted step its secret (audited by path) and refuses a step whose command is not the grant’s', async () => {
    const granted = await rig({ grants: { 'publish-npm': { command: ['sh', '-c', 'npm publish'], secrets: ['team/app/npm'] } } });
    const commit = up.commit({ '.airlock.yaml': config(PUBLISH_JOB) });
    expect(await granted.promoter.promote(hint(commit))).toMatchObject({ state: 'published' });
    expect(granted.runner.ran).toMatchObject([{ job: 'publish-npm', secretFiles: ['team/app/npm/token'] }]);
    expect(granted.records().find((x) => x.kind === 'secret-read')).toMatchObject({ path: 'team/app/npm', store: 'memory', purpose: 'step publish-npm', project: PROJECT, commit });
    expect(JSON.stringify(granted.records())).not.toContain(TOKEN);
    await granted.close();

    const other = await rig({ grants: { 'publish-npm': { command: ['sh', '-c', 'npm publish --tag next'], secrets: ['team/app/npm'] } } });
    const out = await other.promoter.promote(hint(commit));
    expect(out).toMatchObject({ state: 'refused', step: 'secrets' });
    expect(other.runner.ran).toEqual([]);
    expect(other.records().some((x) => x.kind === 'secret-read')).toBe(false);
    await other.close();
  });

  const stopAt: [keyof PromotionStages, Stop][] = [
    ['dependencies', new Stop('refused', 'dependencies', 'is-number@7.0.0 (package-lock.json): integrity mismatch: expected sha512-AAAA, got sha512-BBBB')],
    ['dependencies', new Stop('failed', 'dependencies', 'is-number@7.0.0 (package-lock.json): cannot fetch https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz: timed out')],
    ['environment', new Stop('refused', 'environment', 'not a pinned base image')],
    ['build', new Stop('failed', 'build', 'the publish image failed to build')],
    ['leakCheck', new Stop('refused', 'leak-check', 'a secret in use appears in log of unit (raw): nothing was published')],
    ['push', new Stop('failed', 'push', 'registry unavailable after 3 attempts')],
  ];
  for (const [stage, stop] of stopAt) {
    it(`a ${stop.state} ${stop.step} stage ends the promotion there, audited, nothing signed`, async () => {
      const r = await rig({
        stages: {
          [stage]: async () => {
            throw stop;
          },
        },
      });
      const out = await r.promoter.promote(hint(up.tip()));
      expect(out).toEqual({ state: stop.state, project: PROJECT, commit: up.tip(), step: stop.step, reason: stop.message });
      expect(r.stages()).toEqual(PUBLIC_STAGES.slice(0, PUBLIC_STAGES.indexOf(stage) + 1));
      expect(r.records().at(-1)).toMatchObject({ kind: 'promotion-failed', step: stop.step, state: stop.state, reason: stop.message });
      // The service log says it too: a refusal at warn, a failure at error, with step and reason.
      expect(r.logs.at(-1)).toMatchObject({ level: stop.state === 'refused' ? 40 : 50, msg: `promotion ${stop.state}`, project: PROJECT, step: stop.step, reason: stop.message });
      expect(existsSync(r.lookasideDir)).toBe(false);
      await r.close();
    });
  }

  it('fetches the locked dependencies after config, lists them in the provenance, audits them; no policy for them: refused, saying what to set', async () => {
    const registry = createServer((req, res) => {
      if (req.url === '/is-number/-/is-number-7.0.0.tgz') return void res.writeHead(200, { 'content-length': TARBALL.length }).end(TARBALL);
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => registry.listen(0, '127.0.0.1', r));
    const REG = `http://127.0.0.1:${(registry.address() as AddressInfo).port}/`;
    const lockfile = JSON.stringify({
      name: 'app',
      lockfileVersion: 3,
      requires: true,
      packages: { '': { name: 'app', dependencies: { 'is-number': '^7.0.0' } }, 'node_modules/is-number': { version: '7.0.0', integrity: IS_NUMBER_INTEGRITY } },
    });
    const commit = up.commit({ '.airlock.yaml': `${config(JOBS)}dependencies:\n  npm: [package-lock.json]\n`, 'package-lock.json': lockfile });

    const none = await rig();
    const refused = await none.promoter.promote(hint(commit));
    expect(refused).toMatchObject({ state: 'refused', step: 'dependencies' });
    expect(refused.state !== 'published' && refused.reason).toContain('the promotion policy has no `dependencies` section: SRE sets dependencies.npmRegistry');
    expect(none.stages()).toEqual(['verify', 'config', 'dependencies']);
    expect(none.records().at(-1)).toMatchObject({ kind: 'promotion-failed', step: 'dependencies', state: 'refused' });
    await none.close();

    // A lockfile that is not in the commit: refused at this step (not at config), naming it.
    const missing = up.commit({ '.airlock.yaml': `${config(JOBS)}dependencies:\n  npm: [web/package-lock.json]\n` });
    const m = await rig({ dependencies: `{ npmRegistry: "${REG}" }` });
    expect(await m.promoter.promote(hint(missing))).toMatchObject({ state: 'refused', step: 'dependencies', reason: expect.stringContaining('lockfile no web/package-lock.json at') });
    await m.close();

    let seen: Lane['dependencies'];
    const r = await rig({
      dependencies: `{ npmRegistry: "${REG}" }`,
      stages: {
        environment: async (l) => {
          seen = l.dependencies;
          return `sha256:${'e'.repeat(64)}`;
        },
      },
    });
    const out = await r.promoter.promote(hint(commit));
    expect(out).toMatchObject({ state: 'published' });
    expect(r.stages()).toEqual(PUBLIC_STAGES);
    // The later stages reach the verified set through the lane.
    expect(seen?.npm.map((p) => `${p.name}@${p.version}`)).toEqual(['is-number@7.0.0']);
    expect(r.records().find((x) => x.kind === 'dependencies-verified')).toMatchObject({ project: PROJECT, commit, lockfiles: ['package-lock.json'], npm: 1, debian: 0 });
    const statement = JSON.parse(readFileSync(out.state === 'published' ? out.provenance : '', 'utf8')) as { predicate: { buildDefinition: { resolvedDependencies: unknown[] } } };
    expect(statement.predicate.buildDefinition.resolvedDependencies).toContainEqual({
      uri: 'pkg:npm/is-number@7.0.0',
      digest: { sha512: Buffer.from(IS_NUMBER_INTEGRITY.slice('sha512-'.length), 'base64').toString('hex') },
      downloadLocation: `${REG}is-number/-/is-number-7.0.0.tgz`,
    });
    await r.close();
    await new Promise<void>((res) => registry.close(() => res()));
    // The tip again without lockfiles, for the tests after this one.
    up.commit({ '.airlock.yaml': config(JOBS) });
  });

  it('an unexpected error in a stage is a failure at step internal, with the error', async () => {
    const r = await rig({
      stages: {
        push: async () => {
          throw new Error('socket hang up');
        },
      },
    });
    expect(await r.promoter.promote(hint(up.tip()))).toMatchObject({ state: 'failed', step: 'internal', reason: 'internal error: socket hang up' });
    expect(r.records().at(-1)).toMatchObject({ kind: 'promotion-failed', step: 'internal' });
    expect(r.logs.at(-1)).toMatchObject({ level: 50, msg: 'promotion failed', step: 'internal', err: { message: 'socket hang up' } });
    await r.close();
  });

  it('queues hints one at a time in order, and does not queue a commit twice', async () => {
    const r = await rig();
    const a = up.commit({ 'app.txt': 'a\n', '.airlock.yaml': config(JOBS) });
    const b = up.commit({ 'app.txt': 'b\n' });
    expect(r.promoter.accept(hint(a))).toEqual({ queued: true });
    expect(r.promoter.accept(hint(b))).toEqual({ queued: true });
    expect(r.promoter.accept(hint(a))).toEqual({ queued: false, reason: 'already queued' });
    await r.promoter.idle();
    expect(r.stages()).toEqual([...PUBLIC_STAGES, ...PUBLIC_STAGES]);
    expect(r.promoter.result(PROJECT, a)).toMatchObject({ state: 'published' });
    expect(r.promoter.result(PROJECT, b)).toMatchObject({ state: 'published' });
    expect(r.promoter.accept(hint(b))).toEqual({ queued: false, reason: 'already published' });
    await r.close();
  });
});

describe('Promoter: the embargo lane runs the same stages in a private lane', () => {
  /** A patch as the security team makes it: format-patch of a commit on a private branch. */
  const patchOf = (files: Record<string, string>): string => {
    const base = up.tip();
    const fix = up.commit(files, 'fix: embargoed', { branch: `private-${++n}` });
    return up.git('format-patch', '--stdout', `${base}..${fix}`);
  };

  it('after the public image: the same stages again, into private/<image>, nothing named after the project', async () => {
    const commit = up.commit({ '.airlock.yaml': config(PUBLISH_JOB + JOBS), 'app.txt': 'embargo base\n' });
    const embargo = new MemoryEmbargo([{ id: 'E1', patch: patchOf({ 'fix.txt': 'fixed\n' }), digest: `sha256:${'f'.repeat(64)}` }]);
    const r = await rig({ embargo, grants: { 'publish-npm': { command: ['sh', '-c', 'npm publish'], secrets: ['team/app/npm'] } } });
    expect(r.promoter.accept(hint(commit))).toEqual({ queued: true });
    await r.promoter.idle();
    expect(r.promoter.result(PROJECT, commit)).toMatchObject({ state: 'published' });
    // The public lane, then the private one: the same stages but verify, in private/<image>.
    expect(r.calls).toEqual([
      ...PUBLIC_STAGES.map((stage) => ({ stage, repository: stage === 'verify' ? '(none)' : IMAGE })),
      ...PUBLIC_STAGES.slice(1).map((stage) => ({ stage, repository: `private/${IMAGE}` })),
    ]);
    const privateJobs = r.runner.ran.slice(5);
    expect(privateJobs.map((x) => x.id)).toEqual([0, 1, 2, 3, 4].map((i) => expect.stringMatching(new RegExp(`^private-[0-9a-f-]{12}-${i}$`))));
    // The patched image goes to the embargo lane's own registry with the builder's login there; the public one is unchanged.
    expect(embargo.builds).toEqual([{ id: 'E1', reference: `${EMBARGO_REGISTRY}/private/${IMAGE}:${commit}` }]);
    expect(r.pushes).toEqual([
      { reference: `${REGISTRY}/${IMAGE}:${commit}`, username: 'u' },
      { reference: `${EMBARGO_REGISTRY}/private/${IMAGE}:${commit}`, username: 'builder-e' },
    ]);
    expect(embargo.logs.get('E1')).toContain('job unit: passed');
    // Audited: the private lane's secret read names no project; the lane itself ids and digests only.
    const records = r.records();
    const reads = records.filter((x) => x.kind === 'secret-read');
    const read = { kind: 'secret-read', path: 'team/app/npm', store: 'memory', purpose: 'step publish-npm' };
    expect(reads.map(({ seq, at, prev, hash, ...fields }) => fields)).toEqual([
      { ...read, project: PROJECT, commit },
      { ...read, lane: 'private' },
    ]);
    expect(records.filter((x) => x.kind === 'embargo')).toEqual([expect.objectContaining({ event: 'published', embargoes: ['E1'], patches: [`sha256:${'f'.repeat(64)}`] })]);
    expect(records.filter((x) => ['tests-passed', 'signed'].includes(x.kind)).every((x) => x.project === PROJECT)).toBe(true);
    // The private provenance names steps by position and the patch by digest, in the private lookaside.
    const [provenance] = readdirSync(r.privateLookasideDir, { recursive: true }).map(String).filter((f) => f.endsWith('provenance.json'));
    const statement = readFileSync(join(r.privateLookasideDir, provenance!), 'utf8');
    expect(statement).toContain('"step-0"');
    expect(statement).toContain('embargoedPatches');
    expect(statement).not.toContain('test:unit');
    // …and the embargo keeps copies of the signature and provenance (airlock embargo show / verify).
    expect([...embargo.artifacts.keys()]).toEqual(['E1 image.signature', 'E1 provenance.json', 'E1 provenance.json.asc']);
    expect(embargo.artifacts.get('E1 provenance.json')!.toString('utf8')).toBe(statement);
    // The provenance's subject and the image signature's docker reference name the registry pushed to.
    expect(JSON.parse(statement)).toMatchObject({ subject: [{ name: `${EMBARGO_REGISTRY}/private/${IMAGE}` }] });
    const [signature] = readdirSync(r.privateLookasideDir, { recursive: true }).map(String).filter((f) => /signature-\d+$/.test(f));
    expect(signature, 'a simple-signing signature in the private lookaside').toBeDefined();
    const signed = await openpgp.readMessage({ binaryMessage: readFileSync(join(r.privateLookasideDir, signature!)) });
    const claims = parseSimpleSigningPayload(new Uint8Array(Buffer.from((await signed.getLiteralData()) as Uint8Array)));
    expect(claims.critical.identity['docker-reference']).toBe(`${EMBARGO_REGISTRY}/private/${IMAGE}:${commit}`);
    await r.close();
  });

  it('a private test failure: no patched image, the break recorded and the team warned; the public result stands', async () => {
    const commit = up.commit({ '.airlock.yaml': config(JOBS), 'app.txt': 'embargo base 2\n' });
    const embargo = new MemoryEmbargo([{ id: 'E2', patch: patchOf({ 'fix2.txt': 'fixed\n' }), digest: `sha256:${'a'.repeat(64)}` }]);
    const r = await rig({ embargo, runner: new FakeRunner((s) => (s.id.startsWith('private-') && s.env.AIRLOCK_JOB === 'lint' ? 'failed' : 'passed')) });
    r.promoter.accept(hint(commit));
    await r.promoter.idle();
    expect(r.promoter.result(PROJECT, commit)).toMatchObject({ state: 'published' });
    expect(r.stages().slice(PUBLIC_STAGES.length)).toEqual(['config', 'dependencies', 'environment', 'tests']);
    expect(embargo.builds).toEqual([]);
    expect(embargo.breaks).toEqual([{ id: 'E2', commit, step: 'tests', reason: 'tests: tests' }]);
    expect(embargo.artifacts.size).toBe(0);
    expect(r.records().filter((x) => x.kind === 'embargo')).toEqual([expect.objectContaining({ event: 'warned', embargo: 'E2', delivered: false, error: 'no notifier configured' })]);
    // No public audit record of the private lane's tests.
    expect(r.records().filter((x) => x.kind === 'tests-failed')).toEqual([]);
    await r.close();
  });
});
