// The fuzz kit shared by the devices' fuzz tests: seeded randomness, hostile
// guest addresses and lengths, guest memory that audits the device's accesses,
// guarded memory, and malformed descriptor chains. What a test checks the
// device's answers against (its reading of the spec) stays in the test.
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../constants.js";
import { type RawDescriptor, writeDescriptor } from "../driver/simulator.js";
import type { GuestMemoryAccess } from "../memory.js";

// ---- seeded randomness ----

/** mulberry32: a small, fast PRNG; the same seed gives the same floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A seeded PRNG ({@link mulberry32}) with the draws fuzz tests make; each draw takes one float. */
export class FuzzRng {
  /** The next float in [0, 1) (bound: `const rnd = rng.next` works). */
  readonly next: () => number;

  constructor(seed: number) {
    this.next = mulberry32(seed);
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** A 32-bit unsigned integer (two draws). */
  u32(): number {
    return (this.int(0x10000) * 0x10000 + this.int(0x10000)) >>> 0;
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** One of `items`, uniformly. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
}

function env(variable: string): string | undefined {
  return typeof process === "undefined" ? undefined : process.env[variable];
}

/**
 * The seed of a fuzz run: the environment variable `variable` (e.g.
 * `VIRTIO_BLK_FUZZ_SEED`) when set and not empty, else `fallback`. Print it,
 * so that a failure can be replayed.
 */
export function fuzzSeed(variable: string, fallback: number): number {
  const v = env(variable);
  return v !== undefined && v !== "" ? Number(v) >>> 0 : fallback;
}

/** A fuzz budget (chains, iterations, a scale): the environment variable `variable` when set and not empty, else `fallback`. */
export function fuzzCount(variable: string, fallback: number): number {
  return Number(env(variable) || fallback);
}

// ---- guest addresses ----

/** A region of guest RAM. */
export interface RamRegion {
  readonly address: number;
  readonly size: number;
}

/** A range of guest addresses. */
export interface AddressRange {
  address: number;
  length: number;
}

/**
 * Whether [address, address + length) lies in one of `regions` (a zero-length
 * range: whether its address does), from the regions alone — independent of
 * the guest memory under test. Bigints and unsafe integers are never RAM.
 */
export function inRam(regions: readonly RamRegion[], address: number | bigint, length: number): boolean {
  if (typeof address !== "number" || !Number.isSafeInteger(address)) return false;
  return regions.some((r) => address >= r.address && address + Math.max(1, length) <= r.address + r.size);
}

/**
 * Where a hostile driver points buffers, indirect tables and rings, for guest
 * RAM made of `regions`, in a fixed order: 0 and 1; each region's first byte,
 * last byte and the byte just past it (a hole, or the end of RAM); in each
 * hole a byte inside it (0x1234 in) and its last byte; then far beyond: 2^32,
 * 2^53 − 1 (the largest safe integer), 2^53 as a bigint, 2^63, 2^64 − 1, 2^52,
 * 2^53 as a number (not a safe integer), 2^60, and 2^64 − 4096 (a page that
 * ends exactly at 2^64). Some are RAM (the region edges, 0 when a region
 * starts there): filter with {@link inRam} for the ones outside.
 */
export function hostileAddresses(regions: readonly RamRegion[]): (number | bigint)[] {
  const out: (number | bigint)[] = [];
  const add = (a: number | bigint): void => {
    if (!out.includes(a)) out.push(a);
  };
  add(0);
  add(1);
  const sorted = [...regions].sort((a, b) => a.address - b.address);
  sorted.forEach((r, i) => {
    const end = r.address + r.size;
    add(r.address);
    add(end - 1);
    add(end);
    const next = sorted[i + 1];
    if (next && next.address > end) {
      if (end + 0x1234 < next.address - 1) add(end + 0x1234);
      add(next.address - 1);
    }
  });
  for (const a of [
    2 ** 32,
    2 ** 53 - 1,
    2n ** 53n,
    2n ** 63n,
    2n ** 64n - 1n,
    2 ** 52,
    2 ** 53,
    2 ** 60,
    2n ** 64n - 4096n,
  ])
    add(a);
  return out;
}

/** Lengths a hostile driver gives buffers at hostile addresses: zero, tiny, odd, a sector, 4 GiB − 1. */
export const HOSTILE_LENGTHS: readonly number[] = [0, 1, 2, 16, 512, 0xffff_ffff];

// ---- guest memory ----

/**
 * Guest memory as the device under test sees it: every access is passed on to
 * `inner` (which throws outside RAM, as it should), and recorded in
 * {@link violations} when it is outside guest RAM or — with {@link writable}
 * set — a write through the memory API outside those ranges (e.g. the used
 * rings, for a device that fills buffers through views from `segments`).
 * A run checks `violations` is empty. At most `maxViolations` are kept.
 */
export class AuditedMemory implements GuestMemoryAccess {
  readonly inner: GuestMemoryAccess;
  readonly violations: string[] = [];
  /** Where API writes may go; undefined: anywhere in RAM. */
  writable: readonly AddressRange[] | undefined;
  readonly maxViolations: number;

  constructor(
    inner: GuestMemoryAccess,
    options: { writable?: readonly AddressRange[]; maxViolations?: number } = {},
  ) {
    this.inner = inner;
    this.writable = options.writable;
    this.maxViolations = options.maxViolations ?? 20;
  }

  #check(op: string, address: number, length: number, write = false): void {
    if (this.violations.length >= this.maxViolations) return;
    if (!this.inner.isValidRange(address, length)) this.violations.push(`${op}(${address}, ${length})`);
    else if (
      write &&
      this.writable &&
      !this.writable.some((w) => address >= w.address && address + length <= w.address + w.length)
    )
      this.violations.push(`${op}(${address}, ${length}) outside the writable ranges`);
  }

  isValidRange(a: number, n: number): boolean {
    return this.inner.isValidRange(a, n);
  }
  segments(a: number, n: number): Uint8Array[] {
    this.#check("segments", a, n);
    return this.inner.segments(a, n);
  }
  view(a: number, n: number): Uint8Array {
    this.#check("view", a, n);
    return this.inner.view(a, n);
  }
  read(a: number, n: number): Uint8Array {
    this.#check("read", a, n);
    return this.inner.read(a, n);
  }
  readInto(a: number, d: Uint8Array): void {
    this.#check("readInto", a, d.length);
    this.inner.readInto(a, d);
  }
  write(a: number, d: Uint8Array): void {
    this.#check("write", a, d.length, true);
    this.inner.write(a, d);
  }
  fill(a: number, n: number, v?: number): void {
    this.#check("fill", a, n, true);
    this.inner.fill(a, n, v);
  }
  readU8(a: number): number {
    this.#check("readU8", a, 1);
    return this.inner.readU8(a);
  }
  readU16(a: number): number {
    this.#check("readU16", a, 2);
    return this.inner.readU16(a);
  }
  readU32(a: number): number {
    this.#check("readU32", a, 4);
    return this.inner.readU32(a);
  }
  readU64(a: number): bigint {
    this.#check("readU64", a, 8);
    return this.inner.readU64(a);
  }
  writeU8(a: number, v: number): void {
    this.#check("writeU8", a, 1, true);
    this.inner.writeU8(a, v);
  }
  writeU16(a: number, v: number): void {
    this.#check("writeU16", a, 2, true);
    this.inner.writeU16(a, v);
  }
  writeU32(a: number, v: number): void {
    this.#check("writeU32", a, 4, true);
    this.inner.writeU32(a, v);
  }
  writeU64(a: number, v: bigint): void {
    this.#check("writeU64", a, 8, true);
    this.inner.writeU64(a, v);
  }
}

/**
 * Guest memory the device must leave alone (outside the driver's heap, a
 * canary region): written with a known pattern (byte i of a range at A is
 * (7i + A) & 0xff) when the guard is made. {@link changed} lists the ranges
 * that no longer hold it; {@link restore} puts it back where a test let the
 * device write on purpose (a hostile buffer it has checked).
 */
export class MemoryGuard {
  readonly memory: GuestMemoryAccess;
  readonly ranges: readonly AddressRange[];
  readonly #original: Uint8Array[];

  constructor(memory: GuestMemoryAccess, ranges: readonly AddressRange[]) {
    this.memory = memory;
    this.ranges = ranges.map((r) => ({ ...r }));
    this.#original = this.ranges.map((r) => {
      const b = new Uint8Array(r.length);
      for (let i = 0; i < b.length; i++) b[i] = (i * 7 + r.address) & 0xff;
      memory.write(r.address, b);
      return b;
    });
  }

  /** Puts the pattern back over [address, address + length) where it overlaps the guarded ranges. */
  restore(address: number, length: number): void {
    for (const [i, r] of this.ranges.entries()) {
      const lo = Math.max(address, r.address);
      const hi = Math.min(address + length, r.address + r.length);
      if (lo < hi) this.memory.write(lo, this.#original[i]!.subarray(lo - r.address, hi - r.address));
    }
  }

  /** The guarded ranges whose bytes changed (empty when the device left them alone). */
  changed(): AddressRange[] {
    return this.ranges.filter((r, i) => {
      const now = this.memory.read(r.address, r.length);
      const was = this.#original[i]!;
      for (let k = 0; k < now.length; k++) if (now[k] !== was[k]) return true;
      return false;
    });
  }
}

// ---- malformed chains ----

/**
 * Chains the queue itself must reject (the device answers used length 0 and
 * goes on): two descriptors NEXT to each other; NEXT to an index past the
 * table; an indirect table of length 0 or not a multiple of 16; an indirect
 * table at an address outside RAM; an indirect table holding an INDIRECT
 * descriptor; INDIRECT together with NEXT; a buffer outside RAM after a good
 * one; a readable buffer after a writable one.
 */
export const MALFORMED_CHAIN_KINDS = [
  "loop",
  "next-outside-table",
  "bad-table-length",
  "table-outside-ram",
  "nested-table",
  "table-with-next",
  "buffer-outside-ram",
  "readable-after-writable",
] as const;

export type MalformedChainKind = (typeof MALFORMED_CHAIN_KINDS)[number];

/** Descriptor slots a malformed chain of `kind` takes (at most {@link MALFORMED_CHAIN_MAX_SLOTS}). */
export function malformedChainSlots(kind: MalformedChainKind): number {
  return kind === "loop" || kind === "buffer-outside-ram" || kind === "readable-after-writable" ? 2 : 1;
}

export const MALFORMED_CHAIN_MAX_SLOTS = 2;

/** A driver-side descriptor table ({@link SimQueue} is one). */
export interface DescriptorTableWriter {
  readonly size: number;
  writeDescriptor(index: number, d: RawDescriptor): void;
}

export interface MalformedChainOptions {
  /** The queue whose table the chain goes in. */
  queue: DescriptorTableWriter;
  /** Guest memory, for the nested indirect table. */
  memory: GuestMemoryAccess;
  /** Free descriptor slots, the head first ({@link malformedChainSlots} of them). */
  slots: readonly number[];
  /** 64 bytes of guest RAM the chain's buffers and tables may use. */
  scratch: number;
  rng: FuzzRng;
  /** Addresses outside guest RAM (e.g. {@link hostileAddresses} less those {@link inRam}). */
  outside: readonly (number | bigint)[];
  /** Direction of the chain's buffers (default device-writable). */
  writable?: boolean;
}

/**
 * Writes a malformed chain of `kind` from `slots[0]` and returns its head;
 * publishing it in the available ring is the caller's. Draws from `rng` for
 * the details (the bad next index, table length, address).
 */
export function writeMalformedChain(kind: MalformedChainKind, o: MalformedChainOptions): number {
  const { queue: q, scratch: buf, rng } = o;
  const WF = (o.writable ?? true) ? VIRTQ_DESC_F_WRITE : 0;
  const NX = VIRTQ_DESC_F_NEXT;
  const IN = VIRTQ_DESC_F_INDIRECT;
  const need = malformedChainSlots(kind);
  if (o.slots.length < need) throw new RangeError(`a ${kind} chain needs ${need} descriptor slots`);
  const a = o.slots[0]!;
  const b = o.slots[1] ?? a;
  switch (kind) {
    case "loop":
      q.writeDescriptor(a, { address: buf, length: 8, flags: WF | NX, next: b });
      q.writeDescriptor(b, { address: buf + 8, length: 8, flags: WF | NX, next: a });
      break;
    case "next-outside-table":
      q.writeDescriptor(a, { address: buf, length: 8, flags: WF | NX, next: q.size + rng.int(1000) });
      break;
    case "bad-table-length":
      q.writeDescriptor(a, { address: buf, length: rng.pick([0, 8, 17, 24]), flags: IN, next: 0 });
      break;
    case "table-outside-ram":
      q.writeDescriptor(a, { address: rng.pick(o.outside), length: 32, flags: IN, next: 0 });
      break;
    case "nested-table":
      writeDescriptor(o.memory, buf, 0, { address: buf + 32, length: 16, flags: IN, next: 0 });
      q.writeDescriptor(a, { address: buf, length: 16, flags: IN, next: 0 });
      break;
    case "table-with-next":
      q.writeDescriptor(a, { address: buf, length: 16, flags: IN | NX, next: 0 });
      break;
    case "buffer-outside-ram":
      q.writeDescriptor(a, { address: buf, length: 16, flags: WF | NX, next: b });
      q.writeDescriptor(b, {
        address: rng.pick(o.outside),
        length: rng.pick([0, 1, 512, 4096]),
        flags: WF,
        next: 0,
      });
      break;
    case "readable-after-writable":
      q.writeDescriptor(a, { address: buf + 16, length: 1, flags: VIRTQ_DESC_F_WRITE | NX, next: b });
      q.writeDescriptor(b, { address: buf, length: 16, flags: 0, next: 0 });
      break;
  }
  return a;
}
