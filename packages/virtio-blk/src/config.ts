import type { DiskImage } from "@tskvm/disk-image";
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "@tskvm/virtio";
import {
  BLK_CONFIG_SIZE,
  BLK_MAX_QUEUES,
  BlkConfigOffset,
  SECTOR_SIZE,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_ID_BYTES,
} from "./constants.js";

/**
 * What the device needs to know about its disk, as plain data (the I/O worker
 * opens the image and sends this to the main thread).
 */
export interface BlkDiskInfo {
  /** Disk size in bytes (a trailing partial sector is not visible to the guest). */
  size: number;
  readOnly: boolean;
  supportsDiscard: boolean;
  supportsWriteZeroes: boolean;
  /** Bytes; discards smaller than this may free nothing. */
  discardGranularity: number;
  format: string;
  path: string;
}

/** The plain-data part of a DiskImage that {@link BlkDiskInfo} keeps. */
export function diskInfo(image: DiskImage): BlkDiskInfo {
  return {
    size: image.size,
    readOnly: image.readOnly,
    supportsDiscard: image.supportsDiscard,
    supportsWriteZeroes: image.supportsWriteZeroes,
    discardGranularity: image.discardGranularity,
    format: image.format,
    path: image.path,
  };
}

/** Tunables of the block device; every field has a default. Plain data (posted to the I/O worker). */
export interface BlkDeviceOptions {
  /** GET_ID answer: ASCII, at most 20 bytes (longer is cut). Default "" (all NULs). */
  serial?: string;
  /**
   * Request queues (VIRTIO_BLK_F_MQ when more than 1): 1 to {@link BLK_MAX_QUEUES}, e.g. one
   * per vCPU. Every queue is served by the same device (one worker thread). Default 1.
   */
  queues?: number;
  /** Largest queue size the driver may choose (power of two ≤ 32768). Default 256. */
  queueSize?: number;
  /** size_max: largest single data segment in bytes the driver may send. Default 1 MiB. Enforced: IOERR beyond. */
  sizeMax?: number;
  /**
   * seg_max: most data segments per request. Default queueSize - 2 (header and status take two;
   * a chain has at most queueSize descriptors). Enforced: IOERR beyond.
   */
  segMax?: number;
  /** Offer VIRTIO_BLK_F_DISCARD. Default: the image can free space (`supportsDiscard`). */
  discard?: boolean;
  /** Offer VIRTIO_BLK_F_WRITE_ZEROES. Default: the image zeroes efficiently (`supportsWriteZeroes`). */
  writeZeroes?: boolean;
  /** max_discard_sectors. Default 0x3fffff (2 GiB - 512). */
  maxDiscardSectors?: number;
  /** max_discard_seg. Default 32. */
  maxDiscardSegments?: number;
  /** max_write_zeroes_sectors. Default 0x3fffff. */
  maxWriteZeroesSectors?: number;
  /** max_write_zeroes_seg. Default 32. */
  maxWriteZeroesSegments?: number;
  /** Offer VIRTIO_F_EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Offer VIRTIO_F_INDIRECT_DESC (default true). */
  indirect?: boolean;
}

/** Limits a request is checked against (derived from the disk, the options and the negotiated features). */
export interface BlkLimits {
  /** Disk size in 512-byte sectors. */
  capacity: number;
  readOnly: boolean;
  /** seg_max: most IN / OUT data segments (descriptor pieces holding data) in one request. */
  segMax: number;
  /** size_max: most data bytes in one segment. */
  sizeMax: number;
  /** Present when DISCARD is usable (offered and, after activation, negotiated). */
  discard: { maxSectors: number; maxSegments: number } | undefined;
  /** Present when WRITE_ZEROES is usable. */
  writeZeroes: { maxSectors: number; maxSegments: number; mayUnmap: boolean } | undefined;
}

/** The device's fixed configuration: offered features, config space bytes, request limits, serial. */
export interface BlkConfiguration {
  features: bigint;
  queueSize: number;
  /** Request queues (num_queues). */
  queues: number;
  /** struct virtio_blk_config, little-endian, {@link BLK_CONFIG_SIZE} bytes. */
  configSpace: Uint8Array;
  /** Limits with every offered feature on; {@link limitsFor} narrows them to what was negotiated. */
  limits: BlkLimits;
  /** GET_ID answer, exactly 20 bytes. */
  serial: Uint8Array;
}

const u32 = (name: string, v: number, min = 0): number => {
  if (!Number.isInteger(v) || v < min || v > 0xffff_ffff)
    throw new RangeError(`${name} ${v} is not an integer in ${min}..2^32-1`);
  return v;
};

/** Builds the device configuration (§5.2.3, §5.2.4) from the disk and the options. */
export function blkConfiguration(info: BlkDiskInfo, options: BlkDeviceOptions = {}): BlkConfiguration {
  const queueSize = options.queueSize ?? 256;
  if (
    !Number.isInteger(queueSize) ||
    queueSize < 1 ||
    queueSize > 32768 ||
    (queueSize & (queueSize - 1)) !== 0
  )
    throw new RangeError(`queue size ${queueSize} is not a power of two in 1..32768`);
  const queues = options.queues ?? 1;
  if (!Number.isInteger(queues) || queues < 1 || queues > BLK_MAX_QUEUES)
    throw new RangeError(`queues ${queues} is not an integer in 1..${BLK_MAX_QUEUES}`);
  const sizeMax = u32("sizeMax", options.sizeMax ?? 1 << 20, SECTOR_SIZE);
  const segMax = u32("segMax", options.segMax ?? Math.max(1, queueSize - 2), 1);
  const discard = options.discard ?? info.supportsDiscard;
  const writeZeroes = options.writeZeroes ?? info.supportsWriteZeroes;
  const maxDiscardSectors = u32("maxDiscardSectors", options.maxDiscardSectors ?? 0x3f_ffff, 1);
  const maxDiscardSegments = u32("maxDiscardSegments", options.maxDiscardSegments ?? 32, 1);
  const maxWriteZeroesSectors = u32("maxWriteZeroesSectors", options.maxWriteZeroesSectors ?? 0x3f_ffff, 1);
  const maxWriteZeroesSegments = u32("maxWriteZeroesSegments", options.maxWriteZeroesSegments ?? 32, 1);
  const capacity = Math.floor(info.size / SECTOR_SIZE);
  // write_zeroes_may_unmap: set iff a write-zeroes request can deallocate (§5.2.6.2).
  const mayUnmap = info.supportsDiscard && !info.readOnly;

  let features = VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
  if (info.readOnly) features |= VIRTIO_BLK_F_RO;
  if (queues > 1) features |= VIRTIO_BLK_F_MQ;
  if (discard) features |= VIRTIO_BLK_F_DISCARD;
  if (writeZeroes) features |= VIRTIO_BLK_F_WRITE_ZEROES;
  if (options.eventIdx ?? true) features |= VIRTIO_F_EVENT_IDX;
  if (options.indirect ?? true) features |= VIRTIO_F_INDIRECT_DESC;

  const cfg = new Uint8Array(BLK_CONFIG_SIZE);
  const dv = new DataView(cfg.buffer);
  const O = BlkConfigOffset;
  dv.setBigUint64(O.CAPACITY, BigInt(capacity), true);
  dv.setUint32(O.SIZE_MAX, sizeMax, true);
  dv.setUint32(O.SEG_MAX, segMax, true);
  // Geometry stays zero (VIRTIO_BLK_F_GEOMETRY is not offered).
  dv.setUint32(O.BLK_SIZE, SECTOR_SIZE, true);
  // Topology: one logical block per physical block, no offset, minimum I/O one block, no optimal size.
  dv.setUint8(O.PHYSICAL_BLOCK_EXP, 0);
  dv.setUint8(O.ALIGNMENT_OFFSET, 0);
  dv.setUint16(O.MIN_IO_SIZE, 1, true);
  dv.setUint32(O.OPT_IO_SIZE, 0, true);
  dv.setUint8(O.WRITEBACK, 0);
  dv.setUint16(O.NUM_QUEUES, queues, true);
  if (discard) {
    dv.setUint32(O.MAX_DISCARD_SECTORS, maxDiscardSectors, true);
    dv.setUint32(O.MAX_DISCARD_SEG, maxDiscardSegments, true);
    const granularity = Math.max(SECTOR_SIZE, info.discardGranularity);
    dv.setUint32(O.DISCARD_SECTOR_ALIGNMENT, Math.floor(granularity / SECTOR_SIZE), true);
  }
  if (writeZeroes) {
    dv.setUint32(O.MAX_WRITE_ZEROES_SECTORS, maxWriteZeroesSectors, true);
    dv.setUint32(O.MAX_WRITE_ZEROES_SEG, maxWriteZeroesSegments, true);
    dv.setUint8(O.WRITE_ZEROES_MAY_UNMAP, mayUnmap ? 1 : 0);
  }

  const serial = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  const text = options.serial ?? "";
  for (let i = 0; i < Math.min(text.length, VIRTIO_BLK_ID_BYTES); i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) throw new RangeError(`serial ${JSON.stringify(text)} is not printable ASCII`);
    serial[i] = c;
  }

  return {
    features,
    queueSize,
    queues,
    configSpace: cfg,
    serial,
    limits: {
      capacity,
      readOnly: info.readOnly,
      segMax,
      sizeMax,
      discard: discard ? { maxSectors: maxDiscardSectors, maxSegments: maxDiscardSegments } : undefined,
      writeZeroes: writeZeroes
        ? { maxSectors: maxWriteZeroesSectors, maxSegments: maxWriteZeroesSegments, mayUnmap }
        : undefined,
    },
  };
}

/** The limits once the driver accepted `driverFeatures`: DISCARD / WRITE_ZEROES only if negotiated. */
export function limitsFor(limits: BlkLimits, driverFeatures: bigint): BlkLimits {
  return {
    ...limits,
    discard: driverFeatures & VIRTIO_BLK_F_DISCARD ? limits.discard : undefined,
    writeZeroes: driverFeatures & VIRTIO_BLK_F_WRITE_ZEROES ? limits.writeZeroes : undefined,
  };
}
