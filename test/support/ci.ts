/**
 * A real CI service for end-to-end tests: real SQLite, real git mirrors, real Docker, a temp data
 * dir, logs to a filesystem (or given) ArtifactStore. HTTP goes through `app.inject()`.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildCiConfig, type CiConfigInput, type LoadedCiConfig } from '../../untrusted-ci/config.js';
import { startCiService, type CiService } from '../../untrusted-ci/service.js';
import { sharedPostgres } from './postgres-shared.js';
import { createLogger, type Logger } from '#shared/logging.js';
import type { BuildView, SubmitChangeInput } from '#shared/schemas/api/builds.js';
import { STATE_DIR, tempDir } from './docker.js';
import { CI_ACCOUNT, type GerritRig } from './gerrit-rig.js';

export interface TestCi {
  service: CiService;
  loaded: LoadedCiConfig;
  dataDir: string;
  submit(body: SubmitChangeInput): Promise<number>;
  /** Polls the API until the build is finished. */
  waitFor(id: number, timeoutMs?: number): Promise<BuildView>;
  close(): Promise<void>;
}

/**
 * With `review`, the CI reports to and merges through that Gerrit stand-in as `airlock-ci`, listens
 * on a real port (127.0.0.1, chosen by the kernel) and is the stand-in's webhook remote (the
 * secret in the URL path, as the webhooks plugin would send it); `url` is its base URL. A restart
 * (same `dataDir`) adds the remote again: the stand-in posts to every remote it was given, and the
 * old one no longer answers (as a Gerrit posting to an airlock that is down).
 */
export async function startTestCi(
  config: Partial<CiConfigInput> & { projects: CiConfigInput['projects'] },
  opts: { dataDir?: string; keepData?: boolean; logger?: Logger; review?: GerritRig; catchUpEveryMs?: number } = {},
): Promise<TestCi & { url?: string }> {
  const dataDir = opts.dataDir ?? tempDir('airlock-ci-');
  const r = opts.review;
  if (r) {
    mkdirSync(dataDir, { recursive: true });
    writeFileSync(join(dataDir, 'gerrit.json'), JSON.stringify({ username: CI_ACCOUNT, password: r.passwords[CI_ACCOUNT] }), { mode: 0o600 });
    writeFileSync(join(dataDir, 'hook.secret'), r.hookSecret, { mode: 0o600 });
  }
  const review = r ? { review: { kind: 'gerrit' as const, url: r.gerrit.url, credentialsFile: join(dataDir, 'gerrit.json'), ...(opts.catchUpEveryMs !== undefined ? { catchUpEveryMs: opts.catchUpEveryMs } : {}) }, webhooks: { gerritSecretFile: join(dataDir, 'hook.secret'), ...config.webhooks } } : {};
  // `npm run test:postgres` runs the service on a PostgreSQL database of its own instead of SQLite.
  let database = {};
  if (process.env.AIRLOCK_TEST_DATABASE === 'postgres' && !config.database) {
    mkdirSync(dataDir, { recursive: true });
    writeFileSync(join(dataDir, 'database.url'), await (await sharedPostgres()).createDatabase(), { mode: 0o600 });
    database = { database: { engine: 'postgres', urlFile: join(dataDir, 'database.url') } };
  }
  const loaded = buildCiConfig({ version: 1, dataDir, runnerStateDir: STATE_DIR, slots: 2, imageGcEveryMs: 0, ...database, ...config, ...review, ...(r ? { listen: { host: '127.0.0.1', port: 0 } } : {}) }, 'test-config');
  const service = await startCiService(loaded, { logger: opts.logger ?? createLogger({ level: process.env.AIRLOCK_TEST_LOG ?? 'silent' }), workspacePool: 0 });
  let url: string | undefined;
  if (r) {
    url = await service.listen();
    r.gerrit.addWebhook({ url: `${url}/hooks/gerrit/${encodeURIComponent(r.hookSecret)}`, retryIntervalMs: 100, maxTries: 3 });
  }
  return {
    service,
    loaded,
    dataDir,
    ...(url ? { url } : {}),
    async submit(body) {
      const r = await service.app.inject({ method: 'POST', url: '/api/changes', payload: body });
      if (r.statusCode !== 202) throw new Error(`submit answered ${r.statusCode}: ${r.body}`);
      return (r.json() as { builds: number[] }).builds[0]!;
    },
    async waitFor(id, timeoutMs = 90_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const b = (await service.app.inject({ method: 'GET', url: `/api/builds/${id}` })).json() as BuildView;
        if (b.state === 'finished') return b;
        if (Date.now() > end) throw new Error(`build ${id} not finished after ${timeoutMs} ms: ${JSON.stringify(b)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async close() {
      await service.close();
      if (!opts.keepData) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
