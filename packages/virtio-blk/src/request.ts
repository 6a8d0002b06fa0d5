import type { DescriptorChain } from "@tskvm/virtio";
import type { BlkLimits } from "./config.js";
import {
  BLK_HEADER_SIZE,
  BLK_SEGMENT_SIZE,
  type BlkStatus,
  SECTOR_SHIFT,
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from "./constants.js";

/** struct virtio_blk_req's header, as the driver wrote it. */
export interface BlockRequestHeader {
  /** `type` (VIRTIO_BLK_T_*). */
  readonly type: number;
  /** `reserved` (formerly ioprio); ignored. */
  readonly reserved: number;
  /** `sector`, the full unsigned 64-bit value. */
  readonly sector: bigint;
}

/** One validated discard / write-zeroes range. */
export interface BlockSegment {
  /** First sector (≤ capacity, so a safe integer). */
  sector: number;
  numSectors: number;
  /** The UNMAP flag (write zeroes only: the range may be deallocated). */
  unmap: boolean;
}

interface RequestCommon {
  /** Descriptor chain head: the id for the used ring. */
  head: number;
  header: BlockRequestHeader;
  /** The status byte: a one-byte view aliasing guest RAM (the last device-writable byte of the chain). */
  status: Uint8Array;
}

/** VIRTIO_BLK_T_IN: read `length` bytes at `sector` into `buffers` (views of guest RAM). */
export interface ReadRequest extends RequestCommon {
  type: "in";
  sector: number;
  length: number;
  buffers: Uint8Array[];
}

/** VIRTIO_BLK_T_OUT: write `buffers` (views of guest RAM, `length` bytes) at `sector`. */
export interface WriteRequest extends RequestCommon {
  type: "out";
  sector: number;
  length: number;
  buffers: Uint8Array[];
}

export interface FlushRequest extends RequestCommon {
  type: "flush";
}

/** VIRTIO_BLK_T_GET_ID: `buffers` are the first 20 device-writable bytes. */
export interface GetIdRequest extends RequestCommon {
  type: "get-id";
  buffers: Uint8Array[];
}

export interface DiscardRequest extends RequestCommon {
  type: "discard";
  segments: BlockSegment[];
}

export interface WriteZeroesRequest extends RequestCommon {
  type: "write-zeroes";
  segments: BlockSegment[];
}

/** A request that passed every check: the engine can execute it as is. */
export type BlockRequest =
  | ReadRequest
  | WriteRequest
  | FlushRequest
  | GetIdRequest
  | DiscardRequest
  | WriteZeroesRequest;

/** Everything a driver can get wrong in one request, with what the device knows about it. */
export type BlockRequestErrorDetail =
  // ---- no status byte: the request cannot be answered (used length 0) ----
  /** The chain is one descriptor: nothing is left for the status. */
  | { kind: "MissingStatus" }
  /** The chain has no device-writable descriptor, so its last descriptor (the status) is read-only. */
  | { kind: "StatusNotWritable" }
  /** The device-writable descriptors add up to 0 bytes: no room for the status byte. */
  | { kind: "StatusTooSmall" }
  // ---- answered with VIRTIO_BLK_S_IOERR ----
  /** The chain starts with a device-writable descriptor: there is no readable header. */
  | { kind: "HeaderNotReadable" }
  /** The device-readable part is shorter than the 16-byte header. */
  | { kind: "HeaderTooShort"; length: number }
  /** Device-readable data where the request type needs device-writable data (IN, GET_ID). */
  | { kind: "UnexpectedReadableData"; length: number }
  /** Device-writable bytes before the status where the type has none (OUT, DISCARD, WRITE_ZEROES). */
  | { kind: "UnexpectedWritableData"; length: number }
  /** IN / OUT data that is not a whole number of 512-byte sectors. */
  | { kind: "DataLengthNotSectorMultiple"; length: number }
  /** sector + number of sectors does not fit in 64 bits. */
  | { kind: "SectorOverflow"; sector: bigint; sectors: number }
  /** The range ends past the end of the disk. */
  | { kind: "SectorOutOfRange"; sector: bigint; sectors: number; capacity: number }
  /** A FLUSH with a non-zero sector (the driver MUST send 0). */
  | { kind: "FlushSectorNotZero"; sector: bigint }
  /** GET_ID whose id buffer is device-readable. */
  | { kind: "IdBufferNotWritable"; length: number }
  /** GET_ID with fewer than 20 device-writable bytes before the status. */
  | { kind: "IdBufferTooShort"; length: number }
  /** DISCARD / WRITE_ZEROES data that is empty or not a whole number of 16-byte segments. */
  | { kind: "SegmentsMalformed"; length: number }
  /** More segments than max_discard_seg / max_write_zeroes_seg. */
  | { kind: "TooManySegments"; count: number; max: number }
  /** A segment larger than max_discard_sectors / max_write_zeroes_sectors. */
  | { kind: "SegmentTooLarge"; index: number; numSectors: number; max: number }
  /** OUT, DISCARD or WRITE_ZEROES on a read-only device (§5.2.6.2: IOERR, nothing written). */
  | { kind: "WriteToReadOnly"; type: number }
  // ---- answered with VIRTIO_BLK_S_UNSUPP ----
  /** A request type this device does not implement. */
  | { kind: "UnsupportedType"; type: number }
  /** DISCARD / WRITE_ZEROES although the feature was not negotiated (or not offered). */
  | { kind: "NotNegotiated"; type: number }
  /** A segment with flag bits other than UNMAP (§5.2.6.2: UNSUPP). */
  | { kind: "SegmentReservedFlags"; index: number; flags: number }
  /** A DISCARD segment with UNMAP set (§5.2.6.2: UNSUPP). */
  | { kind: "DiscardWithUnmap"; index: number };

export type BlockRequestErrorKind = BlockRequestErrorDetail["kind"];

const UNREPORTABLE: ReadonlySet<BlockRequestErrorKind> = new Set([
  "MissingStatus",
  "StatusNotWritable",
  "StatusTooSmall",
]);
const UNSUPPORTED: ReadonlySet<BlockRequestErrorKind> = new Set([
  "UnsupportedType",
  "NotNegotiated",
  "SegmentReservedFlags",
  "DiscardWithUnmap",
]);

function describe(d: BlockRequestErrorDetail): string {
  switch (d.kind) {
    case "MissingStatus":
      return "the chain has a single descriptor: no status byte";
    case "StatusNotWritable":
      return "the chain has no device-writable descriptor for the status byte";
    case "StatusTooSmall":
      return "the device-writable descriptors are empty: no room for the status byte";
    case "HeaderNotReadable":
      return "the chain starts with a device-writable descriptor: no request header";
    case "HeaderTooShort":
      return `the request header needs 16 readable bytes, the chain has ${d.length}`;
    case "UnexpectedReadableData":
      return `${d.length} device-readable data bytes where device-writable data is expected`;
    case "UnexpectedWritableData":
      return `${d.length} device-writable bytes before the status where none are expected`;
    case "DataLengthNotSectorMultiple":
      return `data length ${d.length} is not a multiple of 512`;
    case "SectorOverflow":
      return `sector ${d.sector} + ${d.sectors} sectors overflows 64 bits`;
    case "SectorOutOfRange":
      return `sectors [${d.sector}, ${d.sector + BigInt(d.sectors)}) are beyond the capacity (${d.capacity} sectors)`;
    case "FlushSectorNotZero":
      return `flush with sector ${d.sector} (must be 0)`;
    case "IdBufferNotWritable":
      return `the GET_ID buffer (${d.length} bytes) is device-readable`;
    case "IdBufferTooShort":
      return `the GET_ID buffer has ${d.length} device-writable bytes, 20 are needed`;
    case "SegmentsMalformed":
      return `${d.length} bytes of segments: not a non-zero multiple of 16`;
    case "TooManySegments":
      return `${d.count} segments, at most ${d.max} allowed`;
    case "SegmentTooLarge":
      return `segment ${d.index} has ${d.numSectors} sectors, at most ${d.max} allowed`;
    case "WriteToReadOnly":
      return `request type ${d.type} writes to a read-only device`;
    case "UnsupportedType":
      return `request type ${d.type} is not supported`;
    case "NotNegotiated":
      return `request type ${d.type} needs a feature the driver did not negotiate`;
    case "SegmentReservedFlags":
      return `segment ${d.index} has reserved flags 0x${d.flags.toString(16)}`;
    case "DiscardWithUnmap":
      return `discard segment ${d.index} has the UNMAP flag`;
  }
}

/**
 * A request the driver got wrong (rust-vmm's `virtio_blk::request::Error`,
 * one `detail.kind` per mistake). `status` says how the device answers:
 * VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP written to `statusByte` with used
 * length 1, or `undefined` when the chain has no status byte to write — then
 * the chain goes back with used length 0, like a malformed virtqueue chain.
 */
export class BlockRequestError extends Error {
  readonly detail: BlockRequestErrorDetail;
  readonly head: number;
  readonly status: BlkStatus | undefined;
  /** Where the status goes (a one-byte view of guest RAM), when there is one. */
  readonly statusByte: Uint8Array | undefined;

  constructor(detail: BlockRequestErrorDetail, head: number, statusByte: Uint8Array | undefined) {
    super(describe(detail));
    this.name = "BlockRequestError";
    this.detail = detail;
    this.head = head;
    if (UNREPORTABLE.has(detail.kind) || !statusByte) {
      this.status = undefined;
      this.statusByte = undefined;
    } else {
      this.status = UNSUPPORTED.has(detail.kind) ? VIRTIO_BLK_S_UNSUPP : VIRTIO_BLK_S_IOERR;
      this.statusByte = statusByte;
    }
  }

  get kind(): BlockRequestErrorKind {
    return this.detail.kind;
  }

  /** Whether the driver can be told (a status byte exists). */
  get reportable(): boolean {
    return this.status !== undefined;
  }
}

const TWO_32 = 0x1_0000_0000;
/** Scratch for the header: one copy out of guest RAM per request, no allocation. */
const HEADER_BYTES = new Uint8Array(BLK_HEADER_SIZE);
const HEADER = new DataView(HEADER_BYTES.buffer);

class Header implements BlockRequestHeader {
  readonly type: number;
  readonly reserved: number;
  readonly #lo: number;
  readonly #hi: number;
  constructor(type: number, reserved: number, lo: number, hi: number) {
    this.type = type;
    this.reserved = reserved;
    this.#lo = lo;
    this.#hi = hi;
  }
  get sector(): bigint {
    return (BigInt(this.#hi) << 32n) | BigInt(this.#lo);
  }
}
/** Sectors at or above 2^53 / 512 can never be inside a disk whose size is a safe integer. */
const HIGH_LIMIT = 2 ** (53 - 32);

/** The status byte: the chain's last device-writable byte, as a view. */
function statusView(chain: DescriptorChain): Uint8Array | undefined {
  const { addresses, lengths, writableStart } = chain;
  for (let i = lengths.length - 1; i >= writableStart; i--) {
    const len = lengths[i]!;
    if (len > 0) return chain.memory.view(addresses[i]! + len - 1, 1);
  }
  return undefined;
}

/**
 * Parses and validates one virtio-blk request (§5.2.6) without touching the
 * disk. The chain is read as two byte streams (device-readable, then
 * device-writable), so descriptor boundaries do not matter (§2.7.4): the
 * readable part is the 16-byte header then OUT data or segments; the writable
 * part is IN data or the GET_ID buffer, then the status byte (its last byte).
 *
 * Throws {@link BlockRequestError} for anything the driver got wrong; the
 * error says whether and how it can be reported.
 */
export function parseBlockRequest(chain: DescriptorChain, limits: BlkLimits): BlockRequest {
  const head = chain.head;
  const status = statusView(chain);
  const fail = (d: BlockRequestErrorDetail): never => {
    throw new BlockRequestError(d, head, status);
  };
  if (!status) {
    if (chain.writableStart < chain.count) fail({ kind: "StatusTooSmall" });
    fail(chain.count <= 1 ? { kind: "MissingStatus" } : { kind: "StatusNotWritable" });
  }
  const readable = chain.readableLength;
  if (readable < BLK_HEADER_SIZE) {
    if (readable === 0 && chain.writableStart === 0) fail({ kind: "HeaderNotReadable" });
    fail({ kind: "HeaderTooShort", length: readable });
  }
  const reader = chain.reader();
  reader.readInto(HEADER_BYTES);
  const type = HEADER.getUint32(0, true);
  const reserved = HEADER.getUint32(4, true);
  const lo = HEADER.getUint32(8, true);
  const hi = HEADER.getUint32(12, true);
  const header: BlockRequestHeader = new Header(type, reserved, lo, hi);
  const readData = readable - BLK_HEADER_SIZE;
  const writeData = chain.writableLength - 1;
  const s = status as Uint8Array;

  /** Checks [sector, sector + sectors) against the disk; returns the sector as a number. */
  const range = (sectors: number): number => {
    if (hi === 0xffff_ffff && lo + sectors > 0xffff_ffff)
      fail({ kind: "SectorOverflow", sector: header.sector, sectors });
    const sector = hi * TWO_32 + lo;
    if (hi >= HIGH_LIMIT || sector + sectors > limits.capacity)
      fail({ kind: "SectorOutOfRange", sector: header.sector, sectors, capacity: limits.capacity });
    return sector;
  };

  switch (type) {
    case VIRTIO_BLK_T_IN: {
      if (readData > 0) fail({ kind: "UnexpectedReadableData", length: readData });
      if (writeData % SECTOR_SIZE !== 0) fail({ kind: "DataLengthNotSectorMultiple", length: writeData });
      const sector = range(writeData >>> SECTOR_SHIFT);
      const buffers = chain.writer().writeViews(writeData);
      return { type: "in", head, header, status: s, sector, length: writeData, buffers };
    }
    case VIRTIO_BLK_T_OUT: {
      if (limits.readOnly) fail({ kind: "WriteToReadOnly", type });
      if (writeData > 0) fail({ kind: "UnexpectedWritableData", length: writeData });
      if (readData % SECTOR_SIZE !== 0) fail({ kind: "DataLengthNotSectorMultiple", length: readData });
      const sector = range(readData >>> SECTOR_SHIFT);
      const buffers = reader.readViews(readData);
      return { type: "out", head, header, status: s, sector, length: readData, buffers };
    }
    case VIRTIO_BLK_T_FLUSH:
      // Data in a flush is a SHOULD NOT for the driver: ignored. The sector is a MUST.
      if (header.sector !== 0n) fail({ kind: "FlushSectorNotZero", sector: header.sector });
      return { type: "flush", head, header, status: s };
    case VIRTIO_BLK_T_GET_ID: {
      if (writeData === 0 && readData > 0) fail({ kind: "IdBufferNotWritable", length: readData });
      if (readData > 0) fail({ kind: "UnexpectedReadableData", length: readData });
      if (writeData < VIRTIO_BLK_ID_BYTES) fail({ kind: "IdBufferTooShort", length: writeData });
      const buffers = chain.writer().writeViews(VIRTIO_BLK_ID_BYTES);
      return { type: "get-id", head, header, status: s, buffers };
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
      const discard = type === VIRTIO_BLK_T_DISCARD;
      if (limits.readOnly) fail({ kind: "WriteToReadOnly", type });
      const limit = discard ? limits.discard : limits.writeZeroes;
      if (!limit) fail({ kind: "NotNegotiated", type });
      const { maxSectors, maxSegments } = limit as { maxSectors: number; maxSegments: number };
      if (writeData > 0) fail({ kind: "UnexpectedWritableData", length: writeData });
      if (readData === 0 || readData % BLK_SEGMENT_SIZE !== 0)
        fail({ kind: "SegmentsMalformed", length: readData });
      const count = readData / BLK_SEGMENT_SIZE;
      if (count > maxSegments) fail({ kind: "TooManySegments", count, max: maxSegments });
      const raw: { sector: bigint; numSectors: number; flags: number }[] = [];
      for (let i = 0; i < count; i++)
        raw.push({ sector: reader.readU64(), numSectors: reader.readU32(), flags: reader.readU32() });
      // Flags first: unknown flags (and UNMAP on a discard) are UNSUPP whatever else is wrong.
      raw.forEach((g, index) => {
        if (g.flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
          fail({ kind: "SegmentReservedFlags", index, flags: g.flags });
        if (discard && g.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
          fail({ kind: "DiscardWithUnmap", index });
      });
      const segments = raw.map((g, index): BlockSegment => {
        if (g.numSectors > maxSectors)
          fail({ kind: "SegmentTooLarge", index, numSectors: g.numSectors, max: maxSectors });
        const end = g.sector + BigInt(g.numSectors);
        if (end > 0xffff_ffff_ffff_ffffn)
          fail({ kind: "SectorOverflow", sector: g.sector, sectors: g.numSectors });
        if (end > BigInt(limits.capacity))
          fail({
            kind: "SectorOutOfRange",
            sector: g.sector,
            sectors: g.numSectors,
            capacity: limits.capacity,
          });
        return {
          sector: Number(g.sector),
          numSectors: g.numSectors,
          unmap: (g.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0,
        };
      });
      return discard
        ? { type: "discard", head, header, status: s, segments }
        : { type: "write-zeroes", head, header, status: s, segments };
    }
    default:
      return fail({ kind: "UnsupportedType", type });
  }
}
