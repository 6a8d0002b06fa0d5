// `tskvm run --rng` on real KVM: a tiny hand-made guest (../fixtures/hostile/guest.mjs)
// drives the virtio-pci rng device as the CLI wires it (on the shared worker for slow
// devices) and reads random bytes from it (../fixtures/rng/scenarios.mjs). Where the
// host's /dev/kvm opens (hardware KVM, or PVM, which runs tiny guests correctly) the
// scenarios run here, in a child process (a hung VMM must not take vitest with it); on
// a host without it, in the nested-KVM sandbox, all in one boot. Never skipped. `TSKVM_E2E_TARGET=host|sandbox`
// forces one.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { accelerationProbe } from "@tskvm/machine-x86";
import { parseJsonLines, runScenariosInSandbox, SCENARIO_RUNNER, type ScenarioResult } from "@tskvm/sandbox";
import { beforeAll, describe, expect, it } from "vitest";
import { scenarios } from "../fixtures/rng/scenarios.mjs";

/** What each scenario prints besides its result: how the machine ended, what the device said. */
interface Outcome {
  scenario: string;
  endedEarly?: boolean;
  exit?: { reason: string; detail?: string };
  error?: string;
  [detail: string]: unknown;
}

const fixture = fileURLToPath(new URL("../fixtures/rng/scenarios.mjs", import.meta.url));
const forced = process.env.TSKVM_E2E_TARGET;
const probe = accelerationProbe();
const onHost = forced === "host" || (forced !== "sandbox" && probe.kvm === "present");
const RUN_TIMEOUT_MS = 15 * 60_000;

describe(`tskvm run --rng: a tiny guest reads the virtio-rng device (${onHost ? "host" : "sandbox"})`, () => {
  const results = new Map<string, ScenarioResult>();
  const outcomes: Outcome[] = [];
  let log = "";

  beforeAll(async () => {
    console.log(
      `rng: ${onHost ? "host" : "sandbox"} — ${forced ? `forced by TSKVM_E2E_TARGET=${forced}` : probe.summary}`,
    );
    if (onHost) {
      const r = spawnSync(process.execPath, [SCENARIO_RUNNER, fixture], {
        encoding: "utf8",
        timeout: RUN_TIMEOUT_MS,
        killSignal: "SIGKILL",
        maxBuffer: 64 * 1024 * 1024,
      });
      log = `${r.stdout}${r.stderr}\n(exit ${r.status ?? r.signal})`;
    } else {
      const run = await runScenariosInSandbox(fixture, { timeoutMs: RUN_TIMEOUT_MS });
      log = run.sandbox.output;
      console.log(`sandbox: boot ${run.sandbox.bootMs} ms, scenarios ${run.sandbox.runMs} ms`);
    }
    for (const r of parseJsonLines<ScenarioResult>(log, "@@RESULT")) results.set(r.name, r);
    outcomes.push(...parseJsonLines<Outcome>(log, "@@OUTCOME"));
    for (const o of outcomes)
      console.log(
        `${o.scenario}: machine ${o.endedEarly ? "ENDED EARLY" : "alive"}, exit ${o.exit?.reason}${o.exit?.detail ? ` (${o.exit.detail})` : ""}; ${JSON.stringify(o)}`,
      );
  }, RUN_TIMEOUT_MS + 60_000);

  for (const name of Object.keys(scenarios)) {
    it(name, () => {
      const r = results.get(name);
      expect(r, `scenario did not report; output:\n${log.slice(-4000)}`).toBeDefined();
      if (!r?.ok) throw new Error(r?.error);
    });
  }
});
