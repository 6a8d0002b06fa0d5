// Runs where Linux can boot (inside the sandbox, or on a host with hardware KVM):
// boots the default kit with `tskvm run`, kvmtool (if built: LKVM) and QEMU+KVM, same
// kernel, initrd and command, and prints `@@RESULT {vmm, run, initMs, totalMs}` lines.
// initMs is the wall time from launching the VMM to the guest's first command marker,
// uptimeS the guest kernel's own clock then (its /proc/uptime), and for tskvm `phases`
// the machine's start step by step (boot-trace.mjs, on the VMM's clock from its launch).
//   node boot-in-guest.mjs KERNEL INITRD [RUNS=3] [LKVM|-]
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvmtoolArgv, qemuArgv, tskvmArgv, vmmEnv } from "./vmms.mjs";

const [kernel, initrd, runsArg, lkvm = "-"] = process.argv.slice(2);
const runs = Number(runsArg ?? 3);
const cmd = `tskvm.cmd64=${Buffer.from("cat /proc/uptime").toString("base64")}`;
const trace = new URL("./boot-trace.mjs", import.meta.url).href;
const env = vmmEnv(process.env.SANDBOX_WORK ?? mkdtempSync(join(tmpdir(), "tskvm-boot-")));

function timeBoot(argv) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let initMs;
    let out = "";
    let err = "";
    const p = spawn(argv[0], argv.slice(1), {
      stdio: ["ignore", "pipe", "pipe"],
      env,
    });
    const timer = setTimeout(() => p.kill("SIGKILL"), 300_000);
    p.stdout.on("data", (d) => {
      out += d;
      if (initMs === undefined && out.includes("tskvm: command begin")) initMs = performance.now() - t0;
    });
    p.stderr.on("data", (d) => {
      err += d;
    });
    p.on("exit", (code) => {
      clearTimeout(timer);
      const uptime = /tskvm: command begin[^\n]*\n(?:[^\n]*\n)*?\s*(\d+\.\d+) \d+\.\d+/.exec(out);
      const phases = Object.fromEntries(
        [...err.matchAll(/^@@BOOT (.*)$/gm)].map((m) => JSON.parse(m[1])).map((e) => [e.phase, e.at]),
      );
      resolve({
        initMs,
        totalMs: performance.now() - t0,
        code,
        ...(uptime ? { uptimeS: Number(uptime[1]) } : {}),
        ...(Object.keys(phases).length > 0 ? { phases } : {}),
      });
    });
  });
}

const guest = { kernel, initrd, params: cmd };
const vmms = {
  tskvm: ((a) => [a[0], "--import", trace, ...a.slice(1)])(tskvmArgv(guest)),
  ...(lkvm !== "-" ? { kvmtool: kvmtoolArgv(lkvm, guest) } : {}),
  "qemu+kvm": qemuArgv({
    kernel,
    initrd,
    append: `console=ttyS0 panic=-1 ${cmd}`,
    args: ["-nographic", "-serial", "stdio"],
  }),
};
for (let i = 0; i < runs; i++) {
  for (const [vmm, argv] of Object.entries(vmms)) {
    const r = await timeBoot(argv);
    process.stdout.write(`@@RESULT ${JSON.stringify({ vmm, run: i, ...r })}\n`);
  }
}
