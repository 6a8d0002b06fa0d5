import type { DiskImage } from "@tskvm/disk-image";
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
