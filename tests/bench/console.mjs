// Console bench: does a busy disk starve the console? Console round trips (a letter typed on
// the VMM's terminal until the guest's echo comes back) idle and while the guest keeps its
// virtio-blk disk busy, and /dev/hwrng throughput — tskvm with the disk on its own worker and
// on the thread the console shares, beside kvmtool (--console virtio) and QEMU (virtconsole;
// the disk on the main loop, or on an iothread), same kernel, initrd and image, one run.
//
//   node bench/console.mjs                      (from tests/; part of `pnpm bench`)
//
// Environment: TSKVM_BENCH_CONSOLE_PINGS (1000 round trips per phase), TSKVM_BENCH_CONSOLE_VMMS
// (tskvm,tskvm-shared,kvmtool,qemu,qemu-iothread), TSKVM_BENCH_CONSOLE_RUNS (1; more give
// medians of the per-run percentiles), TSKVM_BENCH_CONSOLE_JSON (where the rows go; default
// bench/results/console-DATE.json), TSKVM_E2E_TARGET (host|sandbox).
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildGuestKit } from "@tskvm/guest-kit";
import { e2eTarget, runOnTarget } from "../dist/index.js";
import { fmt, initrdWith, kvmtool, median, saveRows } from "./tools.mjs";

const pings = Number(process.env.TSKVM_BENCH_CONSOLE_PINGS ?? 1000);
const runs = Number(process.env.TSKVM_BENCH_CONSOLE_RUNS ?? 1);
const vmms = (process.env.TSKVM_BENCH_CONSOLE_VMMS ?? "tskvm,tskvm-shared,kvmtool,qemu,qemu-iothread")
  .split(",")
  .filter(Boolean);
const here = dirname(fileURLToPath(import.meta.url));

const kit = await buildGuestKit({ log: (line) => console.error(line) });
const initrd = initrdWith(kit, ["conbench", "blkbench"], "initrd-console-");
const peer = vmms.includes("kvmtool") ? kvmtool() : { missing: "not asked for" };
if (peer.missing && vmms.includes("kvmtool")) console.error(`kvmtool: ${peer.missing}`);

const target = e2eTarget();
const { results: rows, log } = await runOnTarget(
  join(here, "console-in-guest.mjs"),
  [kit.kernel, initrd, peer.lkvm ?? "-", String(pings), vmms.join(","), String(runs)],
  { timeoutMs: 10 * 60_000 + runs * vmms.length * 2 * (420 + pings * 0.3) * 1000 },
);

const date = new Date().toISOString();
const names = {
  tskvm: "tskvm (disk on its own worker)",
  "tskvm-shared": "tskvm (disk on the console's thread)",
  kvmtool: "kvmtool",
  qemu: "QEMU (disk on the main loop)",
  "qemu-iothread": "QEMU (disk on an iothread)",
};
const ms = (us) => (typeof us === "number" ? (us / 1000).toFixed(2) : "—");

console.log(`\nconsole round trips, idle and under disk load (${target.kind}: ${target.reason})`);
console.log(
  `default guest kit + conbench/blkbench, 1 vCPU, 256 MiB RAM, virtio console (hvc0) on a pty, virtio-rng, ` +
    `256 MiB raw image on tmpfs; ${pings} round trips per phase, timed in the guest; load: 4 KiB random reads ` +
    `qd32 + 1 MiB O_DIRECT writes qd8 on /dev/vda; ${runs === 1 ? "1 run" : `median of ${runs} runs`}; ${date}\n`,
);
console.log(
  "| VMM | idle p50 (ms) | idle p99 (ms) | loaded p50 (ms) | loaded p99 (ms) | loaded max (ms) | disk under load: read MB/s | write MB/s | /dev/hwrng MB/s | runs ok | notes |",
);
console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
for (const v of vmms) {
  const rs = rows.filter((r) => r.vmm === v);
  const ok = rs.filter((r) => r.ok);
  const per = (f) => median(ok.map(f));
  const mbps = (k) => per((r) => (r.load?.seconds ? r.load[k] / r.load.seconds : undefined));
  const notes = [
    ...rs.filter((r) => r.skipped).map((r) => `skipped: ${r.skipped}`),
    ...rs.filter((r) => r.retried).map((r) => `run ${r.run} RETRIED after: ${r.retried.error}`),
    ...rs.filter((r) => !r.ok && !r.skipped).map((r) => `run ${r.run} FAILED: ${r.error}`),
    ...ok
      .filter((r) => r.rtt.idle.lost + r.rtt.loaded.lost > 0)
      .map((r) => `run ${r.run}: ${r.rtt.idle.lost + r.rtt.loaded.lost} round trips lost`),
  ];
  console.log(
    `| ${names[v] ?? v} | ${ms(per((r) => r.rtt.idle.p50us))} | ${ms(per((r) => r.rtt.idle.p99us))} | ` +
      `${ms(per((r) => r.rtt.loaded.p50us))} | ${ms(per((r) => r.rtt.loaded.p99us))} | ` +
      `${ms(per((r) => r.rtt.loaded.maxus))} | ${fmt(mbps("readMB"), 1)} | ${fmt(mbps("writeMB"), 1)} | ` +
      `${fmt(
        per((r) => r.hwrng?.mbps),
        3,
      )} | ${ok.length}/${rs.filter((r) => !r.skipped).length} | ${notes.join("; ")} |`,
  );
}

saveRows("console", "TSKVM_BENCH_CONSOLE_JSON", date, {
  target: { kind: target.kind, reason: target.reason },
  pings,
  runs,
  vmms,
  rows,
});
if (rows.length < runs * vmms.length || rows.some((r) => !r.ok && !r.skipped)) {
  console.error(
    `\nsome runs failed or are missing (${rows.length}/${runs * vmms.length} rows); the run's output:\n${log}`,
  );
  process.exitCode = 1;
}
