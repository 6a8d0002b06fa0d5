import type { DiskImage, DiskImageError, DiskIoBatch } from "@tskvm/disk-image";
import {
  type BlkStatus,
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
} from "./constants.js";
import type { BlockRequest } from "./request.js";

/** What executing one request did. */
export interface BlockResult {
  status: BlkStatus;
  /** Bytes written into the chain's data buffers (IN, GET_ID); the used length is this + 1. */
  written: number;
  /** The disk error behind an IOERR, for diagnostics. */
  error?: unknown;
}

/** Counters of one engine (plain data). */
export interface BlockStats {
  reads: number;
  writes: number;
  flushes: number;
  discards: number;
  writeZeroes: number;
  getIds: number;
  bytesRead: number;
  bytesWritten: number;
  /** Requests answered IOERR because the disk failed (not driver mistakes). */
  ioErrors: number;
}

export function emptyStats(): BlockStats {
  return {
    reads: 0,
    writes: 0,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    getIds: 0,
    bytesRead: 0,
    bytesWritten: 0,
    ioErrors: 0,
  };
}

export interface BlockEngineOptions {
  /** GET_ID answer, exactly 20 bytes (see `blkConfiguration`). Default: 20 NULs. */
  serial?: Uint8Array;
  /** Whether write-zeroes with UNMAP may deallocate (what write_zeroes_may_unmap says). Default true. */
  mayUnmap?: boolean;
}

/**
 * Executes validated requests against a {@link DiskImage}, synchronously, with
 * the data going straight between the disk and the guest-memory views of the
 * request (preadv / pwritev, no copies). Every disk failure becomes
 * VIRTIO_BLK_S_IOERR; nothing here throws. Parsing is separate
 * ({@link parseBlockRequest}), as in Firecracker's block device.
 */
export class BlockEngine {
  readonly image: DiskImage;
  readonly stats: BlockStats = emptyStats();
  readonly #serial: Uint8Array;
  readonly #mayUnmap: boolean;
  /** The last disk error, for diagnostics. */
  lastError: unknown;

  constructor(image: DiskImage, options: BlockEngineOptions = {}) {
    this.image = image;
    const serial = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    if (options.serial) serial.set(options.serial.subarray(0, VIRTIO_BLK_ID_BYTES));
    this.#serial = serial;
    this.#mayUnmap = options.mayUnmap ?? true;
  }

  /**
   * Executes `requests` in order, as {@link execute} would one by one, and
   * puts each one's result in `results` (same index). Runs of consecutive IN
   * (or OUT) requests go to the disk as one batch when it has `readvBatch` /
   * `writevBatch` (one native call: one preadv / pwritev per request); a
   * disk error fails only its own request. Reads and writes are never
   * reordered, and anything else (FLUSH, DISCARD, …) runs alone after the
   * requests before it have completed. Nothing here throws.
   */
  executeAll(requests: readonly BlockRequest[], results: BlockResult[]): void {
    const image = this.image;
    const n = requests.length;
    let i = 0;
    while (i < n) {
      const req = requests[i]!;
      const type = req.type;
      const batched =
        (type === "in" && image.readvBatch !== undefined) ||
        (type === "out" && image.writevBatch !== undefined && !image.readOnly);
      if (!batched) {
        results[i] = this.execute(req);
        i++;
        continue;
      }
      let end = i + 1;
      while (end < n && requests[end]!.type === type) end++;
      if (end - i === 1) {
        results[i] = this.execute(req);
        i++;
        continue;
      }
      this.#runBatch(requests, i, end, type === "out", results);
      i = end;
    }
  }

  readonly #batch: DiskIoBatch = {
    count: 0,
    offsets: new Float64Array(64),
    iovCounts: new Int32Array(64),
    buffers: [],
    errors: [],
  };

  /** requests[start, end): all IN, or all OUT, in one readvBatch / writevBatch. */
  #runBatch(
    requests: readonly BlockRequest[],
    start: number,
    end: number,
    write: boolean,
    results: BlockResult[],
  ): void {
    const b = this.#batch;
    const count = end - start;
    if (b.offsets.length < count) {
      const size = Math.max(count, b.offsets.length * 2);
      b.offsets = new Float64Array(size);
      b.iovCounts = new Int32Array(size);
    }
    const buffers = b.buffers as Uint8Array[];
    buffers.length = 0;
    for (let k = 0; k < count; k++) {
      const req = requests[start + k] as Extract<BlockRequest, { type: "in" | "out" }>;
      b.offsets[k] = req.sector * SECTOR_SIZE;
      b.iovCounts[k] = req.buffers.length;
      for (const v of req.buffers) buffers.push(v);
    }
    b.count = count;
    const errors = b.errors;
    try {
      if (write) this.image.writevBatch!(b);
      else this.image.readvBatch!(b);
    } catch (e) {
      // The whole call failed (e.g. the disk was closed): every request of it fails.
      for (let k = 0; k < count; k++) results[start + k] = this.#fail(e);
      buffers.length = 0;
      return;
    }
    const s = this.stats;
    for (let k = 0; k < count; k++) {
      const req = requests[start + k] as Extract<BlockRequest, { type: "in" | "out" }>;
      const error: DiskImageError | undefined = errors[k];
      if (error !== undefined) {
        errors[k] = undefined;
        results[start + k] = this.#fail(error);
      } else if (write) {
        s.writes++;
        s.bytesWritten += req.length;
        results[start + k] = { status: VIRTIO_BLK_S_OK, written: 0 };
      } else {
        s.reads++;
        s.bytesRead += req.length;
        results[start + k] = { status: VIRTIO_BLK_S_OK, written: req.length };
      }
    }
    buffers.length = 0; // no references to guest memory kept between batches
  }

  execute(req: BlockRequest): BlockResult {
    const image = this.image;
    const s = this.stats;
    try {
      switch (req.type) {
        case "in":
          image.readv(req.sector * SECTOR_SIZE, req.buffers);
          s.reads++;
          s.bytesRead += req.length;
          return { status: VIRTIO_BLK_S_OK, written: req.length };
        case "out":
          if (image.readOnly) return this.#fail(new Error("write to a read-only image"));
          image.writev(req.sector * SECTOR_SIZE, req.buffers);
          s.writes++;
          s.bytesWritten += req.length;
          return { status: VIRTIO_BLK_S_OK, written: 0 };
        case "flush":
          image.flush();
          s.flushes++;
          return { status: VIRTIO_BLK_S_OK, written: 0 };
        case "get-id": {
          let at = 0;
          for (const b of req.buffers) {
            b.set(this.#serial.subarray(at, at + b.length));
            at += b.length;
          }
          s.getIds++;
          return { status: VIRTIO_BLK_S_OK, written: VIRTIO_BLK_ID_BYTES };
        }
        case "discard":
          if (image.readOnly) return this.#fail(new Error("discard on a read-only image"));
          for (const g of req.segments) image.discard(g.sector * SECTOR_SIZE, g.numSectors * SECTOR_SIZE);
          s.discards++;
          return { status: VIRTIO_BLK_S_OK, written: 0 };
        case "write-zeroes":
          if (image.readOnly) return this.#fail(new Error("write zeroes on a read-only image"));
          for (const g of req.segments)
            image.writeZeroes(g.sector * SECTOR_SIZE, g.numSectors * SECTOR_SIZE, {
              mayUnmap: g.unmap && this.#mayUnmap,
            });
          s.writeZeroes++;
          return { status: VIRTIO_BLK_S_OK, written: 0 };
      }
    } catch (e) {
      return this.#fail(e);
    }
  }

  #fail(error: unknown): BlockResult {
    this.stats.ioErrors++;
    this.lastError = error;
    return { status: VIRTIO_BLK_S_IOERR, written: 0, error };
  }
}
