import { closeSync, fdatasyncSync, readSync } from "node:fs";
import { inflateRawSync } from "node:zlib";
import { type DiskImage, DiskImageBase } from "../disk-image.js";
import { DiskImageError, errnoCodeOf, sys, wrapSystemError } from "../errors.js";
import { IovCursor, preadvFull, pwritevFull, zeroBuffer } from "../io.js";
import { native } from "../native.js";
import type { OpenedFile } from "../raw.js";
import { type Table, TableCache } from "./cache.js";
import {
  corrupt,
  HDR_AUTOCLEAR,
  HDR_REFTABLE_OFFSET,
  HI_COMPRESSED,
  HI_COPIED,
  HI_L1_RESERVED,
  HI_L2_RESERVED,
  HI_OFFSET_MASK,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  LO_OFFSET_MASK,
  LO_RESERVED,
  LO_ZERO,
  MAX_REFTABLE_BYTES,
  type Qcow2Header,
  roundUp,
  unsupported,
} from "./format.js";

/** Kinds of guest cluster, as a cluster lookup classifies them. */
const K_UNALLOCATED = 0;
const K_NORMAL = 1;
const K_ZERO = 2;
const K_ZERO_ALLOC = 3;
const K_COMPRESSED = 4;

const TWO32 = 2 ** 32;

export interface Qcow2CacheOptions {
  /** Bytes of L2 tables to keep in memory. Default 8 MiB (512 GiB of disk with 64 KiB clusters). */
  l2CacheSize?: number;
  /** Bytes of refcount blocks to keep in memory. Default 1 MiB. */
  refcountCacheSize?: number;
}

export interface Qcow2Internals {
  file: OpenedFile;
  header: Qcow2Header;
  /** The first cluster as read from the file. */
  head: Uint8Array;
  readOnly: boolean;
  backing: DiskImage | undefined;
  /** Skip fdatasync (throwaway snapshot overlays). */
  unsafe: boolean;
  /** The format was probed rather than given. */
  probed?: boolean;
  cache: Qcow2CacheOptions;
}

function hostOffsetOf(hi: number, lo: number): number {
  return (hi & HI_OFFSET_MASK) * TWO32 + ((lo & LO_OFFSET_MASK) >>> 0);
}

/**
 * A qcow2 image (version 2 or 3) behind the DiskImage interface.
 *
 * Reads look guest clusters up through the in-memory L1 table and an LRU cache
 * of L2 tables and coalesce runs of contiguous host clusters (and of zero or
 * backing clusters) into one preadv each.
 *
 * Writes go in place to clusters this image owns alone (the COPIED flag);
 * anything else (unallocated, zero, compressed, shared) gets a fresh cluster at
 * the end of the file, filled with the old contents around the written bytes
 * (copy-on-write), and adjacent fresh clusters are written with one pwritev.
 *
 * Metadata changes (refcounts, L2 entries, L1 entries, frees) stay in memory
 * and are written back by flush() — or when a cache must drop a dirty table —
 * in QEMU's order, with fdatasync between the steps, so the file never has
 * metadata pointing at unwritten data or a referenced cluster with refcount 0:
 * data and refcount increments → sync → refcount table entries → sync → L2
 * tables → sync → L1 entries → sync → refcount decrements (frees) → sync.
 * Freed clusters are punched out of the file and reused for new allocations
 * later in the session; otherwise new clusters are appended.
 */
export class Qcow2DiskImage extends DiskImageBase {
  readonly format = "qcow2" as const;
  readonly header: Qcow2Header;
  readonly clusterSize: number;
  readonly backing: DiskImage | undefined;
  private readonly fd: number;
  private readonly clusterBits: number;
  private readonly l2Entries: number;
  private readonly version: 2 | 3;
  private readonly unsafe: boolean;

  private readonly l1: Uint8Array;
  private readonly l1View: DataView;
  private l1DirtyLo = 0;
  private l1DirtyHi = 0;
  private readonly l2Cache: TableCache;

  private reftable: Uint8Array;
  private reftableView: DataView;
  private reftableOffset: number;
  private reftableEntries: number;
  private reftableDirtyLo = 0;
  private reftableDirtyHi = 0;
  private reftableRelocated: { oldOffset: number; oldClusters: number } | undefined;
  private readonly refCache: TableCache;
  private readonly refOrder: number;
  private readonly refEntries: number;

  /** Host clusters holding metadata (header, L1, refcount table and blocks, L2 tables, snapshot table). */
  private readonly metadata = new Set<number>();
  /** Host clusters to decrement once the L2/L1 tables no longer pointing at them are durable. */
  private readonly pendingFrees = new Map<number, number>();
  /**
   * Clusters freed in this session (descending, so pop() gives the lowest),
   * reused before the file grows. Free space the image had before it was
   * opened is left alone.
   */
  private reusable: number[] = [];
  private allocEnd: number;
  private readonly initialLimit: number;
  private unsynced = false;
  private inWriteback = false;
  private noEvict = 0;
  private canPunch = true;

  // Result registers of lookup(), to keep the hot path free of allocations.
  private lkHi = 0;
  private lkLo = 0;
  private lkHost = 0;
  private lkCopied = false;

  private lastCompressedHi = -1;
  private lastCompressedLo = -1;
  private lastCompressed: Uint8Array | undefined;

  constructor(path: string, x: Qcow2Internals) {
    const h = x.header;
    super(path, h.size, x.readOnly, x.probed === true);
    this.header = h;
    this.fd = x.file.fd;
    this.backing = x.backing;
    this.unsafe = x.unsafe;
    this.version = h.version;
    this.clusterBits = h.clusterBits;
    this.clusterSize = 2 ** h.clusterBits;
    this.l2Entries = this.clusterSize / 8;
    const cs = this.clusterSize;
    const fileSize = x.file.size;
    this.initialLimit = roundUp(fileSize, cs);
    this.allocEnd = this.initialLimit / cs;

    const l2Cap = Math.max(4, Math.floor((x.cache.l2CacheSize ?? 8 << 20) / cs));
    const refCap = Math.max(4, Math.floor((x.cache.refcountCacheSize ?? 1 << 20) / cs));
    this.l2Cache = new TableCache(cs, l2Cap);
    this.refCache = new TableCache(cs, refCap);

    this.refOrder = h.refcountOrder;
    const refBits = 2 ** h.refcountOrder;
    this.refEntries = (cs * 8) / refBits;

    // L1 table.
    this.l1 = new Uint8Array(h.l1Size * 8);
    if (h.l1Size > 0) preadvFull(this.fd, [this.l1], h.l1TableOffset, path);
    this.l1View = new DataView(this.l1.buffer);

    // Refcount table.
    this.reftableOffset = h.refcountTableOffset;
    this.reftable = new Uint8Array(h.refcountTableClusters * cs);
    preadvFull(this.fd, [this.reftable], h.refcountTableOffset, path);
    this.reftableView = new DataView(this.reftable.buffer);
    this.reftableEntries = this.reftable.byteLength / 8;

    this.buildMetadataMap(fileSize);
  }

  get supportsDiscard(): boolean {
    return !this.readOnly;
  }

  get supportsWriteZeroes(): boolean {
    return !this.readOnly;
  }

  get discardGranularity(): number {
    return this.clusterSize;
  }

  /** Bytes of the image file in use (allocation end), for diagnostics. */
  get allocatedEnd(): number {
    return this.allocEnd * this.clusterSize;
  }

  // ---------------------------------------------------------------- validation

  private addMetadata(offset: number, clusters: number, what: string): void {
    const first = offset / this.clusterSize;
    for (let c = first; c < first + clusters; c++) {
      if (this.metadata.has(c))
        throw corrupt(this.path, `${what} at offset ${c * this.clusterSize} overlaps other metadata`);
      this.metadata.add(c);
    }
  }

  private buildMetadataMap(fileSize: number): void {
    const cs = this.clusterSize;
    const h = this.header;
    const limit = this.initialLimit;
    this.addMetadata(0, 1, "the header");
    if (h.l1Size > 0) this.addMetadata(h.l1TableOffset, Math.ceil((h.l1Size * 8) / cs), "the L1 table");
    this.addMetadata(h.refcountTableOffset, h.refcountTableClusters, "the refcount table");
    if (h.nbSnapshots > 0) this.addMetadata(h.snapshotsOffset, 1, "the snapshot table");
    const rv = this.reftableView;
    for (let k = 0; k < this.reftableEntries; k++) {
      const hi = rv.getUint32(k * 8);
      const lo = rv.getUint32(k * 8 + 4);
      if (hi === 0 && lo === 0) continue;
      const off = hi * TWO32 + lo;
      if (off % cs !== 0 || off + cs > limit)
        throw corrupt(
          this.path,
          `refcount table entry ${k} (${off}) is unaligned or beyond the end of the file`,
        );
      this.addMetadata(off, 1, `refcount block ${k}`);
    }
    const lv = this.l1View;
    for (let i = 0; i < h.l1Size; i++) {
      const hi = lv.getUint32(i * 8);
      const lo = lv.getUint32(i * 8 + 4);
      if (hi === 0 && lo === 0) continue;
      if (lo & 0x1ff || hi & HI_L1_RESERVED) throw corrupt(this.path, `L1 entry ${i} has reserved bits set`);
      const off = hostOffsetOf(hi, lo);
      if (off === 0) throw corrupt(this.path, `L1 entry ${i} has flags but no offset`);
      if (off % cs !== 0 || off + cs > limit)
        throw corrupt(
          this.path,
          `L1 entry ${i} points at ${off}, unaligned or beyond the end of the file (${fileSize})`,
        );
      this.addMetadata(off, 1, `the L2 table of L1 entry ${i}`);
    }
    if (!this.readOnly) {
      // Everything this image will write to must be allocated.
      const fixed = [0, ...this.clustersOf(h.refcountTableOffset, h.refcountTableClusters)];
      if (h.l1Size > 0) fixed.push(...this.clustersOf(h.l1TableOffset, Math.ceil((h.l1Size * 8) / cs)));
      for (const c of fixed) {
        if (this.refcount(c) < 1)
          throw corrupt(
            this.path,
            `metadata cluster at ${c * cs} (header, L1 or refcount table) has refcount 0`,
          );
      }
      for (let i = 0; i < h.l1Size; i++) {
        const hi = lv.getUint32(i * 8);
        const lo = lv.getUint32(i * 8 + 4);
        if (!(hi & HI_COPIED)) continue;
        const c = hostOffsetOf(hi, lo) / cs;
        const rc = this.refcount(c);
        if (rc !== 1)
          throw corrupt(
            this.path,
            `the L2 table of L1 entry ${i} is marked as owned (COPIED) but its refcount is ${rc}`,
          );
      }
    }
  }

  /** Checks every entry of a freshly loaded L2 table. */
  private validateL2(t: Table, l1Index: number): void {
    const v = t.view;
    const cs = this.clusterSize;
    const limit = this.hostLimit();
    for (let i = 0; i < this.l2Entries; i++) {
      const hi = v.getUint32(i * 8);
      const lo = v.getUint32(i * 8 + 4);
      if (hi === 0 && lo === 0) continue;
      const where = () => `L2 entry ${i} of L1 entry ${l1Index}`;
      if (hi & HI_COMPRESSED) {
        if (hi & HI_COPIED) throw corrupt(this.path, `${where()} is compressed and marked COPIED`);
        const { offset } = this.compressedDescriptor(hi, lo);
        if (offset >= limit)
          throw corrupt(this.path, `${where()} points at compressed data beyond the end of the file`);
        continue;
      }
      if (lo & LO_RESERVED || hi & HI_L2_RESERVED)
        throw corrupt(this.path, `${where()} has reserved bits set`);
      if (lo & LO_ZERO && this.version === 2)
        throw corrupt(this.path, `${where()} has the zero flag in a version 2 image`);
      const off = hostOffsetOf(hi, lo);
      if (off === 0) {
        if (hi & HI_COPIED) throw corrupt(this.path, `${where()} is marked COPIED without an offset`);
        continue;
      }
      if (off % cs !== 0) throw corrupt(this.path, `${where()} points at an unaligned cluster (${off})`);
      if (off + cs > limit) throw corrupt(this.path, `${where()} points beyond the end of the file (${off})`);
      if (this.metadata.has(off / cs)) throw corrupt(this.path, `${where()} points at metadata (${off})`);
      if (!this.readOnly && hi & HI_COPIED) {
        const rc = this.refcount(off / cs);
        if (rc !== 1)
          throw corrupt(this.path, `${where()} is marked COPIED but the cluster's refcount is ${rc}`);
      }
    }
  }

  private hostLimit(): number {
    return Math.max(this.initialLimit, this.allocEnd * this.clusterSize);
  }

  // ---------------------------------------------------------------- raw file I/O

  private pread(buffers: readonly Uint8Array[], position: number): void {
    preadvFull(this.fd, buffers, position, this.path);
  }

  private pwrite(buffers: readonly Uint8Array[], position: number): void {
    this.unsynced = true;
    pwritevFull(this.fd, buffers, position, this.path);
  }

  private sync(): void {
    if (!this.unsynced) return;
    if (!this.unsafe) sys("fdatasync", this.path, () => fdatasyncSync(this.fd));
    this.unsynced = false;
  }

  // ---------------------------------------------------------------- caches

  private makeRoom(cache: TableCache): void {
    if (this.noEvict > 0) return;
    const v = cache.victim();
    if (!v) return;
    if (v.dirtyHi !== 0) {
      if (this.inWriteback) return; // over capacity for a moment rather than recurse
      this.writeback();
    }
    cache.evict(v);
  }

  private loadTable(cache: TableCache, offset: number): Table {
    this.makeRoom(cache);
    const bytes = new Uint8Array(this.clusterSize);
    this.pread([bytes], offset);
    return cache.add(offset, bytes);
  }

  /** The L2 table of an L1 entry, or undefined if it has none. */
  private l2Table(l1Index: number): Table | undefined {
    const hi = this.l1View.getUint32(l1Index * 8);
    const lo = this.l1View.getUint32(l1Index * 8 + 4);
    if (hi === 0 && lo === 0) return undefined;
    const off = hostOffsetOf(hi, lo);
    const cached = this.l2Cache.get(off);
    if (cached) return cached;
    const t = this.loadTable(this.l2Cache, off);
    try {
      this.validateL2(t, l1Index);
    } catch (e) {
      this.l2Cache.evict(t);
      throw e;
    }
    return t;
  }

  /**
   * Classifies guest cluster `ci` and leaves its entry in lk* (host offset in
   * lkHost for normal and preallocated-zero clusters).
   */
  private lookup(ci: number): number {
    const l1Index = Math.floor(ci / this.l2Entries);
    const t = this.l2Table(l1Index);
    if (!t) {
      this.lkHi = 0;
      this.lkLo = 0;
      return K_UNALLOCATED;
    }
    const i = (ci - l1Index * this.l2Entries) * 8;
    const hi = t.view.getUint32(i);
    const lo = t.view.getUint32(i + 4);
    this.lkHi = hi;
    this.lkLo = lo;
    if (hi & HI_COMPRESSED) return K_COMPRESSED;
    this.lkCopied = (hi & HI_COPIED) !== 0;
    const off = hostOffsetOf(hi, lo);
    this.lkHost = off;
    if (lo & LO_ZERO) return off === 0 ? K_ZERO : K_ZERO_ALLOC;
    return off === 0 ? K_UNALLOCATED : K_NORMAL;
  }

  // ---------------------------------------------------------------- compressed clusters

  private compressedDescriptor(hi: number, lo: number): { offset: number; length: number } {
    const x = BigInt(62 - (this.clusterBits - 8));
    const v = ((BigInt(hi & 0x3fffffff) << 32n) | BigInt(lo >>> 0)) & ((1n << 62n) - 1n);
    const offset = Number(v & ((1n << x) - 1n));
    const sectors = Number(v >> x) + 1;
    return { offset, length: sectors * 512 - (offset & 511) };
  }

  /** The host clusters a compressed entry holds a reference on (QEMU frees this range). */
  private compressedClusters(hi: number, lo: number): number[] {
    const { offset } = this.compressedDescriptor(hi, lo);
    const x = BigInt(62 - (this.clusterBits - 8));
    const v = ((BigInt(hi & 0x3fffffff) << 32n) | BigInt(lo >>> 0)) & ((1n << 62n) - 1n);
    const sectors = Number(v >> x) + 1;
    const start = offset - (offset & 511);
    const first = Math.floor(start / this.clusterSize);
    const last = Math.floor((start + sectors * 512 - 1) / this.clusterSize);
    const out: number[] = [];
    for (let c = first; c <= last; c++) out.push(c);
    return out;
  }

  private decompress(hi: number, lo: number): Uint8Array {
    if (hi === this.lastCompressedHi && lo === this.lastCompressedLo && this.lastCompressed)
      return this.lastCompressed;
    const { offset, length } = this.compressedDescriptor(hi, lo);
    const limit = this.hostLimit();
    if (offset >= limit)
      throw corrupt(this.path, `compressed data at ${offset} lies beyond the end of the file`);
    const input = new Uint8Array(Math.min(length, limit - offset));
    this.pread([input], offset);
    let out: Uint8Array;
    try {
      out = inflateRawSync(input, { maxOutputLength: this.clusterSize, finishFlush: 2 /* Z_SYNC_FLUSH */ });
    } catch (e) {
      throw new DiskImageError(
        "CORRUPT",
        `corrupt qcow2 image: compressed cluster at ${offset} does not inflate`,
        {
          path: this.path,
          hint: "check it with `qemu-img check`.",
          cause: e,
        },
      );
    }
    if (out.byteLength !== this.clusterSize)
      throw corrupt(
        this.path,
        `compressed cluster at ${offset} inflates to ${out.byteLength} bytes, not ${this.clusterSize}`,
      );
    this.lastCompressedHi = hi;
    this.lastCompressedLo = lo;
    this.lastCompressed = out;
    return out;
  }

  // ---------------------------------------------------------------- reading

  private readBacking(guestOffset: number, views: Uint8Array[]): void {
    const b = this.backing;
    if (!b) {
      for (const v of views) v.fill(0);
      return;
    }
    let pos = guestOffset;
    const inside: Uint8Array[] = [];
    for (const v of views) {
      const avail = b.size - pos;
      if (avail >= v.byteLength) inside.push(v);
      else if (avail > 0) {
        inside.push(v.subarray(0, avail));
        v.subarray(avail).fill(0);
      } else v.fill(0);
      pos += v.byteLength;
    }
    if (inside.length > 0) b.readv(guestOffset, inside);
  }

  protected doReadv(offset: number, buffers: readonly Uint8Array[], length: number): void {
    const cs = this.clusterSize;
    // Fast path: a request inside one allocated cluster (the usual 4 KiB read) is one preadv.
    const ci0 = Math.floor(offset / cs);
    const in0 = offset - ci0 * cs;
    if (in0 + length <= cs && this.lookup(ci0) === K_NORMAL) {
      preadvFull(this.fd, buffers, this.lkHost + in0, this.path, length);
      return;
    }
    const cursor = new IovCursor(buffers);
    const end = offset + length;
    // The pending run: kind, guest start, host start (K_NORMAL), length.
    let runKind = -1;
    let runGuest = 0;
    let runHost = 0;
    let runLen = 0;
    const emit = () => {
      if (runLen === 0) return;
      const views = cursor.take(runLen);
      if (runKind === K_NORMAL) this.pread(views, runHost);
      else if (runKind === K_UNALLOCATED) this.readBacking(runGuest, views);
      else for (const v of views) v.fill(0);
      runLen = 0;
    };
    let pos = offset;
    while (pos < end) {
      const ci = Math.floor(pos / cs);
      const inCluster = pos - ci * cs;
      const n = Math.min(cs - inCluster, end - pos);
      let kind = this.lookup(ci);
      if (kind === K_ZERO_ALLOC) kind = K_ZERO;
      if (kind === K_UNALLOCATED && !this.backing) kind = K_ZERO;
      if (kind === K_COMPRESSED) {
        emit();
        const data = this.decompress(this.lkHi, this.lkLo);
        let at = inCluster;
        for (const v of cursor.take(n)) {
          v.set(data.subarray(at, at + v.byteLength));
          at += v.byteLength;
        }
      } else if (
        runLen > 0 &&
        kind === runKind &&
        (kind !== K_NORMAL || this.lkHost + inCluster === runHost + runLen)
      ) {
        runLen += n;
      } else {
        emit();
        runKind = kind;
        runGuest = pos;
        runHost = this.lkHost + inCluster;
        runLen = n;
      }
      pos += n;
    }
    emit();
  }

  /** Copies bytes [from, from+len) of guest cluster `ci`'s current contents (kind `kind`, entry in lk*) into dest. */
  private readClusterSource(kind: number, ci: number, from: number, dest: Uint8Array): void {
    if (dest.byteLength === 0) return;
    switch (kind) {
      case K_UNALLOCATED:
        this.readBacking(ci * this.clusterSize + from, [dest]);
        return;
      case K_COMPRESSED:
        dest.set(this.decompress(this.lkHi, this.lkLo).subarray(from, from + dest.byteLength));
        return;
      case K_NORMAL:
        this.pread([dest], this.lkHost + from);
        return;
      default:
        dest.fill(0);
    }
  }

  // ---------------------------------------------------------------- refcounts

  private refBlock(k: number): Table | undefined {
    if (k >= this.reftableEntries) return undefined;
    const hi = this.reftableView.getUint32(k * 8);
    const lo = this.reftableView.getUint32(k * 8 + 4);
    if (hi === 0 && lo === 0) return undefined;
    const off = hi * TWO32 + lo;
    const cached = this.refCache.get(off);
    if (cached) return cached;
    const t = this.loadTable(this.refCache, off);
    if (!this.readOnly) {
      // A block we will write must itself be allocated (else it may sit in free space).
      const c = off / this.clusterSize;
      const kk = Math.floor(c / this.refEntries);
      const rc = kk === k ? this.getRef(t, c - k * this.refEntries) : this.refcount(c);
      if (rc < 1) {
        this.refCache.evict(t);
        throw corrupt(this.path, `refcount block ${k} at ${off} is not allocated itself`);
      }
    }
    return t;
  }

  private getRef(t: Table, i: number): number {
    switch (this.refOrder) {
      case 4:
        return t.view.getUint16(i * 2);
      case 3:
        return t.bytes[i]!;
      case 5:
        return t.view.getUint32(i * 4);
      case 6: {
        const hi = t.view.getUint32(i * 8);
        return hi >= 0x200000 ? Number.MAX_SAFE_INTEGER : hi * TWO32 + t.view.getUint32(i * 8 + 4);
      }
      default: {
        const bits = 2 ** this.refOrder;
        const bit = i * bits;
        return (t.bytes[bit >> 3]! >> (bit & 7)) & ((1 << bits) - 1);
      }
    }
  }

  private setRef(t: Table, i: number, value: number): void {
    let lo: number;
    let hi: number;
    switch (this.refOrder) {
      case 4:
        t.view.setUint16(i * 2, value);
        lo = i * 2;
        hi = lo + 2;
        break;
      case 3:
        t.bytes[i] = value;
        lo = i;
        hi = i + 1;
        break;
      case 5:
        t.view.setUint32(i * 4, value);
        lo = i * 4;
        hi = lo + 4;
        break;
      case 6:
        t.view.setUint32(i * 8, Math.floor(value / TWO32));
        t.view.setUint32(i * 8 + 4, value >>> 0);
        lo = i * 8;
        hi = lo + 8;
        break;
      default: {
        const bits = 2 ** this.refOrder;
        const bit = i * bits;
        const mask = ((1 << bits) - 1) << (bit & 7);
        const byte = bit >> 3;
        t.bytes[byte] = (t.bytes[byte]! & ~mask) | ((value << (bit & 7)) & mask);
        lo = byte;
        hi = byte + 1;
      }
    }
    this.refCache.markDirty(t, lo, hi);
  }

  private refcount(c: number): number {
    const k = Math.floor(c / this.refEntries);
    const t = this.refBlock(k);
    return t ? this.getRef(t, c - k * this.refEntries) : 0;
  }

  private setReftableEntry(k: number, offset: number): void {
    this.reftableView.setUint32(k * 8, Math.floor(offset / TWO32));
    this.reftableView.setUint32(k * 8 + 4, offset >>> 0);
    if (this.reftableDirtyHi === 0) {
      this.reftableDirtyLo = k * 8;
      this.reftableDirtyHi = k * 8 + 8;
    } else {
      this.reftableDirtyLo = Math.min(this.reftableDirtyLo, k * 8);
      this.reftableDirtyHi = Math.max(this.reftableDirtyHi, k * 8 + 8);
    }
  }

  /** A new, zeroed refcount block for index k placed at host cluster c. */
  private newRefBlock(k: number, c: number): Table {
    this.makeRoom(this.refCache);
    const t = this.refCache.add(c * this.clusterSize, new Uint8Array(this.clusterSize));
    this.refCache.markDirty(t, 0, this.clusterSize);
    this.metadata.add(c);
    this.setReftableEntry(k, c * this.clusterSize);
    return t;
  }

  /** Allocates one host cluster (refcount 1), reusing one freed this session or appending, and returns its index. */
  private allocCluster(): number {
    const E = this.refEntries;
    while (this.reusable.length > 0) {
      const c = this.reusable.pop()!;
      const k = Math.floor(c / E);
      const t = this.refBlock(k);
      if (!t || this.metadata.has(c) || this.getRef(t, c - k * E) !== 0) continue;
      this.setRef(t, c - k * E, 1);
      return c;
    }
    for (let guard = 0; guard < 4 * E + 64; guard++) {
      const c = this.allocEnd;
      const k = Math.floor(c / E);
      if (k >= this.reftableEntries) {
        this.growReftable();
        continue;
      }
      let t = this.refBlock(k);
      if (!t) {
        // The new block describes itself: it sits at cluster c, inside its own range.
        t = this.newRefBlock(k, c);
        this.setRef(t, c - k * E, 1);
        this.allocEnd = c + 1;
        continue;
      }
      const i = c - k * E;
      if (this.getRef(t, i) !== 0) {
        this.allocEnd = c + 1; // claimed by a refcount beyond the file's end: skip it
        continue;
      }
      this.setRef(t, i, 1);
      this.allocEnd = c + 1;
      return c;
    }
    throw corrupt(
      this.path,
      "no free cluster found after the end of the file (refcounts claim clusters that do not exist)",
    );
  }

  /**
   * Moves the refcount table to a bigger one at the end of the file, with new
   * refcount blocks right after it covering the table itself, and writes it
   * back at once (the header switches to it after it is durable).
   */
  private growReftable(): void {
    const cs = this.clusterSize;
    const E = this.refEntries;
    const oldEntries = this.reftableEntries;
    const start = this.allocEnd;
    const missing = (k: number) =>
      k >= oldEntries ||
      (this.reftableView.getUint32(k * 8) === 0 && this.reftableView.getUint32(k * 8 + 4) === 0);
    let tableClusters = 0;
    let blocks: number[] = [];
    for (let iter = 0; ; iter++) {
      if (iter > 64) throw corrupt(this.path, "cannot lay out a bigger refcount table");
      const areaEnd = start + tableClusters + blocks.length + 1; // +1: the cluster being allocated
      const kMax = Math.floor((areaEnd - 1) / E);
      const entries = Math.max(oldEntries * 2, kMax + 1);
      const t = Math.ceil((entries * 8) / cs);
      const need: number[] = [];
      for (let k = Math.floor(start / E); k <= kMax; k++) if (missing(k)) need.push(k);
      if (t === tableClusters && need.length === blocks.length) break;
      tableClusters = t;
      blocks = need;
    }
    if (tableClusters * cs > MAX_REFTABLE_BYTES)
      throw unsupported(this.path, "the image has grown past what an 8 MiB refcount table can describe");
    this.noEvict++;
    try {
      const table = new Uint8Array(tableClusters * cs);
      table.set(this.reftable);
      const old = { oldOffset: this.reftableOffset, oldClusters: this.reftable.byteLength / cs };
      this.reftable = table;
      this.reftableView = new DataView(table.buffer);
      this.reftableEntries = table.byteLength / 8;
      this.reftableOffset = start * cs;
      for (let i = 0; i < tableClusters; i++) this.metadata.add(start + i);
      blocks.forEach((k, i) => {
        this.newRefBlock(k, start + tableClusters + i);
      });
      const end = start + tableClusters + blocks.length;
      for (let c = start; c < end; c++) {
        const k = Math.floor(c / E);
        const t = this.refBlock(k);
        if (!t) throw new Error("qcow2: refcount block missing after growth");
        this.setRef(t, c - k * E, 1);
      }
      this.allocEnd = end;
      // A relocation pending from an earlier growth is superseded: its table
      // was never pointed at by the header, so it is freed with the oldest one.
      if (this.reftableRelocated) this.queueFrees(this.clustersOf(old.oldOffset, old.oldClusters));
      this.reftableRelocated = this.reftableRelocated ?? old;
    } finally {
      this.noEvict--;
    }
    this.writeback();
  }

  private clustersOf(offset: number, count: number): number[] {
    const first = offset / this.clusterSize;
    return Array.from({ length: count }, (_, i) => first + i);
  }

  private queueFrees(clusters: readonly number[]): void {
    for (const c of clusters) this.pendingFrees.set(c, (this.pendingFrees.get(c) ?? 0) + 1);
  }

  /** Host clusters the entry (in lk*) of a cluster of kind `kind` references. */
  private referencedClusters(kind: number): number[] {
    if (kind === K_COMPRESSED) return this.compressedClusters(this.lkHi, this.lkLo);
    if ((kind === K_NORMAL || kind === K_ZERO_ALLOC) && this.lkHost !== 0)
      return [this.lkHost / this.clusterSize];
    return [];
  }

  /**
   * Refuses to free what is not allocated (a corrupt image), before anything
   * changes. `reserved` counts frees decided but not queued yet (and is updated).
   */
  private checkFreeable(clusters: readonly number[], reserved?: Map<number, number>): void {
    for (const c of clusters) {
      const earlier = (this.pendingFrees.get(c) ?? 0) + (reserved?.get(c) ?? 0);
      if (this.refcount(c) < earlier + 1)
        throw corrupt(
          this.path,
          `cluster ${c * this.clusterSize} is referenced but its refcount is too low to free`,
        );
      reserved?.set(c, (reserved.get(c) ?? 0) + 1);
    }
  }

  // ---------------------------------------------------------------- L1/L2 updates

  private setL1(l1Index: number, hi: number, lo: number): void {
    this.l1View.setUint32(l1Index * 8, hi);
    this.l1View.setUint32(l1Index * 8 + 4, lo);
    const a = l1Index * 8;
    if (this.l1DirtyHi === 0) {
      this.l1DirtyLo = a;
      this.l1DirtyHi = a + 8;
    } else {
      this.l1DirtyLo = Math.min(this.l1DirtyLo, a);
      this.l1DirtyHi = Math.max(this.l1DirtyHi, a + 8);
    }
  }

  /** The L2 table for guest cluster ci, allocated (or copied, if shared) as needed. */
  private l2ForWrite(ci: number): Table {
    const l1Index = Math.floor(ci / this.l2Entries);
    const hi = this.l1View.getUint32(l1Index * 8);
    const lo = this.l1View.getUint32(l1Index * 8 + 4);
    const existing = hi === 0 && lo === 0 ? undefined : this.l2Table(l1Index);
    if (existing && hi & HI_COPIED) return existing;
    const old = existing ? new Uint8Array(existing.bytes) : undefined;
    const oldCluster = existing ? hostOffsetOf(hi, lo) / this.clusterSize : undefined;
    if (oldCluster !== undefined) this.checkFreeable([oldCluster]);
    const c = this.allocCluster();
    this.metadata.add(c);
    this.makeRoom(this.l2Cache);
    const t = this.l2Cache.add(c * this.clusterSize, old ?? new Uint8Array(this.clusterSize));
    this.l2Cache.markDirty(t, 0, this.clusterSize);
    const off = c * this.clusterSize;
    this.setL1(l1Index, HI_COPIED | Math.floor(off / TWO32), off >>> 0);
    if (oldCluster !== undefined) this.queueFrees([oldCluster]);
    return t;
  }

  /** Sets guest cluster ci's L2 entry, queueing frees of what the old entry referenced. */
  private setL2(ci: number, hi: number, lo: number, frees: readonly number[]): void {
    const t = this.l2ForWrite(ci);
    const i = (ci - Math.floor(ci / this.l2Entries) * this.l2Entries) * 8;
    t.view.setUint32(i, hi);
    t.view.setUint32(i + 4, lo);
    this.l2Cache.markDirty(t, i, i + 8);
    if (frees.length > 0) this.queueFrees(frees);
  }

  // ---------------------------------------------------------------- writing

  protected doWritev(offset: number, buffers: readonly Uint8Array[], length: number): void {
    const cs = this.clusterSize;
    // Fast path: an overwrite inside one cluster this image owns is one pwritev.
    const ci0 = Math.floor(offset / cs);
    const in0 = offset - ci0 * cs;
    if (in0 + length <= cs && this.lookup(ci0) === K_NORMAL && this.lkCopied) {
      this.unsynced = true;
      pwritevFull(this.fd, buffers, this.lkHost + in0, this.path, length);
      return;
    }
    const cursor = new IovCursor(buffers);
    const end = offset + length;
    // The pending run of contiguous host writes and the L2 updates it completes.
    let runHost = -1;
    let runLen = 0;
    let runViews: Uint8Array[] = [];
    let updates: { ci: number; hi: number; lo: number; frees: number[] }[] = [];
    // Frees decided for clusters whose new L2 entries are not set yet.
    const reserved = new Map<number, number>();
    const emit = () => {
      if (runLen > 0) this.pwrite(runViews, runHost);
      for (const u of updates) {
        this.setL2(u.ci, u.hi, u.lo, u.frees);
        for (const c of u.frees) {
          const r = (reserved.get(c) ?? 1) - 1;
          if (r > 0) reserved.set(c, r);
          else reserved.delete(c);
        }
      }
      runLen = 0;
      runViews = [];
      updates = [];
    };
    const append = (host: number, views: Uint8Array[], len: number) => {
      if (runLen > 0 && host !== runHost + runLen) emit();
      if (runLen === 0) runHost = host;
      for (const v of views) runViews.push(v);
      runLen += len;
    };

    let pos = offset;
    while (pos < end) {
      const ci = Math.floor(pos / cs);
      const inCluster = pos - ci * cs;
      const n = Math.min(cs - inCluster, end - pos);
      const kind = this.lookup(ci);
      if (kind === K_NORMAL && this.lkCopied) {
        append(this.lkHost + inCluster, cursor.take(n), n);
      } else if (kind === K_ZERO_ALLOC && this.lkCopied) {
        // A preallocated zero cluster we own: fill it in place and clear the zero flag.
        const host = this.lkHost;
        const views = [zeroBuffer(inCluster), ...cursor.take(n), zeroBuffer(cs - inCluster - n)];
        append(host, views, cs);
        updates.push({ ci, hi: this.lkHi, lo: this.lkLo & ~LO_ZERO, frees: [] });
      } else {
        // Copy-on-write into a fresh cluster.
        const head = inCluster > 0 ? new Uint8Array(inCluster) : undefined;
        const tailLen = cs - inCluster - n;
        const tail = tailLen > 0 ? new Uint8Array(tailLen) : undefined;
        const frees = this.referencedClusters(kind);
        this.checkFreeable(frees, reserved);
        if (head) this.readClusterSource(kind, ci, 0, head);
        if (tail) this.readClusterSource(kind, ci, inCluster + n, tail);
        this.l2ForWrite(ci); // allocate the L2 table before the data cluster: keeps data contiguous
        const c = this.allocCluster();
        const host = c * cs;
        const views: Uint8Array[] = [];
        if (head) views.push(head);
        cursor.take(n, views);
        if (tail) views.push(tail);
        append(host, views, cs);
        updates.push({ ci, hi: HI_COPIED | Math.floor(host / TWO32), lo: host >>> 0, frees });
      }
      pos += n;
    }
    emit();
  }

  /** Applies `entry` (hi, lo) to every whole cluster in [first, last], freeing what they referenced. */
  private setWholeClusters(first: number, last: number, mode: "discard" | "zero" | "zero-keep"): void {
    const backing = this.backing !== undefined;
    for (let ci = first; ci <= last; ci++) {
      const l1Index = Math.floor(ci / this.l2Entries);
      const hasTable = !(
        this.l1View.getUint32(l1Index * 8) === 0 && this.l1View.getUint32(l1Index * 8 + 4) === 0
      );
      if (!hasTable && !backing) {
        // Nothing allocated here and nothing below: already reads as zeros. Skip the whole table.
        ci = (l1Index + 1) * this.l2Entries - 1;
        continue;
      }
      const kind = this.lookup(ci);
      if (this.version === 2) {
        if (backing && mode !== "discard") {
          // No zero flag in v2: the cluster must hold real zeros to hide the backing file.
          this.doWritev(ci * this.clusterSize, [zeroBuffer(this.clusterSize)], this.clusterSize);
          continue;
        }
        if (kind === K_UNALLOCATED) continue;
        const frees = this.referencedClusters(kind);
        this.checkFreeable(frees);
        this.setL2(ci, 0, 0, frees);
        continue;
      }
      if (mode === "zero-keep" && (kind === K_NORMAL || kind === K_ZERO_ALLOC) && this.lkCopied) {
        if (kind === K_ZERO_ALLOC) continue;
        this.setL2(ci, this.lkHi, (this.lkLo | LO_ZERO) >>> 0, []);
        continue;
      }
      // v3: the zero flag when a backing file would otherwise show through, else unallocated.
      const target = backing ? LO_ZERO : 0;
      if (kind === K_ZERO && target === LO_ZERO) continue;
      if (kind === K_UNALLOCATED && target === 0) continue;
      const frees = this.referencedClusters(kind);
      this.checkFreeable(frees);
      this.setL2(ci, 0, target, frees);
    }
  }

  protected doDiscard(offset: number, length: number): void {
    // Only whole clusters can be dropped; the rest of the range is left as it is.
    const cs = this.clusterSize;
    const first = Math.ceil(offset / cs);
    const endCluster = Math.floor((offset + length) / cs);
    // The disk's last cluster may be partial: a range reaching the end covers it.
    const last = offset + length === this.size ? Math.ceil(this.size / cs) - 1 : endCluster - 1;
    if (last >= first) this.setWholeClusters(first, last, "discard");
    this.writebackIfBusy();
  }

  protected doWriteZeroes(offset: number, length: number, mayUnmap: boolean): void {
    const cs = this.clusterSize;
    const end = offset + length;
    const first = Math.ceil(offset / cs);
    const last = end === this.size ? Math.ceil(this.size / cs) - 1 : Math.floor(end / cs) - 1;
    if (last < first) {
      this.writeZeroBytes(offset, length);
      return;
    }
    const headEnd = first * cs;
    if (headEnd > offset) this.writeZeroBytes(offset, headEnd - offset);
    const tailStart = Math.min((last + 1) * cs, this.size);
    if (tailStart < end) this.writeZeroBytes(tailStart, end - tailStart);
    this.setWholeClusters(first, last, mayUnmap ? "zero" : "zero-keep");
    this.writebackIfBusy();
  }

  private writeZeroBytes(offset: number, length: number): void {
    while (length > 0) {
      const n = Math.min(length, 1 << 20);
      this.doWritev(offset, [zeroBuffer(n)], n);
      offset += n;
      length -= n;
    }
  }

  /** Keeps unbounded metadata (queued frees) from piling up between flushes. */
  private writebackIfBusy(): void {
    if (this.pendingFrees.size > 65536) this.writeback();
  }

  // ---------------------------------------------------------------- write-back

  private writeTable(cache: TableCache, t: Table): void {
    this.pwrite([t.bytes.subarray(t.dirtyLo, t.dirtyHi)], t.offset + t.dirtyLo);
    cache.markClean(t);
  }

  /** Writes every piece of dirty metadata, in the order that keeps the file consistent at each step. */
  private writeback(): void {
    if (this.inWriteback || this.readOnly) return;
    this.inWriteback = true;
    try {
      const cs = this.clusterSize;
      // 1. Refcount blocks (new references first: a crash now only leaks).
      for (const t of [...this.refCache.dirty]) this.writeTable(this.refCache, t);
      // 2. The refcount table: new blocks must be durable before it points at them.
      const moved = this.reftableRelocated;
      if (moved) {
        this.sync();
        this.pwrite([this.reftable], this.reftableOffset);
        this.sync();
        const hdr = new Uint8Array(12);
        const dv = new DataView(hdr.buffer);
        dv.setBigUint64(0, BigInt(this.reftableOffset));
        dv.setUint32(8, this.reftable.byteLength / cs);
        this.pwrite([hdr], HDR_REFTABLE_OFFSET);
        this.reftableRelocated = undefined;
        this.reftableDirtyHi = 0;
        this.sync();
        this.queueFrees(this.clustersOf(moved.oldOffset, moved.oldClusters));
      } else if (this.reftableDirtyHi !== 0) {
        this.sync();
        this.pwrite(
          [this.reftable.subarray(this.reftableDirtyLo, this.reftableDirtyHi)],
          this.reftableOffset + this.reftableDirtyLo,
        );
        this.reftableDirtyHi = 0;
      }
      // 3. Data and refcounts durable before anything points at them.
      if (this.l2Cache.dirty.size > 0 || this.l1DirtyHi !== 0) {
        this.sync();
        // 4. L2 tables.
        for (const t of [...this.l2Cache.dirty]) this.writeTable(this.l2Cache, t);
        // 5. L1 entries, once the new L2 tables they point at are durable.
        if (this.l1DirtyHi !== 0) {
          this.sync();
          this.pwrite(
            [this.l1.subarray(this.l1DirtyLo, this.l1DirtyHi)],
            this.header.l1TableOffset + this.l1DirtyLo,
          );
          this.l1DirtyHi = 0;
        }
      }
      // 6. Frees, once no durable table points at the clusters any more.
      if (this.pendingFrees.size > 0) {
        this.sync();
        const punch: number[] = [];
        for (const [c, count] of this.pendingFrees) {
          const k = Math.floor(c / this.refEntries);
          const t = this.refBlock(k);
          if (!t) continue; // checked when queued; cannot happen
          const rc = this.getRef(t, c - k * this.refEntries);
          const next = Math.max(0, rc - count);
          this.setRef(t, c - k * this.refEntries, next);
          if (next === 0) {
            punch.push(c);
            this.metadata.delete(c);
            this.l2Cache.forget(c * cs); // a copied-away L2 table must not linger in the cache
          }
        }
        this.pendingFrees.clear();
        for (const t of [...this.refCache.dirty]) this.writeTable(this.refCache, t);
        for (const c of punch) this.punch(c * cs, cs);
        // No durable table points at these any more: they may hold new data.
        if (punch.length > 0) this.reusable = this.reusable.concat(punch).sort((a, b) => b - a);
      }
    } finally {
      this.inWriteback = false;
    }
  }

  private punch(offset: number, length: number): void {
    if (!this.canPunch) return;
    const n = native();
    try {
      n.fallocate(
        this.fd,
        n.constants.FALLOC_FL_PUNCH_HOLE | n.constants.FALLOC_FL_KEEP_SIZE,
        offset,
        length,
      );
    } catch (e) {
      const c = errnoCodeOf(e);
      if (c === "EOPNOTSUPP" || c === "ENOTSUP" || c === "ENOSYS" || c === "EINVAL") this.canPunch = false;
      else throw wrapSystemError(e, "fallocate", this.path);
    }
  }

  protected doFlush(): void {
    this.writeback();
    this.sync();
  }

  /** Clears autoclear feature bits before the first write (the spec's rule for writers that do not know them). */
  prepareForWriting(): void {
    const h = this.header;
    if (this.readOnly || h.version < 3 || h.autoclearFeatures === 0n) return;
    const b = new Uint8Array(8);
    this.pwrite([b], HDR_AUTOCLEAR);
    this.sync();
    h.autoclearFeatures = 0n;
  }

  protected doClose(): void {
    try {
      if (!this.readOnly) this.doFlush();
    } finally {
      this.l2Cache.clear();
      this.refCache.clear();
      try {
        closeSync(this.fd);
      } finally {
        this.backing?.close();
      }
    }
  }
}

/** Reads the first cluster of a qcow2 image (as much as the file has, up to 2 MiB). */
export function readHead(fd: number, fileSize: number, path: string): Uint8Array {
  const first = new Uint8Array(Math.min(fileSize, 104));
  sys("read", path, () => readSync(fd, first, 0, first.byteLength, 0));
  const bits = first.byteLength >= 24 ? new DataView(first.buffer).getUint32(20) : 9;
  const cs = bits >= 9 && bits <= 21 ? 2 ** bits : 512;
  const head = new Uint8Array(Math.min(fileSize, cs));
  preadvFull(fd, [head], 0, path);
  return head;
}

/** Refuses writable opens of images this implementation must not write. */
export function checkWritable(h: Qcow2Header, path: string): void {
  if (h.incompatibleFeatures & INCOMPAT_DIRTY)
    throw new DiskImageError(
      "DIRTY",
      "the image is marked dirty (it was not closed cleanly with lazy refcounts)",
      {
        path,
        hint: "repair the refcounts first: qemu-img check -r all <image> (read-only opens work as they are).",
      },
    );
  if (h.incompatibleFeatures & INCOMPAT_CORRUPT)
    throw corrupt(
      path,
      "the image is marked corrupt and must not be written",
      "repair it: qemu-img check -r all <image> (read-only opens work).",
    );
  if (h.nbSnapshots > 0)
    throw unsupported(
      path,
      `writing to images with internal snapshots (${h.nbSnapshots}) is not supported`,
      "open it read-only or as a snapshot disk, or delete the snapshots: qemu-img snapshot -d <name> <image>.",
    );
}
