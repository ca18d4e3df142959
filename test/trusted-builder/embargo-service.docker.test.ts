/**
 * The embargo lane in the real builder service (startBuilderService, real Docker for its runner):
 * off when the SecretStore has no embargo key (404, an audit record), on when it has one (the store
 * on `service.embargo` for the promoter, requests answered), and a broken security team directory
 * stops the start naming the file, as does a key without the lane's own registry (`embargoRegistry`)
 * and the builder's login there.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { makeRequest, openResponse } from '../../trusted-builder/embargo/request.js';
import { startBuilderService } from '../../trusted-builder/service.js';
import { builderRig } from '../support/builder-rig.js';
import { startRegistry } from '../support/registry.js';
import { CANARY_PATCH, makeMember, writeTeam, type TestMember } from '../support/embargo.js';

const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const root = mkdtempSync(join(tmpdir(), 'airlock-embargo-service-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const logger = createLogger({ level: process.env.AIRLOCK_TEST_LOG ?? 'silent' });

let alice: TestMember;
beforeAll(async () => {
  alice = await makeMember('alice');
});

let n = 0;
/** The lane's own registry, as the policy and the secret name it (nothing listens there: these cases push nothing). */
const EMBARGO_REGISTRY = { url: '127.0.0.1:5998', username: 'airlock-builder', password: 'pe' };
const rig = (embargo?: { teamDir: string; registry?: typeof EMBARGO_REGISTRY }, registry = { url: '127.0.0.1:5999', username: 'u', password: 'p' }) =>
  builderRig({
    dir: join(root, `case-${++n}`),
    registry,
    project: { name: 'demo/app', url: '/nonexistent/repo.git', image: 'team/app' },
    hintSecret: 'hint-secret',
    baseImage: 'airlock/base:busybox',
    runnerStateDir: STATE_DIR,
    ...(embargo ? { embargo } : {}),
  });

describe('the builder service and its embargo lane', () => {
  it('without an embargo key: no lane, 404, and an audit record saying so', async () => {
    const service = await startBuilderService(await rig(), { logger, workspacePool: 0 });
    try {
      expect(service.embargo).toBeUndefined();
      expect((await service.app.inject({ method: 'POST', url: '/v1/embargo', payload: 'x' })).statusCode).toBe(404);
      const records = readFileSync(service.auditFile, 'utf8');
      expect(records).toMatch(/"kind":"embargo","event":"lane-off","path":"airlock\/embargo-key"/);
    } finally {
      await service.close();
    }
  });

  it('with one: the store is on service.embargo and a member’s request is answered', async () => {
    const service = await startBuilderService(await rig({ teamDir: writeTeam(join(root, 'team-ok'), [alice]), registry: EMBARGO_REGISTRY }), { logger, workspacePool: 0 });
    try {
      const store = service.embargo!;
      const builderKey = await openpgp.readKey({ armoredKey: store.publicKey });
      const { armored, request } = await makeRequest({ action: 'submit', project: 'demo/app', patch: CANARY_PATCH }, { memberKey: alice.privateKey, builderKey });
      const r = await service.app.inject({ method: 'POST', url: '/v1/embargo', payload: armored, headers: { 'content-type': 'application/pgp-encrypted' } });
      expect(r.statusCode, r.body).toBe(200);
      const answer = await openResponse(r.body, { memberKey: alice.privateKey, builderKey, nonce: request.nonce });
      expect(answer).toMatchObject({ ok: true, result: { action: 'submit', existing: false } });
      expect(await store.active('demo/app')).toMatchObject([{ project: 'demo/app', patch: CANARY_PATCH, submittedBy: 'alice' }]);
    } finally {
      await service.close();
    }
  });

  it('refuses to start when the security team directory holds a private key, naming the file', async () => {
    const team = writeTeam(join(root, 'team-bad'), [alice]);
    writeFileSync(join(team, 'oops.asc'), (await makeMember('oops')).privateArmored);
    const config = await rig({ teamDir: team, registry: EMBARGO_REGISTRY });
    await expect(startBuilderService(config, { logger, workspacePool: 0 })).rejects.toThrow(new RegExp(`${join(team, 'oops.asc')}: \\(root\\): holds a PRIVATE key`));
  });

  it('refuses to start with the embargo key but no registry of the lane’s own, naming what is missing and why', async () => {
    const team = writeTeam(join(root, 'team-noreg'), [alice]);
    const config = await rig({ teamDir: team });
    const refusal = await startBuilderService(config, { logger, workspacePool: 0 }).then(
      async (s) => (await s.close(), 'started'),
      (e: unknown) => (e instanceof Error ? e.message : String(e)),
    );
    const why = 'the embargo key \\(secret airlock/embargo-key\\) turns the embargo lane on, and its patched images go only to a registry of its own that no consumer or public-tier login can read';
    // Both at once: the policy names no registry, and the SecretStore has no login for it.
    expect(refusal).toMatch(new RegExp(`^${config.policies.promotion}: embargoRegistry: missing \\(host:port of the embargo lane's registry\\): ${why}`, 'm'));
    expect(refusal).toMatch(new RegExp(`^secret airlock/embargo-registry: \\(root\\): missing \\(\\{username, password\\}: the builder's login to the embargo lane's registry\\): ${why}`, 'm'));
    // With the registry in the policy but its login still missing: refused, naming the secret alone.
    const policy = readFileSync(config.policies.promotion, 'utf8');
    writeFileSync(config.policies.promotion, policy.replace(/^registry: .*$/m, (line) => `${line}\nembargoRegistry: ${EMBARGO_REGISTRY.url}`));
    const second = await startBuilderService(config, { logger, workspacePool: 0 }).then(
      async (s) => (await s.close(), 'started'),
      (e: unknown) => (e instanceof Error ? e.message : String(e)),
    );
    expect(second.split('\n')).toEqual([expect.stringMatching(/^secret airlock\/embargo-registry: \(root\): missing /)]);
  });

  it('refuses to start when the lane’s registry is the public one under another name (it takes the public login)', async () => {
    const reg = await startRegistry();
    try {
      const pub = { url: reg.url, username: reg.username, password: reg.password };
      // localhost:PORT is 127.0.0.1:PORT: the policy's "differs from registry" cannot see that; the login check can.
      const alias = { ...pub, url: reg.url.replace('127.0.0.1', 'localhost') };
      const config = await rig({ teamDir: writeTeam(join(root, 'team-alias'), [alice]), registry: alias }, pub);
      const refusal = await startBuilderService(config, { logger, workspacePool: 0 }).then(
        async (s) => (await s.close(), 'started'),
        (e: unknown) => (e instanceof Error ? e.message : String(e)),
      );
      expect(refusal).toContain(`${config.policies.promotion}: embargoRegistry: the embargo lane's registry ${alias.url} accepts the builder's login to the public registry ${pub.url}`);
    } finally {
      await reg.stop();
    }
  });
});
