import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // KVM scenarios spawn workers and child processes; one file at a time keeps them honest.
    fileParallelism: false,
    testTimeout: 60_000,
  },
});
