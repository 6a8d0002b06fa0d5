import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  moduleDepends,
  parseJsonLines,
  prepareSandboxImage,
  runInSandbox,
  SCENARIO_RUNNER,
  type ScenarioResult,
} from "../src/index.js";

describe("parseJsonLines", () => {
  it("extracts prefixed JSON lines in order and ignores the rest", () => {
    const out =
      'noise\n@@RESULT {"a":1}\r\n  @@RESULT [2]\n@@RESULTX {"no":true}\nx @@RESULT 3\n@@RESULT "s"';
    expect(parseJsonLines(out)).toEqual([{ a: 1 }, [2], "s"]);
    expect(parseJsonLines("@@R 1\n@@R 2", "@@R")).toEqual([1, 2]);
    expect(parseJsonLines("")).toEqual([]);
  });
  it("names the line of bad JSON", () => {
    expect(() => parseJsonLines("ok\n@@RESULT {bad")).toThrow(/line 2/);
  });
});

describe("kernel modules", () => {
  it("reads depends= from a module's .modinfo", () => {
    const ko = Buffer.concat([Buffer.from("\x7fELF junk\0license=GPL\0depends=kvm,ccp\0intree=Y\0")]);
    expect(moduleDepends(ko)).toEqual(["kvm", "ccp"]);
    expect(moduleDepends(Buffer.from("\0depends=\0"))).toEqual([]);
    expect(moduleDepends(Buffer.from("no modinfo"))).toEqual([]);
  });
  it("orders the image's modules after their dependencies", () => {
    const { modules } = prepareSandboxImage();
    const before = (a: string, b: string) => expect(modules.indexOf(a)).toBeLessThan(modules.indexOf(b));
    for (const m of ["9p", "9pnet_virtio", "virtio_pci", "kvm_amd", "kvm", "ccp", "irqbypass"]) {
      expect(modules).toContain(m);
    }
    before("irqbypass", "kvm");
    before("kvm", "kvm_amd");
    before("ccp", "kvm_amd");
    before("9pnet", "9p");
    before("netfs", "fscache");
    before("virtio_ring", "virtio_pci");
  }, 600_000);
});

describe("runInSandbox argument checks (no boot)", () => {
  it("rejects bad extraFiles paths, env names and oversized scripts before booting", async () => {
    await expect(runInSandbox("true", { extraFiles: { "../x": "y" } })).rejects.toThrow(/extraFiles/);
    await expect(runInSandbox("true", { extraFiles: { "/abs": "y" } })).rejects.toThrow(/extraFiles/);
    await expect(runInSandbox("true", { env: { "BAD-NAME": "y" } })).rejects.toThrow(/variable name/);
    await expect(runInSandbox("x".repeat(200_000))).rejects.toThrow(/extraFiles/);
    await expect(runInSandbox("true", { cwd: "relative" })).rejects.toThrow(/absolute/);
  }, 600_000);
});

describe("scenario runner (no boot)", () => {
  const fixture = fileURLToPath(new URL("./fixtures/some-scenarios.mjs", import.meta.url));
  const runner = (...args: string[]) =>
    spawnSync(process.execPath, [SCENARIO_RUNNER, ...args], { encoding: "utf8", timeout: 60_000 });

  it("prints one @@RESULT per scenario, failures with their error, and honours filters", () => {
    const r = runner(fixture);
    expect(r.status).toBe(0);
    const results = parseJsonLines<ScenarioResult>(r.stdout);
    expect(results.map((x) => [x.name, x.ok])).toEqual([
      ["passes", true],
      ["fails with a message", false],
      ["async, reports where it runs", true],
    ]);
    expect(results[1]?.error).toMatch(/as it should/);
    expect(results[2]?.ms).toBeGreaterThanOrEqual(9);
    const only = parseJsonLines<ScenarioResult>(runner(fixture, "async", "pass").stdout);
    expect(only.map((x) => x.name)).toEqual(["passes", "async, reports where it runs"]);
  });

  it("exits 2 with a message for a missing module argument or a module without scenarios", () => {
    expect(runner().status).toBe(2);
    const none = runner("node:os");
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/exports no `scenarios`/);
  });
});
