/**
 * The trusted builder checks review itself, end to end on real parts: the Gerrit stand-in as the
 * review system (the builder's own read-only account), real git, Docker, a registry with htpasswd.
 * A reviewed change is published and its signed provenance names the change, its owner, its
 * approver and its submitter; a self-approved change, a commit pushed past review with a valid
 * hint, and a hint for an older commit are refused and audited, and nothing of them is signed.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { signHint } from '#shared/hints/hint-auth.js';
import { createLogger } from '#shared/logging.js';
import { startBuilderService, type BuilderService } from '../../trusted-builder/service.js';
import { builderRig } from '../support/builder-rig.js';
import { BUILDER_ACCOUNT, CI_ACCOUNT, startGerrit, type GerritRig } from '../support/gerrit-rig.js';
import { startRegistry, type TestRegistry } from '../support/registry.js';

const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const HINT_SECRET = 'hint-secret-for-the-review-promotion-test';
const BASE = 'airlock/base:busybox';
const PROJECT = 'team/reviewed';
const CONFIG = `version: 1
environment: { image: ${BASE} }
jobs:
  unit:
    command: [sh, -c, "test -f app.txt && echo unit ok"]
publish:
  dockerfile: Dockerfile
`;

describe('trusted builder: review read from the review system (real Docker, registry, Gerrit stand-in)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-review-promote-'));
  let registry: TestRegistry;
  let rig: GerritRig;
  let builder: BuilderService;
  let initial: string;

  beforeAll(async () => {
    registry = await startRegistry({ auth: true });
    rig = await startGerrit();
    initial = rig.gerrit.createProject(PROJECT, { '.airlock.yaml': CONFIG, Dockerfile: `FROM ${BASE}\nCOPY app.txt /app.txt\n`, 'app.txt': 'v1\n' });
    const config = await builderRig({
      dir,
      registry,
      project: { name: PROJECT, url: rig.gerrit.gitUrl(PROJECT), image: 'team/reviewed' },
      hintSecret: HINT_SECRET,
      baseImage: BASE,
      runnerStateDir: STATE_DIR,
      review: { url: rig.gerrit.url, username: BUILDER_ACCOUNT, password: rig.passwords[BUILDER_ACCOUNT]!, since: initial },
    });
    builder = await startBuilderService(config, { logger: createLogger({ level: process.env.AIRLOCK_TEST_LOG ?? 'silent' }), pushOptions: { retry: { attempts: 2, baseDelayMs: 10, maxDelayMs: 20 } } });
  }, 60_000);

  afterAll(async () => {
    await builder?.close();
    await registry?.stop();
    await rig?.gerrit.close();
    await createDocker()
      .listImages({ filters: { reference: ['airlock-trusted/*'] } })
      .then((imgs) => Promise.all(imgs.map((i) => createDocker().getImage(i.Id).remove({ force: true }).catch(() => undefined))));
    rmSync(dir, { recursive: true, force: true });
  });

  const hint = async (commit: string) => {
    const body = Buffer.from(JSON.stringify({ version: 1, project: PROJECT, branch: 'master', commit, ciRun: '1' }));
    const r = await builder.app.inject({ method: 'POST', url: '/v1/hints', payload: body, headers: { ...signHint(Buffer.from(HINT_SECRET), body, Math.floor(Date.now() / 1000)), 'content-type': 'application/json' } });
    expect(r.statusCode, r.body).toBe(202);
    await builder.promoter.idle();
    return builder.promoter.result(PROJECT, commit);
  };
  const merge = (n: number, by = 'grace'): string => {
    rig.gerrit.review(n, by, { labels: { 'Code-Review': 2 } });
    rig.gerrit.review(n, CI_ACCOUNT, { labels: { Verified: 2 } });
    rig.gerrit.submitAs(n, CI_ACCOUNT);
    return rig.gerrit.branchTip(PROJECT);
  };
  const signatures = () => readdirSync(builder.lookasideDir, { recursive: true }).map(String).filter((f) => f.endsWith('signature-1')).length;

  it('publishes a reviewed change; the signed provenance names its change, owner, approver and submitter', async () => {
    const a = rig.gerrit.upload({ project: PROJECT, owner: 'ada', subject: 'app: v2', files: { 'app.txt': 'v2\n' } });
    const tip = merge(a.number);
    const r = await hint(tip);
    expect(r, JSON.stringify(r)).toMatchObject({ state: 'published' });
    if (r?.state !== 'published') return;
    const statement = JSON.parse(readFileSync(r.provenance, 'utf8')) as { predicate: { buildDefinition: { internalParameters: { review: unknown } } } };
    expect(statement.predicate.buildDefinition.internalParameters.review).toEqual({
      system: rig.gerrit.url,
      project: PROJECT,
      branch: 'master',
      from: initial,
      changes: [
        expect.objectContaining({
          number: a.number,
          changeId: a.changeId,
          patchset: 1,
          revision: a.sha,
          subject: 'app: v2',
          owner: 'ada',
          uploader: 'ada',
          submitter: CI_ACCOUNT,
          approvals: [expect.objectContaining({ label: 'Code-Review', value: 2, by: 'grace' })],
        }),
      ],
      merges: [],
    });
    // The builder read the review record with its own account, never the CI's.
    const users = new Set(rig.gerrit.requests.filter((q) => q.path.startsWith('/changes')).map((q) => q.user));
    expect([...users]).toEqual([BUILDER_ACCOUNT]);
  }, 120_000);

  it('refuses a self-approved change (the policy does not allow it), and audits why', async () => {
    const own = rig.gerrit.upload({ project: PROJECT, owner: 'grace', subject: 'app: v3, by myself', files: { 'app.txt': 'v3\n' } });
    const tip = merge(own.number, 'grace');
    const before = signatures();
    const r = await hint(tip);
    expect(r).toMatchObject({ state: 'refused', step: 'review' });
    expect(r?.state === 'refused' && r.reason).toContain('self-approval is not accepted');
    expect(signatures()).toBe(before);
    const audit = readFileSync(builder.auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { kind: string; commit?: string; step?: string });
    expect(audit.find((x) => x.kind === 'verify-refused' && x.commit === tip)).toMatchObject({ step: 'review' });
  }, 60_000);

  it('refuses a commit pushed past review, though its hint is correctly signed; and a hint for an older commit', async () => {
    // Once a tainted commit is on the branch, every later commit carries it: all are refused
    // until the branch is put right. So this test runs last.
    const pushed = rig.gerrit.directPush(PROJECT, 'master', { 'app.txt': 'backdoored\n' }, { as: 'mallory' });
    const before = signatures();
    const r = await hint(pushed);
    expect(r).toMatchObject({ state: 'refused', step: 'review' });
    expect(r?.state === 'refused' && r.reason).toBe(`no review: commit ${pushed.slice(0, 12)} on master is not the result of a reviewed change (no merged change of the review system; pushed past review?)`);
    const old = await hint(initial);
    expect(old).toMatchObject({ state: 'refused', step: 'history' });
    expect(old?.state === 'refused' && old.reason).toMatch(/does not descend from [0-9a-f]{12}, the last commit of master promoted/);
    expect(signatures()).toBe(before);
  }, 60_000);
});
