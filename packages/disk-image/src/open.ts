import { closeSync, openSync, readSync } from "node:fs";
import type { DiskImage, DiskImageFormat } from "./disk-image.js";
import { DiskImageError, wrapSystemError } from "./errors.js";
import { openRaw } from "./raw.js";

export interface OpenDiskImageOptions {
  /** Skip probing: treat the file as this format. */
  format?: DiskImageFormat;
  readOnly?: boolean;
  /** O_DIRECT (raw images). */
  direct?: boolean;
  /** Take image locks. Default true. */
  lock?: boolean;
}

const QCOW2_MAGIC = 0x514649fb;

/**
 * Guesses an image's format from its first bytes: the qcow2 magic → `qcow2`,
 * anything else → `raw`.
 */
export function probeFormat(path: string): DiskImageFormat {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw wrapSystemError(e, "open", path);
  }
  try {
    const head = new Uint8Array(4);
    const n = readSync(fd, head, 0, 4, 0);
    if (n === 4 && new DataView(head.buffer).getUint32(0) === QCOW2_MAGIC) return "qcow2";
    return "raw";
  } catch (e) {
    throw wrapSystemError(e, "read", path);
  } finally {
    closeSync(fd);
  }
}

/**
 * Opens a disk image of any supported format. The format is probed unless
 * `format` is given: pass `format: "raw"` for raw images a guest may write,
 * or a guest could make its disk look like a qcow2 image with a backing file.
 */
export function openDiskImage(path: string, options: OpenDiskImageOptions = {}): DiskImage {
  const format = options.format ?? probeFormat(path);
  switch (format) {
    case "raw":
      return openRaw(path, options);
    case "qcow2":
      throw new DiskImageError("UNSUPPORTED", "qcow2 images are not supported yet", { path });
    default:
      throw new DiskImageError("INVALID", `unknown image format ${JSON.stringify(format)}`, {
        path,
        hint: 'use "raw" or "qcow2".',
      });
  }
}
