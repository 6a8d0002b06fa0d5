import type { AsyncQueueOptions, DiskAsyncQueue } from "./async-queue.js";
import { DiskImageError } from "./errors.js";
import { totalLength } from "./io.js";

export type DiskImageFormat = "raw" | "qcow2";

export interface WriteZeroesOptions {
  /**
   * The range may be deallocated (a hole in a raw file, an unallocated/zero
   * cluster in qcow2) rather than zeros written or preallocated. Default false.
   */
  mayUnmap?: boolean;
}

/**
 * Several positional reads or writes handed to the disk at once (see
 * {@link DiskImage.readvBatch}). Flat arrays, so a batch costs no object per
 * operation: operation i covers the next `iovCounts[i]` entries of `buffers`
 * (after those of the operations before it) at byte offset `offsets[i]`.
 */
export interface DiskIoBatch {
  /** How many operations: the first `count` entries of `offsets` and `iovCounts`. */
  count: number;
  offsets: Float64Array;
  iovCounts: Int32Array;
  /** Every operation's buffers, one operation after another. */
  buffers: readonly Uint8Array[];
  /**
   * Filled in by the call: `errors[i]` is operation i's `DiskImageError`, or
   * undefined when it succeeded.
   */
  errors: (DiskImageError | undefined)[];
}

/**
 * A virtual disk of `size` bytes. All I/O methods are **synchronous**: the
 * virtio-blk device calls them from its own I/O worker thread, one request at a
 * time, with buffers that are views of guest memory (no copies are made).
 *
 * Offsets and lengths are byte counts. Every one is validated before anything
 * happens: negative, non-integer, or beyond `size` → `DiskImageError` with code
 * `RANGE` and nothing read or written. Writes to a read-only image → `READ_ONLY`;
 * any call after `close()` → `CLOSED`.
 */
export interface DiskImage {
  readonly format: DiskImageFormat;
  /** The file this image reads and writes (the overlay's base for a snapshot disk). */
  readonly path: string;
  /** Virtual disk size in bytes. */
  readonly size: number;
  /** Logical sector size the guest should see: always 512. */
  readonly sectorSize: number;
  readonly readOnly: boolean;
  /**
   * The format was probed from the image's first bytes rather than given. A
   * probed raw image refuses writes that would make its first sector probe as
   * another format (`PROBE_GUARD`), as QEMU does: otherwise a guest could write
   * a qcow2 header naming a host file as its backing file, and read that file
   * on the next open. Give the format to lift the restriction.
   */
  readonly probed: boolean;
  /** discard() may free space (it is always accepted; it is advisory). */
  readonly supportsDiscard: boolean;
  /** writeZeroes() is efficient (deallocates or uses a zero flag) rather than writing zero bytes. */
  readonly supportsWriteZeroes: boolean;
  /** Discards smaller than this, or not aligned to it, may free nothing. */
  readonly discardGranularity: number;
  /**
   * Requests aligned to this (offset, lengths, buffers) are fastest; others are
   * still correct. 1 for buffered I/O; the O_DIRECT block size with `direct`.
   */
  readonly requestAlignment: number;
  readonly closed: boolean;

  /** Fills `buffers` (in order) with the bytes at `offset`. */
  readv(offset: number, buffers: readonly Uint8Array[]): void;
  /** Writes `buffers` (in order) at `offset`. */
  writev(offset: number, buffers: readonly Uint8Array[]): void;
  read(offset: number, buffer: Uint8Array): void;
  write(offset: number, buffer: Uint8Array): void;
  /**
   * Optional (raw images): the `batch.count` reads of `batch`, in order, as
   * one call into the native helper. Each operation is checked and done as
   * `readv` would, but a failure (a `RANGE` error, a system call error) fails
   * only that operation: it lands in `batch.errors` and the others go on.
   * Returns how many failed. Throws only what concerns the whole call
   * (`CLOSED`, `INVALID` arrays).
   */
  readvBatch?(batch: DiskIoBatch): number;
  /** Optional: `writev` for each operation of `batch`, as {@link readvBatch}; `READ_ONLY` throws. */
  writevBatch?(batch: DiskIoBatch): number;
  /**
   * Optional (raw images have it; qcow2 and snapshot overlays do not): a queue
   * of asynchronous requests on this image, completed out of order (io_uring,
   * or a synchronous fallback). `CLOSED` after close(); close() closes it.
   */
  openAsyncQueue?(options: AsyncQueueOptions): DiskAsyncQueue;
  /**
   * Makes every write completed before the call durable (fdatasync of the data,
   * then of the metadata that points at it).
   */
  flush(): void;
  /**
   * Hints that a range is no longer needed. Afterwards the range reads as zeros,
   * as its old contents, or (for an overlay) as the backing file's contents;
   * use writeZeroes() when zeros are required.
   */
  discard(offset: number, length: number): void;
  /** Makes a range read as zeros. */
  writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): void;
  /** Flushes (if writable) and releases the file(s) and locks. Idempotent. */
  close(): void;
}

/** Validates `(offset, length)` against a disk of `size` bytes. */
export function checkRange(size: number, offset: number, length: number, path: string, what: string): void {
  if (!Number.isSafeInteger(offset) || offset < 0)
    throw new DiskImageError("RANGE", `${what}: offset ${String(offset)} is not a non-negative integer`, {
      path,
    });
  if (!Number.isSafeInteger(length) || length < 0)
    throw new DiskImageError("RANGE", `${what}: length ${String(length)} is not a non-negative integer`, {
      path,
    });
  if (offset > size || length > size - offset)
    throw new DiskImageError(
      "RANGE",
      `${what}: range [${offset}, ${offset + length}) is beyond the end of the disk (${size} bytes)`,
      { path },
    );
}

function checkBuffers(buffers: readonly Uint8Array[], path: string, what: string): void {
  if (!Array.isArray(buffers))
    throw new DiskImageError("INVALID", `${what}: buffers must be an array of Uint8Array`, { path });
  for (const b of buffers) {
    if (!(b instanceof Uint8Array))
      throw new DiskImageError("INVALID", `${what}: every buffer must be a Uint8Array`, { path });
  }
}

/**
 * Validation, closed/read-only checks and the single-buffer helpers, shared by
 * every backend. Subclasses implement the `do*` methods, which only ever see
 * valid, non-empty ranges.
 */
export abstract class DiskImageBase implements DiskImage {
  abstract readonly format: DiskImageFormat;
  readonly sectorSize = 512;
  private isClosed = false;

  constructor(
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
    readonly probed = false,
  ) {}

  abstract get supportsDiscard(): boolean;
  abstract get supportsWriteZeroes(): boolean;
  abstract get discardGranularity(): number;
  get requestAlignment(): number {
    return 1;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  protected abstract doReadv(offset: number, buffers: readonly Uint8Array[], length: number): void;
  protected abstract doWritev(offset: number, buffers: readonly Uint8Array[], length: number): void;
  protected abstract doFlush(): void;
  protected abstract doDiscard(offset: number, length: number): void;
  protected abstract doWriteZeroes(offset: number, length: number, mayUnmap: boolean): void;
  protected abstract doClose(): void;

  protected checkOpen(what: string): void {
    if (this.isClosed) throw new DiskImageError("CLOSED", `${what} after close()`, { path: this.path });
  }

  protected checkWritable(what: string): void {
    this.checkOpen(what);
    if (this.readOnly)
      throw new DiskImageError("READ_ONLY", `${what}: the image is open read-only`, {
        path: this.path,
        hint: "open it writable, or as a snapshot disk to write to a throwaway overlay.",
      });
  }

  readv(offset: number, buffers: readonly Uint8Array[]): void {
    this.checkOpen("readv");
    checkBuffers(buffers, this.path, "readv");
    const length = totalLength(buffers);
    checkRange(this.size, offset, length, this.path, "readv");
    if (length > 0) this.doReadv(offset, buffers, length);
  }

  writev(offset: number, buffers: readonly Uint8Array[]): void {
    this.checkWritable("writev");
    checkBuffers(buffers, this.path, "writev");
    const length = totalLength(buffers);
    checkRange(this.size, offset, length, this.path, "writev");
    if (length > 0) this.doWritev(offset, buffers, length);
  }

  /**
   * Checks a batch as `readv` / `writev` check each request: throws for the
   * whole call (closed, read-only writes, malformed arrays); an operation
   * with a bad range or buffer gets its error in `batch.errors`. Clears the
   * other entries of `errors`. Returns how many operations failed.
   */
  protected checkBatch(batch: DiskIoBatch, write: boolean): number {
    const what = write ? "writevBatch" : "readvBatch";
    if (write) this.checkWritable(what);
    else this.checkOpen(what);
    const { count, offsets, iovCounts, buffers, errors } = batch;
    if (
      !Number.isSafeInteger(count) ||
      count < 0 ||
      !(offsets instanceof Float64Array) ||
      !(iovCounts instanceof Int32Array) ||
      count > offsets.length ||
      count > iovCounts.length ||
      !Array.isArray(buffers) ||
      !Array.isArray(errors)
    )
      throw new DiskImageError("INVALID", `${what}: malformed batch`, { path: this.path });
    let at = 0;
    let failed = 0;
    for (let i = 0; i < count; i++) {
      const n = iovCounts[i]!;
      if (n < 0 || at + n > buffers.length)
        throw new DiskImageError("INVALID", `${what}: the iovec counts exceed the buffers`, {
          path: this.path,
        });
      let length = 0;
      let error: DiskImageError | undefined;
      for (let j = at; j < at + n; j++) {
        const b = buffers[j];
        if (!(b instanceof Uint8Array)) {
          error = new DiskImageError("INVALID", `${what}: every buffer must be a Uint8Array`, {
            path: this.path,
          });
          break;
        }
        length += b.byteLength;
      }
      at += n;
      if (error === undefined) {
        try {
          checkRange(this.size, offsets[i]!, length, this.path, what);
        } catch (e) {
          error = e as DiskImageError;
        }
      }
      errors[i] = error;
      if (error !== undefined) failed++;
    }
    return failed;
  }

  /**
   * A batch as one `readv` / `writev` per operation (each error caught and
   * recorded), for backends without a faster way; `checkBatch` has run.
   */
  protected eachOfBatch(batch: DiskIoBatch, write: boolean): number {
    const { count, offsets, iovCounts, buffers, errors } = batch;
    let failed = 0;
    let at = 0;
    for (let i = 0; i < count; i++) {
      const n = iovCounts[i]!;
      const list = buffers.slice(at, at + n);
      at += n;
      if (errors[i] !== undefined) {
        failed++;
        continue;
      }
      try {
        if (write) this.writev(offsets[i]!, list);
        else this.readv(offsets[i]!, list);
      } catch (e) {
        errors[i] =
          e instanceof DiskImageError
            ? e
            : new DiskImageError("EIO", String(e), { path: this.path, cause: e });
        failed++;
      }
    }
    return failed;
  }

  read(offset: number, buffer: Uint8Array): void {
    this.readv(offset, [buffer]);
  }

  write(offset: number, buffer: Uint8Array): void {
    this.writev(offset, [buffer]);
  }

  flush(): void {
    this.checkOpen("flush");
    if (!this.readOnly) this.doFlush();
  }

  discard(offset: number, length: number): void {
    this.checkWritable("discard");
    checkRange(this.size, offset, length, this.path, "discard");
    if (length > 0) this.doDiscard(offset, length);
  }

  writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): void {
    this.checkWritable("writeZeroes");
    checkRange(this.size, offset, length, this.path, "writeZeroes");
    if (length > 0) this.doWriteZeroes(offset, length, options.mayUnmap === true);
  }

  close(): void {
    if (this.isClosed) return;
    try {
      this.doClose();
    } finally {
      this.isClosed = true;
    }
  }
}
