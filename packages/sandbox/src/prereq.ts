import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { freemem } from "node:os";
import { hasApt } from "@tskvm/guest-kit";
import { qemuBinary } from "./run.js";

/** What {@link sandboxPrerequisites} found. */
export interface SandboxPrerequisites {
  /** Whether {@link runInSandbox} can work on this machine. */
  ok: boolean;
  /** What stops it, each with what to do about it. Empty when `ok`. */
  problems: string[];
  /** What may make it slow or partial, without stopping it. */
  warnings: string[];
  /** `qemu-system-x86_64 --version`, first line, when found. */
  qemuVersion?: string;
}

/**
 * Checks that this machine can run the sandbox: Linux on x86-64, QEMU (`qemu-system-x86_64`,
 * Debian package `qemu-system-x86`), and apt with dpkg-deb to fetch Debian's kernel and
 * busybox-static (first run only; they are cached). Cheap: runs no guest.
 */
export function sandboxPrerequisites(options: { qemu?: string } = {}): SandboxPrerequisites {
  const problems: string[] = [];
  const warnings: string[] = [];
  let qemuVersion: string | undefined;
  if (process.platform !== "linux" || process.arch !== "x64") {
    problems.push(`the sandbox needs Linux on x86-64 (this is ${process.platform}/${process.arch})`);
  }
  const qemu = qemuBinary(options);
  const v = spawnSync(qemu, ["--version"], { encoding: "utf8" });
  if (v.error || v.status !== 0) {
    problems.push(
      `${qemu} is not available (${v.error ? v.error.message : `exit ${v.status}`}): ` +
        "apt-get install qemu-system-x86 (or set TSKVM_SANDBOX_QEMU to a qemu-system-x86_64 binary)",
    );
  } else {
    qemuVersion = v.stdout.split("\n")[0]?.trim();
    const ver = /version (\d+)\.(\d+)/.exec(v.stdout);
    if (ver && Number(ver[1]) < 6)
      problems.push(`${qemuVersion} is too old: QEMU 6.0 or later is needed (multidevs=remap)`);
    for (const rom of ["bios-256k.bin", "linuxboot_dma.bin"]) {
      const dirs = ["/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu"];
      if (!dirs.some((d) => existsSync(`${d}/${rom}`))) {
        warnings.push(
          `QEMU firmware ${rom} not found in ${dirs.join(", ")}: apt-get install qemu-system-x86 seabios`,
        );
      }
    }
  }
  if (!hasApt()) {
    problems.push(
      "apt-get and dpkg-deb are not available: the sandbox fetches Debian's kernel (linux-image-amd64) " +
        "and busybox-static with them; run on Debian or Ubuntu",
    );
  }
  if (spawnSync("setpriv", ["--version"], { stdio: "ignore" }).status !== 0) {
    warnings.push(
      "util-linux setpriv is missing: QEMU is still killed on exit and on SIGINT/SIGTERM, " +
        "but not if this process is SIGKILLed (apt-get install util-linux)",
    );
  }
  if (process.getuid?.() !== 0) {
    warnings.push("not running as root: files of the host that only root may read will be unreadable inside");
  }
  if (freemem() < 1024 * 1024 * 1024) {
    warnings.push(`only ${Math.round(freemem() / 2 ** 20)} MiB of memory is free: the guest may be killed`);
  }
  return { ok: problems.length === 0, problems, warnings, qemuVersion };
}
