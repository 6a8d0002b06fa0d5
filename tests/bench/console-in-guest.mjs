// Runs where Linux can boot (inside the sandbox, or on a host with hardware KVM): boots the
// same kernel + initrd (the default guest kit plus static conbench and blkbench) under each
// VMM with a virtio console as the guest's console, a virtio-rng and a 256 MiB raw disk. In
// the guest, conbench times PINGS console round trips (a line out, conbench-drive.py on the
// VMM's pty echoes it back) idle, then as many while the guest keeps the disk busy (4 KiB
// random reads at depth 32 and 1 MiB O_DIRECT writes at depth 8, both running), then reads
// /dev/hwrng for throughput. Prints one line per (run, VMM):
//   @@RESULT {name, vmm, run, ok, rtt: {idle, loaded}, load, hwrng, bootMs, retried?, error?, tail?}
//
//   node console-in-guest.mjs KERNEL INITRD LKVM|- PINGS VMMS RUNS
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { fillRawImage, kvmtoolArgv, qemuArgv, tskvmArgv, vmmEnv } from "./vmms.mjs";

const [kernel, initrd, lkvm, pingsArg = "1000", vmmsArg = "tskvm", runsArg = "1"] = process.argv.slice(2);
if (!kernel || !initrd || !lkvm) {
  console.error("usage: console-in-guest.mjs KERNEL INITRD LKVM|- [PINGS] [VMMS] [RUNS]");
  process.exit(2);
}
const pings = Number(pingsArg);
const vmms = vmmsArg.split(",").filter(Boolean);
const runs = Number(runsArg);
const drive = fileURLToPath(new URL("./conbench-drive.py", import.meta.url));
const work = process.env.SANDBOX_WORK ?? mkdtempSync(join(tmpdir(), "tskvm-conbench-"));
const log = (line) => process.stderr.write(`[console-in-guest] ${line}\n`);
const TIMEOUT_S = 300 + pings * 0.3;

// Both loads loop until conbench kills their process group; their output is not the measure.
const load =
  "while :; do /blkbench -t 2 /dev/vda randread32; done >/dev/null 2>&1 & " +
  "while :; do /blkbench -t 2 /dev/vda seqwrite; done >/dev/null 2>&1 & wait";
const guestCmd = [
  `/conbench rtt ${pings} '${load}'`,
  "/conbench hwrng 262144 10",
  "echo @@CONBENCH-DONE",
].join("\n");
// `quiet`: nothing but the bench on the console.
const params = `quiet tskvm.cmd64=${Buffer.from(guestCmd).toString("base64")}`;

const image = join(work, "console.raw");
fillRawImage(image, 256);

function argvFor(vmm) {
  const guest = { kernel, initrd, params };
  const devices = ["--console", "virtio", "--rng", "-d"];
  const qemu = (iothread) =>
    qemuArgv({
      kernel,
      initrd,
      append: `console=hvc0 panic=1 ${params}`,
      args: [
        "-display",
        "none",
        "-drive",
        `file=${image},if=none,id=d0,format=raw,cache=writeback,aio=threads`,
        ...(iothread
          ? ["-object", "iothread,id=io0", "-device", "virtio-blk-pci,drive=d0,iothread=io0"]
          : ["-device", "virtio-blk-pci,drive=d0"]),
        "-device",
        "virtio-serial-pci",
        "-chardev",
        "stdio,id=con0,signal=off",
        "-device",
        "virtconsole,chardev=con0",
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=rng0",
      ],
    });
  switch (vmm) {
    case "tskvm":
      return tskvmArgv({ ...guest, args: [...devices, `${image},format=raw`] });
    case "tskvm-shared":
      return tskvmArgv({ ...guest, args: [...devices, `${image},format=raw,thread=shared`] });
    case "kvmtool":
      return kvmtoolArgv(lkvm, { ...guest, args: [...devices, image] });
    case "qemu":
      return qemu(false);
    case "qemu-iothread":
      return qemu(true);
    default:
      throw new Error(`unknown VMM ${vmm}`);
  }
}

function once(vmm) {
  const argv = argvFor(vmm);
  const r = spawnSync("python3", [drive, String(TIMEOUT_S), "--", ...argv], {
    encoding: "utf8",
    timeout: (TIMEOUT_S + 120) * 1000,
    env: vmmEnv(work),
  });
  try {
    return JSON.parse(r.stdout.trim().split("\n").pop());
  } catch {
    return {
      ok: false,
      error: `conbench-drive.py: exit ${r.status ?? r.signal}`,
      tail: `${r.stdout}${r.stderr}`.slice(-2000),
    };
  }
}

for (let run = 0; run < runs; run++) {
  for (const vmm of vmms) {
    if (vmm === "kvmtool" && lkvm === "-") {
      emit({ vmm, run, ok: false, skipped: "kvmtool was not built (see the bench's output)" });
      continue;
    }
    log(`${vmm} run ${run}: starting`);
    let r = once(vmm);
    let retried;
    if (!r.ok) {
      // The sandbox loses a boot now and then (machine-x86's README): once more, logged.
      log(`${vmm} run ${run}: RETRYING after: ${r.error}\n${r.tail}`);
      retried = { error: r.error, tail: r.tail?.slice(-600) };
      r = once(vmm);
    }
    log(`${vmm} run ${run}: ${r.ok ? "ok" : `FAILED: ${r.error}`}`);
    const { tail, ...rest } = r;
    emit({ ...rest, vmm, run, ...(retried ? { retried } : {}), ...(r.ok ? {} : { tail }) });
  }
}

function emit(row) {
  process.stdout.write(`@@RESULT ${JSON.stringify({ name: `${row.vmm} run ${row.run}`, ...row })}\n`);
}
