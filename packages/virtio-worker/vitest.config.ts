import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Worker tests start dist/worker.js: build once before any test file runs.
    globalSetup: ["test/global-setup.ts"],
    // Worker and timing tests want the two cores to themselves.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
