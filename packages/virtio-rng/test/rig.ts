// Test rig: the rng device behind virtio-pci or virtio-mmio, driven by the
// virtio driver simulator, with a fill function that records exactly which
// guest bytes the device wrote (and writes a known stream there), and a
// chain builder that surrounds every buffer with guard bytes.
import {
  type GuestMemoryAccess,
  PlainGuestMemory,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VirtioMmioTransport,
  VirtioPciTransport,
} from "@tskvm/virtio";
import {
  type GuestAllocator,
  InterruptRecorder,
  MmioDriverTransport,
  PciDriverTransport,
  type SimQueue,
  VirtioDriverSimulator,
  writeDescriptor,
} from "@tskvm/virtio/testing";
import { VirtioRngDevice, type VirtioRngDeviceOptions } from "../src/index.js";

/** What an untouched writable buffer holds. */
export const FILL = 0xa5;
/** What the guard bytes around every buffer hold. */
export const GUARD = 0x5a;
export const GUARD_LEN = 16;

/** Byte `i` of the stream {@link RecordingFill} writes (never FILL or GUARD, so a write always shows). */
export function streamByte(i: number): number {
  const b = (Math.imul(i, 0x9e3779b1) >>> 24) & 0xff;
  return b === FILL || b === GUARD ? b ^ 0x01 : b;
}

/**
 * A `fill` for the device: writes the deterministic stream and logs every
 * view it was given as guest address ranges. Views must alias guest RAM (the
 * device fills in place) — anything else is recorded as an error.
 */
export class RecordingFill {
  /** Guest ranges written, in order, adjacent ones merged. */
  readonly ranges: { address: number; length: number }[] = [];
  readonly errors: string[] = [];
  calls = 0;
  largest = 0;
  #next = 0;
  readonly #bases = new Map<ArrayBufferLike, number>();

  constructor(memory: PlainGuestMemory, regions: readonly { address: number; size: number }[]) {
    for (const r of regions) {
      // Every region's views share one buffer; its byteOffset 0 is the region base.
      const v = memory.view(r.address, 1);
      this.#bases.set(v.buffer, r.address - v.byteOffset);
    }
  }

  readonly fill = (view: Uint8Array): void => {
    this.calls++;
    this.largest = Math.max(this.largest, view.length);
    const base = this.#bases.get(view.buffer);
    if (base === undefined) {
      this.errors.push(`a view of ${view.length} bytes that is not guest RAM`);
      return;
    }
    const address = base + view.byteOffset;
    for (let i = 0; i < view.length; i++) view[i] = streamByte(this.#next++);
    const last = this.ranges[this.ranges.length - 1];
    if (last && last.address + last.length === address) last.length += view.length;
    else if (view.length > 0) this.ranges.push({ address, length: view.length });
  };

  /** Stream position: total bytes written. */
  get written(): number {
    return this.#next;
  }

  /** Takes the logged ranges (and the stream offset they started at). */
  take(): { start: number; ranges: { address: number; length: number }[] } {
    const total = this.ranges.reduce((n, r) => n + r.length, 0);
    const out = { start: this.#next - total, ranges: this.ranges.splice(0) };
    return out;
  }
}

/** The guest ranges a filled chain's writable buffers cover, in order (empty ones left out). */
export function writableRanges(sub: Submitted): { address: number; length: number }[] {
  return sub.parts
    .filter((p) => p.writable && p.length > 0)
    .map((p) => ({ address: Number(p.address), length: p.length }));
}

/** One buffer of a test chain. */
export interface Part {
  length: number;
  writable: boolean;
  /** Put it here instead of allocating (anywhere, RAM or not); no guards. */
  address?: number | bigint;
}

export interface Placed {
  address: number | bigint;
  length: number;
  writable: boolean;
  /** Guards were written around it (allocated buffers only). */
  guarded: boolean;
  /** What it held when submitted. */
  before: Uint8Array;
}

export interface Submitted {
  head: number;
  parts: Placed[];
  descriptors: number[];
  allocations: number[];
}

/** A driver for the rng queue on top of the simulator's raw ring access. */
export class RngTestDriver {
  readonly q: SimQueue;
  readonly memory: GuestMemoryAccess;
  readonly alloc: GuestAllocator;
  #free: number[];
  readonly inflight = new Map<number, Submitted>();

  constructor(q: SimQueue, memory: GuestMemoryAccess, alloc: GuestAllocator) {
    this.q = q;
    this.memory = memory;
    this.alloc = alloc;
    this.#free = Array.from({ length: q.size }, (_, i) => i);
  }

  get freeDescriptors(): number {
    return this.#free.length;
  }

  /** Buffers with guard bytes around them, readable ones holding a pattern, writable ones FILL. */
  submit(parts: readonly Part[], options: { indirect?: boolean; seed?: number } = {}): Submitted {
    const mem = this.memory;
    const placed: Placed[] = [];
    const allocations: number[] = [];
    let seed = options.seed ?? 1;
    for (const p of parts) {
      if (p.address !== undefined) {
        placed.push({ ...p, address: p.address, guarded: false, before: new Uint8Array(0) });
        continue;
      }
      const block = this.alloc.alloc(p.length + 2 * GUARD_LEN, 8);
      allocations.push(block);
      mem.fill(block, GUARD_LEN, GUARD);
      mem.fill(block + GUARD_LEN + p.length, GUARD_LEN, GUARD);
      const a = block + GUARD_LEN;
      if (p.writable) mem.fill(a, p.length, FILL);
      else for (let i = 0; i < p.length; i++) mem.writeU8(a + i, (seed++ * 31 + 7) & 0xff);
      placed.push({
        address: a,
        length: p.length,
        writable: p.writable,
        guarded: true,
        before: mem.read(a, p.length),
      });
    }
    const descriptors: number[] = [];
    const take = (): number => {
      const d = this.#free.shift();
      if (d === undefined) throw new Error("no free descriptors");
      descriptors.push(d);
      return d;
    };
    let head: number;
    if (options.indirect) {
      const table = this.alloc.alloc(Math.max(1, placed.length) * 16, 16);
      allocations.push(table);
      placed.forEach((d, i) => {
        const last = i === placed.length - 1;
        writeDescriptor(mem, table, i, {
          address: d.address,
          length: d.length,
          flags: (d.writable ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT),
          next: last ? 0 : i + 1,
        });
      });
      head = take();
      this.q.writeDescriptor(head, {
        address: table,
        length: placed.length * 16,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
      });
    } else {
      if (placed.length > this.#free.length) throw new Error("not enough free descriptors");
      const ids = placed.map(() => take());
      head = ids[0]!;
      placed.forEach((d, i) => {
        const next = ids[i + 1];
        this.q.writeDescriptor(ids[i]!, {
          address: d.address,
          length: d.length,
          flags: (d.writable ? VIRTQ_DESC_F_WRITE : 0) | (next !== undefined ? VIRTQ_DESC_F_NEXT : 0),
          next: next ?? 0,
        });
      });
    }
    const s: Submitted = { head, parts: placed, descriptors, allocations };
    this.inflight.set(head, s);
    this.q.publish(head);
    return s;
  }

  /** Publishes a chain of raw descriptors written by `write(ids)` (any flags, addresses, loops). */
  submitRaw(count: number, write: (ids: number[]) => void, allocations: number[] = []): Submitted {
    if (count > this.#free.length) throw new Error("not enough free descriptors");
    const ids = this.#free.splice(0, count);
    write(ids);
    const s: Submitted = { head: ids[0]!, parts: [], descriptors: ids, allocations };
    this.inflight.set(s.head, s);
    this.q.publish(s.head);
    return s;
  }

  /** Used elements since the last call, with what was submitted; frees descriptors and buffers. */
  reap(): { len: number; sub: Submitted }[] {
    const out: { len: number; sub: Submitted }[] = [];
    for (const u of this.q.pollUsed()) {
      const sub = this.inflight.get(u.id);
      if (!sub) throw new Error(`used id ${u.id} was not in flight`);
      this.inflight.delete(u.id);
      out.push({ len: u.len, sub });
    }
    return out;
  }

  /** Frees what a reaped chain held (after checking it). */
  release(sub: Submitted): void {
    for (const a of sub.allocations) this.alloc.free(a);
    this.#free.push(...sub.descriptors);
  }

  /** Forgets every chain in flight (after a device reset). */
  abandon(): void {
    for (const s of this.inflight.values()) for (const a of s.allocations) this.alloc.free(a);
    this.inflight.clear();
    this.#free = Array.from({ length: this.q.size }, (_, i) => i);
  }
}

/**
 * Checks one completed chain: guards and readable buffers untouched; with
 * `len > 0` every writable buffer fully written with the stream from `start`,
 * else untouched. Returns the problems found (empty when fine).
 */
export function checkChain(memory: GuestMemoryAccess, sub: Submitted, len: number, start: number): string[] {
  const problems: string[] = [];
  let at = start;
  for (const [i, p] of sub.parts.entries()) {
    if (!p.guarded || typeof p.address !== "number") {
      // A buffer at an address of the test's choosing (maybe overlapping others): the recorder's
      // ranges say whether it was filled; the stream moves on past it.
      if (p.writable && len > 0) at += p.length;
      continue;
    }
    const a = p.address;
    const lo = memory.read(a - GUARD_LEN, GUARD_LEN);
    const hi = memory.read(a + p.length, GUARD_LEN);
    if (lo.some((b) => b !== GUARD) || hi.some((b) => b !== GUARD))
      problems.push(`buffer ${i}: guard bytes changed`);
    const now = memory.read(a, p.length);
    if (!p.writable || len === 0) {
      if (!Buffer.from(now).equals(Buffer.from(p.before)))
        problems.push(`buffer ${i} (${p.writable ? "writable" : "readable"}) changed`);
      continue;
    }
    for (let k = 0; k < p.length; k++) {
      if (now[k] !== streamByte(at + k)) {
        problems.push(`buffer ${i}: byte ${k} is ${now[k]}, not stream byte ${at + k}`);
        break;
      }
    }
    at += p.length;
  }
  return problems;
}

export interface RigOptions extends VirtioRngDeviceOptions {
  transport?: "pci" | "mmio";
  /** Features the driver accepts (default: all offered). */
  features?: bigint;
  /** Guest RAM regions (default one of 16 MiB at 0); the heap is [64 KiB, 64 KiB + heapSize) */
  regions?: { address: number; size: number }[];
  heapSize?: number;
  /** Wrap guest memory as the device sees it (e.g. an audit). */
  wrapMemory?: (m: PlainGuestMemory) => GuestMemoryAccess;
  /** Use the device's default fill (the host CSPRNG) instead of the recording one. */
  realRandom?: boolean;
}

export function rngRig(options: RigOptions = {}) {
  const {
    transport: kind = "pci",
    features,
    regions = [{ address: 0, size: 16 << 20 }],
    heapSize = (8 << 20) - 0x10000,
    wrapMemory,
    realRandom,
    ...deviceOptions
  } = options;
  const plain = new PlainGuestMemory(regions);
  const memory = wrapMemory ? wrapMemory(plain) : plain;
  const recorder = new RecordingFill(plain, regions);
  const device = new VirtioRngDevice(realRandom ? deviceOptions : { fill: recorder.fill, ...deviceOptions });
  const irq = new InterruptRecorder();
  let pci: VirtioPciTransport | undefined;
  let mmio: VirtioMmioTransport | undefined;
  let driverTransport: PciDriverTransport | MmioDriverTransport;
  if (kind === "pci") {
    pci = new VirtioPciTransport({ device, memory, msix: irq, intx: irq });
    driverTransport = new PciDriverTransport(pci);
  } else {
    mmio = new VirtioMmioTransport({ device, memory, irq, base: 0xd000_0000 });
    driverTransport = new MmioDriverTransport(mmio);
  }
  const sim = new VirtioDriverSimulator({
    transport: driverTransport,
    memory: plain,
    heap: { address: 0x10000, size: heapSize },
  });
  const negotiated = sim.init(features !== undefined ? { features } : {});
  let driver = new RngTestDriver(sim.queue(0), plain, sim.allocator);
  const core = (pci ?? mmio)!.core;
  return {
    memory: plain,
    deviceMemory: memory,
    device,
    recorder,
    irq,
    pci,
    mmio,
    sim,
    core,
    negotiated,
    get driver() {
      return driver;
    },
    /** Driver reset and bring-up again (after NEEDS_RESET, or to test re-activation). */
    reinit(f?: bigint) {
      driver.abandon();
      sim.init(f !== undefined ? { features: f } : {});
      driver = new RngTestDriver(sim.queue(0), plain, sim.allocator);
      return driver;
    },
  };
}
