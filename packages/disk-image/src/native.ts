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

/** The C++ addon: fallocate(2), fcntl(2) OFD locks and batched preadv/pwritev. Every policy is in TypeScript. */
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
