// Guest block-I/O bench: tskvm (its default, which polls the ring up to 100 µs; aio=io_uring; poll=0) beside kvmtool (with and without
// libaio) and QEMU+KVM (with and without an iothread),
// the same kernel, initrd, guest program and disk image for each.
//
//   node bench/blk.mjs                                  (from tests/; part of `pnpm bench`)
//   TSKVM_BENCH_BLK_FORMATS=raw,qcow2 node bench/blk.mjs  the whole matrix on both formats
//   TSKVM_BENCH_BLK_RUNS=3 ...                           medians of 3 runs per VMM and format
//
// Environment: TSKVM_BENCH_BLK_FORMATS (raw; comma list of raw, qcow2), TSKVM_BENCH_BLK_SECONDS
// (3, per workload), TSKVM_BENCH_BLK_VMMS (tskvm,tskvm-io_uring,tskvm-nopoll,tskvm-stat,kvmtool,
// kvmtool-noaio,qemu,qemu-iothread; also tskvm-prof: under V8's profiler, each thread's top
// functions in the log; tskvm-base: the CLI of the checkout at TSKVM_BENCH_BLK_BASE, built — a
// change beside its base in one boot; VMM@CPUS pins one to CPUS with taskset, e.g. tskvm@0),
// TSKVM_BENCH_BLK_RUNS (1; more runs, round-robin, give medians: the sandbox is noisy),
// TSKVM_BENCH_BLK_EXITS (1: count the VM exits of each workload in the host kernel, kvm:kvm_exit,
// and print them per request — needs root and tracefs, as in the sandbox), TSKVM_BENCH_BLK_WORKLOADS (all; comma list of blkbench's seqread, seqwrite,
// randread1, randread32, randwrite32), TSKVM_BENCH_BLK_JSON (where the rows go; default
// bench/results/blk-DATE.json), TSKVM_E2E_TARGET (host|sandbox).
//
// blkbench.c is compiled static with gcc and appended, as a second gzip'd cpio archive,
// to the default guest kit's initrd. Both files go to CACHE/bench/ (CACHE = guest-kit's
// defaultCacheDir(), ~/.cache/tskvm), not /tmp: the sandbox mounts its own /tmp.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildGuestKit } from "@tskvm/guest-kit";
import { e2eTarget, runOnTarget } from "../dist/index.js";
import { fmt, initrdWith, kvmtool, median, saveRows } from "./tools.mjs";

const formats = (process.env.TSKVM_BENCH_BLK_FORMATS ?? "raw").split(",").filter(Boolean);
const seconds = Number(process.env.TSKVM_BENCH_BLK_SECONDS ?? 3);
const runs = Number(process.env.TSKVM_BENCH_BLK_RUNS ?? 1);
const vmms = (
  process.env.TSKVM_BENCH_BLK_VMMS ??
  "tskvm,tskvm-io_uring,tskvm-nopoll,tskvm-stat,kvmtool,kvmtool-noaio,qemu,qemu-iothread"
)
  .split(",")
  .filter(Boolean);
const here = dirname(fileURLToPath(import.meta.url));

const kit = await buildGuestKit({ log: (line) => console.error(line) });
const initrd = initrdWith(kit, ["blkbench"], "initrd-blk-");
const wantsKvmtool = vmms.some((v) => v.startsWith("kvmtool"));
const peer = wantsKvmtool ? kvmtool() : { missing: "not asked for" };
if (peer.missing && wantsKvmtool) console.error(`kvmtool: ${peer.missing}`);

const target = e2eTarget();
const script = join(here, "blk-in-guest.mjs");
const perRunMs = 180_000 + 10_000 * seconds;
const { results: rows, log } = await runOnTarget(
  script,
  [
    kit.kernel,
    initrd,
    formats.join(","),
    String(seconds),
    vmms.join(","),
    String(runs),
    peer.lkvm ?? "-",
    process.env.TSKVM_BENCH_BLK_EXITS ? "exits" : "",
    process.env.TSKVM_BENCH_BLK_WORKLOADS ?? "",
    process.env.TSKVM_BENCH_BLK_BASE ?? "",
  ],
  { timeoutMs: 5 * 60_000 + runs * formats.length * vmms.length * 2 * perRunMs },
);

const date = new Date().toISOString();
const names = {
  tskvm: "tskvm",
  "tskvm-io_uring": "tskvm aio=io_uring",
  "tskvm-nopoll": "tskvm poll=0",
  "tskvm-stat": "tskvm + stat --watch",
  "tskvm-prof": "tskvm --cpu-prof",
  "tskvm-base": "tskvm (base)",
  kvmtool: "kvmtool",
  "kvmtool-noaio": "kvmtool no libaio",
  qemu: "QEMU",
  "qemu-iothread": "QEMU+iothread",
};
/** A VMM's name in the tables; "VMM@CPUS" is VMM pinned to CPUS. */
const nameOf = (v) => {
  const [base, cpus] = v.split("@");
  return `${names[base] ?? base}${cpus ? ` @cpu${cpus}` : ""}`;
};
const label = (w) => `${w.workload} ${w.bs >= 1 << 20 ? `${w.bs >> 20}M` : `${w.bs >> 10}k`} qd${w.depth}`;
/** The workloads of `rs`, labelled, in the order they first appear. */
const labelsOf = (rs) => [...new Set(rs.flatMap((r) => r.workloads.map(label)))];

console.log(`\nguest block I/O (${target.kind}: ${target.reason})`);
console.log(
  `default guest kit + blkbench (O_DIRECT, native AIO) on /dev/vda, 1 vCPU, 256 MiB RAM, ` +
    `${seconds} s per workload, 256 MiB image on tmpfs, ${runs === 1 ? "1 run" : `median of ${runs} runs`}; ` +
    `MB/s = 10^6 B/s; ${date}`,
);
for (const format of formats) {
  const all = Object.fromEntries(
    vmms.map((v) => [v, rows.filter((r) => r.format === format && r.vmm === v)]),
  );
  const ok = Object.fromEntries(vmms.map((v) => [v, all[v].filter((r) => r.ok)]));
  const labels = labelsOf(vmms.flatMap((v) => ok[v]));
  console.log(`\n${format} image\n`);
  console.log(`| workload | ${vmms.map((v) => `${nameOf(v)} MB/s | ${nameOf(v)} IOPS`).join(" | ")} |`);
  console.log(`|---|${vmms.map(() => "---:|---:").join("|")}|`);
  for (const l of labels) {
    const cells = vmms.map((v) => {
      const ws = ok[v].flatMap((r) => r.workloads.filter((w) => label(w) === l));
      return `${fmt(median(ws.map((w) => w.mbps)), 1)} | ${fmt(median(ws.map((w) => w.iops)), 0)}`;
    });
    console.log(`| ${l} | ${cells.join(" | ")} |`);
  }
  console.log("");
  console.log("| VMM | peak RSS (MiB, max) | wall (s, median) | runs ok | notes |");
  console.log("|---|---:|---:|---:|---|");
  for (const v of vmms) {
    const rs = all[v];
    const rss = rs.map((r) => r.peakRssKiB).filter((x) => typeof x === "number");
    const notes = [
      ...rs.filter((r) => r.skipped).map((r) => `skipped: ${r.skipped}`),
      ...rs.filter((r) => r.retried).map((r) => `run ${r.run} RETRIED after: ${r.retried.error}`),
      ...rs.filter((r) => !r.ok && !r.skipped).map((r) => `run ${r.run} FAILED: ${r.error}`),
    ];
    console.log(
      `| ${nameOf(v)} | ${fmt(rss.length ? Math.max(...rss) / 1024 : undefined, 1)} | ` +
        `${fmt(median(ok[v].map((r) => r.wallMs / 1000)), 1)} | ${ok[v].length}/${rs.filter((r) => !r.skipped).length} | ${notes.join("; ")} |`,
    );
  }
}

/**
 * Prints, for `format`, a table of a per-workload count that each run's row carries in `field`
 * (one entry per workload), a column per VMM that has it: `cell` turns the runs' entries for a
 * workload, each with the workload's request count (`ops`), its row and the workload's index
 * there, into the cell's text.
 */
function perRequestTable(format, field, title, cell) {
  const withField = (v) => rows.filter((r) => r.ok && r.format === format && r.vmm === v && r[field]);
  const shown = vmms.filter((v) => withField(v).length > 0);
  if (!shown.length) return [];
  console.log(`\n${format}: ${title}\n`);
  console.log(`| workload | ${shown.map((v) => nameOf(v)).join(" | ")} |`);
  console.log(`|---|${shown.map(() => "---|").join("")}`);
  for (const l of labelsOf(rows.filter((r) => r.ok && r.format === format))) {
    const cells = shown.map((v) => {
      const samples = withField(v).flatMap((r) => {
        const i = r.workloads.findIndex((w) => label(w) === l);
        const ops = r.workloads[i]?.ops;
        return r[field][i] && ops ? [{ value: r[field][i], ops, row: r, index: i }] : [];
      });
      return samples.length ? cell(samples) : "–";
    });
    console.log(`| ${l} | ${cells.join(" | ")} |`);
  }
  return shown;
}

// VM exits per request, by reason, as the host kernel counted them (TSKVM_BENCH_BLK_EXITS=1).
for (const format of formats) {
  const traced = perRequestTable(
    format,
    "exitsPerWorkload",
    "VM exits per request (kvm:kvm_exit in the host kernel; the main reasons)",
    (samples) => {
      // The first run of this VMM with counts (exits vary little between runs; IOPS do).
      const { value, ops } = samples[0];
      const exits = value.exit;
      if (!exits) return "–";
      const total = Object.values(exits).reduce((a, b) => a + b, 0);
      const top = Object.entries(exits)
        .sort((a, b) => b[1] - a[1])
        .slice(0, 4)
        .map(([k, n]) => `${k} ${fmt(n / ops, 2)}`);
      return `**${fmt(total / ops, 2)}** (${top.join(", ")})`;
    },
  );
  const timers = traced
    .map((v) => [v, rows.find((x) => x.format === format && x.vmm === v && x.guestTimer)?.guestTimer])
    .filter(([, t]) => t);
  for (const [v, t] of timers) console.log(`${nameOf(v)}'s guest: ${t}`);
}

// CPU per request, by thread, as the host kernel counted it (schedstat; a vCPU thread's time
// includes its guest's): what each VMM spends to serve one request, beside the peers.
for (const format of formats)
  perRequestTable(
    format,
    "threadCpuPerWorkload",
    "CPU µs per request, by thread (schedstat; vCPU threads include the guest's time), and the share spent in the kernel (stat's stime)",
    (samples) => {
      // Medians over the runs, per thread name (tids differ between runs).
      const perName = new Map();
      const sysPerName = new Map();
      const totals = [];
      for (const { value: cpu, ops, row, index } of samples) {
        const sys = row.threadSysCpuPerWorkload?.[index] ?? {};
        // Several threads may share a name (Node's are all "node"): ranked by CPU, busiest first.
        const byName = new Map();
        for (const [k, ns] of Object.entries(cpu).sort((a, b) => b[1] - a[1])) {
          const name = k.slice(0, k.lastIndexOf("#"));
          let key = name;
          for (let n = 2; byName.has(key); n++) key = `${name}(${n})`;
          byName.set(key, ns / 1000 / ops);
          if (sys[k] !== undefined) sysPerName.set(key, [...(sysPerName.get(key) ?? []), sys[k] / ns]);
        }
        totals.push([...byName.values()].reduce((a, b) => a + b, 0));
        for (const [k, us] of byName) perName.set(k, [...(perName.get(k) ?? []), us]);
      }
      const top = [...perName.entries()]
        .map(([k, us]) => [k, median(us)])
        .sort((a, b) => b[1] - a[1])
        .slice(0, 3)
        .map(([k, us]) => {
          const sys = median(sysPerName.get(k) ?? []);
          return `${k} ${fmt(us, 0)}${sys === undefined ? "" : ` (${fmt(Math.min(1, sys) * 100, 0)}% sys)`}`;
        });
      return `**${fmt(median(totals), 0)}** (${top.join(", ")})`;
    },
  );

// What watching costs: the same tskvm with and without `tskvm stat --watch` beside it.
for (const format of formats) {
  const base = rows.filter((r) => r.ok && r.format === format && r.vmm === "tskvm");
  const watched = rows.filter((r) => r.ok && r.format === format && r.vmm === "tskvm-stat");
  if (!base.length || !watched.length) continue;
  const samples = watched.map((r) => r.statSamples).join(", ");
  console.log(`\n${format}: tskvm with \`tskvm stat --watch\` running ÷ without (${samples} samples read)\n`);
  console.log("| workload | IOPS ratio |");
  console.log("|---|---:|");
  const labels = labelsOf(base);
  for (const l of labels) {
    const iops = (rs) =>
      median(rs.flatMap((r) => r.workloads.filter((w) => label(w) === l).map((w) => w.iops)));
    const a = iops(watched);
    const b = iops(base);
    console.log(`| ${l} | ${fmt(a !== undefined && b ? a / b : undefined, 2)} |`);
  }
}

saveRows("blk", "TSKVM_BENCH_BLK_JSON", date, {
  target: { kind: target.kind, reason: target.reason },
  seconds,
  runs,
  formats,
  vmms,
  rows,
});

const expected = runs * formats.length * vmms.length - rows.filter((r) => r.skipped).length * (runs - 1);
if (rows.length < expected || rows.some((r) => !r.ok && !r.skipped)) {
  console.error(
    `\nsome runs failed or are missing (${rows.length}/${expected} rows); the run's output:\n${log}`,
  );
  process.exitCode = 1;
}
