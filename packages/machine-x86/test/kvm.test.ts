// machine-x86 on a real /dev/kvm: tiny hand-made guests through the whole machine
// (loader, long-mode entry, vCPU workers, UART, i8042, PCI). On a host whose /dev/kvm
// opens (hardware KVM, or PVM, which runs tiny guests correctly) they run here; on a
// host without it, in the nested-KVM sandbox, all in one boot. Never skipped.
import type { ScenarioResult } from "@tskvm/sandbox";
import { beforeAll, describe, expect, it } from "vitest";
import { accelerationProbe } from "../src/index.js";
import { scenarios } from "./fixtures/kvm-scenarios.mjs";

const probe = accelerationProbe();
const onHost = probe.kvm === "present";

describe(`tiny guests on /dev/kvm (${onHost ? "host" : "sandbox"})`, () => {
  if (onHost) {
    for (const [name, fn] of Object.entries(scenarios)) it(name, fn, 60_000);
    return;
  }
  let results = new Map<string, ScenarioResult>();
  let output = "";
  beforeAll(async () => {
    const { runScenariosInSandbox } = await import("@tskvm/sandbox");
    const run = await runScenariosInSandbox(new URL("./fixtures/kvm-scenarios.mjs", import.meta.url), {
      timeoutMs: 10 * 60_000,
    });
    results = run.results;
    output = run.sandbox.output;
    console.log(`sandbox: boot ${run.sandbox.bootMs} ms, scenarios ${run.sandbox.runMs} ms`);
  }, 25 * 60_000);
  for (const name of Object.keys(scenarios)) {
    it(name, () => {
      const r = results.get(name);
      expect(r, `scenario did not report; sandbox output:\n${output.slice(-4000)}`).toBeDefined();
      if (!r?.ok) throw new Error(r?.error);
    });
  }
});
