// kvm-core against a real /dev/kvm. On a host whose /dev/kvm opens (hardware KVM, or a
// PVM backend, which runs these tiny guests correctly) the scenarios run here; on a
// host without it they run in the nested-KVM sandbox, all in one boot. Never skipped.
import type { ScenarioResult } from "@tskvm/sandbox";
import { beforeAll, describe, expect, it } from "vitest";
import { probeAcceleration } from "../dist/index.js";
import { scenarios } from "./fixtures/scenarios.mjs";

const probe = probeAcceleration();
const onHost = probe.kvm === "present";
console.log(
  `kvm-core tests: ${probe.summary} ${onHost ? "Running on the host." : "Running in the sandbox."}`,
);

describe(onHost ? "KVM scenarios (host /dev/kvm)" : "KVM scenarios (sandbox)", () => {
  if (onHost) {
    for (const [name, fn] of Object.entries(scenarios)) it(name, fn, 60_000);
    return;
  }
  let results = new Map<string, ScenarioResult>();
  let sandboxOutput = "";
  beforeAll(async () => {
    const { runScenariosInSandbox } = await import("@tskvm/sandbox");
    const run = await runScenariosInSandbox(new URL("./fixtures/scenarios.mjs", import.meta.url), {
      timeoutMs: 15 * 60_000,
    });
    results = run.results;
    sandboxOutput = run.sandbox.output;
  }, 20 * 60_000);
  for (const name of Object.keys(scenarios)) {
    it(name, () => {
      const r = results.get(name);
      expect(r, `scenario did not report; sandbox output:\n${sandboxOutput.slice(-4000)}`).toBeDefined();
      if (!r?.ok) throw new Error(r?.error);
    });
  }
});
