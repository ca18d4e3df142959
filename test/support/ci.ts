/**
 * A real CI service for end-to-end tests: real SQLite, real git mirrors, real Docker, a temp data
 * dir, logs to a filesystem (or given) ArtifactStore. HTTP goes through `app.inject()`.
 */
import { rmSync } from 'node:fs';
import { buildCiConfig, type CiConfigInput, type LoadedCiConfig } from '../../untrusted-ci/config.js';
import { startCiService, type CiService } from '../../untrusted-ci/service.js';
import { createLogger, type Logger } from '../../shared/logging.js';
import type { BuildView, SubmitChangeInput } from '../../shared/schemas/api/builds.js';
import { STATE_DIR, tempDir } from './docker.js';

export interface TestCi {
  service: CiService;
  loaded: LoadedCiConfig;
  dataDir: string;
  submit(body: SubmitChangeInput): Promise<number>;
  /** Polls the API until the build is finished. */
  waitFor(id: number, timeoutMs?: number): Promise<BuildView>;
  close(): Promise<void>;
}

export async function startTestCi(config: Partial<CiConfigInput> & { projects: CiConfigInput['projects'] }, opts: { dataDir?: string; keepData?: boolean; logger?: Logger } = {}): Promise<TestCi> {
  const dataDir = opts.dataDir ?? tempDir('airlock-ci-');
  const loaded = buildCiConfig({ version: 1, dataDir, runnerStateDir: STATE_DIR, slots: 2, imageGcEveryMs: 0, ...config }, 'test-config');
  const service = await startCiService(loaded, { logger: opts.logger ?? createLogger({ level: process.env.AIRLOCK_TEST_LOG ?? 'silent' }), workspacePool: 0 });
  return {
    service,
    loaded,
    dataDir,
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
