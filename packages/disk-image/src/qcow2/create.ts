import { closeSync, fdatasyncSync, constants as fsc, ftruncateSync, openSync, unlinkSync } from "node:fs";
import { DiskImageError, errnoCodeOf, sys, wrapSystemError } from "../errors.js";
import { pwritevFull } from "../io.js";
import { lockImage, lockRequestFor } from "../locks.js";
import {
  EXT_BACKING_FORMAT,
  EXT_FEATURE_TABLE,
  MAX_BACKING_NAME,
  MAX_L1_BYTES,
  MAX_REFTABLE_BYTES,
  QCOW2_MAGIC,
  V2_HEADER_LENGTH,
} from "./format.js";

export interface CreateQcow2Options {
  /** Backing file name, stored as given (relative names are relative to the new image's directory). */
  backing?: string;
  /** Format of the backing file; probed when omitted. */
  backingFormat?: "raw" | "qcow2";
  /** 512 B – 2 MiB, a power of two. Default 64 KiB. */
  clusterSize?: number;
  /** 3 (qemu's compat=1.1, default) or 2 (compat=0.10). */
  version?: 2 | 3;
  /** Refcount width in bits, 1–64 (version 3 only). Default 16. */
  refcountBits?: number;
  /** Replace an existing file. Default false (`EEXIST`). */
  overwrite?: boolean;
}

/** What createQcow2 needs to know about the backing file (its size when none is given, and its format). */
export interface BackingProbe {
  size: number;
  format: "raw" | "qcow2";
}

const FEATURES: [number, number, string][] = [
  [0, 0, "dirty bit"],
  [0, 1, "corrupt bit"],
  [0, 2, "external data file"],
  [0, 3, "compression type"],
  [0, 4, "extended L2 entries"],
  [1, 0, "lazy refcounts"],
  [2, 0, "bitmaps"],
  [2, 1, "raw external data"],
];

function invalid(path: string, message: string, hint?: string): DiskImageError {
  return new DiskImageError("INVALID", message, { path, hint });
}

interface Layout {
  l1Size: number;
  reftableClusters: number;
  refblocks: number;
  l1Clusters: number;
  total: number;
}

/** header | refcount table | refcount blocks | L1 table, each refcounted by the blocks. */
function layout(size: number, clusterSize: number, refcountBits: number, path: string): Layout {
  const l2Entries = clusterSize / 8;
  const l1Size = Math.ceil(size / clusterSize / l2Entries);
  if (l1Size * 8 > MAX_L1_BYTES)
    throw invalid(
      path,
      `a ${size}-byte disk needs an L1 table over 32 MiB with ${clusterSize}-byte clusters`,
      "use a bigger cluster size.",
    );
  const l1Clusters = Math.ceil((l1Size * 8) / clusterSize);
  const perBlock = (clusterSize * 8) / refcountBits;
  let reftableClusters = 1;
  let refblocks = 1;
  for (;;) {
    const total = 1 + reftableClusters + refblocks + l1Clusters;
    const b = Math.ceil(total / perBlock);
    const t = Math.max(1, Math.ceil((b * 8) / clusterSize));
    if (b === refblocks && t === reftableClusters) {
      if (t * clusterSize > MAX_REFTABLE_BYTES) throw invalid(path, "the refcount table would be over 8 MiB");
      return { l1Size, reftableClusters, refblocks, l1Clusters, total };
    }
    refblocks = b;
    reftableClusters = t;
  }
}

/**
 * Writes a new, empty qcow2 image (metadata only; the file is sparse).
 * `probe` opens the backing file to learn its size and format.
 */
export function writeQcow2(
  path: string,
  size: number,
  options: CreateQcow2Options,
  backing: BackingProbe | undefined,
  durable = true,
): void {
  const cs = options.clusterSize ?? 65536;
  const version = options.version ?? 3;
  const refcountBits = options.refcountBits ?? 16;
  if (!Number.isInteger(cs) || cs < 512 || cs > 2 << 20 || (cs & (cs - 1)) !== 0)
    throw invalid(path, `cluster size ${cs} is not a power of two between 512 and 2097152`);
  if (version !== 2 && version !== 3) throw invalid(path, `qcow2 version ${String(version)} (use 2 or 3)`);
  if (![1, 2, 4, 8, 16, 32, 64].includes(refcountBits))
    throw invalid(path, `refcount width ${refcountBits} bits (use 1, 2, 4, 8, 16, 32 or 64)`);
  if (version === 2 && refcountBits !== 16)
    throw invalid(path, "version 2 images always have 16-bit refcounts");
  if (!Number.isSafeInteger(size) || size < 0)
    throw invalid(path, `disk size ${String(size)} is not a non-negative integer`);
  const clusterBits = Math.log2(cs);
  const refcountOrder = Math.log2(refcountBits);
  const L = layout(size, cs, refcountBits, path);

  // Cluster 0: header, extensions, backing file name.
  const head = new Uint8Array(cs);
  const dv = new DataView(head.buffer);
  const enc = new TextEncoder();
  const headerLength = version === 3 ? 112 : V2_HEADER_LENGTH;
  const exts: [number, Uint8Array][] = [];
  const backingName = options.backing !== undefined ? enc.encode(options.backing) : undefined;
  if (backingName && (backingName.byteLength === 0 || backingName.byteLength > MAX_BACKING_NAME))
    throw invalid(path, `backing file name of ${backingName.byteLength} bytes (1–${MAX_BACKING_NAME})`);
  if (backingName && backing) exts.push([EXT_BACKING_FORMAT, enc.encode(backing.format)]);
  const extBytes = (list: [number, Uint8Array][]) =>
    list.reduce((n, [, d]) => n + 8 + Math.ceil(d.byteLength / 8) * 8, 0) + 8;
  if (version === 3) {
    const table = new Uint8Array(48 * FEATURES.length);
    FEATURES.forEach(([type, bit, name], i) => {
      table[i * 48] = type;
      table[i * 48 + 1] = bit;
      table.set(enc.encode(name), i * 48 + 2);
    });
    // Like QEMU, leave the table out when it does not fit (tiny clusters).
    if (headerLength + extBytes([...exts, [EXT_FEATURE_TABLE, table]]) + (backingName?.byteLength ?? 0) <= cs)
      exts.push([EXT_FEATURE_TABLE, table]);
  }
  let at = headerLength;
  for (const [type, data] of exts) {
    dv.setUint32(at, type);
    dv.setUint32(at + 4, data.byteLength);
    head.set(data, at + 8);
    at += 8 + Math.ceil(data.byteLength / 8) * 8;
  }
  at += 8; // end of extensions (type 0, length 0)
  let backingOffset = 0;
  if (backingName) {
    if (at + backingName.byteLength > cs)
      throw invalid(
        path,
        "the backing file name does not fit in the header cluster",
        "use a bigger cluster size or a shorter name.",
      );
    backingOffset = at;
    head.set(backingName, at);
    at += backingName.byteLength;
  }
  const reftableOffset = cs;
  const refblockOffset = (1 + L.reftableClusters) * cs;
  const l1Offset = (1 + L.reftableClusters + L.refblocks) * cs;
  dv.setUint32(0, QCOW2_MAGIC);
  dv.setUint32(4, version);
  dv.setBigUint64(8, BigInt(backingOffset));
  dv.setUint32(16, backingName?.byteLength ?? 0);
  dv.setUint32(20, clusterBits);
  dv.setBigUint64(24, BigInt(size));
  dv.setUint32(32, 0);
  dv.setUint32(36, L.l1Size);
  dv.setBigUint64(40, BigInt(L.l1Size > 0 ? l1Offset : 0));
  dv.setBigUint64(48, BigInt(reftableOffset));
  dv.setUint32(56, L.reftableClusters);
  dv.setUint32(60, 0);
  dv.setBigUint64(64, 0n);
  if (version === 3) {
    dv.setBigUint64(72, 0n);
    dv.setBigUint64(80, 0n);
    dv.setBigUint64(88, 0n);
    dv.setUint32(96, refcountOrder);
    dv.setUint32(100, headerLength);
  }

  // Refcount table and blocks: every cluster of the layout has refcount 1.
  const reftable = new Uint8Array(L.refblocks * 8);
  const rtv = new DataView(reftable.buffer);
  for (let k = 0; k < L.refblocks; k++) rtv.setBigUint64(k * 8, BigInt(refblockOffset + k * cs));
  const blocks = new Uint8Array(L.refblocks * cs);
  const bv = new DataView(blocks.buffer);
  for (let c = 0; c < L.total; c++) {
    const bit = c * refcountBits;
    if (refcountBits < 8) blocks[bit >> 3] = blocks[bit >> 3]! | (1 << (bit & 7));
    else if (refcountBits === 8) blocks[c] = 1;
    else if (refcountBits === 16) bv.setUint16(c * 2, 1);
    else if (refcountBits === 32) bv.setUint32(c * 4, 1);
    else bv.setBigUint64(c * 8, 1n);
  }

  let fd: number;
  const flags = fsc.O_RDWR | fsc.O_CREAT | (options.overwrite ? 0 : fsc.O_EXCL);
  try {
    fd = openSync(path, flags, 0o644);
  } catch (e) {
    if (errnoCodeOf(e) === "EEXIST")
      throw wrapSystemError(
        e,
        "create",
        path,
        "the file exists; choose another name, or ask to overwrite it.",
      );
    throw wrapSystemError(e, "create", path);
  }
  let ok = false;
  try {
    if (options.overwrite) {
      // Only an image nobody has open may be replaced.
      lockImage(fd, path, lockRequestFor(true, true));
      sys("truncate", path, () => ftruncateSync(fd, 0));
    }
    sys("truncate", path, () => ftruncateSync(fd, L.total * cs));
    pwritevFull(fd, [head.subarray(0, at)], 0, path);
    pwritevFull(fd, [reftable], reftableOffset, path);
    pwritevFull(fd, [blocks], refblockOffset, path);
    if (durable) sys("fdatasync", path, () => fdatasyncSync(fd));
    ok = true;
  } finally {
    closeSync(fd);
    if (!ok && !options.overwrite) {
      try {
        unlinkSync(path);
      } catch {
        // already gone
      }
    }
  }
}
