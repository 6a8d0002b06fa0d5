// Runs where Linux can boot (inside the sandbox, or on a host with hardware KVM):
// boots the same kernel + initrd (the default guest kit plus a static blkbench)
// under each VMM with a 256 MiB disk image as the guest's /dev/vda, runs
// `blkbench -t SECONDS /dev/vda` in the guest and prints one
//   @@RESULT {format, vmm, ok, workloads: [...], wallMs, peakRssKiB, code, status, retried?, error?}
// line per (format, VMM). peakRssKiB is the VMM process's VmHWM (for tskvm the
// node process), polled while it runs; the last value read before it exited.
//
//   node blk-in-guest.mjs KERNEL INITRD [FORMATS=raw[,qcow2]] [SECONDS=3] [VMMS=tskvm,qemu,qemu-iothread]
//
// Images live on $SANDBOX_WORK (a tmpfs in the sandbox; else a temp dir), 256 MiB,
// filled with non-zero data first so reads read data: raw by writing it, qcow2 by
// `qemu-img convert` of the filled raw image (so every cluster is allocated). All
// VMMs of one format use the same image file.
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const [kernel, initrd, formatsArg = "raw", secondsArg = "3", vmmsArg = "tskvm,qemu,qemu-iothread"] =
  process.argv.slice(2);
if (!kernel || !initrd) {
  console.error("usage: blk-in-guest.mjs KERNEL INITRD [FORMATS] [SECONDS] [VMMS]");
  process.exit(2);
}
const formats = formatsArg.split(",").filter(Boolean);
const vmms = vmmsArg.split(",").filter(Boolean);
const seconds = Number(secondsArg);
const IMAGE_MIB = 256;
// Boot (20-40 s nested) + 5 workloads of SECONDS + drains, with a wide margin.
const RUN_TIMEOUT_MS =
  Number(process.env.TSKVM_BENCH_BLK_RUN_TIMEOUT ?? 0) * 1000 || 180_000 + 10_000 * seconds;
// The nested guest sometimes hangs early in boot (the sandbox's known rare hang): a run whose
// console stays silent this long is hung. Booting prints steadily; blkbench prints a line per
// workload.
const SILENCE_MS = 60_000 + 3_000 * seconds;
const root = fileURLToPath(new URL("../../", import.meta.url));
const cli = join(root, "packages/cli/dist/main.js");
const work = process.env.SANDBOX_WORK ?? mkdtempSync(join(tmpdir(), "tskvm-blkbench-"));
const ownWork = !process.env.SANDBOX_WORK;

const log = (line) => process.stderr.write(`[blk-in-guest] ${line}\n`);
const emit = (row) => process.stdout.write(`@@RESULT ${JSON.stringify(row)}\n`);

const cmd = `/blkbench -t ${seconds} /dev/vda`;
const cmdParam = `tskvm.cmd64=${Buffer.from(cmd).toString("base64")}`;

function makeRawImage(path) {
  // Non-zero, varied data: one random MiB, its first 8 bytes rewritten per MiB.
  const chunk = randomBytes(1 << 20);
  const fd = openSync(path, "w");
  try {
    for (let i = 0; i < IMAGE_MIB; i++) {
      chunk.writeUInt32LE(i, 0);
      writeSync(fd, chunk, 0, chunk.length, i * chunk.length);
    }
  } finally {
    closeSync(fd);
  }
}

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
  const qemu = (iothread) => [
    "qemu-system-x86_64",
    "-accel",
    "kvm",
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
    `console=ttyS0 panic=1 ${cmdParam}`,
    "-drive",
    `file=${image},if=none,id=d0,format=${format},cache=writeback,aio=threads`,
    ...(iothread
      ? ["-object", "iothread,id=io0", "-device", "virtio-blk-pci,drive=d0,iothread=io0"]
      : ["-device", "virtio-blk-pci,drive=d0"]),
  ];
  switch (vmm) {
    case "qemu":
      return qemu(false);
    case "qemu-iothread":
      return qemu(true);
    case "tskvm":
      // tskvm probes the format itself.
      return [
        process.execPath,
        cli,
        "run",
        "-k",
        kernel,
        "-i",
        initrd,
        "-m",
        "256",
        "-c",
        "1",
        "-p",
        cmdParam,
        "-d",
        image,
      ];
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

/** One boot: wall time, peak RSS, console output, exit code; killed after RUN_TIMEOUT_MS or SILENCE_MS of silence. */
function boot(argv) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let out = "";
    let err = "";
    let peakRssKiB;
    let timedOut = false;
    const p = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    const poll = setInterval(() => {
      peakRssKiB = readHwmKiB(p.pid) ?? peakRssKiB;
    }, 200);
    const hang = (why) => () => {
      timedOut = why;
      p.kill("SIGKILL");
    };
    const timer = setTimeout(hang(`timed out after ${RUN_TIMEOUT_MS / 1000} s`), RUN_TIMEOUT_MS);
    let silence = setTimeout(hang(`console silent for ${SILENCE_MS / 1000} s`), SILENCE_MS);
    p.stdout.on("data", (d) => {
      out += d;
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
      clearInterval(poll);
      clearTimeout(timer);
      clearTimeout(silence);
      resolve({ wallMs: Math.round(performance.now() - t0), peakRssKiB, code, signal, timedOut, out, err });
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
  else if (status === undefined) error = `no status line (exit ${r.code ?? r.signal})`;
  else if (status !== 0) error = `blkbench exited with status ${status}`;
  else if (r.code !== 0) error = `VMM exit ${r.code ?? r.signal}`;
  else if (workloads.length === 0) error = "no workload lines";
  return { status, workloads, error };
}

const tail = (s, n = 1500) => (s.length > n ? `...${s.slice(-n)}` : s);

async function runOne(format, vmm, image) {
  const argv = argvFor(vmm, image, format);
  let retried;
  for (let attempt = 1; ; attempt++) {
    log(`${format} ${vmm} attempt ${attempt}: ${argv.join(" ")}`);
    const r = await boot(argv);
    const p = parseRun(r);
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

try {
  const hasDisk = vmms.includes("tskvm") ? tskvmHasDisk() : false;
  const raw = join(work, "blk.raw");
  let t = performance.now();
  makeRawImage(raw);
  log(`raw image ${raw} filled in ${Math.round(performance.now() - t)} ms`);
  for (const format of formats) {
    let image = raw;
    if (format === "qcow2") {
      image = join(work, "blk.qcow2");
      t = performance.now();
      sh(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, image]);
      log(`qcow2 image ${image} converted in ${Math.round(performance.now() - t)} ms`);
    } else if (format !== "raw") {
      throw new Error(`unknown format ${format}`);
    }
    for (const vmm of vmms) {
      if (vmm === "tskvm" && !hasDisk) {
        emit({ format, vmm, ok: false, skipped: "tskvm run has no -d/--disk yet", workloads: [] });
        continue;
      }
      emit(await runOne(format, vmm, image));
    }
    if (image !== raw) rmSync(image, { force: true });
  }
} finally {
  rmSync(join(work, "blk.raw"), { force: true });
  if (ownWork) rmSync(work, { recursive: true, force: true });
}
