/**
 * Secrets granted to a named step, on real parts: the secrets policy grants `demo/app`'s step
 * `publish-check` one secret; the trusted rebuild hands it to that step only, as a read-only file
 * on a tmpfs under /run/secrets — the step itself checks that (value by its sha256, tmpfs,
 * read-only, in no environment variable) — and the other step sees no /run/secrets at all. A step
 * that prints its secret gets the publish refused by the leak check. Nothing stays on the host's
 * tmpfs once the jobs are gone, and the audit log names the path, never the value.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signHint } from '#shared/hints/hint-auth.js';
import { createLogger } from '#shared/logging.js';
import { DEFAULT_SECRETS_TMPFS } from '#shared/runner/secret-files.js';
import { startBuilderService, type BuilderService } from '../../trusted-builder/service.js';
import { builderRig } from '../support/builder-rig.js';
import { createRepo, type TestRepo } from '../support/git-repo.js';
import { startRegistry, type TestRegistry } from '../support/registry.js';

const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const HINT_SECRET = 'hint-secret-for-the-step-secrets-test';
const BASE = 'airlock/base:busybox';
const TOKEN = `npm-token-${Math.random().toString(36).slice(2)}-granted`;
const sha = createHash('sha256').update(TOKEN).digest('hex');
const FILE = '/run/secrets/team/app/npm/token';

// The granted step runs the command the secrets policy names (`sh publish-check.sh`); what the
// script does is the repository's, as any reviewed code is.
const config = (command = 'sh publish-check.sh') => `version: 1
environment: { image: ${BASE} }
jobs:
  unit:
    command: [sh, -c, "test ! -e /run/secrets && echo no secrets here"]
    pipelines: [gate]
  publish-check:
    command: ${command}
    pipelines: [gate]
publish:
  dockerfile: Dockerfile
`;
const CHECKS = [
  `test "$(sha256sum < ${FILE} | cut -d' ' -f1)" = ${sha}`,
  `test "$(stat -f -c %T /run/secrets)" = tmpfs`,
  `test "$AIRLOCK_SECRETS_DIR" = /run/secrets`,
  `! touch /run/secrets/x 2>/dev/null`,
  `! env | grep -qF "$(cat ${FILE})"`,
  'echo checks passed',
].join(' && ');

describe('trusted builder: secrets granted to a named step (tmpfs files; real Docker)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-step-secrets-'));
  let registry: TestRegistry;
  let up: TestRepo;
  let builder: BuilderService;

  beforeAll(async () => {
    registry = await startRegistry({ auth: true });
    up = createRepo({ '.airlock.yaml': config(), 'publish-check.sh': `${CHECKS}\n`, Dockerfile: `FROM ${BASE}\nCOPY app.txt /app.txt\n`, 'app.txt': 'app\n' });
    const rig = await builderRig({ dir, registry, project: { name: 'demo/app', url: up.dir, image: 'team/app' }, hintSecret: HINT_SECRET, baseImage: BASE, runnerStateDir: STATE_DIR });
    mkdirSync(join(dir, 'secrets', 'team/app'), { recursive: true });
    writeFileSync(join(dir, 'secrets', 'team/app/npm.json'), JSON.stringify({ token: TOKEN }), { mode: 0o600 });
    const policy = readFileSync('policies/secrets.yaml', 'utf8').replace(/^grants: \{\}$/m, 'grants:\n  demo/app:\n    publish-check: { command: sh publish-check.sh, secrets: [team/app/npm] }');
    expect(policy).toContain('publish-check');
    writeFileSync(join(dir, 'secrets.yaml'), policy);
    builder = await startBuilderService({ ...rig, policies: { ...rig.policies, secrets: join(dir, 'secrets.yaml') } }, { logger: createLogger({ level: process.env.AIRLOCK_TEST_LOG ?? 'silent' }) });
  }, 60_000);

  afterAll(async () => {
    await builder?.close();
    await registry?.stop();
    up?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  const hint = async (commit: string) => {
    const body = Buffer.from(JSON.stringify({ version: 1, project: 'demo/app', branch: 'master', commit }));
    const r = await builder.app.inject({ method: 'POST', url: '/v1/hints', payload: body, headers: { ...signHint(Buffer.from(HINT_SECRET), body, Math.floor(Date.now() / 1000)), 'content-type': 'application/json' } });
    expect(r.statusCode, r.body).toBe(202);
    await builder.promoter.drain();
    return builder.promoter.result('demo/app', commit);
  };
  const ownDirs = () => {
    try {
      return readdirSync(DEFAULT_SECRETS_TMPFS).length;
    } catch {
      return 0;
    }
  };

  it('the granted step reads its secret from a read-only tmpfs file; the other step has none; the image publishes', async () => {
    const before = ownDirs();
    const r = await hint(up.tip());
    expect(r, JSON.stringify(r)).toMatchObject({ state: 'published' });
    // The step's directory is gone with its container (other suites' runners may hold theirs).
    expect(ownDirs()).toBeLessThanOrEqual(before);
    const audit = readFileSync(builder.auditFile, 'utf8');
    expect(audit).toContain('"purpose":"step publish-check"');
    expect(audit).toContain('"path":"team/app/npm"');
    expect(audit).not.toContain(TOKEN);
    // The public provenance says the granted step ran, not how it ended; other steps keep their result.
    if (r?.state !== 'published') return;
    const steps = (JSON.parse(readFileSync(r.provenance, 'utf8')) as { predicate: { buildDefinition: { internalParameters: { steps: { name: string; exitCode?: number }[] } } } }).predicate.buildDefinition.internalParameters.steps;
    expect(steps.find((x) => x.name === 'test:publish-check')).toEqual({ name: 'test:publish-check', command: ['sh', '-c', 'sh publish-check.sh'] });
    expect(steps.find((x) => x.name === 'test:unit')).toMatchObject({ exitCode: 0 });
  }, 120_000);

  it('a step renamed into a grant, or whose command the repository changed, gets no secret and publishes nothing', async () => {
    const commit = up.commit({ '.airlock.yaml': config(`[sh, -c, "cat ${FILE}"]`) }, 'another command under the granted name');
    const r = await hint(commit);
    expect(r).toMatchObject({ state: 'refused', step: 'secrets' });
    expect(r?.state === 'refused' && r.reason).toContain('does not run the command the secrets policy grants its secrets to');
    up.commit({ '.airlock.yaml': config() }, 'back to the granted command');
  }, 120_000);

  it('a granted step that fails its checks fails the promotion (the checks can fail)', async () => {
    const commit = up.commit({ 'publish-check.sh': `test "$(cat ${FILE})" = not-the-token\n` }, 'wrong expectation');
    const r = await hint(commit);
    expect(r).toMatchObject({ state: 'failed', step: 'tests' });
    expect(r?.state === 'failed' && r.reason).toMatch(/publish-check/);
  }, 120_000);

  it('a step that prints its secret gets the publish refused by the leak check, naming the log', async () => {
    const commit = up.commit({ 'publish-check.sh': `echo "token is $(cat ${FILE})"\n` }, 'print the token');
    const r = await hint(commit);
    expect(r).toMatchObject({ state: 'refused', step: 'leak-check' });
    expect(r?.state === 'refused' && r.reason).toMatch(/log of publish-check/);
    expect(JSON.stringify(r)).not.toContain(TOKEN);
  }, 120_000);
});
