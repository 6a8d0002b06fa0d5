// Runs where Linux can boot (inside the sandbox, or on a host with hardware KVM):
// boots the default kit with `tskvm run`, kvmtool (if built: LKVM) and QEMU+KVM, same
// kernel, initrd and command, and prints `@@RESULT {vmm, run, initMs, totalMs}` lines.
// initMs is the wall time from launching the VMM to the guest's first command marker.
//   node boot-in-guest.mjs KERNEL INITRD [RUNS=3] [LKVM|-]
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvmtoolArgv, qemuArgv, tskvmArgv, vmmEnv } from "./vmms.mjs";

const [kernel, initrd, runsArg, lkvm = "-"] = process.argv.slice(2);
const runs = Number(runsArg ?? 3);
const cmd = `tskvm.cmd64=${Buffer.from("true").toString("base64")}`;
const env = vmmEnv(process.env.SANDBOX_WORK ?? mkdtempSync(join(tmpdir(), "tskvm-boot-")));

function timeBoot(argv) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let initMs;
    let out = "";
    const p = spawn(argv[0], argv.slice(1), {
      stdio: ["ignore", "pipe", "pipe"],
      env,
    });
    const timer = setTimeout(() => p.kill("SIGKILL"), 300_000);
    p.stdout.on("data", (d) => {
      out += d;
      if (initMs === undefined && out.includes("tskvm: command begin")) initMs = performance.now() - t0;
    });
    p.stderr.on("data", () => {});
    p.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ initMs, totalMs: performance.now() - t0, code });
    });
  });
}

const guest = { kernel, initrd, params: cmd };
const vmms = {
  tskvm: tskvmArgv(guest),
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
