// kvm-core against a real /dev/kvm. On a host whose /dev/kvm opens (hardware KVM, or a
// PVM backend, which runs these tiny guests correctly) the scenarios run here; on a
// host without it they run in the nested-KVM sandbox, all in one boot. Never skipped.
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { probeAcceleration } from "../dist/index.js";
import { scenarios } from "./fixtures/scenarios.mjs";

const probe = probeAcceleration();
const onHost = probe.kvm === "present";
console.log(
  `kvm-core tests: ${probe.summary} ${onHost ? "Running on the host." : "Running in the sandbox."}`,
);

type ScenarioResult = { name: string; ok: boolean; error?: string; ms: number };

describe(onHost ? "KVM scenarios (host /dev/kvm)" : "KVM scenarios (sandbox)", () => {
  if (onHost) {
    for (const [name, fn] of Object.entries(scenarios)) it(name, fn, 60_000);
    return;
  }
  const results = new Map<string, ScenarioResult>();
  let sandboxOutput = "";
  beforeAll(async () => {
    const { runInSandbox, parseJsonLines } = await import("@tskvm/sandbox");
    const runner = fileURLToPath(new URL("./fixtures/run-scenarios.mjs", import.meta.url));
    const r = await runInSandbox(`node ${runner}`, { timeoutMs: 15 * 60_000 });
    sandboxOutput = r.output;
    for (const res of parseJsonLines(r.output, "@@RESULT") as ScenarioResult[]) results.set(res.name, res);
  }, 20 * 60_000);
  for (const name of Object.keys(scenarios)) {
    it(name, () => {
      const r = results.get(name);
      expect(r, `scenario did not report; sandbox output:\n${sandboxOutput.slice(-4000)}`).toBeDefined();
      if (!r?.ok) throw new Error(r?.error);
    });
  }
});
