import { defineConfig } from 'vitest/config';

// Tiers by file name: `*.test.ts` pure (no Docker engine, no root: `npm run test:unit` runs them
// as any user), `*.docker.test.ts` the host tier (a real engine, root, what the bootstrap sets up).
// `npx vitest run .docker.test` selects the host tier.
// PostgreSQL: one private server for the run (test/support/postgres-global-setup.ts), started only
// when a selected test asks for it (sharedPostgres() in test/support/postgres-shared.ts).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/postgres-global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
