import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DiskImageError } from "./errors.js";

/** ABI numbers the addon reads from the C headers it was built against. */
export interface NativeConstants {
  FALLOC_FL_KEEP_SIZE: number;
  FALLOC_FL_PUNCH_HOLE: number;
  FALLOC_FL_ZERO_RANGE: number;
  F_OFD_GETLK: number;
  F_OFD_SETLK: number;
  F_RDLCK: number;
  F_WRLCK: number;
  F_UNLCK: number;
}

/**
 * One io_uring (src/native/async_io.cc): the ring mechanics only. `userData`
 * is a slot number below `cqEntries`; it also names the storage that holds a
 * READV / WRITEV's iovecs until the slot's next prep. Throws `{errno, syscall}`
 * when io_uring_setup (or the mmap of the rings) fails.
 */
export interface NativeIoUring {
  readonly sqEntries: number;
  readonly cqEntries: number;
  /** IORING_FEAT_* bits the kernel reported. */
  readonly features: number;
  /** IORING_REGISTER_EVENTFD: the kernel signals `fd` for each CQE it posts. */
  registerEventfd(fd: number): void;
  /**
   * A READV (`write` false) or WRITEV of `buffers[start, start + count)`
   * (1..1024 entries) at `offset`, the first one entered `skip` bytes in;
   * `drain` sets IOSQE_IO_DRAIN. False when the SQ is full.
   */
  prepRw(
    write: boolean,
    fd: number,
    offset: number,
    buffers: readonly Uint8Array[],
    start: number,
    count: number,
    skip: number,
    userData: number,
    drain: boolean,
  ): boolean;
  /** IORING_OP_FSYNC (IORING_FSYNC_DATASYNC with `datasync`). False when the SQ is full. */
  prepFsync(fd: number, datasync: boolean, userData: number, drain: boolean): boolean;
  /** IORING_OP_NOP. False when the SQ is full. */
  prepNop(userData: number, drain: boolean): boolean;
  /**
   * One io_uring_enter for every prepared SQE, waiting for `waitFor` CQEs
   * when > 0. Returns how many SQEs the kernel did not take (0 normally) or
   * -errno for EAGAIN / EBUSY; EINTR is retried, other errors throw.
   */
  submit(waitFor: number): number;
  /** Moves up to min(lengths) CQEs out: user_data and res. Returns the count. */
  reap(userData: Uint32Array, results: Int32Array): number;
  /** CQEs waiting to be reaped. */
  cqReady(): number;
  /** Waits for every SQE the kernel took, then unmaps the rings and closes the ring fd. Idempotent. */
  close(): void;
}

/** The C++ addon: fallocate(2), fcntl(2) OFD locks, batched preadv/pwritev, eventfds and io_uring. Every policy is in TypeScript. */
export interface NativeBinding {
  /**
   * `count` positional reads (`write` false) or writes, in order, one
   * preadv / pwritev loop each: operation i covers the next `iovCounts[i]`
   * entries of `buffers` at `offsets[i]`. Retries EINTR, continues short
   * transfers, zero-fills a read past the end of the file. `results[i]` gets
   * the bytes transferred (the operation's whole length) or -errno: an error
   * fails only its own operation. Throws TypeError (nothing done) for bad arguments.
   */
  rwBatch(
    fd: number,
    write: boolean,
    count: number,
    offsets: Float64Array,
    iovCounts: Int32Array,
    buffers: readonly Uint8Array[],
    results: Float64Array,
  ): void;
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /** Returns the `l_type` the kernel left in the struct (F_UNLCK from F_OFD_GETLK: no conflict). */
  ofdLock(fd: number, cmd: number, type: number, start: number, length: number): number;
  constants: NativeConstants;
  /** A non-blocking, close-on-exec eventfd (counter 0). */
  eventfd(): number;
  /** Reads (clears) an eventfd: the counter it had, 0 when it was 0. */
  eventfdRead(fd: number): number;
  /** Adds 1 to an eventfd's counter (makes it readable). */
  eventfdWrite(fd: number): void;
  /** close(2) of an fd the addon made (not fs.closeSync: Node warns about those in workers). */
  closeFd(fd: number): void;
  /** Absent when the addon was built without <linux/io_uring.h>. */
  IoUring?: new (
    entries: number,
  ) => NativeIoUring;
}

const require = createRequire(import.meta.url);
const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");

let binding: NativeBinding | undefined;

/** Loads the addon once per thread (node-gyp-build also finds prebuilt binaries). */
export function native(): NativeBinding {
  if (!binding) {
    try {
      const load = require("node-gyp-build") as (dir: string) => NativeBinding;
      binding = load(packageRoot);
    } catch (e) {
      throw new DiskImageError(
        "UNSUPPORTED",
        "the disk-image native helper (fallocate, file locks) is not built",
        {
          hint: "run `pnpm install` or `pnpm --filter @tskvm/disk-image build` (needs a C++ compiler, make and python3).",
          cause: e,
        },
      );
    }
  }
  return binding;
}
