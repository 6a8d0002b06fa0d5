// KVM's binary statistics (KVM_GET_STATS_FD, Linux ≥ 5.14): a read-only file per VM or
// vCPU with a header, one descriptor per counter, and a block of u64 values. The layout is
// read once; each read() is a single pread of the value block. Reading the file takes no
// vCPU lock, so a thread may read a vCPU's stats while it sits in KVM_RUN (the ioctl
// that opens the file does take that lock: open the reader before the vCPU runs).
import { closeSync, readSync } from "node:fs";
import { constants } from "node:os";
import { KvmError, sys } from "./errors.js";
import { Ioctl } from "./ioctls.js";
import { native } from "./native.js";

/** `struct kvm_stats_header`. */
const HEADER_SIZE = 24;
/** `struct kvm_stats_desc` without its name. */
const DESC_FIXED = 16;

/** KVM_STATS_TYPE_* (flags & 0xf). */
export const StatsType = { CUMULATIVE: 0, INSTANT: 1, PEAK: 2, LINEAR_HIST: 3, LOG_HIST: 4 } as const;
/** KVM_STATS_UNIT_* (flags & 0xf0). */
export const StatsUnit = { NONE: 0, BYTES: 0x10, SECONDS: 0x20, CYCLES: 0x30, BOOLEAN: 0x40 } as const;

/** One counter as KVM describes it. */
export interface KvmStatDescriptor {
  name: string;
  /** {@link StatsType} value. */
  type: number;
  /** {@link StatsUnit} value. */
  unit: number;
  /** Power of 10 (or of 2 for a base-2 unit) the value is scaled by: -9 for `halt_wait_ns`. */
  exponent: number;
  /** Values (u64): 1, or the buckets of a histogram. */
  size: number;
  /** Byte offset in the data block. */
  offset: number;
}

/** The counters of one VM or vCPU. {@link close} it when done. */
export class KvmStatsReader {
  /** The stats' id string (e.g. "kvm-1234/vcpu-0"). */
  readonly id: string;
  readonly descriptors: readonly KvmStatDescriptor[];
  #fd: number;
  readonly #dataOffset: number;
  readonly #data: Buffer;

  /** Parses the header and descriptors of a stats file descriptor (taking ownership of it). */
  constructor(fd: number) {
    this.#fd = fd;
    try {
      const h = pread(fd, HEADER_SIZE, 0);
      const nameSize = h.readUInt32LE(4);
      const count = h.readUInt32LE(8);
      const idOffset = h.readUInt32LE(12);
      const descOffset = h.readUInt32LE(16);
      this.#dataOffset = h.readUInt32LE(20);
      this.id = cString(pread(fd, nameSize, idOffset));
      const stride = DESC_FIXED + nameSize;
      const d = pread(fd, stride * count, descOffset);
      const descs: KvmStatDescriptor[] = [];
      let end = 0;
      for (let i = 0; i < count; i++) {
        const o = i * stride;
        const flags = d.readUInt32LE(o);
        const desc = {
          name: cString(d.subarray(o + DESC_FIXED, o + stride)),
          type: flags & 0xf,
          unit: flags & 0xf0,
          exponent: d.readInt16LE(o + 4),
          size: d.readUInt16LE(o + 6),
          offset: d.readUInt32LE(o + 8),
        };
        descs.push(desc);
        end = Math.max(end, desc.offset + desc.size * 8);
      }
      this.descriptors = descs;
      this.#data = Buffer.alloc(end);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /**
   * The reader for a VM or vCPU file descriptor (KVM_GET_STATS_FD), or undefined where the
   * kernel has no binary stats (before 5.14: ENOTTY or EINVAL).
   */
  static open(kvmFd: number): KvmStatsReader | undefined {
    let fd: number;
    try {
      fd = sys("KVM_GET_STATS_FD", () => native().ioctl(kvmFd, Ioctl.KVM_GET_STATS_FD, 0));
    } catch (e) {
      if (e instanceof KvmError && (e.errno === constants.errno.ENOTTY || e.errno === constants.errno.EINVAL))
        return undefined;
      throw e;
    }
    return new KvmStatsReader(fd);
  }

  /**
   * Current values of the single-valued counters by name (histograms are left out).
   * Values are as KVM keeps them: `halt_wait_ns` in ns, the unit in the name.
   */
  read(): Record<string, number> {
    if (this.#fd < 0) throw new KvmError("KVM stats", 0, "read after close()");
    const n = readSync(this.#fd, this.#data, 0, this.#data.length, this.#dataOffset);
    const out: Record<string, number> = {};
    for (const d of this.descriptors) {
      if (d.size !== 1 || d.offset + 8 > n) continue;
      out[d.name] = Number(this.#data.readBigUInt64LE(d.offset));
    }
    return out;
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeSync(fd);
  }
}

function pread(fd: number, length: number, position: number): Buffer {
  const b = Buffer.alloc(length);
  const n = readSync(fd, b, 0, length, position);
  if (n !== length) throw new KvmError("KVM stats", 0, `short read: ${n} of ${length} bytes at ${position}`);
  return b;
}

function cString(b: Uint8Array): string {
  const z = b.indexOf(0);
  return Buffer.from(b.buffer, b.byteOffset, z < 0 ? b.length : z).toString("latin1");
}
