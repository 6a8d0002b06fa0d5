import { closeSync, fdatasyncSync, constants as fsc, fstatSync, openSync, readFileSync } from "node:fs";
import { type AsyncQueueOptions, type DiskAsyncQueue, openAsyncQueue } from "./async-queue.js";
import { DiskImageBase, type DiskIoBatch } from "./disk-image.js";
import { DiskImageError, errnoCodeOf, sys, wrapSystemError } from "./errors.js";
import { IovCursor, preadvFull, pwritevFull, zeroBuffer } from "./io.js";
import { lockImage, lockRequestFor } from "./locks.js";
import { native } from "./native.js";
import { PROBE_BYTES, probeHead } from "./probe.js";

export interface RawOpenOptions {
  /** Open read-only (shared lock). Default false. */
  readOnly?: boolean;
  /**
   * Use O_DIRECT (bypass the host page cache). Requests whose offset, lengths
   * and buffer addresses are multiples of `directAlignment` go straight to the
   * device; any other request, or one the kernel refuses with EINVAL (buffer
   * memory not aligned), is served through a second, buffered descriptor of the
   * same file. Linux keeps the two coherent (direct I/O writes back and
   * invalidates the page cache of its range), so this is correct, only slower.
   * Default false.
   */
  direct?: boolean;
  /** Alignment O_DIRECT needs (the device's logical block size). Default 512. */
  directAlignment?: number;
  /** Take the image lock (see README: QEMU-compatible OFD locks). Default true. */
  lock?: boolean;
  /**
   * The format was probed, not given (`openDiskImage` sets this): writes that
   * would make the first sector probe as another format fail with
   * `PROBE_GUARD` (see `DiskImage.probed`). Default false.
   */
  probed?: boolean;
}

/** Filesystems that cannot do a fallocate mode say so with one of these. */
function isUnsupported(e: unknown): boolean {
  const c = errnoCodeOf(e);
  return c === "EOPNOTSUPP" || c === "ENOTSUP" || c === "ENOSYS" || c === "EINVAL" || c === "ENOTTY";
}

/** Size in bytes of a block device, from sysfs (no ioctl needed). */
function blockDeviceSize(rdev: number, path: string): number {
  const major = ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  const sysfs = `/sys/dev/block/${major}:${minor}/size`;
  try {
    return Number.parseInt(readFileSync(sysfs, "utf8").trim(), 10) * 512;
  } catch (e) {
    throw new DiskImageError("UNSUPPORTED", `cannot find the size of block device ${major}:${minor}`, {
      path,
      hint: `${sysfs} is not readable (is /sys mounted?)`,
      cause: e,
    });
  }
}

export interface OpenedFile {
  fd: number;
  size: number;
  blockSize: number;
  isBlockDevice: boolean;
}

/**
 * Opens an image file with clear errors for the usual failures (missing,
 * permission, directory, read-only filesystem, O_DIRECT refused), and takes the
 * image lock unless `lock` is false.
 */
export function openImageFile(
  path: string,
  opts: { readOnly: boolean; direct?: boolean; lock: boolean; resize?: boolean },
): OpenedFile {
  let flags = opts.readOnly ? fsc.O_RDONLY : fsc.O_RDWR;
  if (opts.direct) flags |= fsc.O_DIRECT;
  let fd: number;
  try {
    fd = openSync(path, flags);
  } catch (e) {
    const code = errnoCodeOf(e);
    if (code === "EINVAL" && opts.direct)
      throw new DiskImageError("UNSUPPORTED", "the filesystem does not support O_DIRECT", {
        path,
        hint: "open it without direct I/O, or move the image to a filesystem that supports direct I/O (ext4, xfs, btrfs).",
        cause: e,
      });
    if (code === "ENOENT") throw wrapSystemError(e, "open", path, "the image file does not exist.");
    throw wrapSystemError(e, "open", path);
  }
  try {
    const st = fstatSync(fd);
    let size: number;
    if (st.isDirectory()) throw new DiskImageError("EISDIR", "is a directory, not a disk image", { path });
    if (st.isFile()) size = st.size;
    else if (st.isBlockDevice()) size = blockDeviceSize(st.rdev, path);
    else
      throw new DiskImageError("UNSUPPORTED", "not a regular file or block device", {
        path,
        hint: "disk images must be files or block devices (pipes and character devices cannot be read at offsets).",
      });
    if (opts.lock) lockImage(fd, path, lockRequestFor(!opts.readOnly, opts.resize === true));
    return { fd, size, blockSize: st.blksize > 0 ? st.blksize : 4096, isBlockDevice: st.isBlockDevice() };
  } catch (e) {
    closeSync(fd);
    throw e instanceof DiskImageError ? e : wrapSystemError(e, "open", path);
  }
}

/**
 * A raw image: the file's bytes are the disk's bytes. flush = fdatasync;
 * discard = fallocate(PUNCH_HOLE|KEEP_SIZE); writeZeroes = fallocate(ZERO_RANGE),
 * or PUNCH_HOLE with mayUnmap, falling back to writing zeros where the
 * filesystem says EOPNOTSUPP (discard then does nothing: it is only a hint).
 */
export class RawDiskImage extends DiskImageBase {
  readonly format = "raw" as const;
  private readonly fd: number;
  private bufferedFd = -1;
  private readonly direct: boolean;
  private readonly alignment: number;
  private readonly blockSize: number;
  private canPunch = true;
  private canZeroRange = true;
  /** Requests that O_DIRECT could not take and went through the buffered descriptor. */
  directFallbacks = 0;

  constructor(
    path: string,
    file: OpenedFile,
    readOnly: boolean,
    direct: boolean,
    alignment: number,
    probed = false,
  ) {
    super(path, file.size, readOnly, probed);
    this.fd = file.fd;
    this.direct = direct;
    this.alignment = alignment;
    this.blockSize = file.blockSize;
  }

  get supportsDiscard(): boolean {
    return !this.readOnly && this.canPunch;
  }

  get supportsWriteZeroes(): boolean {
    return !this.readOnly && (this.canZeroRange || this.canPunch);
  }

  get discardGranularity(): number {
    return this.blockSize;
  }

  override get requestAlignment(): number {
    return this.direct ? this.alignment : 1;
  }

  /** The file descriptor (for tests and diagnostics). */
  get fileDescriptor(): number {
    return this.fd;
  }

  private aligned(offset: number, buffers: readonly Uint8Array[]): boolean {
    const a = this.alignment;
    if (offset % a !== 0) return false;
    // Buffer addresses cannot be seen from JS (byteOffset is relative to an
    // unknown base): a misaligned one makes the kernel say EINVAL, and route()
    // retries through the buffered descriptor.
    for (const b of buffers) if (b.byteLength % a !== 0) return false;
    return true;
  }

  private buffered(): number {
    if (this.bufferedFd < 0)
      this.bufferedFd = sys("open", this.path, () =>
        openSync(this.path, this.readOnly ? fsc.O_RDONLY : fsc.O_RDWR),
      );
    return this.bufferedFd;
  }

  /** Runs `io` on the O_DIRECT descriptor when it can take the request, else on the buffered one. */
  private route(offset: number, buffers: readonly Uint8Array[], io: (fd: number) => void): void {
    if (!this.direct) {
      io(this.fd);
      return;
    }
    if (this.aligned(offset, buffers)) {
      try {
        io(this.fd);
        return;
      } catch (e) {
        if (!(e instanceof DiskImageError) || e.code !== "EINVAL") throw e;
      }
    }
    this.directFallbacks++;
    io(this.buffered());
  }

  protected doReadv(offset: number, buffers: readonly Uint8Array[], length: number): void {
    if (!this.direct) preadvFull(this.fd, buffers, offset, this.path, length);
    else this.route(offset, buffers, (fd) => preadvFull(fd, buffers, offset, this.path, length));
  }

  /**
   * The probe guard (QEMU's raw_probe_write): on a probed raw image, what the
   * first sector would hold after a write of [offset, offset + length) must
   * still probe as raw, or the write is refused before anything is written.
   * `put(head, from, to)` puts the new bytes of head[from, to) in place; the
   * rest of `head` is the sector's current contents (read only when the write
   * does not cover it all, so any size or alignment of write is judged by the
   * whole sector it leaves behind).
   */
  private guardProbe(
    offset: number,
    length: number,
    what: string,
    put: (head: Uint8Array, from: number, to: number) => void,
  ): void {
    const headLength = Math.min(PROBE_BYTES, this.size);
    if (!this.probed || offset >= headLength || length === 0) return;
    const head = new Uint8Array(headLength);
    const to = Math.min(headLength, offset + length);
    if (offset > 0 || to < headLength) this.doReadv(0, [head], headLength);
    put(head, offset, to);
    if (probeHead(head) !== "raw")
      throw new DiskImageError(
        "PROBE_GUARD",
        `${what}: refused a write that would make the first sector look like a ${probeHead(head)} image`,
        {
          path: this.path,
          hint: "the image's format was probed, not given, so its first sector must keep probing as raw (a guest could otherwise make it name a host file as its backing file); give the format (raw) to allow such writes.",
        },
      );
  }

  protected doWritev(offset: number, buffers: readonly Uint8Array[], length: number): void {
    this.guardProbe(offset, length, "writev", (head, from, to) =>
      new IovCursor(buffers).copyTo(head, from, to - from),
    );
    if (!this.direct) pwritevFull(this.fd, buffers, offset, this.path, length);
    else this.route(offset, buffers, (fd) => pwritevFull(fd, buffers, offset, this.path, length));
  }

  readvBatch(batch: DiskIoBatch): number {
    return this.batch(batch, false);
  }

  writevBatch(batch: DiskIoBatch): number {
    return this.batch(batch, true);
  }

  #results = new Float64Array(64);
  readonly #queues = new Set<DiskAsyncQueue>();

  /**
   * An asynchronous queue on this image (io_uring, or the synchronous
   * engine): see {@link DiskAsyncQueue}. Requests are checked as `readv` /
   * `writev` check them, go through O_DIRECT when it can take them (else the
   * buffered descriptor, as here), and the probe guard sees every write to the
   * first sector. close() closes the image's queues first.
   */
  openAsyncQueue(options: AsyncQueueOptions): DiskAsyncQueue {
    this.checkOpen("openAsyncQueue");
    const queue = openAsyncQueue(
      {
        path: this.path,
        size: this.size,
        readOnly: this.readOnly,
        fd: this.fd,
        directAlignment: this.direct ? this.alignment : 0,
        checkUsable: (what, write) => (write ? this.checkWritable(what) : this.checkOpen(what)),
        bufferedFd: () => this.buffered(),
        noteDirectFallback: () => {
          this.directFallbacks++;
        },
        needsGuard: (offset, length) => this.probed && offset < PROBE_BYTES && length > 0,
        writeGuarded: (offset, buffers) => this.writev(offset, buffers),
        detach: (q) => this.#queues.delete(q),
      },
      options,
    );
    this.#queues.add(queue);
    return queue;
  }

  /**
   * One native call for the whole batch (one preadv / pwritev loop per
   * operation in C). With O_DIRECT, or when an operation failed its checks,
   * each operation goes its own way (`route`, the buffered fallback).
   */
  private batch(batch: DiskIoBatch, write: boolean): number {
    const invalid = this.checkBatch(batch, write);
    // Writes to the first sector of a probed image go one by one through
    // writev and its probe guard, each seeing the ones before it on disk.
    if (invalid > 0 || this.direct || (write && this.batchTouchesHead(batch)))
      return this.eachOfBatch(batch, write);
    const { count, offsets, iovCounts, buffers, errors } = batch;
    if (this.#results.length < count)
      this.#results = new Float64Array(Math.max(count, this.#results.length * 2));
    const results = this.#results;
    try {
      native().rwBatch(this.fd, write, count, offsets, iovCounts, buffers, results);
    } catch (e) {
      throw wrapSystemError(e, write ? "write" : "read", this.path);
    }
    let failed = 0;
    for (let i = 0; i < count; i++) {
      const r = results[i]!;
      if (r < 0) {
        errors[i] = wrapSystemError(
          { errno: -r, syscall: write ? "pwritev" : "preadv" },
          write ? "write" : "read",
          this.path,
        );
        failed++;
      }
    }
    return failed;
  }

  private batchTouchesHead(batch: DiskIoBatch): boolean {
    if (!this.probed) return false;
    for (let i = 0; i < batch.count; i++) if (batch.offsets[i]! < PROBE_BYTES) return true;
    return false;
  }

  protected doFlush(): void {
    // fdatasync works on the file, not the descriptor: one call covers both.
    sys("fdatasync", this.path, () => fdatasyncSync(this.fd));
  }

  private fallocate(mode: number, offset: number, length: number): boolean {
    try {
      native().fallocate(this.fd, mode, offset, length);
      return true;
    } catch (e) {
      if (isUnsupported(e)) return false;
      throw wrapSystemError(e, "fallocate", this.path);
    }
  }

  protected doDiscard(offset: number, length: number): void {
    if (!this.canPunch) return;
    // A discarded range reads as zeros or as before: zeros are the new case.
    this.guardProbe(offset, length, "discard", (head, from, to) => head.fill(0, from, to));
    const c = native().constants;
    if (!this.fallocate(c.FALLOC_FL_PUNCH_HOLE | c.FALLOC_FL_KEEP_SIZE, offset, length))
      this.canPunch = false;
  }

  protected doWriteZeroes(offset: number, length: number, mayUnmap: boolean): void {
    this.guardProbe(offset, length, "writeZeroes", (head, from, to) => head.fill(0, from, to));
    const c = native().constants;
    if (mayUnmap && this.canPunch) {
      if (this.fallocate(c.FALLOC_FL_PUNCH_HOLE | c.FALLOC_FL_KEEP_SIZE, offset, length)) return;
      this.canPunch = false;
    }
    if (this.canZeroRange) {
      if (this.fallocate(c.FALLOC_FL_ZERO_RANGE | c.FALLOC_FL_KEEP_SIZE, offset, length)) return;
      this.canZeroRange = false;
    }
    this.writeZeroBytes(offset, length);
  }

  private writeZeroBytes(offset: number, length: number): void {
    const chunk = 1 << 20;
    while (length > 0) {
      const n = Math.min(length, chunk - (offset % chunk));
      const z = zeroBuffer(n);
      this.route(offset, [z], (fd) => pwritevFull(fd, [z], offset, this.path));
      offset += n;
      length -= n;
    }
  }

  protected doClose(): void {
    try {
      // The queues use this image's descriptors: their requests finish first.
      for (const q of [...this.#queues]) q.close();
      if (!this.readOnly) this.doFlush();
    } finally {
      if (this.bufferedFd >= 0) closeSync(this.bufferedFd);
      closeSync(this.fd);
    }
  }
}

/** Opens a raw image. See {@link RawOpenOptions}. */
export function openRaw(path: string, options: RawOpenOptions = {}): RawDiskImage {
  const readOnly = options.readOnly === true;
  const direct = options.direct === true;
  const alignment = options.directAlignment ?? 512;
  if (!Number.isInteger(alignment) || alignment < 1 || (alignment & (alignment - 1)) !== 0)
    throw new DiskImageError("INVALID", `directAlignment ${alignment} is not a power of two`, { path });
  const file = openImageFile(path, { readOnly, direct, lock: options.lock !== false });
  return new RawDiskImage(path, file, readOnly, direct, alignment, options.probed === true);
}
