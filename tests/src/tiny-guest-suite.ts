// One suite shape for tiny hand-made guests on real KVM (hostile blk, rng): where the
// host's /dev/kvm opens (hardware KVM, or PVM, which runs tiny guests correctly) the
// scenarios run here, in a child process (a hung or bloated VMM must not take vitest
// with it); on a host without it, in the nested-KVM sandbox, all in one boot. Never
// skipped. `TSKVM_E2E_TARGET=host|sandbox` forces one.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { accelerationProbe } from "@tskvm/machine-x86";
import { parseJsonLines, runScenariosInSandbox, SCENARIO_RUNNER, type ScenarioResult } from "@tskvm/sandbox";
import { beforeAll, describe, expect, it } from "vitest";

/** What each scenario prints besides its result: how the machine ended, what the device said. */
export interface ScenarioOutcome {
  scenario: string;
  endedEarly?: boolean;
  exit?: { reason: string; detail?: string };
  error?: string;
  [detail: string]: unknown;
}

const RUN_TIMEOUT_MS = 15 * 60_000;

/**
 * A vitest suite with one case per scenario of the module at `fixture` (a module that
 * exports `scenarios`, run by the sandbox package's SCENARIO_RUNNER), printing every
 * `@@OUTCOME` line it reports.
 */
export function tinyGuestSuite(title: string, fixture: URL, scenarioNames: readonly string[]): void {
  const path = fileURLToPath(fixture);
  const forced = process.env.TSKVM_E2E_TARGET;
  const probe = accelerationProbe();
  const onHost = forced === "host" || (forced !== "sandbox" && probe.kvm === "present");
  const where = onHost ? "host" : "sandbox";

  describe(`${title} (${where})`, () => {
    const results = new Map<string, ScenarioResult>();
    let log = "";

    beforeAll(async () => {
      console.log(`${title}: ${where} — ${forced ? `forced by TSKVM_E2E_TARGET=${forced}` : probe.summary}`);
      if (onHost) {
        const r = spawnSync(process.execPath, [SCENARIO_RUNNER, path], {
          encoding: "utf8",
          timeout: RUN_TIMEOUT_MS,
          killSignal: "SIGKILL", // a VMM that ignores SIGTERM is one of the bugs looked for
          maxBuffer: 64 * 1024 * 1024,
        });
        log = `${r.stdout}${r.stderr}\n(exit ${r.status ?? r.signal})`;
      } else {
        const run = await runScenariosInSandbox(path, { timeoutMs: RUN_TIMEOUT_MS });
        log = run.sandbox.output;
        console.log(`sandbox: boot ${run.sandbox.bootMs} ms, scenarios ${run.sandbox.runMs} ms`);
      }
      for (const r of parseJsonLines<ScenarioResult>(log, "@@RESULT")) results.set(r.name, r);
      for (const o of parseJsonLines<ScenarioOutcome>(log, "@@OUTCOME"))
        console.log(
          `${o.scenario}: machine ${o.endedEarly ? "ENDED EARLY" : "alive"}, exit ${o.exit?.reason}${o.exit?.detail ? ` (${o.exit.detail})` : ""}; ${JSON.stringify(o)}`,
        );
    }, RUN_TIMEOUT_MS + 60_000);

    for (const name of scenarioNames) {
      it(name, () => {
        const r = results.get(name);
        expect(r, `scenario did not report; output:\n${log.slice(-4000)}`).toBeDefined();
        if (!r?.ok) throw new Error(r?.error);
      });
    }
  });
}
