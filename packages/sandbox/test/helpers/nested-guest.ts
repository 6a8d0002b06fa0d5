import { readFileSync } from "node:fs";
import { writeInitramfs } from "@tskvm/guest-kit";

/**
 * A minimal initramfs for a nested guest: static busybox and an `/init` that prints
 * `MARKER uptime=SECONDS` on the console and powers off. Booted by QEMU with `-enable-kvm`
 * inside the sandbox, it proves that nested KVM runs a real Linux guest.
 */
export function buildNestedTestInitramfs(busyboxPath: string, marker: string): Buffer {
  if (!/^[A-Za-z0-9_-]+$/.test(marker)) throw new RangeError(`marker must be a plain word: ${marker}`);
  const init = [
    "#!/bin/busybox sh",
    "/bin/busybox mount -t proc proc /proc",
    `echo "${marker} uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"`,
    "/bin/busybox poweroff -f",
    "/bin/busybox sleep 30",
    "",
  ].join("\n");
  return writeInitramfs([
    { type: "directory", path: "bin" },
    { type: "directory", path: "dev" },
    { type: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
    { type: "directory", path: "proc" },
    { type: "file", path: "bin/busybox", data: readFileSync(busyboxPath), mode: 0o755 },
    { type: "file", path: "init", data: Buffer.from(init), mode: 0o755 },
  ]);
}

/**
 * The QEMU command line that boots a kernel and that initramfs under KVM, console on stdout.
 * Kept here so the test and anyone reproducing by hand use the same one.
 */
export function nestedQemuArgs(kernelPath: string, initrdPath: string): string[] {
  return [
    "-enable-kvm",
    "-cpu",
    "host",
    "-m",
    "256",
    "-smp",
    "1",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-serial",
    "stdio",
    "-no-reboot",
    "-kernel",
    kernelPath,
    "-initrd",
    initrdPath,
    "-append",
    "console=ttyS0 panic=-1 quiet rdinit=/init",
  ];
}
