import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import {
  liveSandboxCount,
  parseJsonLines,
  prepareSandboxImage,
  runInSandbox,
  runScenariosInSandbox,
  type SandboxImage,
  sandboxPrerequisites,
} from "../src/index.js";
import { buildNestedTestInitramfs, nestedQemuArgs } from "./helpers/nested-guest.js";
import { childProcessesMatching } from "./helpers/processes.js";

// These tests boot real QEMU TCG machines (about 8 s each): the whole file takes about 1.5 min.
const here = dirname(fileURLToPath(import.meta.url));
const packageDir = dirname(here);
const BOOT_BUDGET_MS = 5 * 60_000;

let image: SandboxImage;

/** Prints a measurement so that it shows in the test log (and in timings.json for reports). */
const timings: Record<string, number> = {};
function measured(name: string, ms: number): void {
  timings[name] = Math.round(ms);
  console.log(`[sandbox timing] ${name}: ${Math.round(ms)} ms`);
  writeFileSync(join(packageDir, "timings.json"), `${JSON.stringify(timings, null, 2)}\n`);
}

beforeAll(() => {
  const pre = sandboxPrerequisites();
  expect(pre.problems).toEqual([]);
  image = prepareSandboxImage({ log: (l) => console.log(`[sandbox] ${l}`) });
}, 10 * 60_000);

describe("runInSandbox", () => {
  it(
    "returns a script's output and nonzero exit code exactly",
    async () => {
      const streamed: string[] = [];
      const r = await runInSandbox(
        [
          "printf 'hello\\n'",
          "printf 'w\\303\\266rld \\t tab\\r\\n'", // bytes pass through untouched, \r included
          "echo to-stderr >&2",
          "seq 1 2000",
          "printf 'no newline at the end'",
          "exit 42",
        ].join("\n"),
        { timeoutMs: BOOT_BUDGET_MS, onOutput: (c) => streamed.push(c) },
      );
      const expected = `hello\nwörld \t tab\r\nto-stderr\n${Array.from({ length: 2000 }, (_, i) => `${i + 1}\n`).join("")}no newline at the end`;
      expect(r.exitCode).toBe(42);
      expect(r.timedOut).toBe(false);
      expect(r.output).toBe(expected);
      expect(streamed.join("")).toBe(expected);
      expect(r.warnings).toEqual([]);
      expect(r.bootMs).toBeGreaterThan(0);
      expect(r.runMs).toBeGreaterThanOrEqual(0);
      measured("boot to script (host view)", r.bootMs);
      expect(liveSandboxCount()).toBe(0);
    },
    2 * BOOT_BUDGET_MS,
  );

  it(
    "gives the script real /dev/kvm, the host root read-only, a writable work dir and nested KVM",
    async () => {
      const marker = `NESTED-OK-${process.pid}`;
      const nestedInitrd = buildNestedTestInitramfs(image.busyboxPath, marker);
      const projectFile = join(packageDir, "package.json");
      const r = await runInSandbox('export T0="$(date +%s%3N)"; exec node "$SANDBOX_WORK/checks.mjs"', {
        timeoutMs: BOOT_BUDGET_MS,
        cwd: packageDir,
        env: {
          MY_VAR: `it's "quoted" $HOME \\ and more`,
          PROJECT_FILE: projectFile,
          NESTED_MARKER: marker,
          NESTED_ARGS: JSON.stringify(nestedQemuArgs(image.kernelPath, "/tmp/sandbox-work/nested.cpio.gz")),
        },
        extraFiles: {
          "checks.mjs": readFileSync(join(here, "fixtures", "inside-checks.mjs")),
          "nested.cpio.gz": nestedInitrd,
          "sub/dir/hello.txt": "hello from the host",
          "bytes.bin": Buffer.from([0, 1, 2, 255]),
          "tool.sh": { data: "#!/bin/sh\necho tool\n", mode: 0o755 },
        },
      });
      expect(r.exitCode, r.output).toBe(0);
      const results = parseJsonLines<{ check: string } & Record<string, unknown>>(r.output);
      const byCheck = Object.fromEntries(results.map((x) => [x.check, x]));

      expect(byCheck.node).toMatchObject({ version: process.version, cwd: packageDir });
      expect(byCheck.env).toEqual({
        check: "env",
        MY_VAR: `it's "quoted" $HOME \\ and more`,
        SANDBOX: "1",
        SANDBOX_WORK: "/tmp/sandbox-work",
        HOST_ONLY: null,
        uid: 0,
      });
      expect(byCheck.kvm).toEqual({
        check: "kvm",
        kvmAmdLoaded: true,
        nested: "1",
        isCharDevice: true,
        open: { ok: true, value: true },
      });
      expect(byCheck.hostroot).toEqual({
        check: "hostroot",
        readName: "@tskvm/sandbox",
        writeOk: false,
        writeCode: "EROFS",
      });
      expect(byCheck.work).toEqual({
        check: "work",
        write: "written inside",
        tmpfs: true,
        extraText: "hello from the host",
        extraBinary: [0, 1, 2, 255],
        extraMode: "755",
        tmpWritable: true,
        procMounted: true,
        devNull: true,
        devPts: true,
      });
      const nested = byCheck.nested as Record<string, unknown>;
      expect(nested.markerSeen, JSON.stringify(nested, null, 2)).toBe(true);
      expect(nested.status).toBe(0);

      measured("boot to script (host view)", r.bootMs);
      measured("node start inside", byCheck.node?.startMs as number);
      measured("nested KVM guest: qemu start to power-off (wall)", nested.wallMs as number);
      measured("nested KVM guest: guest uptime at its init", (nested.guestUptimeAtInit as number) * 1000);
      measured("whole script (node + checks + nested guest)", r.runMs);
    },
    2 * BOOT_BUDGET_MS,
  );

  it(
    "kills a hung script at the timeout, reports timedOut and leaves no QEMU behind",
    async () => {
      const t0 = performance.now();
      const r = await runInSandbox("echo sleeping; sleep 100000", { timeoutMs: 30_000, retryOnHang: false });
      const elapsed = performance.now() - t0;
      expect(r.timedOut).toBe(true);
      expect(r.exitCode).toBe(-1);
      expect(r.attempts).toBe(1);
      expect(r.retriedAfterHang).toBe(false);
      expect(r.hangs).toHaveLength(1);
      expect(r.hangs[0]?.phase).toBe("run");
      expect(r.output).toBe("sleeping\n");
      expect(elapsed).toBeGreaterThanOrEqual(30_000);
      expect(elapsed).toBeLessThan(45_000);
      expect(liveSandboxCount()).toBe(0);
      expect(childProcessesMatching("tskvm-sandbox-")).toEqual([]);
    },
    2 * BOOT_BUDGET_MS,
  );

  it(
    "runs a module's scenarios in one boot and maps their results by name",
    async () => {
      const { results, sandbox } = await runScenariosInSandbox(
        new URL("./fixtures/some-scenarios.mjs", import.meta.url),
        { timeoutMs: BOOT_BUDGET_MS, env: { EXPECT_SANDBOX: "1" } },
      );
      expect(sandbox.exitCode).toBe(0);
      expect([...results.keys()]).toEqual(["passes", "fails with a message", "async, reports where it runs"]);
      expect(results.get("passes")?.ok).toBe(true);
      expect(results.get("fails with a message")?.error).toMatch(/as it should/);
      expect(results.get("async, reports where it runs")).toMatchObject({ ok: true });
    },
    2 * BOOT_BUDGET_MS,
  );

  it("retries once when the sandbox VM itself dies before the script finishes (kernel panic), then reports it", async () => {
    const log: string[] = [];
    // sysrq-c panics the sandbox's kernel: QEMU (-no-reboot) ends with the script unfinished.
    const run = runInSandbox("echo c > /proc/sysrq-trigger; sleep 60", { log: (l) => log.push(l) });
    await expect(run).rejects.toThrow(/QEMU ended .* before the script finished/);
    expect(log.filter((l) => /ended before the script finished.*retrying once/.test(l))).toHaveLength(1);
    expect(liveSandboxCount()).toBe(0);
  }, 240_000);

  it("retries a hung boot once, then reports it; an abort kills QEMU at once", async () => {
    // A 1 s boot bound is always exceeded: both attempts hang in the boot phase.
    const r = await runInSandbox("echo never", { bootTimeoutMs: 1000 });
    expect(r.timedOut).toBe(true);
    expect(r.attempts).toBe(2);
    expect(r.retriedAfterHang).toBe(true);
    expect(r.hangs.map((h) => h.phase)).toEqual(["boot", "boot"]);
    expect(r.output).toBe("");
    expect(liveSandboxCount()).toBe(0);

    const controller = new AbortController();
    const run = runInSandbox("sleep 100000", { signal: controller.signal });
    setTimeout(() => controller.abort(new Error("stop it")), 1000);
    await expect(run).rejects.toThrow("stop it");
    expect(liveSandboxCount()).toBe(0);
    expect(childProcessesMatching("tskvm-sandbox-")).toEqual([]);
  }, 60_000);
});
