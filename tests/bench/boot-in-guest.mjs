// Runs where Linux can boot (inside the sandbox, or on a host with hardware KVM):
// boots the default kit with `tskvm run`, kvmtool (if built: LKVM) and QEMU+KVM, same
// kernel, initrd and command, and prints `@@RESULT {vmm, run, initMs, totalMs}` lines.
// initMs is the wall time from launching the VMM to the guest's first command marker.
//   node boot-in-guest.mjs KERNEL INITRD [RUNS=3] [LKVM|-]
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const [kernel, initrd, runsArg, lkvm = "-"] = process.argv.slice(2);
const runs = Number(runsArg ?? 3);
const root = fileURLToPath(new URL("../../", import.meta.url));
const cli = join(root, "packages/cli/dist/main.js");
const cmd = `tskvm.cmd64=${Buffer.from("true").toString("base64")}`;
// kvmtool keeps its state (sockets) under $HOME/.lkvm: a writable one.
const home = join(process.env.SANDBOX_WORK ?? mkdtempSync(join(tmpdir(), "tskvm-boot-")), "home");
mkdirSync(home, { recursive: true });

function timeBoot(argv) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let initMs;
    let out = "";
    const p = spawn(argv[0], argv.slice(1), {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, HOME: home },
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

const vmms = {
  tskvm: [process.execPath, cli, "run", "-k", kernel, "-i", initrd, "-m", "256", "-c", "1", "-p", cmd],
  // Its guest has no ACPI power-off (noacpi): the kit ends with a reboot, which ends lkvm.
  ...(lkvm !== "-"
    ? {
        kvmtool: [
          lkvm,
          "run",
          "-k",
          kernel,
          "-i",
          initrd,
          "-m",
          "256",
          "-c",
          "1",
          "--network",
          "mode=none",
          "-p",
          `${cmd} tskvm.reboot`,
        ],
      }
    : {}),
  "qemu+kvm": [
    "qemu-system-x86_64",
    "-enable-kvm",
    "-cpu",
    "host",
    "-m",
    "256",
    "-smp",
    "1",
    "-nographic",
    "-no-reboot",
    "-nodefaults",
    "-serial",
    "stdio",
    "-kernel",
    kernel,
    "-initrd",
    initrd,
    "-append",
    `console=ttyS0 panic=-1 ${cmd}`,
  ],
};
for (let i = 0; i < runs; i++) {
  for (const [vmm, argv] of Object.entries(vmms)) {
    const r = await timeBoot(argv);
    process.stdout.write(`@@RESULT ${JSON.stringify({ vmm, run: i, ...r })}\n`);
  }
}
