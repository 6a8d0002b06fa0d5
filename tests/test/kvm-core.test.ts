// kvm-core's tiny-guest scenarios against a real, hardware-style KVM: the sandbox's
// nested kvm-amd (on a host whose KVM is emulated or absent), or the host's own.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseJsonLines, runInSandbox } from "@tskvm/sandbox";
import { beforeAll, describe, expect, it } from "vitest";
import { e2eTarget } from "../src/index.js";

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
  beforeAll(async () => {
    console.log(`e2e target: ${target.kind} — ${target.reason}`);
    if (target.kind === "host") {
      const r = spawnSync(process.execPath, [runner], { encoding: "utf8", timeout: 10 * 60_000 });
      log = r.stdout + r.stderr;
    } else {
      const r = await runInSandbox(`node ${runner}`, { timeoutMs: 10 * 60_000 });
      log = `${r.output}\n(exit ${r.exitCode}, boot ${r.bootMs} ms, run ${r.runMs} ms)`;
    }
    for (const res of parseJsonLines<Result>(log, "@@RESULT")) results.set(res.name, res);
  });
  for (const name of Object.keys(scenarios)) {
    it(name, () => {
      const r = results.get(name);
      expect(r, `no result; output:\n${log.slice(-3000)}`).toBeDefined();
      if (!r?.ok) throw new Error(r?.error);
    });
  }
});
