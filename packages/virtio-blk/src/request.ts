import type { ChainReader, DescriptorChain, GuestMemoryAccess } from "@tskvm/virtio";
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
  /** IN / OUT data in more segments (descriptor pieces) than seg_max. */
  | { kind: "TooManyDataSegments"; count: number; max: number }
  /** An IN / OUT data segment larger than size_max. */
  | { kind: "DataSegmentTooLarge"; index: number; length: number; max: number }
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
    case "TooManyDataSegments":
      return `the data is in ${d.count} segments, at most ${d.max} (seg_max) allowed`;
    case "DataSegmentTooLarge":
      return `data segment ${d.index} has ${d.length} bytes, at most ${d.max} (size_max) allowed`;
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

/**
 * Views of guest RAM by guest address, for one memory: the header and status
 * buffers of a driver are usually its per-tag request structures, reused
 * request after request, and a cached view (a Map lookup) costs far less than
 * a new one (a region lookup and a typed-array allocation). Only ranges the
 * queue already checked are looked up; a view is exactly what
 * `memory.view(address, length)` returned for that range. Bounded: cleared
 * when full.
 */
export class GuestViewCache {
  readonly memory: GuestMemoryAccess;
  /** Status bytes (length 1) and headers (length 16); other lengths are not cached. */
  readonly #bytes = new Map<number, Uint8Array>();
  readonly #headers = new Map<number, Uint8Array>();
  readonly #limit: number;

  constructor(memory: GuestMemoryAccess, limit = 1024) {
    this.memory = memory;
    this.#limit = limit;
  }

  /** `memory.view(address, length)`, cached for lengths 1 and 16. */
  view(address: number, length: number): Uint8Array {
    const m = length === 1 ? this.#bytes : length === BLK_HEADER_SIZE ? this.#headers : undefined;
    if (m === undefined) return this.memory.view(address, length);
    let v = m.get(address);
    if (v === undefined) {
      v = this.memory.view(address, length);
      if (m.size >= this.#limit) m.clear();
      m.set(address, v);
    }
    return v;
  }

  clear(): void {
    this.#bytes.clear();
    this.#headers.clear();
  }
}

function viewOf(chain: DescriptorChain, views: GuestViewCache | undefined, address: number, length: number) {
  return views !== undefined && views.memory === chain.memory
    ? views.view(address, length)
    : chain.memory.view(address, length);
}

/** The status byte: the chain's last device-writable byte, as a view. */
function statusView(chain: DescriptorChain, views: GuestViewCache | undefined): Uint8Array | undefined {
  const { addresses, lengths, writableStart } = chain;
  for (let i = lengths.length - 1; i >= writableStart; i--) {
    const len = lengths[i]!;
    if (len > 0) return viewOf(chain, views, addresses[i]! + len - 1, 1);
  }
  return undefined;
}

function reject(d: BlockRequestErrorDetail, head: number, status: Uint8Array | undefined): never {
  throw new BlockRequestError(d, head, status);
}

/** Checks [sector, sector + sectors) against the disk; returns the sector as a number. */
function sectorRange(
  hi: number,
  lo: number,
  sectors: number,
  capacity: number,
  head: number,
  status: Uint8Array,
): number {
  if (hi === 0xffff_ffff && lo + sectors > 0xffff_ffff)
    reject({ kind: "SectorOverflow", sector: (BigInt(hi) << 32n) | BigInt(lo), sectors }, head, status);
  const sector = hi * TWO_32 + lo;
  if (hi >= HIGH_LIMIT || sector + sectors > capacity)
    reject(
      { kind: "SectorOutOfRange", sector: (BigInt(hi) << 32n) | BigInt(lo), sectors, capacity },
      head,
      status,
    );
  return sector;
}

/**
 * Checks the data of an IN / OUT request against seg_max and size_max: the
 * `bytes` data bytes that start `skip` bytes into descriptor `start`, counted
 * per descriptor piece (empty descriptors do not count).
 */
function checkDataSegments(
  lengths: readonly number[],
  start: number,
  skip: number,
  bytes: number,
  limits: BlkLimits,
  head: number,
  status: Uint8Array,
): void {
  let i = start;
  let off = skip;
  while (off > 0 && lengths[i]! <= off) off -= lengths[i++]!;
  let left = bytes;
  let count = 0;
  while (left > 0) {
    const take = Math.min(lengths[i++]! - off, left);
    off = 0;
    if (take === 0) continue;
    if (take > limits.sizeMax)
      reject({ kind: "DataSegmentTooLarge", index: count, length: take, max: limits.sizeMax }, head, status);
    count++;
    left -= take;
  }
  if (count > limits.segMax) reject({ kind: "TooManyDataSegments", count, max: limits.segMax }, head, status);
}

/** The readable bytes after the header (OUT data, segments). */
function bodyReader(chain: DescriptorChain): ChainReader {
  const r = chain.reader();
  r.skip(BLK_HEADER_SIZE);
  return r;
}

/** Little-endian u32 at `o` of a byte view (no DataView needed). */
function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

/**
 * Parses and validates one virtio-blk request (§5.2.6) without touching the
 * disk. The chain is read as two byte streams (device-readable, then
 * device-writable), so descriptor boundaries do not matter (§2.7.4): the
 * readable part is the 16-byte header then OUT data or segments; the writable
 * part is IN data or the GET_ID buffer, then the status byte (its last byte).
 *
 * Throws {@link BlockRequestError} for anything the driver got wrong; the
 * error says whether and how it can be reported. `views` (optional, over the
 * chain's memory) caches the header and status views across requests.
 */
export function parseBlockRequest(
  chain: DescriptorChain,
  limits: BlkLimits,
  views?: GuestViewCache,
): BlockRequest {
  const head = chain.head;
  const status = statusView(chain, views);
  if (!status) {
    if (chain.writableStart < chain.count) reject({ kind: "StatusTooSmall" }, head, status);
    reject(chain.count <= 1 ? { kind: "MissingStatus" } : { kind: "StatusNotWritable" }, head, status);
  }
  const readable = chain.readableLength;
  if (readable < BLK_HEADER_SIZE) {
    if (readable === 0 && chain.writableStart === 0) reject({ kind: "HeaderNotReadable" }, head, status);
    reject({ kind: "HeaderTooShort", length: readable }, head, status);
  }
  const { addresses, lengths, writableStart } = chain;
  let reader: ChainReader | undefined;
  let type: number;
  let reserved: number;
  let lo: number;
  let hi: number;
  // The usual layout has the whole header in the first descriptor: one view, no copy.
  const first = lengths[0]!;
  let hv: Uint8Array | undefined;
  if (first >= BLK_HEADER_SIZE) {
    try {
      hv = viewOf(chain, views, addresses[0]!, BLK_HEADER_SIZE);
    } catch {
      hv = undefined; // split across host views (regions, windows): read it as a stream below
    }
  }
  if (hv) {
    type = u32(hv, 0);
    reserved = u32(hv, 4);
    lo = u32(hv, 8);
    hi = u32(hv, 12);
  } else {
    reader = chain.reader();
    reader.readInto(HEADER_BYTES);
    type = HEADER.getUint32(0, true);
    reserved = HEADER.getUint32(4, true);
    lo = HEADER.getUint32(8, true);
    hi = HEADER.getUint32(12, true);
  }
  const header: BlockRequestHeader = new Header(type, reserved, lo, hi);
  const readData = readable - BLK_HEADER_SIZE;
  const writeData = chain.writableLength - 1;
  const s = status as Uint8Array;

  switch (type) {
    case VIRTIO_BLK_T_IN: {
      if (readData > 0) reject({ kind: "UnexpectedReadableData", length: readData }, head, s);
      if (writeData % SECTOR_SIZE !== 0)
        reject({ kind: "DataLengthNotSectorMultiple", length: writeData }, head, s);
      const sector = sectorRange(hi, lo, writeData >>> SECTOR_SHIFT, limits.capacity, head, s);
      checkDataSegments(lengths, writableStart, 0, writeData, limits, head, s);
      // The usual layout: the data in one descriptor, the status byte alone in the next (the last).
      const buffers =
        lengths.length === writableStart + 2 &&
        lengths[writableStart] === writeData &&
        lengths[writableStart + 1] === 1
          ? chain.memory.segments(addresses[writableStart]!, writeData)
          : chain.writer().writeViews(writeData);
      return { type: "in", head, header, status: s, sector, length: writeData, buffers };
    }
    case VIRTIO_BLK_T_OUT: {
      if (limits.readOnly) reject({ kind: "WriteToReadOnly", type }, head, s);
      if (writeData > 0) reject({ kind: "UnexpectedWritableData", length: writeData }, head, s);
      if (readData % SECTOR_SIZE !== 0)
        reject({ kind: "DataLengthNotSectorMultiple", length: readData }, head, s);
      const sector = sectorRange(hi, lo, readData >>> SECTOR_SHIFT, limits.capacity, head, s);
      checkDataSegments(lengths, 0, BLK_HEADER_SIZE, readData, limits, head, s);
      const buffers = (reader ?? bodyReader(chain)).readViews(readData);
      return { type: "out", head, header, status: s, sector, length: readData, buffers };
    }
    case VIRTIO_BLK_T_FLUSH:
      // Data in a flush is a SHOULD NOT for the driver: ignored. The sector is a MUST.
      if (header.sector !== 0n) reject({ kind: "FlushSectorNotZero", sector: header.sector }, head, s);
      return { type: "flush", head, header, status: s };
    case VIRTIO_BLK_T_GET_ID: {
      if (writeData === 0 && readData > 0) reject({ kind: "IdBufferNotWritable", length: readData }, head, s);
      if (readData > 0) reject({ kind: "UnexpectedReadableData", length: readData }, head, s);
      if (writeData < VIRTIO_BLK_ID_BYTES) reject({ kind: "IdBufferTooShort", length: writeData }, head, s);
      const buffers = chain.writer().writeViews(VIRTIO_BLK_ID_BYTES);
      return { type: "get-id", head, header, status: s, buffers };
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
      const discard = type === VIRTIO_BLK_T_DISCARD;
      if (limits.readOnly) reject({ kind: "WriteToReadOnly", type }, head, s);
      const limit = discard ? limits.discard : limits.writeZeroes;
      if (!limit) reject({ kind: "NotNegotiated", type }, head, s);
      const { maxSectors, maxSegments } = limit as { maxSectors: number; maxSegments: number };
      if (writeData > 0) reject({ kind: "UnexpectedWritableData", length: writeData }, head, s);
      if (readData === 0 || readData % BLK_SEGMENT_SIZE !== 0)
        reject({ kind: "SegmentsMalformed", length: readData }, head, s);
      const count = readData / BLK_SEGMENT_SIZE;
      if (count > maxSegments) reject({ kind: "TooManySegments", count, max: maxSegments }, head, s);
      const raw: { sector: bigint; numSectors: number; flags: number }[] = [];
      const segReader = reader ?? bodyReader(chain);
      for (let i = 0; i < count; i++)
        raw.push({
          sector: segReader.readU64(),
          numSectors: segReader.readU32(),
          flags: segReader.readU32(),
        });
      // Flags first: unknown flags (and UNMAP on a discard) are UNSUPP whatever else is wrong.
      raw.forEach((g, index) => {
        if (g.flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
          reject({ kind: "SegmentReservedFlags", index, flags: g.flags }, head, s);
        if (discard && g.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
          reject({ kind: "DiscardWithUnmap", index }, head, s);
      });
      const segments = raw.map((g, index): BlockSegment => {
        if (g.numSectors > maxSectors)
          reject({ kind: "SegmentTooLarge", index, numSectors: g.numSectors, max: maxSectors }, head, s);
        const end = g.sector + BigInt(g.numSectors);
        if (end > 0xffff_ffff_ffff_ffffn)
          reject({ kind: "SectorOverflow", sector: g.sector, sectors: g.numSectors }, head, s);
        if (end > BigInt(limits.capacity))
          reject(
            {
              kind: "SectorOutOfRange",
              sector: g.sector,
              sectors: g.numSectors,
              capacity: limits.capacity,
            },
            head,
            s,
          );
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
      return reject({ kind: "UnsupportedType", type }, head, s);
  }
}
