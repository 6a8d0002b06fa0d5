// What the in-guest benches (blk-, console-, boot-in-guest.mjs) share: each VMM's command
// line with the same kernel, initrd, RAM (256 MiB) and vCPUs (1), the environment kvmtool
// needs, and a raw image filled with data. No side effects at import: these run in the
// sandbox, where the cache is read-only.
import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const cli = fileURLToPath(new URL("../../packages/cli/dist/main.js", import.meta.url));

/** `tskvm run` with `args` (disks, devices) and kernel parameters `params`; `root`: another checkout's CLI. */
export function tskvmArgv({ kernel, initrd, params, args = [], root }) {
  return [
    process.execPath,
    root ? join(root, "packages/cli/dist/main.js") : cli,
    "run",
    "-k",
    kernel,
    "-i",
    initrd,
    "-m",
    "256",
    "-c",
    "1",
    ...args,
    "-p",
    params,
  ];
}

/**
 * `lkvm run`, no network. Its guest has no ACPI power-off (kvmtool passes noacpi), so the
 * kit ends with a reboot (tskvm.reboot), which ends lkvm.
 */
export function kvmtoolArgv(lkvm, { kernel, initrd, params, args = [] }) {
  return [
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
    ...args,
    "-p",
    `${params} tskvm.reboot`,
  ];
}

/** QEMU+KVM without default devices; `args` adds the console and the devices, `append` is the whole command line. */
export function qemuArgv({ kernel, initrd, append, args = [] }) {
  return [
    "qemu-system-x86_64",
    "-accel",
    "kvm",
    "-cpu",
    "host",
    "-m",
    "256",
    "-smp",
    "1",
    "-no-reboot",
    "-nodefaults",
    "-kernel",
    kernel,
    "-initrd",
    initrd,
    "-append",
    append,
    ...args,
  ];
}

/** The environment for a VMM: kvmtool keeps its state (sockets) under $HOME/.lkvm, so a writable one. */
export function vmmEnv(work) {
  const home = join(work, "home");
  mkdirSync(home, { recursive: true });
  return { ...process.env, HOME: home };
}

/** Writes `mib` MiB of non-zero, varied data to `path`: one random MiB, its first 4 bytes the MiB's index. */
export function fillRawImage(path, mib) {
  const chunk = randomBytes(1 << 20);
  const fd = openSync(path, "w");
  try {
    for (let i = 0; i < mib; i++) {
      chunk.writeUInt32LE(i, 0);
      writeSync(fd, chunk, 0, chunk.length, i * chunk.length);
    }
  } finally {
    closeSync(fd);
  }
}
