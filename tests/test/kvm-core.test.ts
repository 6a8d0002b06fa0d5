import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { e2eTarget, runOnTarget, runOnTargetBudgetMs } from "../src/index.js";

const kvmCore = fileURLToPath(new URL("../../packages/kvm-core/", import.meta.url));
const runner = join(kvmCore, "test/fixtures/run-scenarios.mjs");
const { scenarios } = (await import(join(kvmCore, "test/fixtures/scenarios.mjs"))) as {
  scenarios: Record<string, unknown>;
};

type Result = { name: string; ok: boolean; error?: string; ms: number };
const target = e2eTarget();

describe(`kvm-core scenarios on real KVM (${target.kind})`, () => {
  const results = new Map<string, Result>();
  let log = "";
  beforeAll(
    async () => {
      console.log(`e2e target: ${target.kind} — ${target.reason}`);
      const run = await runOnTarget<Result>(runner, [], { timeoutMs: 10 * 60_000 });
      log = run.log;
      for (const res of run.results) results.set(res.name, res);
    },
    runOnTargetBudgetMs(10 * 60_000),
  );
  for (const name of Object.keys(scenarios)) {
    it(name, () => {
      const r = results.get(name);
      expect(r, `no result; output:\n${log.slice(-3000)}`).toBeDefined();
      if (!r?.ok) throw new Error(r?.error);
    });
  }
});
