/**
 * The trusted builder end to end on real parts: a real upstream repository, real Docker (the
 * hardened runner re-runs the test job; the publish image is built without network or cache), a
 * real registry with htpasswd auth, real skopeo pulling under the shipped policy, real signatures.
 * A signed hint goes in; the image comes out signed, with provenance, in the registry. The refusal
 * paths: a project not in policy, a commit not on a protected branch, a secret leaking into the
 * image, the registry down — none publishes anything, each is audited.
 */
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { signHint } from '#shared/hints/hint-auth.js';
import { createLogger } from '#shared/logging.js';
import { verifyAuditLog } from '../../trusted-builder/audit/audit-log.js';
import { startBuilderService, type BuilderService } from '../../trusted-builder/service.js';
import { builderRig } from '../support/builder-rig.js';
import { createRepo, type TestRepo } from '../support/git-repo.js';
import { startRegistry, type TestRegistry } from '../support/registry.js';

const run = promisify(execFile);
const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const HINT_SECRET = 'hint-secret-for-the-promotion-test';
const BASE = 'airlock/base:busybox';
const CONFIG = `version: 1
environment: { image: ${BASE} }
jobs:
  unit:
    command: [sh, -c, "test -f app.txt && echo unit ok"]
    pipelines: [gate]
publish:
  dockerfile: Dockerfile
`;

describe('trusted builder: hint → verify → rebuild → sign → push (real Docker, registry, skopeo)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-promote-'));
  let registry: TestRegistry;
  let up: TestRepo;
  let builder: BuilderService;
  let base: string;

  beforeAll(async () => {
    registry = await startRegistry({ auth: true });
    up = createRepo({ '.airlock.yaml': CONFIG, Dockerfile: `FROM ${BASE}\nCOPY app.txt /app.txt\n`, 'app.txt': 'hello from the trusted build\n' });
    const config = await builderRig({ dir, registry, project: { name: 'demo/app', url: up.dir, image: 'team/app' }, hintSecret: HINT_SECRET, baseImage: BASE, runnerStateDir: STATE_DIR });
    builder = await startBuilderService(config, { logger: createLogger({ level: process.env.AIRLOCK_TEST_LOG ?? 'silent' }), pushOptions: { retry: { attempts: 3, baseDelayMs: 10, maxDelayMs: 20 } } });
    base = await builder.listen();
    writeFileSync(join(dir, 'builder.pub.asc'), builder.publicKey);
  }, 60_000);

  afterAll(async () => {
    await builder?.close();
    await registry?.stop();
    up?.dispose();
    await createDocker()
      .listImages({ filters: { reference: ['airlock-trusted/*'] } })
      .then((imgs) => Promise.all(imgs.map((i) => createDocker().getImage(i.Id).remove({ force: true }).catch(() => undefined))));
    rmSync(dir, { recursive: true, force: true });
  });

  const hint = async (project: string, commit: string) => {
    const body = Buffer.from(JSON.stringify({ version: 1, project, branch: 'master', commit, ciRun: '1' }));
    const r = await builder.app.inject({ method: 'POST', url: '/v1/hints', payload: body, headers: { ...signHint(Buffer.from(HINT_SECRET), body, Math.floor(Date.now() / 1000)), 'content-type': 'application/json' } });
    expect(r.statusCode, r.body).toBe(202);
    await builder.promoter.idle();
    return builder.promoter.result(project, commit);
  };

  /** skopeo under the shipped policy and registries.d, with this test's registry, lookaside and key. */
  const pull = async (reference: string) => {
    const policy = JSON.parse(readFileSync('policies/containers-policy.json', 'utf8')) as { transports: { docker: Record<string, [{ keyPath: string }]> } };
    const scope = policy.transports.docker['127.0.0.1:5000']!;
    scope[0].keyPath = join(dir, 'builder.pub.asc');
    policy.transports.docker = { [registry.url]: scope };
    writeFileSync(join(dir, 'policy.json'), JSON.stringify(policy));
    const regd = join(dir, 'registries.d');
    mkdirSync(regd, { recursive: true });
    const shipped = readFileSync('policies/registries.d/airlock.yaml', 'utf8');
    writeFileSync(join(regd, 'airlock.yaml'), shipped.replace(/^ {2}127\.0\.0\.1:5000:/m, `  ${registry.url}:`).replaceAll('http://127.0.0.1:8090/lookaside', `${base}/lookaside`));
    const out = join(dir, `pulled-${Date.now()}`);
    return run('skopeo', ['--policy', join(dir, 'policy.json'), '--registries.d', regd, 'copy', '--src-tls-verify=false', '--src-creds', `${registry.username}:${registry.password}`, `docker://${reference}`, `dir:${out}`]);
  };

  it('publishes a verified, re-tested, hermetically built image, signed, that skopeo pulls under the shipped policy', async () => {
    const commit = up.tip();
    const r = await hint('demo/app', commit);
    expect(r, JSON.stringify(r)).toMatchObject({ state: 'published', reference: `${registry.url}/team/app:${commit}` });
    if (r?.state !== 'published') return;
    expect(r.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    await expect(pull(r.reference)).resolves.toBeDefined();

    // The provenance: a detached signature gpg accepts, naming the source and the digest.
    const statement = JSON.parse(readFileSync(r.provenance, 'utf8')) as { subject: [{ digest: { sha256: string } }]; predicate: { buildDefinition: { externalParameters: { source: { commit?: string } } } } };
    expect(statement.subject[0].digest.sha256).toBe(r.digest.slice('sha256:'.length));
    expect(JSON.stringify(statement)).toContain(commit);
    const gnupg = mkdtempSync(join(tmpdir(), 'airlock-gpg-'));
    chmodSync(gnupg, 0o700);
    await run('gpg', ['--homedir', gnupg, '--batch', '--import', join(dir, 'builder.pub.asc')]);
    const v = await run('gpg', ['--homedir', gnupg, '--batch', '--status-fd', '1', '--verify', `${r.provenance}.asc`, r.provenance]);
    expect(v.stdout).toMatch(/\[GNUPG:\] VALIDSIG/);
    rmSync(gnupg, { recursive: true, force: true });

    // A repeated hint (at-least-once delivery) publishes nothing new.
    const again = await builder.app.inject({
      method: 'POST',
      url: '/v1/hints',
      payload: JSON.stringify({ version: 1, project: 'demo/app', branch: 'master', commit }),
      headers: { ...signHint(Buffer.from(HINT_SECRET), Buffer.from(JSON.stringify({ version: 1, project: 'demo/app', branch: 'master', commit })), Math.floor(Date.now() / 1000)), 'content-type': 'application/json' },
    });
    expect(again.json()).toMatchObject({ accepted: true, queued: false, reason: 'already published' });
  }, 120_000);

  it('an unsigned image of the same registry is refused by the shipped policy', async () => {
    await run('skopeo', ['copy', '--insecure-policy', '--dest-tls-verify=false', '--dest-creds', `${registry.username}:${registry.password}`, `docker-daemon:${BASE}`, `docker://${registry.url}/team/app:unsigned`]);
    await expect(pull(`${registry.url}/team/app:unsigned`)).rejects.toThrow(/signature/i);
  }, 60_000);

  it('refuses a project not in policy and a commit not on a protected branch, publishing nothing', async () => {
    const other = await hint('demo/other', up.tip());
    expect(other).toMatchObject({ state: 'refused', step: 'policy', reason: 'project demo/other is not in the promotion policy' });
    const change = up.change(9, 1, { 'app.txt': 'unreviewed\n' });
    const off = await hint('demo/app', change.sha);
    expect(off).toMatchObject({ state: 'refused', step: 'verify' });
    expect(off?.state === 'refused' && off.reason).toMatch(/not on a protected branch/);
    const tags = await fetch(`http://${registry.url}/v2/team/app/tags/list`, { headers: { authorization: `Basic ${Buffer.from(`${registry.username}:${registry.password}`).toString('base64')}` } }).then((x) => x.json() as Promise<{ tags: string[] }>);
    expect(tags.tags).not.toContain(change.sha);
  }, 60_000);

  it('refuses to publish an image that contains a secret in use, and says where', async () => {
    const leaky = up.commit({ 'app.txt': `oops: ${HINT_SECRET}\n` }, 'leak a secret');
    const r = await hint('demo/app', leaky);
    expect(r).toMatchObject({ state: 'refused', step: 'leak-check' });
    expect(r?.state === 'refused' && r.reason).toMatch(/app\.txt/);
    expect(r?.state === 'refused' && r.reason).not.toContain(HINT_SECRET);
    const signed = readdirSync(builder.lookasideDir, { recursive: true }).map(String);
    expect(signed.filter((f) => f.endsWith('signature-1'))).toHaveLength(1); // only the first test's image
  }, 120_000);

  it('takes a test job\'s artifacts out and searches them too: a secret in one refuses the publish', async () => {
    const withArtifact = CONFIG.replace('command: [sh, -c, "test -f app.txt && echo unit ok"]', `command: [sh, -c, "echo '${HINT_SECRET}' > out.txt; echo unit ok"]\n    artifacts: [out.txt]`);
    expect(withArtifact).toContain('artifacts: [out.txt]');
    const r = await hint('demo/app', up.commit({ '.airlock.yaml': withArtifact }, 'a job with an artifact'));
    expect(r).toMatchObject({ state: 'refused', step: 'leak-check' });
    expect(r?.state === 'refused' && r.reason).toMatch(/artifact out\.txt of unit/);
    up.commit({ '.airlock.yaml': CONFIG }, 'back to the plain config');
  }, 120_000);

  it('fails clearly when the registry is down, after retries, and signs nothing', async () => {
    await registry.stop();
    const commit = up.commit({ 'app.txt': 'while the registry is down\n' }, 'next');
    const r = await hint('demo/app', commit);
    expect(r).toMatchObject({ state: 'failed', step: 'push' });
    expect(r?.state === 'failed' && r.reason).toMatch(/registry/i);
    const signed = readdirSync(builder.lookasideDir, { recursive: true }).map(String);
    expect(signed.filter((f) => f.endsWith('signature-1'))).toHaveLength(1);
    // Every decision is in the audit log, and the chain is intact.
    const v = await verifyAuditLog(builder.auditFile);
    expect(v.ok).toBe(true);
    const kinds = readFileSync(builder.auditFile, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { kind: string }).kind);
    expect(kinds).toEqual(expect.arrayContaining(['secret-read', 'hint-accepted', 'verify-passed', 'tests-passed', 'image-built', 'leak-check', 'pushed', 'signed', 'verify-refused', 'promotion-failed']));
    const text = readFileSync(builder.auditFile, 'utf8');
    expect(text).not.toContain(HINT_SECRET);
    expect(text).not.toContain(registry.password);
  }, 120_000);
});
