import { closeSync, openSync, readSync, realpathSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DiskImage, DiskImageFormat } from "./disk-image.js";
import { DiskImageError, wrapSystemError } from "./errors.js";
import { PROBE_BYTES, probeHead } from "./probe.js";
import { writeQcow2 } from "./qcow2/create.js";
import type { Qcow2CacheOptions, Qcow2DiskImage } from "./qcow2/image.js";
import { type BackingOpener, openQcow2Image, type Qcow2OpenOptions } from "./qcow2/open.js";
import { openRaw } from "./raw.js";

export interface OpenDiskImageOptions extends Qcow2CacheOptions {
  /** Skip probing: treat the file as this format. */
  format?: DiskImageFormat;
  readOnly?: boolean;
  /** O_DIRECT (raw images only). */
  direct?: boolean;
  /** Take image locks (shared ones on backing files). Default true. */
  lock?: boolean;
  /**
   * Snapshot disk: the image is opened read-only (shared lock) and writes go
   * to a temporary qcow2 overlay in $TMPDIR that is unlinked at once, so it
   * disappears on close (or when the process dies). With `readOnly` as well,
   * the image is simply opened read-only.
   */
  snapshot?: boolean;
}

/** Backing chains deeper than this are refused (and loops are caught by it too). */
export const MAX_BACKING_DEPTH = 64;

/**
 * Guesses an image's format from its first sector: the qcow2 magic → `qcow2`,
 * anything else → `raw`. Never trust this for an image a guest can write:
 * `openDiskImage` guards the images it probed (see `DiskImage.probed`).
 */
export function probeFormat(path: string): DiskImageFormat {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw wrapSystemError(e, "open", path);
  }
  try {
    const head = new Uint8Array(PROBE_BYTES);
    const n = readSync(fd, head, 0, PROBE_BYTES, 0);
    return probeHead(head.subarray(0, n));
  } catch (e) {
    throw wrapSystemError(e, "read", path);
  } finally {
    closeSync(fd);
  }
}

function checkFormat(format: string, path: string): DiskImageFormat {
  if (format === "raw" || format === "qcow2") return format;
  if (format === "file" || format === "host_device") return "raw";
  throw new DiskImageError("UNSUPPORTED", `image format ${JSON.stringify(format)} is not supported`, {
    path,
    hint: 'only "raw" and "qcow2" are; convert with qemu-img convert -O qcow2.',
  });
}

/**
 * One step down a backing chain: the image's real path, after refusing a chain
 * deeper than {@link MAX_BACKING_DEPTH} or one that loops back on itself.
 */
export function nextInChain(path: string, chain: readonly string[], depth: number): string {
  if (depth > MAX_BACKING_DEPTH)
    throw new DiskImageError("CORRUPT", `the backing chain is deeper than ${MAX_BACKING_DEPTH} images`, {
      path,
    });
  let real: string;
  try {
    real = realpathSync(path);
  } catch (e) {
    throw wrapSystemError(e, "open", path);
  }
  if (chain.includes(real))
    throw new DiskImageError("CORRUPT", "the backing chain loops back to an image already in it", {
      path,
      hint: `chain: ${[...chain, real].join(" -> ")}`,
    });
  return real;
}

function backingOpener(options: OpenDiskImageOptions, chain: string[]): BackingOpener {
  return {
    open(path, format, depth) {
      const real = nextInChain(path, chain, depth);
      return openChained(
        path,
        {
          ...options,
          readOnly: true,
          snapshot: false,
          direct: false,
          format: format === undefined ? undefined : checkFormat(format, path),
        },
        [...chain, real],
        depth,
      );
    },
  };
}

function openChained(path: string, options: OpenDiskImageOptions, chain: string[], depth: number): DiskImage {
  const probed = options.format === undefined;
  const format = options.format ?? probeFormat(path);
  switch (format) {
    case "raw":
      return openRaw(path, { ...options, probed });
    case "qcow2":
      if (options.direct)
        throw new DiskImageError("UNSUPPORTED", "direct (O_DIRECT) I/O is only supported for raw images", {
          path,
        });
      return openQcow2Image(path, options, {
        backingOpener: backingOpener(options, chain),
        depth,
        probed,
      });
    default:
      throw new DiskImageError("INVALID", `unknown image format ${JSON.stringify(format)}`, {
        path,
        hint: 'use "raw" or "qcow2".',
      });
  }
}

let overlaySeq = 0;

function openSnapshot(path: string, options: OpenDiskImageOptions): DiskImage {
  const base = openDiskImage(path, { ...options, snapshot: false, readOnly: true });
  try {
    const dir = process.env.TMPDIR || tmpdir();
    const overlay = join(dir, `tskvm-snapshot-${process.pid}-${Date.now()}-${overlaySeq++}.qcow2`);
    const size = Math.ceil(base.size / 512) * 512;
    writeQcow2(
      overlay,
      size,
      { backing: realpathSync(path) },
      { size: base.size, format: base.format },
      false,
    );
    try {
      return openQcow2Image(
        overlay,
        { ...options, readOnly: false, lock: false },
        { backing: base, unsafe: true, displayPath: path, probed: base.probed },
      );
    } finally {
      unlinkSync(overlay); // the open descriptor keeps it alive until close
    }
  } catch (e) {
    base.close();
    throw e;
  }
}

/**
 * Opens a disk image of any supported format. The format is probed unless
 * `format` is given, and the image says which (`probed`). A probed raw image
 * refuses writes that would make its first sector probe as another format
 * (`PROBE_GUARD`), as QEMU does, so a guest cannot turn its disk into a qcow2
 * image whose backing file is a host file; pass `format: "raw"` to lift that.
 * Backing files are only followed from images whose format was given as, or
 * probed as, qcow2 on open.
 */
export function openDiskImage(path: string, options: OpenDiskImageOptions = {}): DiskImage {
  // A read-only snapshot disk is just a read-only disk.
  if (options.snapshot && !options.readOnly) return openSnapshot(path, options);
  if (options.format !== undefined) checkFormatOption(options.format, path);
  let real: string;
  try {
    real = realpathSync(path);
  } catch (e) {
    throw wrapSystemError(e, "open", path);
  }
  return openChained(path, options, [real], 0);
}

function checkFormatOption(format: string, path: string): void {
  if (format !== "raw" && format !== "qcow2")
    throw new DiskImageError("INVALID", `unknown image format ${JSON.stringify(format)}`, {
      path,
      hint: 'use "raw" or "qcow2".',
    });
}

/** Opens a qcow2 image (and its backing chain) without probing. */
export function openQcow2(path: string, options: Qcow2OpenOptions = {}): Qcow2DiskImage {
  return openDiskImage(path, { ...options, format: "qcow2" }) as Qcow2DiskImage;
}
