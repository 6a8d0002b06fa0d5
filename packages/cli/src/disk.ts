// `-d/--disk PATH[,ro][,snapshot][,direct][,format=F][,serial=S][,thread=own|shared][,aio=A][,poll=US]`
// `[,queues=N][,iops=N[:B]][,bw=SIZE[:B]][,ioprio=C[:L]][,nice=N]`: a
// virtio-blk PCI device on the x86 machine (@tskvm/virtio-blk's `virtioBlkPciDevice`).
// This file is the flag and the disk checks; the device wiring is virtio-blk's.

import { accessSync, constants as fsc, realpathSync, statSync } from "node:fs";
import {
  type DiskImage,
  DiskImageError,
  isDiskImageError,
  openDiskImage,
  probeFormat,
} from "@tskvm/disk-image";
import type { DeviceTuning } from "@tskvm/machine-x86";
import { BLK_MAX_QUEUES, type VirtioBlkPciDeviceOptions } from "@tskvm/virtio-blk";
import type { SharedDeviceWorker } from "@tskvm/virtio-worker";
import { UsageError } from "./command.js";
import { isTuningKey, parseTuningOption, TUNING_SYNTAX } from "./tuning.js";

export interface DiskSpec {
  path: string;
  readOnly: boolean;
  /** Writes go to a throwaway overlay; the image is left untouched. */
  snapshot: boolean;
  /** O_DIRECT (raw images). */
  direct: boolean;
  /** Skip probing. */
  format?: "raw" | "qcow2";
  /** What the guest reads as the disk's id (/sys/block/vdX/serial). */
  serial?: string;
  /**
   * Which thread serves it: a worker of its own (the default), or the one thread shared by the
   * slow devices (console, rng) — for measuring what a busy disk does to them, or to save a thread.
   */
  thread: "own" | "shared";
  /** How its I/O reaches the disk (QEMU's spelling): io_uring, or synchronous; default io_uring where the kernel allows it. */
  aio?: "io_uring" | "sync";
  /** Adaptive polling: µs the disk's worker keeps looking at the ring after serving requests. */
  pollUs?: number;
  /** Virtqueues (virtio-blk multiqueue), 1 to {@link MAX_DISK_QUEUES}; default 1. */
  queues?: number;
  /** Rate limits and thread priorities (`iops=`, `bw=`, `ioprio=`, `nice=`); changeable with `tskvm set`. */
  tuning?: DeviceTuning;
}

/** The most virtqueues a `-d` disk may ask for (`queues=N`): virtio-blk's limit. */
export const MAX_DISK_QUEUES = BLK_MAX_QUEUES;

const FLAGS = ["ro", "snapshot", "direct"] as const;

/** Parses kvmtool's `PATH[,ro]` and tskvm's other options. */
export function parseDiskSpec(text: string): DiskSpec {
  const [path, ...opts] = text.split(",");
  if (!path) throw new UsageError(`--disk needs a file: '${text}'`);
  const spec: DiskSpec = { path, readOnly: false, snapshot: false, direct: false, thread: "own" };
  for (const o of opts) {
    const [key, value] = o.split("=", 2) as [string, string | undefined];
    if (value === undefined && (FLAGS as readonly string[]).includes(key)) {
      if (key === "ro") spec.readOnly = true;
      else if (key === "snapshot") spec.snapshot = true;
      else spec.direct = true;
    } else if (key === "format" && (value === "raw" || value === "qcow2")) spec.format = value;
    else if (key === "thread" && (value === "own" || value === "shared")) spec.thread = value;
    else if (key === "aio" && (value === "io_uring" || value === "sync")) spec.aio = value;
    else if (key === "poll" && value !== undefined && /^\d{1,7}$/.test(value) && Number(value) <= 1_000_000)
      spec.pollUs = Number(value);
    else if (key === "queues" && value !== undefined) {
      if (!/^\d{1,3}$/.test(value) || Number(value) < 1 || Number(value) > MAX_DISK_QUEUES)
        throw new UsageError(
          `--disk ${text}: queues=${value} must be a whole number from 1 to ${MAX_DISK_QUEUES}`,
        );
      spec.queues = Number(value);
    } else if (isTuningKey(key) && value !== undefined) {
      spec.tuning ??= {};
      parseTuningOption(spec.tuning, key, value, `--disk ${text}`);
    } else if (
      key === "serial" &&
      value !== undefined &&
      /^[\x20-\x7e]{0,20}$/.test(value) &&
      !value.includes(",")
    )
      spec.serial = value;
    else
      throw new UsageError(
        `--disk ${text}: unknown option '${o}' (options: ro, snapshot, direct, format=raw|qcow2, serial=ID of up to 20 characters, thread=own|shared, aio=io_uring|sync, poll=µs up to 1000000, queues=1-${MAX_DISK_QUEUES}, ${Object.values(TUNING_SYNTAX).join(", ")})`,
      );
  }
  return spec;
}

/** The guest may write the image itself (not `ro`, not `snapshot`). */
function writesImage(disk: DiskSpec): boolean {
  return !disk.readOnly && !disk.snapshot;
}

/** disk-image's hints speak of ways to open an image; on the command line they are `-d` flags. */
function flagHint(hint: string | undefined): string | undefined {
  return hint
    ?.replace(/\bopen it read-only\b/g, "open it read-only (,ro)")
    .replace(/\bas a snapshot disk\b/g, "as a snapshot disk (,snapshot)")
    .replace(/\bread-only opens work\b/g, "read-only opens (,ro) work")
    .replace(/\bopen it without direct I\/O\b/g, "drop ,direct");
}

function diskError(disk: DiskSpec, code: string, message: string, hint?: string): DiskImageError {
  return new DiskImageError(code, message, { path: disk.path, hint });
}

function probedFormat(path: string): string | undefined {
  try {
    return probeFormat(path);
  } catch {
    return undefined;
  }
}

/** Whether only readers hold the image: a read-only open of it works (writers lock those out). */
function onlyReadersHold(disk: DiskSpec): boolean {
  try {
    openDiskImage(disk.path, {
      ...(disk.format !== undefined ? { format: disk.format } : {}),
      readOnly: true,
    }).close();
    return true;
  } catch {
    return false;
  }
}

const WRITE_ELSEWHERE =
  "add ,ro for a read-only disk, or ,snapshot to let the guest write to a throwaway overlay.";

/** The `-d` spec's error, in the command line's words: the path once, the flags that would help. */
function explain(disk: DiskSpec, e: DiskImageError, otherDisks: number): DiskImageError {
  // An error about another file of the chain (a backing file) names that file once, after the disk.
  const other = e.path !== undefined && e.path !== disk.path;
  const where = other ? `backing file ${e.path}: ` : "";
  const text = e.path !== undefined ? e.message.slice(`${e.path}: `.length) : e.message;
  const message = text.split("\n  hint:")[0]!;
  switch (e.code) {
    case "LOCKED": {
      const alsoHere = otherDisks > 0 ? " (another -d of this command counts too)" : "";
      // Read-only and snapshot opens (and backing files, always opened read-only)
      // deny writers: they only help when no writer holds the image.
      if (!writesImage(disk) || other || !onlyReadersHold(disk))
        return diskError(
          disk,
          "LOCKED",
          `${where}the image is locked: another VM or tool is writing to it${alsoHere}`,
          "stop it first; while it writes, the image cannot be used at all (,ro and ,snapshot are refused too).",
        );
      return diskError(
        disk,
        "LOCKED",
        `the image is locked: another VM or tool reads it, or has it as a backing file${alsoHere}`,
        "add ,ro (a read-only disk) or ,snapshot (writes go to a throwaway overlay): both share the image with other readers; or stop the other user first.",
      );
    }
    case "EACCES":
    case "EPERM":
    case "EROFS":
      return diskError(
        disk,
        e.code,
        `${where}${e.code === "EROFS" ? "on a read-only filesystem" : "no permission to open it"}`,
        writesImage(disk) && !other
          ? WRITE_ELSEWHERE
          : "fix the file's mode or owner, or run tskvm as a user who may read it.",
      );
    default: {
      // Name the format a header problem is about (the reason alone may not say).
      const format = other ? undefined : (disk.format ?? probedFormat(disk.path));
      const about = format === "qcow2" && !/qcow2/i.test(message) ? "cannot use it as a qcow2 image: " : "";
      let hint = flagHint(e.hint);
      if (disk.format === "qcow2" && !other && /no qcow2 magic/.test(message))
        hint = "the file is not a qcow2 image: give format=raw if it is a raw disk image.";
      if (disk.direct && e.code === "UNSUPPORTED" && /direct/i.test(message))
        hint = "drop ,direct (O_DIRECT is for raw images on filesystems that support it).";
      return diskError(disk, e.code, `${where}${about}${message}`, hint);
    }
  }
}

/** Checks that a disk's file exists and may be opened as asked, before anything opens it. */
function checkAccess(disk: DiskSpec): void {
  let isDirectory = false;
  try {
    isDirectory = statSync(disk.path).isDirectory();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT")
      throw diskError(
        disk,
        "ENOENT",
        "no such file",
        "check the path; 'tskvm image create PATH SIZE' makes a new qcow2 image.",
      );
    const code = (e as NodeJS.ErrnoException).code ?? "EIO";
    throw diskError(disk, code, `cannot look at the file: ${code}`);
  }
  if (isDirectory) throw diskError(disk, "EISDIR", "is a directory, not a disk image");
  try {
    accessSync(disk.path, fsc.R_OK);
  } catch {
    throw diskError(
      disk,
      "EACCES",
      "no permission to read the disk image",
      "fix the file's mode or owner, or run tskvm as a user who may read it.",
    );
  }
  if (writesImage(disk)) {
    try {
      accessSync(disk.path, fsc.W_OK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code === "EROFS" ? "EROFS" : "EACCES";
      throw diskError(
        disk,
        code,
        code === "EROFS"
          ? "the disk image is on a read-only filesystem"
          : "no permission to write the disk image",
        WRITE_ELSEWHERE,
      );
    }
  }
}

/**
 * Checks every `-d` disk as `tskvm run` will use it — the file exists and may
 * be read (and written, unless `ro` or `snapshot`), its format and backing
 * chain open, nobody else's lock is in the way — before anything looks at KVM
 * or boots. Throws a `DiskImageError` whose message names the path once and
 * whose hint names the `-d` flags that would help. Returns warnings to print:
 * one per writable disk whose format was probed as raw (its first sector is
 * guarded; `format=raw` lifts that). The images are closed again.
 */
export function checkDisks(disks: readonly DiskSpec[]): string[] {
  const warnings: string[] = [];
  const opened: DiskImage[] = [];
  const seen = new Map<string, DiskSpec>();
  try {
    for (const disk of disks) {
      checkAccess(disk);
      const real = realpathSync(disk.path);
      const before = seen.get(real);
      if (before && (writesImage(before) || writesImage(disk)))
        throw diskError(
          disk,
          "LOCKED",
          before.path === disk.path ? "is given twice" : `is given twice (also as ${before.path})`,
          "a disk the guest writes can be given once; add ,ro or ,snapshot to every -d of it to share it.",
        );
      seen.set(real, disk);
      let image: DiskImage;
      try {
        // A snapshot disk opens its image read-only: no overlay is needed to check it.
        image = openDiskImage(disk.path, {
          ...(disk.format !== undefined ? { format: disk.format } : {}),
          readOnly: !writesImage(disk),
          direct: disk.direct,
        });
      } catch (e) {
        if (isDiskImageError(e)) throw explain(disk, e, opened.length);
        throw e;
      }
      opened.push(image);
      if (image.probed && image.format === "raw" && writesImage(disk))
        warnings.push(
          `disk ${disk.path}: no format= given, and probing found raw; writes that would make its first sector look like another format are refused (the guest sees an I/O error). Add ,format=raw to lift that.`,
        );
    }
  } finally {
    for (const image of opened) {
      try {
        image.close();
      } catch {
        // a failed flush of an image nobody wrote is not worth hiding the real error
      }
    }
  }
  return warnings;
}

/** The id of the `index`th `-d` disk (from 0) for the control socket: `disk0`, `disk1`, ... */
export function diskId(index: number): string {
  return `disk${index}`;
}

/**
 * The `virtioBlkPciDevice` options for a `-d` disk: served by a worker of its own, or by
 * `sharedThread` when the spec says `thread=shared`; `index` (its place among the `-d`s)
 * gives it its id, `disk<index>`, for `tskvm set` and `tskvm stat`.
 */
export function diskDeviceOptions(
  disk: DiskSpec,
  sharedThread: SharedDeviceWorker,
  index?: number,
): VirtioBlkPciDeviceOptions {
  return {
    ...(index !== undefined ? { id: diskId(index) } : {}),
    ...(disk.queues !== undefined && disk.queues > 1 ? { queues: disk.queues } : {}),
    ...(disk.tuning ? { tuning: disk.tuning } : {}),
    path: disk.path,
    readOnly: disk.readOnly,
    snapshot: disk.snapshot,
    direct: disk.direct,
    ...(disk.format ? { format: disk.format } : {}),
    ...(disk.serial !== undefined ? { serial: disk.serial } : {}),
    ...(disk.thread === "shared" ? { thread: sharedThread } : {}),
    ...(disk.aio ? { aio: disk.aio } : {}),
    ...(disk.pollUs !== undefined ? { pollUs: disk.pollUs } : {}),
  };
}
