import { closeSync, fstatSync } from "node:fs";
import type { DiskImageFormat } from "./disk-image.js";
import { DiskImageError } from "./errors.js";
import { nextInChain, probeFormat } from "./open.js";
import { type CreateQcow2Options, writeQcow2 } from "./qcow2/create.js";
import {
  COMPAT_LAZY_REFCOUNTS,
  featureList,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  parseHeader,
  unknownIncompatibleFeatures,
} from "./qcow2/format.js";
import { readHead } from "./qcow2/image.js";
import { resolveBackingPath } from "./qcow2/open.js";
import { openImageFile } from "./raw.js";

export interface Qcow2Details {
  version: 2 | 3;
  /** qemu-img's name for the version: "0.10" (v2) or "1.1" (v3). */
  compat: "0.10" | "1.1";
  refcountBits: number;
  compressionType: "zlib" | "zstd" | `unknown(${number})`;
  lazyRefcounts: boolean;
  corrupt: boolean;
  extendedL2: boolean;
  encrypted: boolean;
  externalDataFile: string | undefined;
  /** Number of internal snapshots. */
  snapshots: number;
  /** Known features in use ("dirty", "corrupt", "lazy_refcounts", "bitmaps"). */
  features: string[];
  /** Incompatible features this package does not know (the image cannot be opened). */
  unknownIncompatibleFeatures: string[];
}

export interface ImageInfo {
  path: string;
  format: DiskImageFormat;
  /** Size of the disk the guest sees, in bytes. */
  virtualSize: number;
  /** Bytes the file occupies on the host (st_blocks × 512). */
  actualSize: number;
  /** Apparent size of the file. */
  fileSize: number;
  /** qcow2 only: left dirty (lazy refcounts) and needing repair before writes. */
  dirty: boolean;
  clusterSize: number | undefined;
  /** The backing file name exactly as the image records it. */
  backingFile: string | undefined;
  /** The backing format the image records, if any. */
  backingFormat: string | undefined;
  /** Where backingFile resolves to. */
  backingPath: string | undefined;
  /** Every image below this one, nearest first (empty without a backing file, or with { backingChain: false }). */
  backingChain: ImageInfo[];
  qcow2: Qcow2Details | undefined;
}

export interface ImageInfoOptions {
  format?: DiskImageFormat;
  /** Describe the backing files too. Default true. */
  backingChain?: boolean;
}

/**
 * Describes an image (and its backing chain) from its header, without taking
 * locks (like `qemu-img info -U`), so it also works on images in use.
 */
export function imageInfo(path: string, options: ImageInfoOptions = {}): ImageInfo {
  return describe(path, options, [], 0);
}

function describe(path: string, options: ImageInfoOptions, chain: string[], depth: number): ImageInfo {
  const real = nextInChain(path, chain, depth);
  const format = options.format ?? probeFormat(path);
  const file = openImageFile(path, { readOnly: true, lock: false });
  let info: ImageInfo;
  try {
    const st = fstatSync(file.fd);
    const base = {
      path,
      format,
      actualSize: st.blocks * 512,
      fileSize: st.size,
      backingChain: [] as ImageInfo[],
    };
    if (format === "raw") {
      info = {
        ...base,
        virtualSize: file.size,
        dirty: false,
        clusterSize: undefined,
        backingFile: undefined,
        backingFormat: undefined,
        backingPath: undefined,
        qcow2: undefined,
      };
    } else {
      const h = parseHeader(readHead(file.fd, file.size, path), file.size, path);
      const ct = h.compressionType;
      info = {
        ...base,
        virtualSize: h.size,
        dirty: (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
        clusterSize: 2 ** h.clusterBits,
        backingFile: h.backingFile,
        backingFormat: h.backingFormat,
        backingPath: h.backingFile !== undefined ? resolveBackingPath(path, h.backingFile) : undefined,
        qcow2: {
          version: h.version,
          compat: h.version === 2 ? "0.10" : "1.1",
          refcountBits: 2 ** h.refcountOrder,
          compressionType: ct === 0 ? "zlib" : ct === 1 ? "zstd" : `unknown(${ct})`,
          lazyRefcounts: (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n,
          corrupt: (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n,
          extendedL2: (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n,
          encrypted: h.cryptMethod !== 0,
          externalDataFile: h.dataFile,
          snapshots: h.nbSnapshots,
          features: featureList(h),
          unknownIncompatibleFeatures: unknownIncompatibleFeatures(h),
        },
      };
    }
  } finally {
    closeSync(file.fd);
  }
  if (info.backingPath !== undefined && options.backingChain !== false) {
    const fmt = info.backingFormat;
    const below = describe(
      info.backingPath,
      { ...options, format: fmt === "raw" || fmt === "qcow2" ? fmt : fmt === "file" ? "raw" : undefined },
      [...chain, real],
      depth + 1,
    );
    info.backingChain = [below, ...below.backingChain];
  }
  return info;
}

/**
 * Creates an empty qcow2 image of `size` bytes (a multiple of 512), or of its
 * backing file's size when `size` is undefined. The backing file must exist;
 * its format is probed unless `backingFormat` is given, and recorded in the
 * image. Relative backing names are resolved against the new image's directory.
 */
export function createQcow2(path: string, size: number | undefined, options: CreateQcow2Options = {}): void {
  let probe: { size: number; format: DiskImageFormat } | undefined;
  if (options.backing !== undefined) {
    const target = resolveBackingPath(path, options.backing);
    const b = imageInfo(target, { format: options.backingFormat, backingChain: false });
    probe = { size: b.virtualSize, format: b.format };
  }
  const bytes = size ?? probe?.size;
  if (bytes === undefined)
    throw new DiskImageError("INVALID", "createQcow2 needs a size or a backing file", { path });
  if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes % 512 !== 0)
    throw new DiskImageError("INVALID", `disk size ${String(bytes)} is not a non-negative multiple of 512`, {
      path,
      hint:
        size === undefined
          ? "the backing file's size is not a multiple of 512: give a size explicitly."
          : undefined,
    });
  writeQcow2(path, bytes, options, probe);
}
