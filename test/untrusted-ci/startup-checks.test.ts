/**
 * The CI's startup checks (untrusted-ci/startup-checks.ts) against real parts: real git
 * repositories (and a path where there is none), the trusted builder's real API for `hints.url`
 * (answering an unsigned hint 401), and a port where nothing listens. `startCiService` must refuse
 * to start on the fatal ones before it opens anything.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { InvalidInputError } from '#shared/errors.js';
import { createLogger } from '#shared/logging.js';
import { buildBuilderApi } from '../../trusted-builder/api/app.js';
import { AuditLog } from '../../trusted-builder/audit/audit-log.js';
import { buildCiConfig } from '../../untrusted-ci/config.js';
import { startCiService } from '../../untrusted-ci/service.js';
import { probeHints, probeRemote, shownUrl, startupChecks } from '../../untrusted-ci/startup-checks.js';
import { freePort } from '../support/registry.js';
import { createRepo, type TestRepo } from '../support/git-repo.js';

const dir = mkdtempSync(join(tmpdir(), 'airlock-ci-startup-'));
let repo: TestRepo;
let builder: FastifyInstance;
let builderUrl: string;
const logs: { level: number; msg: string; url?: string }[] = [];
const logger = createLogger({ level: 'info', destination: { write: (l: string) => void logs.push(JSON.parse(l) as { level: number; msg: string; url?: string }) } });

beforeAll(async () => {
  repo = createRepo();
  writeFileSync(join(dir, 'hint.secret'), 'k'.repeat(32), { mode: 0o600 });
  const audit = await AuditLog.open(join(dir, 'audit.jsonl'));
  builder = await buildBuilderApi({ logger: createLogger({ level: 'silent' }), audit, hintSecret: Buffer.from('k'.repeat(32)), promoter: { accept: () => ({ queued: true }) }, lookasideDir: join(dir, 'lookaside') });
  builderUrl = await builder.listen({ host: '127.0.0.1', port: 0 });
});
afterAll(async () => {
  await builder.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('probeRemote', () => {
  it('passes a real repository, and calls a path with none fatal', async () => {
    expect(await probeRemote(repo.dir)).toEqual({ ok: true });
    expect(await probeRemote(`file://${repo.dir}`)).toEqual({ ok: true });
    const missing = await probeRemote(join(dir, 'no-such-repo.git'));
    expect(missing).toMatchObject({ ok: false, fatal: true, why: expect.stringMatching(/no repository there.*fix projects\[\]\.url/) });
  });
  it('calls a remote that does not answer a warning, not fatal', async () => {
    const port = await freePort();
    expect(await probeRemote(`http://127.0.0.1:${port}/x.git`)).toMatchObject({ ok: false, fatal: false });
  });
});

describe('probeHints', () => {
  it("takes the builder's base URL (an unsigned hint is answered 401 there)", async () => {
    expect(await probeHints(builderUrl)).toEqual({ ok: true });
    expect(await probeHints(`${builderUrl}/`)).toEqual({ ok: true });
  });
  it('refuses a URL where there is no hint endpoint (404), naming it', async () => {
    const v = await probeHints(`${builderUrl}/builder`);
    expect(v).toMatchObject({ ok: false, fatal: true });
    expect(!v.ok && v.why).toContain(`${builderUrl}/builder/v1/hints answered 404`);
  });
  it('warns, naming the URL, when nothing answers', async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const v = await probeHints(url);
    expect(v).toMatchObject({ ok: false, fatal: false });
    expect(!v.ok && v.why).toContain(`${url}/v1/hints does not answer`);
  });
});

describe('startupChecks', () => {
  it('lists every fatal problem at once, each with its config path and URL; warnings are only logged', async () => {
    const missing = join(dir, 'gone.git');
    const silent = `http://127.0.0.1:${await freePort()}/x.git`;
    const err = await startupChecks(
      {
        projects: [
          { name: 'ok', url: repo.dir, branches: [] },
          { name: 'gone', url: missing, branches: [] },
          { name: 'down', url: silent, branches: [] },
        ],
        hints: { url: `${builderUrl}/nope`, secretFile: 'x' },
      },
      logger,
      { file: 'ci.yaml' },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    const issues = (err as InvalidInputError).issues;
    expect(issues.map((i) => [i.file, i.path])).toEqual([
      ['ci.yaml', 'hints.url'],
      ['ci.yaml', 'projects.1.url'],
    ]);
    expect(issues[0]!.message).toContain(`${builderUrl}/nope/v1/hints`);
    expect(issues[1]!.message).toContain(missing);
    expect(logs.find((l) => l.level === 40 && l.url === silent)?.msg).toMatch(/starting anyway/);
  });
  it('hides a password in a URL it names', () => {
    expect(shownUrl('https://ci:hunter2@git.example.org/a.git')).toBe('https://ci:***@git.example.org/a.git');
    expect(shownUrl('ssh://git@host/a.git')).toBe('ssh://git@host/a.git');
  });
});

describe('startCiService', () => {
  const start = (extra: object) => startCiService(buildCiConfig({ version: 1, dataDir: join(dir, 'data'), runnerStateDir: join(dir, 'state'), projects: [{ name: 'app', url: repo.dir }], ...extra }, 'ci.yaml'), { logger: createLogger({ level: 'silent' }) });

  it('refuses to start when hints.url is not the builder (404), naming it and the fix', async () => {
    const err = await start({ hints: { url: `${builderUrl}/api`, secretFile: join(dir, 'hint.secret') } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as InvalidInputError).message).toMatch(/hints\.url.*\/api\/v1\/hints answered 404.*base URL/s);
  });
  it('refuses to start when a project URL holds no repository (real git)', async () => {
    const gone = join(dir, 'deleted.git');
    const err = await startCiService(buildCiConfig({ version: 1, dataDir: join(dir, 'data2'), runnerStateDir: join(dir, 'state'), projects: [{ name: 'app', url: gone }] }, 'ci.yaml'), { logger: createLogger({ level: 'silent' }) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as InvalidInputError).issues).toEqual([expect.objectContaining({ path: 'projects.0.url', message: expect.stringContaining(gone) })]);
  });
});
