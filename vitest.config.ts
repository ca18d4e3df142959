import { defineConfig } from 'vitest/config';

// Tiers by file name: `*.test.ts` pure (no Docker), `*.docker.test.ts` real engine.
// `npx vitest run .docker.test` selects one tier.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
