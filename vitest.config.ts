import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration suites bring up network namespaces and daemons; two cores take two files at a time.
    maxWorkers: 2,
    minWorkers: 1,
  },
});
