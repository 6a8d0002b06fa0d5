// Runs where Linux can boot (inside the sandbox, or on a host with hardware KVM):
// boots the same kernel + initrd (the default guest kit plus a static blkbench)
// under each VMM with a 256 MiB disk image as the guest's /dev/vda, runs
// `blkbench -t SECONDS /dev/vda` in the guest and prints one
//   @@RESULT {run, format, vmm, ok, workloads: [...], wallMs, peakRssKiB, code, status, retried?, error?}
// line per (run, format, VMM). peakRssKiB is the VMM process's VmHWM (for tskvm the
// node process), polled while it runs; the last value read before it exited.
//
//   node blk-in-guest.mjs KERNEL INITRD [FORMATS=raw[,qcow2]] [SECONDS=3] [VMMS=tskvm,tskvm-io_uring,tskvm-nopoll,tskvm-stat,kvmtool,kvmtool-noaio,qemu,qemu-iothread] [RUNS=1] [LKVM|-]
//
// Images live on $SANDBOX_WORK (a tmpfs in the sandbox; else a temp dir), 256 MiB,
// filled with non-zero data first so reads read data: raw by writing it, qcow2 by
// `qemu-img convert` of the filled raw image (so every cluster is allocated). All
// VMMs of one format use the same image file.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { fillRawImage, kvmtoolArgv, qemuArgv, tskvmArgv, vmmEnv } from "./vmms.mjs";

const [
  kernel,
  initrd,
  formatsArg = "raw",
  secondsArg = "3",
  vmmsArg = "tskvm,qemu,qemu-iothread",
  runsArg = "1",
  lkvm = "-",
  exitsArg = "",
  workloadsArg = "",
  baseRoot = "",
] = process.argv.slice(2);
if (!kernel || !initrd) {
  console.error("usage: blk-in-guest.mjs KERNEL INITRD [FORMATS] [SECONDS] [VMMS] [RUNS] [LKVM|-]");
  process.exit(2);
}
const formats = formatsArg.split(",").filter(Boolean);
const vmms = vmmsArg.split(",").filter(Boolean);
const seconds = Number(secondsArg);
const runs = Number(runsArg);
const IMAGE_MIB = 256;
// Boot (20-40 s nested) + 5 workloads of SECONDS + drains, with a wide margin.
const RUN_TIMEOUT_MS =
  Number(process.env.TSKVM_BENCH_BLK_RUN_TIMEOUT ?? 0) * 1000 || 180_000 + 10_000 * seconds;
// The nested guest sometimes hangs early in boot (the sandbox's known rare hang): a run whose
// console stays silent this long is hung. With `quiet` the boot prints little until the
// command's begin marker (~20-45 s in the sandbox); blkbench prints a line per workload.
const SILENCE_MS = 90_000 + 3_000 * seconds;
const root = fileURLToPath(new URL("../../", import.meta.url));
const cli = join(root, "packages/cli/dist/main.js");
const work = process.env.SANDBOX_WORK ?? mkdtempSync(join(tmpdir(), "tskvm-blkbench-"));
const ownWork = !process.env.SANDBOX_WORK;

/**
 * VM exits per workload, counted by the host kernel (where the script runs as root with
 * tracefs, as in the sandbox): a hist trigger on kvm:kvm_exit keyed by exit reason (and one
 * on kvm:kvm_msr by MSR), read when the guest prints the workloads' begin and each result —
 * the same count for every VMM, whatever it reports itself.
 */
function tracing() {
  if (exitsArg !== "exits") return undefined;
  const find = () =>
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].find((d) =>
      existsSync(`${d}/events/kvm/kvm_exit/trigger`),
    );
  // The sandbox's init mounts neither tracefs nor debugfs.
  if (!find()) spawnSync("mount", ["-t", "tracefs", "nodev", "/sys/kernel/tracing"]);
  return find();
}
const TRACING = tracing();
const countExits = TRACING !== undefined;
const HISTS = { exit: ["kvm_exit", "exit_reason"], msr: ["kvm_msr", "ecx,write"] };
// Exit codes by vendor (AMD APM vol. 2 app. C; Intel SDM vol. 3 app. C), the ones a disk bench meets.
const EXIT_NAMES = existsSync("/sys/module/kvm_amd")
  ? { 96: "intr", 97: "nmi", 100: "vintr", 120: "hlt", 123: "io", 124: "msr", 1024: "npf" }
  : { 1: "intr", 7: "vintr", 12: "hlt", 30: "io", 31: "rdmsr", 32: "wrmsr", 48: "ept", 49: "ept-misconfig" };
// x2APIC registers as MSRs (0x800 + offset / 16).
const MSR_NAMES = { 2059: "x2apic-eoi", 2096: "x2apic-icr", 2104: "x2apic-timer", 1760: "tsc-deadline" };
function histKey(name, key) {
  if (name === "exit") {
    const code = Number(/exit_reason:\s*(\d+)/.exec(key)?.[1]);
    return EXIT_NAMES[code] ?? `exit ${code}`;
  }
  const m = /ecx:\s*(\d+), write:\s*(\d+)/.exec(key);
  if (!m) return key;
  const msr = Number(m[1]);
  return `${m[2] === "1" ? "write" : "read"} ${MSR_NAMES[msr] ?? `0x${msr.toString(16)}`}`;
}
function histReset() {
  for (const [event, keys] of Object.values(HISTS)) {
    const trigger = `${TRACING}/events/kvm/${event}/trigger`;
    try {
      writeFileSync(trigger, `!hist:keys=${keys}`);
    } catch {
      // none yet
    }
    writeFileSync(trigger, `hist:keys=${keys}:size=256`);
  }
}
function histRead() {
  const out = {};
  for (const [name, [event]] of Object.entries(HISTS)) {
    const counts = {};
    for (const m of readFileSync(`${TRACING}/events/kvm/${event}/hist`, "utf8").matchAll(
      /^\{ (.*?) \} hitcount:\s+(\d+)/gm,
    )) {
      const key = histKey(name, m[1]);
      counts[key] = (counts[key] ?? 0) + Number(m[2]);
    }
    out[name] = counts;
  }
  return out;
}
const histDelta = (a, b) =>
  Object.fromEntries(
    Object.entries(b).map(([name, counts]) => [
      name,
      Object.fromEntries(
        Object.entries(counts)
          .map(([k, v]) => [k, v - (a[name]?.[k] ?? 0)])
          .filter(([, v]) => v > 0),
      ),
    ]),
  );

const log = (line) => process.stderr.write(`[blk-in-guest] ${line}\n`);
if (exitsArg === "exits")
  log(
    countExits
      ? `counting VM exits per workload (${TRACING})`
      : "cannot count VM exits: no tracefs with kvm events",
  );
const emit = (row) => process.stdout.write(`@@RESULT ${JSON.stringify(row)}\n`);

// First the guest's timer, clock and APIC mode (they decide which exits a request costs: e.g.
// kvmtool's guest keeps the xAPIC, so its timer writes are MMIO exits, not MSR writes).
const cmd =
  'echo "@@GUEST-TIMER clockevent=$(cat /sys/devices/system/clockevents/clockevent0/current_device)' +
  " clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)" +
  ' apic=$(dmesg | grep -q "x2apic enabled" && echo x2apic || echo xapic)"; ' +
  `/blkbench -t ${seconds} /dev/vda ${workloadsArg.split(",").join(" ")}`;
// `quiet`: the boot's console chatter goes through an emulated UART (slow in the sandbox)
// and is not what is measured.
const cmdParam = `quiet tskvm.cmd64=${Buffer.from(cmd).toString("base64")}`;

function sh(argv) {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${argv.join(" ")}: exit ${r.status}: ${r.stderr}${r.error ?? ""}`);
  return r.stdout;
}

function tskvmHasDisk() {
  const r = spawnSync(process.execPath, [cli, "run", "--help"], { encoding: "utf8" });
  return /--disk\b/.test(`${r.stdout}${r.stderr}`);
}

function argvFor(vmm, image, format) {
  // "VMM@CPUS" runs VMM with every thread pinned to CPUS (taskset's list), e.g. tskvm@0.
  const at = vmm.indexOf("@");
  if (at > 0) return ["taskset", "-c", vmm.slice(at + 1), ...argvFor(vmm.slice(0, at), image, format)];
  const guest = { kernel, initrd, params: cmdParam };
  const qemu = (iothread) =>
    qemuArgv({
      kernel,
      initrd,
      append: `console=ttyS0 panic=1 ${cmdParam}`,
      args: [
        "-nographic",
        "-serial",
        "stdio",
        "-drive",
        `file=${image},if=none,id=d0,format=${format},cache=writeback,aio=threads`,
        ...(iothread
          ? ["-object", "iothread,id=io0", "-device", "virtio-blk-pci,drive=d0,iothread=io0"]
          : ["-device", "virtio-blk-pci,drive=d0"]),
      ],
    });
  switch (vmm) {
    case "qemu":
      return qemu(false);
    case "qemu-iothread":
      return qemu(true);
    case "kvmtool":
      return kvmtoolArgv(lkvm, { ...guest, args: ["-d", image] });
    case "kvmtool-noaio":
      // The same source built without libaio: synchronous preadv / pwritev on its blk thread.
      return kvmtoolArgv(`${lkvm}-noaio`, { ...guest, args: ["-d", image] });
    case "tskvm":
      // tskvm probes the format itself; a disk without direct is served synchronously.
      return tskvmArgv({ ...guest, args: ["-d", image] });
    case "tskvm-io_uring":
      return tskvmArgv({ ...guest, args: ["-d", `${image},aio=io_uring`] });
    case "tskvm-nopoll":
      return tskvmArgv({ ...guest, args: ["-d", `${image},poll=0`] });
    case "tskvm-base":
      // The default tskvm of another checkout (TSKVM_BENCH_BLK_BASE): a change beside its base, in one boot.
      if (!baseRoot) throw new Error("tskvm-base needs TSKVM_BENCH_BLK_BASE (another checkout, built)");
      return tskvmArgv({ ...guest, args: ["-d", image], root: baseRoot });
    case "tskvm-prof": {
      // The default tskvm under V8's sampling profiler (every thread writes its own profile to
      // PROF_DIR at exit, summarised in the log after the run): ~10× slower in the sandbox, so
      // its figures say where the time goes, not how fast.
      const argv = tskvmArgv({ ...guest, args: ["-d", image] });
      return [argv[0], "--cpu-prof", `--cpu-prof-dir=${PROF_DIR}`, ...argv.slice(1)];
    }
    case "tskvm-stat":
      // The default tskvm, with `tskvm stat --watch` reading its counters once a second (see boot).
      return tskvmArgv({ ...guest, args: ["--name", STAT_VM, "-d", image] });
    default:
      throw new Error(`unknown VMM ${vmm}`);
  }
}

function readHwmKiB(pid) {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined; // gone already
  }
}

/**
 * CPU time of each thread of process `pid` so far (ns on a CPU, from schedstat), keyed
 * "comm#tid" (`cpu`; a vCPU thread's includes the time its guest ran), and the part of it
 * spent in the kernel (`sys`, from stat's stime: 10 ms ticks). Empty once the process is gone.
 */
function threadCpu(pid) {
  const cpu = {};
  const sys = {};
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        const dir = `/proc/${pid}/task/${tid}`;
        const ns = Number(readFileSync(`${dir}/schedstat`, "utf8").split(" ")[0]);
        // stat's fields after "(comm) ": state is field 3, stime field 15; USER_HZ is 100 on x86.
        const stat = readFileSync(`${dir}/stat`, "utf8");
        const stime = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[12]);
        // The process's first thread is its main thread, whatever its name.
        const comm = tid === String(pid) ? "main" : readFileSync(`${dir}/comm`, "utf8").trim();
        cpu[`${comm}#${tid}`] = ns;
        sys[`${comm}#${tid}`] = stime * 1e7;
      } catch {
        // the thread ended meanwhile
      }
    }
  } catch {
    // gone already
  }
  return { cpu, sys };
}

/** Per thread, the CPU ns spent between two {@link threadCpu} snapshots (threads that ran only). */
const cpuDelta = (a, b) =>
  Object.fromEntries(
    Object.entries(b)
      .map(([k, ns]) => [k, ns - (a[k] ?? 0)])
      .filter(([, ns]) => ns > 0),
  );

/** Where tskvm-prof's threads write their CPU profiles. */
const PROF_DIR = join(work, "prof");

/**
 * Logs, for each CPU profile in PROF_DIR (one per thread), the functions that took the most
 * samples themselves, with their share; then removes the profiles.
 */
function summariseProfiles(label) {
  if (!existsSync(PROF_DIR)) return;
  for (const file of readdirSync(PROF_DIR).filter((f) => f.endsWith(".cpuprofile"))) {
    const profile = JSON.parse(readFileSync(join(PROF_DIR, file), "utf8"));
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    const self = new Map();
    for (const id of profile.samples) {
      const { functionName, url, lineNumber } = byId.get(id).callFrame;
      const key = `${functionName || "(anonymous)"} ${url.split("/").slice(-2).join("/")}:${lineNumber + 1}`;
      self.set(key, (self.get(key) ?? 0) + 1);
    }
    const total = profile.samples.length;
    const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25);
    log(
      `${label} profile ${file}: ${total} samples over ${((profile.endTime - profile.startTime) / 1e6).toFixed(1)} s\n` +
        top.map(([k, n]) => `  ${((100 * n) / total).toFixed(1).padStart(5)}% ${k}`).join("\n"),
    );
  }
  rmSync(PROF_DIR, { recursive: true, force: true });
}

/** The name of the VM that `tskvm stat --watch` watches in the tskvm-stat rows. */
const STAT_VM = "bench-stat";

/**
 * `tskvm stat NAME --watch --json` for as long as `running()`: started at once and again
 * whenever it ends (until the VM's control socket exists it cannot connect), so it is up
 * long before the guest's bench begins. Returns a stop function giving the samples printed.
 */
function watchStats(running) {
  let samples = 0;
  let child;
  const start = () => {
    if (!running()) return;
    child = spawn(process.execPath, [cli, "stat", STAT_VM, "--watch", "--json"], {
      stdio: ["ignore", "pipe", "ignore"],
      env: vmmEnv(work),
    });
    child.stdout.on("data", (d) => {
      samples += String(d)
        .split("\n")
        .filter((l) => l.startsWith("{")).length;
    });
    child.on("close", () => setTimeout(start, 1000));
  };
  start();
  return () => {
    child?.kill("SIGKILL");
    return samples;
  };
}

/** One boot: wall time, peak RSS, console output, exit code; killed after RUN_TIMEOUT_MS or SILENCE_MS of silence. */
function boot(argv, { watch = false } = {}) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let out = "";
    let err = "";
    let peakRssKiB;
    let timedOut = false;
    const p = spawn(argv[0], argv.slice(1), {
      stdio: ["ignore", "pipe", "pipe"],
      env: vmmEnv(work),
    });
    const poll = setInterval(() => {
      peakRssKiB = readHwmKiB(p.pid) ?? peakRssKiB;
    }, 200);
    let closed = false;
    // Exits and each thread's CPU per workload: a snapshot at the begin line and at each result line.
    const exitSnaps = [];
    const cpuSnaps = [];
    let scanned = 0; // out[0, scanned) has been looked at, line by line
    if (countExits) histReset();
    const stopWatch = watch ? watchStats(() => !closed) : undefined;
    const hang = (why) => () => {
      timedOut = why;
      p.kill("SIGKILL");
    };
    const timer = setTimeout(hang(`timed out after ${RUN_TIMEOUT_MS / 1000} s`), RUN_TIMEOUT_MS);
    let silence = setTimeout(hang(`console silent for ${SILENCE_MS / 1000} s`), SILENCE_MS);
    p.stdout.on("data", (d) => {
      out += d;
      // Only the lines completed by this chunk: a snapshot right when the line arrives.
      for (let nl = out.indexOf("\n", scanned); nl >= 0; nl = out.indexOf("\n", scanned)) {
        const l = out.slice(scanned, nl).trim();
        scanned = nl + 1;
        if (l.startsWith('{"begin"') || l.startsWith('{"workload"')) {
          cpuSnaps.push(threadCpu(p.pid));
          if (countExits) exitSnaps.push(histRead());
        }
      }
      clearTimeout(silence);
      silence = setTimeout(hang(`console silent for ${SILENCE_MS / 1000} s`), SILENCE_MS);
      // Read once more right at the end of the guest's command: the VMM is at its peak.
      if (out.includes("tskvm: command exited with status")) peakRssKiB = readHwmKiB(p.pid) ?? peakRssKiB;
    });
    p.stderr.on("data", (d) => {
      err += d;
    });
    p.on("error", (e) => {
      err += String(e);
    });
    p.on("close", (code, signal) => {
      closed = true;
      const statSamples = stopWatch?.();
      clearInterval(poll);
      clearTimeout(timer);
      clearTimeout(silence);
      resolve({
        wallMs: Math.round(performance.now() - t0),
        peakRssKiB,
        code,
        signal,
        timedOut,
        out,
        err,
        ...(exitSnaps.length > 1
          ? { exitsPerWorkload: exitSnaps.slice(1).map((snap, i) => histDelta(exitSnaps[i], snap)) }
          : {}),
        ...(cpuSnaps.length > 1
          ? {
              threadCpuPerWorkload: cpuSnaps.slice(1).map((snap, i) => cpuDelta(cpuSnaps[i].cpu, snap.cpu)),
              threadSysCpuPerWorkload: cpuSnaps
                .slice(1)
                .map((snap, i) => cpuDelta(cpuSnaps[i].sys, snap.sys)),
            }
          : {}),
        ...(statSamples !== undefined ? { statSamples } : {}),
      });
    });
  });
}

function parseRun(r) {
  const text = r.out.replaceAll("\r\n", "\n");
  const m = /tskvm: command exited with status (\d+)/.exec(text);
  const status = m ? Number(m[1]) : undefined;
  const workloads = [];
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (!t.startsWith('{"workload"')) continue;
    try {
      workloads.push(JSON.parse(t));
    } catch {
      // a console line cut by kernel output; the status check below catches a failed run
    }
  }
  let error;
  if (r.timedOut) error = `hung: ${r.timedOut}`;
  else if (status === undefined) {
    const why = r.err.trim().split("\n").pop();
    error = `no status line (exit ${r.code ?? r.signal}${why ? `: ${why.slice(0, 200)}` : ""})`;
  } else if (status !== 0) error = `blkbench exited with status ${status}`;
  else if (r.code !== 0) error = `VMM exit ${r.code ?? r.signal}`;
  else if (workloads.length === 0) error = "no workload lines";
  else if (workloads.some((w) => w.devbytes !== IMAGE_MIB * 2 ** 20))
    // e.g. a qcow2 file served as raw
    error = `the guest's /dev/vda is ${workloads[0].devbytes} bytes, not ${IMAGE_MIB} MiB`;
  return { status, workloads, error };
}

const tail = (s, n = 1500) => (s.length > n ? `...${s.slice(-n)}` : s);

async function runOne(format, vmm, image) {
  const argv = argvFor(vmm, image, format);
  let retried;
  for (let attempt = 1; ; attempt++) {
    log(`${format} ${vmm} attempt ${attempt}: ${argv.join(" ")}`);
    const r = await boot(argv, { watch: vmm.split("@")[0] === "tskvm-stat" });
    const p = parseRun(r);
    // The stat row measures nothing unless the watcher really read the counters throughout.
    if (!p.error && r.statSamples !== undefined && r.statSamples < 5 * seconds)
      p.error = `tskvm stat --watch printed only ${r.statSamples} samples`;
    log(
      `${format} ${vmm} attempt ${attempt}: ${p.error ?? "ok"} in ${r.wallMs} ms, peak RSS ${r.peakRssKiB} KiB`,
    );
    const row = {
      format,
      vmm,
      ok: !p.error,
      workloads: p.workloads,
      wallMs: r.wallMs,
      peakRssKiB: r.peakRssKiB,
      ...(r.statSamples !== undefined ? { statSamples: r.statSamples } : {}),
      ...(r.exitsPerWorkload ? { exitsPerWorkload: r.exitsPerWorkload } : {}),
      ...(r.threadCpuPerWorkload
        ? { threadCpuPerWorkload: r.threadCpuPerWorkload, threadSysCpuPerWorkload: r.threadSysCpuPerWorkload }
        : {}),
      guestTimer: /@@GUEST-TIMER (.*)/.exec(r.out)?.[1]?.trim(),
      code: r.code,
      status: p.status,
      ...(retried ? { retried } : {}),
      ...(p.error ? { error: p.error, consoleTail: tail(r.out), stderrTail: tail(r.err) } : {}),
    };
    // A hung run (or one that ended without the guest's status line) gets one more try.
    if (attempt === 1 && (r.timedOut || p.status === undefined)) {
      retried = {
        error: p.error,
        wallMs: r.wallMs,
        consoleTail: tail(r.out, 600),
        stderrTail: tail(r.err, 600),
      };
      log(
        `${format} ${vmm}: RETRYING after: ${p.error}\n--- console ---\n${tail(r.out)}\n--- stderr ---\n${tail(r.err)}`,
      );
      continue;
    }
    if (p.error)
      log(
        `${format} ${vmm} FAILED: ${p.error}\n--- console ---\n${tail(r.out)}\n--- stderr ---\n${tail(r.err)}`,
      );
    return row;
  }
}

const images = { raw: join(work, "blk.raw"), qcow2: join(work, "blk.qcow2") };
try {
  for (const f of formats) if (!images[f]) throw new Error(`unknown format ${f}`);
  const hasDisk = vmms.some((v) => v.startsWith("tskvm")) ? tskvmHasDisk() : false;
  let t = performance.now();
  fillRawImage(images.raw, IMAGE_MIB);
  log(`raw image ${images.raw} filled in ${Math.round(performance.now() - t)} ms`);
  if (formats.includes("qcow2")) {
    t = performance.now();
    sh(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", images.raw, images.qcow2]);
    log(`qcow2 image ${images.qcow2} converted in ${Math.round(performance.now() - t)} ms`);
  }
  // Round-robin over runs, so that drift in the (emulated) machine spreads over every VMM.
  for (let run = 0; run < runs; run++) {
    for (const format of formats) {
      for (const vmm of vmms) {
        if (vmm.startsWith("kvmtool") && (lkvm === "-" || format !== "raw")) {
          if (run === 0) {
            const why =
              lkvm === "-"
                ? "kvmtool was not built (see the bench's output)"
                : "kvmtool: raw images only here";
            emit({ format, vmm, run, ok: false, skipped: why, workloads: [] });
          }
          continue;
        }
        if (vmm.split("@")[0] === "tskvm-io_uring" && format !== "raw") {
          // tskvm refuses aio=io_uring for qcow2 (its cluster mapping is served synchronously).
          if (run === 0)
            emit({ format, vmm, run, ok: false, skipped: "aio=io_uring: raw images only", workloads: [] });
          continue;
        }
        if (vmm.startsWith("tskvm") && !hasDisk) {
          if (run === 0)
            emit({ format, vmm, run, ok: false, skipped: "tskvm run has no -d/--disk yet", workloads: [] });
          continue;
        }
        emit({ run, ...(await runOne(format, vmm, images[format])) });
        if (vmm.split("@")[0] === "tskvm-prof") summariseProfiles(`${format} ${vmm} run ${run}`);
      }
    }
  }
} finally {
  for (const image of Object.values(images)) rmSync(image, { force: true });
  if (ownWork) rmSync(work, { recursive: true, force: true });
}
