import { feature } from "@tskvm/virtio";

/** Bytes in a virtio-blk sector: every `sector` field and capacity counts these (§5.2.4). */
export const SECTOR_SIZE = 512;
export const SECTOR_SHIFT = 9;

/** Request types (§5.2.6). */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

/** Request status byte (§5.2.6). */
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;
export type BlkStatus = typeof VIRTIO_BLK_S_OK | typeof VIRTIO_BLK_S_IOERR | typeof VIRTIO_BLK_S_UNSUPP;

/** Size of the request header (type, reserved, sector). */
export const BLK_HEADER_SIZE = 16;
/** Size of one discard / write-zeroes segment (sector, num_sectors, flags). */
export const BLK_SEGMENT_SIZE = 16;
/** Discard / write-zeroes segment flag: the range may be deallocated (write zeroes only). */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
/** GET_ID answers with this many bytes (NUL-padded, no terminator at full length). */
export const VIRTIO_BLK_ID_BYTES = 20;

/** Block device feature bits (§5.2.3), as bit numbers. */
export const BlkFeatureBit = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
  LIFETIME: 15,
  SECURE_ERASE: 16,
  ZONED: 17,
} as const;

export const VIRTIO_BLK_F_SIZE_MAX = feature(BlkFeatureBit.SIZE_MAX);
export const VIRTIO_BLK_F_SEG_MAX = feature(BlkFeatureBit.SEG_MAX);
export const VIRTIO_BLK_F_RO = feature(BlkFeatureBit.RO);
export const VIRTIO_BLK_F_BLK_SIZE = feature(BlkFeatureBit.BLK_SIZE);
export const VIRTIO_BLK_F_FLUSH = feature(BlkFeatureBit.FLUSH);
/** More than one request queue; `num_queues` in the config space says how many. */
export const VIRTIO_BLK_F_MQ = feature(BlkFeatureBit.MQ);
export const VIRTIO_BLK_F_DISCARD = feature(BlkFeatureBit.DISCARD);
export const VIRTIO_BLK_F_WRITE_ZEROES = feature(BlkFeatureBit.WRITE_ZEROES);

/** Offsets of the fields of struct virtio_blk_config (§5.2.4). */
export const BlkConfigOffset = {
  CAPACITY: 0,
  SIZE_MAX: 8,
  SEG_MAX: 12,
  GEOMETRY_CYLINDERS: 16,
  GEOMETRY_HEADS: 18,
  GEOMETRY_SECTORS: 19,
  BLK_SIZE: 20,
  PHYSICAL_BLOCK_EXP: 24,
  ALIGNMENT_OFFSET: 25,
  MIN_IO_SIZE: 26,
  OPT_IO_SIZE: 28,
  WRITEBACK: 32,
  NUM_QUEUES: 34,
  MAX_DISCARD_SECTORS: 36,
  MAX_DISCARD_SEG: 40,
  DISCARD_SECTOR_ALIGNMENT: 44,
  MAX_WRITE_ZEROES_SECTORS: 48,
  MAX_WRITE_ZEROES_SEG: 52,
  WRITE_ZEROES_MAY_UNMAP: 56,
} as const;
/**
 * Most request queues a device offers (`queues`). One worker thread serves them all, so more
 * queues add no host parallelism: they let guest CPUs submit and take completions without
 * sharing a ring (Linux maps CPUs onto queues when there are fewer). Each queue costs a notify
 * eventfd, an MSI-X vector with its irqfd and GSI, and a look per poll round; 16 keeps that small.
 */
export const BLK_MAX_QUEUES = 16;
/**
 * The disk worker's longest polling window (µs; `pollUs`, `-d …,poll=US`). In the sandbox's
 * guest bench a fixed 100 µs window gave 1.4–1.8× the requests per second of none; the window
 * adapts below it, so the cost is CPU only while requests keep coming (see the README).
 */
export const BLK_DEFAULT_POLL_US = 100;
/** Config space exposed: up to and including `unused1` (the secure-erase and zoned fields are not offered). */
export const BLK_CONFIG_SIZE = 60;
