import { fileURLToPath } from "node:url";
import { buildGuestKit } from "@tskvm/guest-kit";
import { e2eTarget, runOnTarget } from "../dist/index.js";
import { fmt, kvmtool, median, saveRows } from "./tools.mjs";

const runs = Number(process.env.TSKVM_BENCH_RUNS ?? 3);
const target = e2eTarget();
const kit = await buildGuestKit();
const script = fileURLToPath(new URL("./boot-in-guest.mjs", import.meta.url));
const peer = kvmtool();
if (peer.missing) console.error(`kvmtool: ${peer.missing}`);
const { results: rows } = await runOnTarget(
  script,
  [kit.kernel, kit.initrd, String(runs), peer.lkvm ?? "-"],
  {
    timeoutMs: 30 * 60_000,
  },
);
const date = new Date().toISOString();
console.log(`\nboot to init (${target.kind}: ${target.reason}), ${date}`);
console.log(`default guest kit, 1 vCPU, 256 MiB, median of ${runs}\n`);
console.log("| VMM | launch → init (s) | guest kernel clock at init (s) | launch → exit (s) | runs ok |");
console.log("|---|---:|---:|---:|---:|");
const vmms = ["tskvm", ...(peer.lkvm ? ["kvmtool"] : []), "qemu+kvm"];
for (const vmm of vmms) {
  const rs = rows.filter((r) => r.vmm === vmm);
  const ok = rs.filter((r) => r.code === 0 && r.initMs !== undefined).length;
  const s = (xs) => fmt(median(xs) / 1000, 1);
  console.log(
    `| ${vmm} | ${s(rs.map((r) => r.initMs))} | ${fmt(median(rs.map((r) => r.uptimeS)), 1)} | ${s(rs.map((r) => r.totalMs))} | ${ok}/${rs.length} |`,
  );
}

// tskvm's start step by step: each phase's median time since the previous one (the steps
// follow each other), then what the guest did after its first console byte.
const traced = rows.filter((r) => r.vmm === "tskvm" && r.phases);
if (traced.length > 0) {
  const order = [
    ["node-bootstrapped", "Node started (bootstrap)"],
    ["preload", "Node ready to load tskvm"],
    ["options-checked", "tskvm's modules loaded, flags, kernel and initrd read and checked"],
    ["acceleration-probed", "KVM acceleration probe"],
    ["vm-created", "KVM VM and guest RAM"],
    ["devices-started", "device workers started"],
    ["guest-loaded", "kernel, initrd, boot tables written"],
    ["vcpus-created", "vCPUs created and set up"],
    ["vcpu-threads-running", "vCPU worker threads started (isolate + modules)"],
    ["first-console-output", "guest: entry to its first console byte"],
  ];
  console.log("\ntskvm start, step by step (median ms of each step)\n");
  console.log("| step | ms |");
  console.log("|---|---:|");
  let prev = "";
  for (const [phase, what] of order) {
    const d = traced.map((r) => r.phases[phase] - (prev ? r.phases[prev] : 0));
    console.log(`| ${what} | ${fmt(median(d), 0)} |`);
    prev = phase;
  }
  const rest = traced.map((r) => r.initMs - r.phases["first-console-output"]);
  console.log(`| guest: first console byte to init's command | ${fmt(median(rest), 0)} |`);
}
saveRows("boot", "TSKVM_BENCH_BOOT_JSON", date, { target, runs, rows });
