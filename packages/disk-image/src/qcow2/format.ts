import { DiskImageError } from "../errors.js";

/*
 * The qcow2 on-disk format (QEMU's docs/interop/qcow2.txt): constants, the
 * header and its extensions. All numbers are big-endian. Everything read from
 * the file is validated here or where it is used; a value that cannot be right
 * is a `CORRUPT` error, a valid feature this package does not implement is
 * `UNSUPPORTED`.
 */

export const QCOW2_MAGIC = 0x514649fb;
export const V2_HEADER_LENGTH = 72;
export const V3_HEADER_LENGTH = 104;
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** QEMU's limits: 32 MiB of L1 table, 8 MiB of refcount table. */
export const MAX_L1_BYTES = 32 << 20;
export const MAX_REFTABLE_BYTES = 8 << 20;
export const MAX_BACKING_NAME = 1023;
export const MAX_SNAPSHOTS = 65536;

export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const INCOMPAT_KNOWN =
  INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

/** Byte offsets of header fields this package rewrites. */
export const HDR_REFTABLE_OFFSET = 48;
export const HDR_INCOMPAT = 72;
export const HDR_AUTOCLEAR = 88;

/** L1/L2 entry flag bits, on the high 32-bit half of the 64-bit entry. */
export const HI_COPIED = 0x80000000;
export const HI_COMPRESSED = 0x40000000;
/** Bits 56-61 of an L2 entry (56-62 of an L1 entry) are reserved. */
export const HI_L2_RESERVED = 0x3f000000;
export const HI_L1_RESERVED = 0x7f000000;
/** Bits 32-55: the high part of a host offset. */
export const HI_OFFSET_MASK = 0x00ffffff;
/** Bit 0 of an L2 entry: reads as zeros (v3). Bits 1-8 reserved. */
export const LO_ZERO = 0x1;
export const LO_RESERVED = 0x1fe;
export const LO_OFFSET_MASK = 0xfffffe00;

export interface FeatureName {
  type: number;
  bit: number;
  name: string;
}

export interface HeaderExtension {
  type: number;
  /** Byte offset of the extension's data in the file. */
  offset: number;
  length: number;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  backingFile: string | undefined;
  backingFormat: string | undefined;
  dataFile: string | undefined;
  featureNames: FeatureName[];
  extensions: HeaderExtension[];
}

export function corrupt(path: string, message: string, hint?: string): DiskImageError {
  return new DiskImageError("CORRUPT", `corrupt qcow2 image: ${message}`, {
    path,
    hint: hint ?? "check it with `qemu-img check`; `qemu-img check -r all` can often repair it.",
  });
}

export function unsupported(path: string, message: string, hint?: string): DiskImageError {
  return new DiskImageError("UNSUPPORTED", message, { path, hint });
}

/** A u64 that must fit a JS number exactly (offsets, sizes). */
function u64(dv: DataView, at: number, path: string, what: string): number {
  const v = dv.getBigUint64(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(path, `${what} (${v}) is impossibly large`);
  return Number(v);
}

const decoder = new TextDecoder("utf-8", { fatal: false });

function featureLabel(names: readonly FeatureName[], type: number, bit: number): string {
  const n = names.find((f) => f.type === type && f.bit === bit);
  return n ? `"${n.name}" (bit ${bit})` : `bit ${bit}`;
}

/**
 * Parses and validates the header in `head` (the image's first cluster, or as
 * much of it as the file has). `fileSize` bounds every table.
 */
export function parseHeader(head: Uint8Array, fileSize: number, path: string): Qcow2Header {
  if (head.byteLength < V2_HEADER_LENGTH) throw corrupt(path, "the file is shorter than a qcow2 header");
  const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (dv.getUint32(0) !== QCOW2_MAGIC) throw corrupt(path, "no qcow2 magic");
  const version = dv.getUint32(4);
  if (version === 1)
    throw unsupported(
      path,
      "qcow (version 1) images are not supported",
      "convert it: qemu-img convert -O qcow2 old.img new.qcow2",
    );
  if (version !== 2 && version !== 3)
    throw unsupported(path, `qcow2 version ${version} is not supported (only 2 and 3)`);
  const clusterBits = dv.getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS) throw corrupt(path, `cluster_bits ${clusterBits} is below 9`);
  if (clusterBits > MAX_CLUSTER_BITS)
    throw unsupported(path, `cluster size 2^${clusterBits} is larger than 2 MiB (QEMU's limit too)`);
  const clusterSize = 2 ** clusterBits;

  let headerLength = V2_HEADER_LENGTH;
  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = 4;
  let compressionType = 0;
  if (version === 3) {
    if (head.byteLength < V3_HEADER_LENGTH)
      throw corrupt(path, "the file is shorter than a version 3 header");
    incompatibleFeatures = dv.getBigUint64(72);
    compatibleFeatures = dv.getBigUint64(80);
    autoclearFeatures = dv.getBigUint64(88);
    refcountOrder = dv.getUint32(96);
    headerLength = dv.getUint32(100);
    if (
      headerLength < V3_HEADER_LENGTH ||
      headerLength % 8 !== 0 ||
      headerLength > Math.min(clusterSize, head.byteLength)
    )
      throw corrupt(path, `header_length ${headerLength} is invalid`);
    if (refcountOrder > 6) throw corrupt(path, `refcount_order ${refcountOrder} is above 6`);
    if (headerLength > 104) compressionType = dv.getUint8(104);
  }

  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(dv, 8, path, "backing_file_offset"),
    backingFileSize: dv.getUint32(16),
    clusterBits,
    size: u64(dv, 24, path, "size"),
    cryptMethod: dv.getUint32(32),
    l1Size: dv.getUint32(36),
    l1TableOffset: u64(dv, 40, path, "l1_table_offset"),
    refcountTableOffset: u64(dv, 48, path, "refcount_table_offset"),
    refcountTableClusters: dv.getUint32(56),
    nbSnapshots: dv.getUint32(60),
    snapshotsOffset: u64(dv, 64, path, "snapshots_offset"),
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    compressionType,
    backingFile: undefined,
    backingFormat: undefined,
    dataFile: undefined,
    featureNames: [],
    extensions: [],
  };

  // Header extensions: from the end of the header to the backing file name (or the cluster's end).
  let extEnd = Math.min(clusterSize, head.byteLength);
  if (h.backingFileOffset !== 0 && h.backingFileOffset < extEnd) extEnd = h.backingFileOffset;
  let at = headerLength;
  while (at + 8 <= extEnd) {
    const type = dv.getUint32(at);
    const length = dv.getUint32(at + 4);
    if (type === EXT_END) break;
    const data = at + 8;
    if (length > extEnd - data)
      throw corrupt(path, `header extension 0x${type.toString(16)} runs past the header area`);
    h.extensions.push({ type, offset: data, length });
    if (type === EXT_BACKING_FORMAT) {
      if (length > 64) throw corrupt(path, `backing format name of ${length} bytes`);
      h.backingFormat = decoder.decode(head.subarray(data, data + length));
    } else if (type === EXT_FEATURE_TABLE) {
      for (let e = data; e + 48 <= data + length; e += 48) {
        const nameBytes = head.subarray(e + 2, e + 48);
        const nul = nameBytes.indexOf(0);
        h.featureNames.push({
          type: dv.getUint8(e),
          bit: dv.getUint8(e + 1),
          name: decoder.decode(nul < 0 ? nameBytes : nameBytes.subarray(0, nul)),
        });
      }
    } else if (type === EXT_DATA_FILE) {
      h.dataFile = decoder.decode(head.subarray(data, data + length));
    }
    at = data + Math.ceil(length / 8) * 8;
  }

  if (!(incompatibleFeatures & INCOMPAT_COMPRESSION) && compressionType !== 0)
    throw corrupt(path, `compression_type ${compressionType} without the compression type feature bit`);

  // Tables must lie in the file and be cluster aligned.
  const l2Entries = clusterSize / (incompatibleFeatures & INCOMPAT_EXTL2 ? 16 : 8);
  const needL1 = Math.ceil(h.size / clusterSize / l2Entries);
  if (h.l1Size * 8 > MAX_L1_BYTES)
    throw unsupported(path, `the L1 table (${h.l1Size} entries) is larger than 32 MiB`);
  if (h.l1Size < needL1)
    throw corrupt(path, `l1_size ${h.l1Size} is too small for a ${h.size}-byte disk (needs ${needL1})`);
  if (h.l1Size > 0) {
    if (h.l1TableOffset === 0 || h.l1TableOffset % clusterSize !== 0)
      throw corrupt(
        path,
        `l1_table_offset ${h.l1TableOffset} is not a non-zero multiple of the cluster size`,
      );
    if (h.l1TableOffset + h.l1Size * 8 > fileSize)
      throw corrupt(path, "the L1 table lies beyond the end of the file");
  }
  if (h.refcountTableClusters === 0) throw corrupt(path, "the refcount table has no clusters");
  if (h.refcountTableClusters * clusterSize > MAX_REFTABLE_BYTES)
    throw corrupt(path, `the refcount table (${h.refcountTableClusters} clusters) is larger than 8 MiB`);
  if (h.refcountTableOffset === 0 || h.refcountTableOffset % clusterSize !== 0)
    throw corrupt(
      path,
      `refcount_table_offset ${h.refcountTableOffset} is not a non-zero multiple of the cluster size`,
    );
  if (h.refcountTableOffset + h.refcountTableClusters * clusterSize > roundUp(fileSize, clusterSize))
    throw corrupt(path, "the refcount table lies beyond the end of the file");
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw corrupt(path, `${h.nbSnapshots} snapshots`);
  if (
    h.nbSnapshots > 0 &&
    (h.snapshotsOffset % clusterSize !== 0 || h.snapshotsOffset === 0 || h.snapshotsOffset >= fileSize)
  )
    throw corrupt(path, `snapshots_offset ${h.snapshotsOffset} is invalid`);

  // The backing file name lives in the first cluster, after the header.
  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize === 0 || h.backingFileSize > MAX_BACKING_NAME)
      throw corrupt(path, `backing file name of ${h.backingFileSize} bytes`);
    if (
      h.backingFileOffset < headerLength ||
      h.backingFileOffset + h.backingFileSize > Math.min(clusterSize, head.byteLength)
    )
      throw corrupt(path, "the backing file name lies outside the header cluster");
    h.backingFile = decoder.decode(
      head.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize),
    );
  }
  return h;
}

/**
 * Refuses images that use features this package does not implement (after
 * parseHeader, which only checks that the header is well formed).
 */
export function checkFeatures(h: Qcow2Header, path: string): void {
  const incompatibleFeatures = h.incompatibleFeatures;
  const unknown = incompatibleFeatures & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    const bits: string[] = [];
    for (let b = 0; b < 64; b++)
      if (unknown & (1n << BigInt(b))) bits.push(featureLabel(h.featureNames, 0, b));
    throw unsupported(
      path,
      `the image uses unknown incompatible features: ${bits.join(", ")}`,
      "it was written by a newer QEMU; convert it with that version's qemu-img.",
    );
  }
  if (incompatibleFeatures & INCOMPAT_DATA_FILE)
    throw unsupported(
      path,
      `images with an external data file${h.dataFile ? ` (${h.dataFile})` : ""} are not supported`,
    );
  if (incompatibleFeatures & INCOMPAT_EXTL2)
    throw unsupported(
      path,
      "images with extended L2 entries (subclusters) are not supported",
      "convert it: qemu-img convert -O qcow2 -o extended_l2=off in.qcow2 out.qcow2",
    );
  if (incompatibleFeatures & INCOMPAT_COMPRESSION) {
    if (h.compressionType === 0)
      throw corrupt(path, "the compression type bit is set but compression_type is zlib");
    throw unsupported(
      path,
      `compression type ${h.compressionType === 1 ? "zstd" : h.compressionType} is not supported (only zlib)`,
      "convert it: qemu-img convert -O qcow2 -o compression_type=zlib in.qcow2 out.qcow2",
    );
  }
  if (h.cryptMethod !== 0)
    throw unsupported(path, `encrypted qcow2 images (crypt_method ${h.cryptMethod}) are not supported`);
}

/** Names of unknown incompatible feature bits (from the image's feature name table where it has one). */
export function unknownIncompatibleFeatures(h: Qcow2Header): string[] {
  const unknown = h.incompatibleFeatures & ~INCOMPAT_KNOWN;
  const out: string[] = [];
  for (let b = 0; b < 64; b++) if (unknown & (1n << BigInt(b))) out.push(featureLabel(h.featureNames, 0, b));
  return out;
}

export function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** Human names of the (known) features set in a header, for imageInfo. */
export function featureList(h: Qcow2Header): string[] {
  const out: string[] = [];
  if (h.incompatibleFeatures & INCOMPAT_DIRTY) out.push("dirty");
  if (h.incompatibleFeatures & INCOMPAT_CORRUPT) out.push("corrupt");
  if (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) out.push("lazy_refcounts");
  if (h.autoclearFeatures & AUTOCLEAR_BITMAPS) out.push("bitmaps");
  return out;
}
