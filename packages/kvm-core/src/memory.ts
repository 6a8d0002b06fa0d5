import { KvmError, sys, usageError } from "./errors.js";
import {
  MADV_DONTFORK,
  MADV_HUGEPAGE,
  MAP_ANONYMOUS,
  MAP_NORESERVE,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
} from "./ioctls.js";
import { native } from "./native.js";

export const PAGE_SIZE = 4096;
const HUGE_PAGE_SIZE = 2 * 1024 * 1024;
/** Node 20 refuses external buffers over 4 GiB, so big regions are seen through windows. */
export const WINDOW_SIZE = 2 ** 31;

/**
 * What a thread needs to see a region: the process-wide mapping id (the native
 * registry holds address and length) and where it sits in guest physical memory.
 * Plain data, so it can be posted to workers; the memory itself is never copied.
 */
export interface GuestRegionDescriptor {
  mappingId: number;
  guestAddress: number;
  size: number;
  readOnly: boolean;
}

export interface GuestMemoryDescriptor {
  regions: GuestRegionDescriptor[];
}

/** Error for a guest address (or range) that is not backed by guest RAM. */
export class GuestMemoryError extends KvmError {
  readonly address: number;
  readonly length: number;
  constructor(address: number, length: number, what = "not in guest memory") {
    super("guest memory", 0, `range 0x${address.toString(16)}+${length} ${what}`);
    this.name = "GuestMemoryError";
    this.address = address;
    this.length = length;
  }
}

/** One native anonymous mapping that backs a range of guest physical memory. */
export class GuestRegion {
  readonly mappingId: number;
  readonly guestAddress: number;
  readonly size: number;
  readonly readOnly: boolean;
  readonly #windows: (Uint8Array | undefined)[];

  constructor(d: GuestRegionDescriptor) {
    this.mappingId = d.mappingId;
    this.guestAddress = d.guestAddress;
    this.size = d.size;
    this.readOnly = d.readOnly;
    this.#windows = new Array(Math.ceil(d.size / WINDOW_SIZE)).fill(undefined);
  }

  /**
   * Maps `size` bytes of fresh zeroed anonymous memory and registers it process-wide.
   * Like QEMU's RAM: aligned to 2 MiB and advised MADV_HUGEPAGE, so that transparent huge
   * pages can back it (fewer nested-paging walks and TLB misses, and far fewer small pages
   * for the host to migrate under a running guest), and MADV_DONTFORK, so that a child
   * process the VMM spawns never turns guest RAM copy-on-write.
   */
  static allocate(guestAddress: number, size: number, readOnly = false): GuestRegion {
    checkRegionShape(guestAddress, size);
    const id = sys("mmap", () =>
      native().mmap(
        size,
        PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
        -1,
        0,
        size >= HUGE_PAGE_SIZE ? HUGE_PAGE_SIZE : 0,
      ),
    );
    try {
      native().madvise(id, 0, size, MADV_HUGEPAGE);
    } catch {
      // Advice only: a kernel without THP refuses MADV_HUGEPAGE (EINVAL); the memory works the same.
    }
    try {
      // Not optional: without it a spawned child would share guest RAM copy-on-write.
      sys("madvise(MADV_DONTFORK)", () => native().madvise(id, 0, size, MADV_DONTFORK));
    } catch (e) {
      native().unmap(id);
      throw e;
    }
    return new GuestRegion({ mappingId: id, guestAddress, size, readOnly });
  }

  get hostAddress(): bigint {
    return sys("guest region", () => native().mappingAddress(this.mappingId));
  }

  get end(): number {
    return this.guestAddress + this.size;
  }

  describe(): GuestRegionDescriptor {
    return {
      mappingId: this.mappingId,
      guestAddress: this.guestAddress,
      size: this.size,
      readOnly: this.readOnly,
    };
  }

  /** The window holding region offset `offset`, created on first use in this thread. */
  window(index: number): Uint8Array {
    let w = this.#windows[index];
    if (!w) {
      const start = index * WINDOW_SIZE;
      const len = Math.min(WINDOW_SIZE, this.size - start);
      w = new Uint8Array(sys("guest memory view", () => native().mappingView(this.mappingId, start, len)));
      this.#windows[index] = w;
    }
    return w;
  }

  /** Gives the memory back to the host. Views other threads hold then read zeros, never freed memory. */
  release(): void {
    sys("munmap", () => native().unmap(this.mappingId));
  }
}

function checkRegionShape(guestAddress: number, size: number): void {
  if (!Number.isSafeInteger(guestAddress) || guestAddress < 0 || guestAddress % PAGE_SIZE !== 0)
    throw usageError("guest memory", `region address 0x${guestAddress.toString(16)} is not page aligned`);
  if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0)
    throw usageError("guest memory", `region size ${size} is not a positive multiple of ${PAGE_SIZE}`);
}

/**
 * Bounds-checked access to guest physical memory, modelled on vm-memory's
 * GuestMemoryMmap. Every access is checked against the regions: an address the
 * guest did not get is a {@link GuestMemoryError}, never a host memory access.
 * Views returned by {@link view} and {@link segments} alias guest RAM (no copy).
 */
export class GuestMemory {
  readonly regions: readonly GuestRegion[];
  #last: GuestRegion | undefined;

  constructor(regions: readonly GuestRegion[]) {
    const sorted = [...regions].sort((a, b) => a.guestAddress - b.guestAddress);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!;
      const cur = sorted[i]!;
      if (cur.guestAddress < prev.end)
        throw usageError(
          "guest memory",
          `region at 0x${cur.guestAddress.toString(16)} overlaps region 0x${prev.guestAddress.toString(16)}-0x${prev.end.toString(16)}`,
        );
    }
    this.regions = sorted;
  }

  /** Rebuilds the same memory in another thread from {@link describe}'s output. */
  static fromDescriptor(d: GuestMemoryDescriptor): GuestMemory {
    return new GuestMemory(d.regions.map((r) => new GuestRegion(r)));
  }

  describe(): GuestMemoryDescriptor {
    return { regions: this.regions.map((r) => r.describe()) };
  }

  /** Total bytes of RAM. */
  get size(): number {
    return this.regions.reduce((n, r) => n + r.size, 0);
  }

  findRegion(address: number): GuestRegion | undefined {
    const last = this.#last;
    if (last && address >= last.guestAddress && address < last.end) return last;
    for (const r of this.regions) {
      if (address >= r.guestAddress && address < r.end) {
        this.#last = r;
        return r;
      }
    }
    return undefined;
  }

  /** True when [address, address+length) lies entirely in guest RAM. */
  isValidRange(address: number, length: number): boolean {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0)
      return false;
    let a = address;
    let left = length;
    while (left > 0) {
      const r = this.findRegion(a);
      if (!r) return false;
      const n = Math.min(left, r.end - a);
      a += n;
      left -= n;
    }
    return length > 0 || this.findRegion(address) !== undefined;
  }

  /**
   * The guest range as one or more views (several when it crosses a region or
   * window boundary). Throws {@link GuestMemoryError} if any byte is not RAM.
   */
  segments(address: number, length: number): Uint8Array[] {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0)
      throw new GuestMemoryError(Number(address), Number(length), "is not a valid range");
    const out: Uint8Array[] = [];
    let a = address;
    let left = length;
    while (left > 0) {
      const r = this.findRegion(a);
      if (!r) throw new GuestMemoryError(address, length);
      const off = a - r.guestAddress;
      const wi = Math.floor(off / WINDOW_SIZE);
      const wOff = off - wi * WINDOW_SIZE;
      const w = r.window(wi);
      const n = Math.min(left, w.length - wOff);
      out.push(w.subarray(wOff, wOff + n));
      a += n;
      left -= n;
    }
    return out;
  }

  /** One contiguous view; throws if the range is not RAM or is split across regions/windows. */
  view(address: number, length: number): Uint8Array {
    const r = this.findRegion(address);
    if (r && Number.isSafeInteger(length) && length >= 0) {
      const off = address - r.guestAddress;
      const wi = Math.floor(off / WINDOW_SIZE);
      const wOff = off - wi * WINDOW_SIZE;
      const w = r.window(wi);
      if (wOff + length <= w.length) return w.subarray(wOff, wOff + length);
    }
    const segs = this.segments(address, length);
    if (segs.length === 1) return segs[0]!;
    throw new GuestMemoryError(address, length, "is not contiguous in host memory; use segments()");
  }

  /** Copies guest bytes out. */
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

  /** Copies bytes into guest memory (the guest's read-only regions are writable from the VMM). */
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

  #dv(address: number, length: number): DataView | undefined {
    const r = this.findRegion(address);
    if (!r) return undefined;
    const off = address - r.guestAddress;
    const wi = Math.floor(off / WINDOW_SIZE);
    const wOff = off - wi * WINDOW_SIZE;
    const w = r.window(wi);
    if (wOff + length > w.length) return undefined;
    return new DataView(w.buffer, w.byteOffset + wOff, length);
  }

  #scalar(address: number, length: number): DataView {
    const dv = this.#dv(address, length);
    if (dv) return dv;
    // Crosses a boundary (or is not RAM): go through the checked copy path.
    const tmp = this.read(address, length);
    return new DataView(tmp.buffer);
  }

  readU8(address: number): number {
    return this.#scalar(address, 1).getUint8(0);
  }
  readU16(address: number): number {
    return this.#scalar(address, 2).getUint16(0, true);
  }
  readU32(address: number): number {
    return this.#scalar(address, 4).getUint32(0, true);
  }
  readU64(address: number): bigint {
    return this.#scalar(address, 8).getBigUint64(0, true);
  }

  #writeScalar(address: number, length: number, set: (dv: DataView) => void): void {
    const dv = this.#dv(address, length);
    if (dv) {
      set(dv);
      return;
    }
    const tmp = new DataView(new ArrayBuffer(length));
    set(tmp);
    this.write(address, new Uint8Array(tmp.buffer));
  }

  writeU8(address: number, v: number): void {
    this.#writeScalar(address, 1, (dv) => dv.setUint8(0, v));
  }
  writeU16(address: number, v: number): void {
    this.#writeScalar(address, 2, (dv) => dv.setUint16(0, v, true));
  }
  writeU32(address: number, v: number): void {
    this.#writeScalar(address, 4, (dv) => dv.setUint32(0, v, true));
  }
  writeU64(address: number, v: bigint): void {
    this.#writeScalar(address, 8, (dv) => dv.setBigUint64(0, v, true));
  }
}
