// The real thing: Debian's kernel and the guest-kit initramfs boot on this machine
// model, run a command and end as asked. On a host whose KVM only emulates guest code
// (PVM) this runs inside the sandbox (QEMU TCG with nested kvm-amd): one sandbox boot,
// one node process, every scenario in it.
import { spawnSync } from "node:child_process";
import { readFileSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { buildGuestKit } from "@tskvm/guest-kit";
import { parseJsonLines, runInSandbox } from "@tskvm/sandbox";
import { beforeAll, describe, expect, it } from "vitest";
import { accelerationProbe, type MachineExit } from "../src/index.js";

interface Result {
  name: string;
  error?: string;
  exit: MachineExit;
  ms: number;
  initMs?: number;
  kernelInitS?: number;
  command: { output: string; status: number } | null;
  sawTyped: boolean;
  warnings: string[];
  consoleTail: string;
  /** Set when the first boot ended the wrong way and the scenario was run again. */
  firstAttempt?: { exit: MachineExit; ms: number; consoleTail: string };
}

const forced = process.env.TSKVM_E2E_TARGET;
const onHost = forced === "host" || (forced !== "sandbox" && accelerationProbe().hardwareSpeed);
const where = onHost ? "host KVM" : "sandbox (nested kvm-amd under QEMU TCG)";

const results = new Map<string, Result>();
let raw = "";

function get(name: string): Result {
  const r = results.get(name);
  expect(r, `scenario ${name} printed no result; output:\n${raw.slice(-4000)}`).toBeDefined();
  expect(r!.error, r!.error).toBeUndefined();
  return r!;
}

function show(r: Result): string {
  return `exit ${JSON.stringify(r.exit)}\n--- console tail ---\n${r.consoleTail}`;
}

describe(`Linux on machine-x86 (${where})`, () => {
  beforeAll(async () => {
    const kit = await buildGuestKit({ log: (l) => console.log(`guest-kit: ${l}`) });
    const env = {
      MACHINE_X86: fileURLToPath(new URL("../dist/index.js", import.meta.url)),
      GUEST_KIT: realpathSync(
        fileURLToPath(new URL("../node_modules/@tskvm/guest-kit/dist/index.js", import.meta.url)),
      ),
      KERNEL: kit.kernel,
      INITRD: kit.initrd,
    };
    const script = fileURLToPath(new URL("./fixtures/linux-scenarios.mjs", import.meta.url));
    const t0 = Date.now();
    let partial = "";
    if (onHost) {
      const r = spawnSync(process.execPath, [script], {
        env: { ...process.env, ...env },
        encoding: "utf8",
        timeout: 25 * 60_000,
      });
      raw = r.stdout + r.stderr;
    } else {
      // Each boot takes ~25 s in an idle sandbox and minutes when other sandboxes share the cores.
      const r = await runInSandbox('node "$SANDBOX_WORK/linux-scenarios.mjs"', {
        extraFiles: { "linux-scenarios.mjs": readFileSync(script, "utf8") },
        env,
        timeoutMs: 25 * 60_000,
        onOutput: (chunk) => {
          // Chunks are not lines: keep the unfinished one for the next chunk.
          const lines = (partial + chunk).split("\n");
          partial = lines.pop() ?? "";
          for (const line of lines)
            if (line.startsWith("@@PROGRESS")) console.log(`${line} (${Date.now() - t0} ms)`);
        },
      });
      raw = r.output;
      // The sandbox kernel's own complaints (its KVM), if any, help explain a failure here.
      const hostWarnings = r.console.split("\n").filter((l) => /WARNING:|BUG:|kvm.*(error|fail)/i.test(l));
      if (hostWarnings.length) console.log(`sandbox kernel:\n${hostWarnings.slice(0, 20).join("\n")}`);
      console.log(`sandbox: boot ${r.bootMs} ms, scenarios ${r.runMs} ms, exit code ${r.exitCode}`);
      if (r.exitCode !== 0) console.log(r.console.slice(-3000));
    }
    for (const r of parseJsonLines<Result>(raw, "@@RESULT")) {
      results.set(r.name, r);
      if (r.firstAttempt)
        console.warn(
          `${r.name}: RETRIED after a first boot that ended ${JSON.stringify(r.firstAttempt.exit)}\n${r.firstAttempt.consoleTail}`,
        );
    }
    for (const r of results.values())
      console.log(
        `${r.name}: ${r.exit?.reason ?? r.error} in ${r.ms} ms; /init reached after ${r.initMs} ms (kernel clock ${r.kernelInitS} s)`,
      );
    console.log(`all scenarios: ${Date.now() - t0} ms`);
  }, 55 * 60_000);

  it("boots to init with one vCPU, runs the command and powers off", () => {
    const r = get("one-cpu");
    expect(r.command, show(r)).not.toBeNull();
    expect(r.command!.status).toBe(3);
    expect(r.command!.output).toMatch(/^hello from \d+\.\d+\.\d+/);
    expect(r.command!.output).toMatch(/^1$/m);
    // The TSC-deadline timer the machine offers where KVM has it (every kvm_intel / kvm_amd).
    expect(r.command!.output).toMatch(/^lapic-deadline$/m);
    expect(r.exit.reason, show(r)).toBe("poweroff");
    expect(r.exit.detail).toMatch(/System halted|Power down/);
    expect(r.initMs).toBeGreaterThan(0);
  });

  it("brings up a second vCPU that the guest sees", () => {
    const r = get("two-cpus");
    expect(r.command, show(r)).not.toBeNull();
    expect(r.command!.output.trim().split("\n")).toEqual(["2", "2", "0-1"]);
    expect(r.exit.reason).toBe("poweroff");
    expect(r.exit.vcpus.map((v) => v.id).sort()).toEqual([0, 1]);
  });

  it("ends with 'reboot' when the guest reboots (reboot=k: i8042 reset)", () => {
    const r = get("reboot");
    expect(r.command?.status, show(r)).toBe(0);
    expect(r.exit.reason, show(r)).toBe("reboot");
    expect(r.exit.detail).toMatch(/i8042/);
  });

  it("ends with 'triple-fault' when the guest reboots with reboot=t", () => {
    const r = get("triple-fault");
    expect(r.exit.reason, show(r)).toBe("triple-fault");
  });

  it("ends with 'crash' and the panic message when the kernel panics", () => {
    const r = get("panic");
    expect(r.exit.reason, show(r)).toBe("crash");
    expect(r.exit.detail).toMatch(/^Kernel panic - not syncing/);
  });

  it("passes console input to a shell in the guest", () => {
    const r = get("console-input");
    expect(r.sawTyped, show(r)).toBe(true);
    expect(r.exit.reason, show(r)).toBe("poweroff");
  });

  it("boots without kernel warnings of its own making", () => {
    // Nested KVM under QEMU TCG reports an XSAVE size mismatch that QEMU+KVM shows too.
    for (const r of results.values()) {
      const ours = r.warnings.filter((w) => !/xstate\.c|fpu__init_system_xstate/.test(w));
      expect(ours, `${r.name}:\n${r.consoleTail}`).toEqual([]);
    }
  });
});
