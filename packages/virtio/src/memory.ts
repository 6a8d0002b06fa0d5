/**
 * The guest memory this package works on. `@tskvm/kvm-core`'s `GuestMemory`
 * satisfies it structurally; {@link PlainGuestMemory} is an ArrayBuffer-backed
 * implementation for tests, simulators and tools that run without KVM.
 *
 * Addresses and lengths are JS numbers (safe integers). Every method is
 * bounds-checked: an address that is not RAM throws, it never touches host
 * memory outside the guest's. Multi-byte values are little-endian.
 */
export interface GuestMemoryAccess {
  /** True when [address, address+length) lies entirely in guest RAM. */
  isValidRange(address: number, length: number): boolean;
  /** The range as views aliasing guest RAM (several when it crosses a boundary). Throws if any byte is not RAM. */
  segments(address: number, length: number): Uint8Array[];
  /** One contiguous view aliasing guest RAM, or throws. */
  view(address: number, length: number): Uint8Array;
  /** A copy of the bytes. */
  read(address: number, length: number): Uint8Array;
  readInto(address: number, dest: Uint8Array): void;
  write(address: number, data: Uint8Array): void;
  fill(address: number, length: number, value?: number): void;
  readU8(address: number): number;
  readU16(address: number): number;
  readU32(address: number): number;
  readU64(address: number): bigint;
  writeU8(address: number, v: number): void;
  writeU16(address: number, v: number): void;
  writeU32(address: number, v: number): void;
  writeU64(address: number, v: bigint): void;
}

/** Thrown by {@link PlainGuestMemory} for an access outside its regions. */
export class GuestMemoryRangeError extends Error {
  readonly address: number;
  readonly length: number;
  constructor(address: number, length: number, what = "is not in guest memory") {
    super(`guest range 0x${Number(address).toString(16)}+${length} ${what}`);
    this.name = "GuestMemoryRangeError";
    this.address = address;
    this.length = length;
  }
}

export interface PlainRegionSpec {
  /** Guest-physical start. */
  address: number;
  size: number;
  /** Existing backing store (e.g. a SharedArrayBuffer received from another thread). */
  buffer?: ArrayBuffer | SharedArrayBuffer;
}

export interface PlainGuestMemoryOptions {
  /**
   * Views never cross a multiple of this many bytes from a region's start, the
   * way kvm-core's 2 GiB windows split views; lets tests exercise the
   * non-contiguous paths with small memories. Default: no split.
   */
  windowSize?: number;
  /** Back regions with SharedArrayBuffers so another thread can see the same memory. */
  shared?: boolean;
}

/** Plain data that rebuilds the same memory (same buffers) in another thread. */
export interface PlainGuestMemoryDescriptor {
  regions: { address: number; size: number; buffer: ArrayBuffer | SharedArrayBuffer }[];
  windowSize: number;
}

interface PlainRegion {
  readonly address: number;
  readonly size: number;
  readonly end: number;
  readonly bytes: Uint8Array;
  readonly dv: DataView;
}

/**
 * Guest memory made of ArrayBuffers: several regions with holes between them,
 * the same semantics as kvm-core's GuestMemory (views alias the buffers,
 * accesses outside the regions throw {@link GuestMemoryRangeError}).
 */
export class PlainGuestMemory implements GuestMemoryAccess {
  readonly #regions: PlainRegion[];
  readonly windowSize: number;
  #last: PlainRegion | undefined;

  constructor(regions: readonly PlainRegionSpec[], options: PlainGuestMemoryOptions = {}) {
    const ws = options.windowSize ?? Number.POSITIVE_INFINITY;
    if (!(ws > 0)) throw new RangeError(`windowSize ${ws} must be positive`);
    this.windowSize = ws;
    const sorted = [...regions].sort((a, b) => a.address - b.address);
    const out: PlainRegion[] = [];
    for (const r of sorted) {
      if (!Number.isSafeInteger(r.address) || r.address < 0 || !Number.isSafeInteger(r.size) || r.size <= 0)
        throw new RangeError(`bad region 0x${r.address.toString(16)}+${r.size}`);
      const prev = out[out.length - 1];
      if (prev && r.address < prev.end)
        throw new RangeError(`region 0x${r.address.toString(16)} overlaps 0x${prev.address.toString(16)}`);
      const buffer = r.buffer ?? (options.shared ? new SharedArrayBuffer(r.size) : new ArrayBuffer(r.size));
      if (buffer.byteLength < r.size)
        throw new RangeError(`buffer for region 0x${r.address.toString(16)} too small`);
      out.push({
        address: r.address,
        size: r.size,
        end: r.address + r.size,
        bytes: new Uint8Array(buffer, 0, r.size),
        dv: new DataView(buffer, 0, r.size),
      });
    }
    this.#regions = out;
  }

  static fromDescriptor(d: PlainGuestMemoryDescriptor): PlainGuestMemory {
    return new PlainGuestMemory(d.regions, { windowSize: d.windowSize });
  }

  describe(): PlainGuestMemoryDescriptor {
    return {
      regions: this.#regions.map((r) => ({ address: r.address, size: r.size, buffer: r.bytes.buffer })),
      windowSize: this.windowSize,
    };
  }

  /** The regions as [address, size] pairs, sorted. */
  get layout(): { address: number; size: number }[] {
    return this.#regions.map((r) => ({ address: r.address, size: r.size }));
  }

  get size(): number {
    return this.#regions.reduce((n, r) => n + r.size, 0);
  }

  #find(address: number): PlainRegion | undefined {
    const last = this.#last;
    if (last && address >= last.address && address < last.end) return last;
    for (const r of this.#regions) {
      if (address >= r.address && address < r.end) {
        this.#last = r;
        return r;
      }
    }
    return undefined;
  }

  isValidRange(address: number, length: number): boolean {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0)
      return false;
    let a = address;
    let left = length;
    while (left > 0) {
      const r = this.#find(a);
      if (!r) return false;
      const n = Math.min(left, r.end - a);
      a += n;
      left -= n;
    }
    return length > 0 || this.#find(address) !== undefined;
  }

  segments(address: number, length: number): Uint8Array[] {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0)
      throw new GuestMemoryRangeError(address, length, "is not a valid range");
    const out: Uint8Array[] = [];
    let a = address;
    let left = length;
    while (left > 0) {
      const r = this.#find(a);
      if (!r) throw new GuestMemoryRangeError(address, length);
      const off = a - r.address;
      const windowEnd = Math.min(r.size, (Math.floor(off / this.windowSize) + 1) * this.windowSize);
      const n = Math.min(left, windowEnd - off);
      out.push(r.bytes.subarray(off, off + n));
      a += n;
      left -= n;
    }
    return out;
  }

  view(address: number, length: number): Uint8Array {
    const segs = this.segments(address, length);
    if (segs.length === 1) return segs[0]!;
    if (segs.length === 0) {
      if (!this.#find(address)) throw new GuestMemoryRangeError(address, length);
      return new Uint8Array(0);
    }
    throw new GuestMemoryRangeError(address, length, "is not contiguous in host memory; use segments()");
  }

  read(address: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.readInto(address, out);
    return out;
  }

  readInto(address: number, dest: Uint8Array): void {
    let at = 0;
    for (const s of this.segments(address, dest.length)) {
      dest.set(s, at);
      at += s.length;
    }
  }

  write(address: number, data: Uint8Array): void {
    let at = 0;
    for (const s of this.segments(address, data.length)) {
      s.set(data.subarray(at, at + s.length));
      at += s.length;
    }
  }

  fill(address: number, length: number, value = 0): void {
    for (const s of this.segments(address, length)) s.fill(value);
  }

  /** The region's DataView and offset when [address, address+length) is inside one window, else undefined. */
  #at(address: number, length: number): [DataView, number] | undefined {
    if (!Number.isSafeInteger(address)) return undefined;
    const r = this.#find(address);
    if (!r) return undefined;
    const off = address - r.address;
    if (off + length > r.size) return undefined;
    if (Math.floor(off / this.windowSize) !== Math.floor((off + length - 1) / this.windowSize))
      return undefined;
    return [r.dv, off];
  }

  #bytes(address: number, length: number): [DataView, number] {
    const at = this.#at(address, length);
    if (at) return at;
    return [new DataView(this.read(address, length).buffer), 0];
  }

  readU8(address: number): number {
    const [dv, o] = this.#bytes(address, 1);
    return dv.getUint8(o);
  }
  readU16(address: number): number {
    const [dv, o] = this.#bytes(address, 2);
    return dv.getUint16(o, true);
  }
  readU32(address: number): number {
    const [dv, o] = this.#bytes(address, 4);
    return dv.getUint32(o, true);
  }
  readU64(address: number): bigint {
    const [dv, o] = this.#bytes(address, 8);
    return dv.getBigUint64(o, true);
  }

  #put(address: number, length: number, set: (dv: DataView, o: number) => void): void {
    const at = this.#at(address, length);
    if (at) {
      set(at[0], at[1]);
      return;
    }
    const tmp = new DataView(new ArrayBuffer(length));
    set(tmp, 0);
    this.write(address, new Uint8Array(tmp.buffer));
  }

  writeU8(address: number, v: number): void {
    this.#put(address, 1, (dv, o) => dv.setUint8(o, v));
  }
  writeU16(address: number, v: number): void {
    this.#put(address, 2, (dv, o) => dv.setUint16(o, v, true));
  }
  writeU32(address: number, v: number): void {
    this.#put(address, 4, (dv, o) => dv.setUint32(o, v, true));
  }
  writeU64(address: number, v: bigint): void {
    this.#put(address, 8, (dv, o) => dv.setBigUint64(o, v, true));
  }
}

/** One region of `size` bytes at guest address `base` (default 0). */
export function createTestMemory(
  size: number,
  base = 0,
  options: PlainGuestMemoryOptions = {},
): PlainGuestMemory {
  return new PlainGuestMemory([{ address: base, size }], options);
}
