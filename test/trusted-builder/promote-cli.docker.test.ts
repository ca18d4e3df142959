/**
 * The builder fails fast at start, and `airlock builder promote` asks it again — on real parts: a
 * real registry with htpasswd auth (test/support/registry.ts), real Docker, a real upstream
 * repository, the real `airlock` command in a child process against the builder listening on a
 * real port.
 *
 * - wrong registry credentials stop the start, naming the registry, the secret and the fix;
 * - a registry that is down at start is a warning; the promotion then fails at the push; once the
 *   registry is up, `airlock builder promote` runs it again (audited as a retry, asked by the
 *   operator) and it is published; asked once more, nothing is signed again;
 * - an unknown project is refused by the builder, with the hint's reason, exit 1.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { RegistryAuthFailedError } from '#shared/errors.js';
import { createLogger } from '#shared/logging.js';
import { startBuilderService, type BuilderService } from '../../trusted-builder/service.js';
import { builderRig } from '../support/builder-rig.js';
import { createRepo, type TestRepo } from '../support/git-repo.js';
import { freePort, startRegistry, type TestRegistry } from '../support/registry.js';
import { runAirlock } from '../support/run-child.js';

const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const HINT_SECRET = 'hint-secret-for-the-promote-cli-test';
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

/** `airlock …` in a child process (the builder runs in this one, so never a synchronous spawn). */
function airlock(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runAirlock(args, {}, 120_000).then((r) => ({ code: r.code ?? -1, stdout: r.stdout, stderr: r.stderr }));
}

describe('builder start: the registry login is checked', () => {
  it('refuses to start with credentials the registry does not take, naming the registry, the secret and the fix', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-login-'));
    const registry = await startRegistry({ auth: true });
    const up = createRepo({ 'README.md': 'x\n' });
    try {
      const config = await builderRig({ dir, registry: { ...registry, password: 'not-the-password' }, project: { name: 'demo/app', url: up.dir, image: 'team/app' }, hintSecret: HINT_SECRET, baseImage: BASE, runnerStateDir: STATE_DIR });
      const err = await startBuilderService(config, { logger: createLogger({ level: 'silent' }) }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RegistryAuthFailedError);
      const message = (err as Error).message;
      expect(message).toContain(`registry ${registry.url} refused the credentials of "${registry.username}"`);
      expect(message).toContain('secret airlock/registry (file store)');
      expect(message).toMatch(/htpasswd.*start the builder again/);
      expect(message).not.toContain('not-the-password');
    } finally {
      await registry.stop();
      up.dispose();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('airlock builder promote: asks the running builder again, through the same checks as a hint', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-promote-cli-'));
  const password = 'a-password-for-the-late-registry';
  let port: number;
  let registry: TestRegistry | undefined;
  let up: TestRepo;
  let builder: BuilderService;
  let configFile: string;
  const logs: { level: number; msg: string; registry?: string }[] = [];

  beforeAll(async () => {
    port = await freePort();
    up = createRepo({ '.airlock.yaml': CONFIG, Dockerfile: `FROM ${BASE}\nCOPY app.txt /app.txt\n`, 'app.txt': 'hello\n' });
    const config = await builderRig({
      dir,
      registry: { url: `127.0.0.1:${port}`, username: 'airlock-test', password },
      project: { name: 'demo/app', url: up.dir, image: 'team/app' },
      hintSecret: HINT_SECRET,
      baseImage: BASE,
      runnerStateDir: STATE_DIR,
    });
    const logger = createLogger({ level: 'info', destination: { write: (l: string) => void logs.push(JSON.parse(l) as (typeof logs)[number]) } });
    // The registry is down: the start goes on, with a warning naming it.
    builder = await startBuilderService(config, { logger, pushOptions: { retry: { attempts: 1 } } });
    const url = new URL(await builder.listen());
    configFile = join(dir, 'builder.yaml');
    writeFileSync(configFile, JSON.stringify({ ...config, listen: { host: '127.0.0.1', port: Number(url.port) } }));
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

  it('warned at start that the registry does not answer', () => {
    expect(logs.find((l) => l.level === 40 && l.registry === `127.0.0.1:${port}`)?.msg).toMatch(/does not answer GET \/v2\/.*airlock builder promote/);
  });

  it('a promotion that failed (registry down) runs again once it is up; a published one is not signed again', async () => {
    const commit = up.tip();
    const first = await airlock(['builder', 'promote', '--config', configFile, '--project', 'demo/app', '--commit', commit]);
    expect(first.code, first.stderr).toBe(1);
    expect(first.stdout).toMatch(new RegExp(`demo/app@${commit}: failed at push: .*127\\.0\\.0\\.1:${port}`));

    registry = await startRegistry({ auth: true, port, username: 'airlock-test', password });
    const again = await airlock(['builder', 'promote', '--config', configFile, '--project', 'demo/app', '--commit', commit]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain('its last promotion was failed');
    expect(again.stdout).toMatch(new RegExp(`published 127\\.0\\.0\\.1:${port}/team/app:${commit} sha256:[0-9a-f]{64}`));
    const digest = /sha256:[0-9a-f]{64}/.exec(again.stdout)![0];

    const once = await airlock(['builder', 'promote', '--config', configFile, '--project', 'demo/app', '--commit', commit]);
    expect(once.code, once.stderr).toBe(0);
    expect(once.stderr).toContain('already published');
    expect(once.stdout).toContain(digest);

    // Audited: who asked (the operator, on this host), and that it was a retry.
    const accepted = readFileSync(builder.auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { kind: string; ciRun?: string; retryOf?: string; queued?: boolean });
    const hints = accepted.filter((r) => r.kind === 'hint-accepted');
    expect(hints.map((r) => [r.queued, r.retryOf ?? null])).toEqual([
      [true, null],
      [true, 'failed'],
      [false, null],
    ]);
    expect(hints.every((r) => r.ciRun?.startsWith('operator:'))).toBe(true);
  }, 240_000);

  it('an unknown project is refused by the builder, with the reason; a malformed commit is a usage error', async () => {
    const r = await airlock(['builder', 'promote', '--config', configFile, '--project', 'demo/nope', '--commit', 'a'.repeat(40)]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stdout).toContain(`demo/nope@${'a'.repeat(40)}: refused at policy: project demo/nope is not in the promotion policy`);
    const bad = await airlock(['builder', 'promote', '--config', configFile, '--project', 'demo/app', '--commit', 'HEAD']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/commit.*not a commit id/);
  }, 120_000);
});
