import {
  DeviceStatus,
  NO_VECTOR,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from "../constants.js";
import type { IntxLine, MsixSink } from "../interrupts.js";
import type { GuestMemoryAccess } from "../memory.js";
import { needEvent, type QueueConfig, splitRingSizes } from "../queue.js";
import { GuestRange } from "../ring.js";
import type { DriverTransport } from "./transport.js";

/** A first-fit allocator over a range of guest memory (the simulated driver's heap). */
export class GuestAllocator {
  readonly base: number;
  readonly size: number;
  /** Free blocks [address, length], sorted by address, coalesced. */
  #free: [number, number][];
  readonly #sizes = new Map<number, [number, number]>();

  constructor(base: number, size: number) {
    this.base = base;
    this.size = size;
    this.#free = [[base, size]];
  }

  /** Allocates `length` bytes aligned to `align`; throws when the heap is exhausted. */
  alloc(length: number, align = 16): number {
    const len = Math.max(1, length);
    for (let i = 0; i < this.#free.length; i++) {
      const [start, flen] = this.#free[i]!;
      const addr = Math.ceil(start / align) * align;
      const pad = addr - start;
      if (pad + len > flen) continue;
      const rest: [number, number][] = [];
      if (pad > 0) rest.push([start, pad]);
      if (pad + len < flen) rest.push([addr + len, flen - pad - len]);
      this.#free.splice(i, 1, ...rest);
      this.#sizes.set(addr, [addr, len]);
      return addr;
    }
    throw new Error(`guest heap exhausted allocating ${length} bytes`);
  }

  free(address: number): void {
    const block = this.#sizes.get(address);
    if (!block) throw new Error(`free of unallocated 0x${address.toString(16)}`);
    this.#sizes.delete(address);
    const [a, l] = block;
    let i = 0;
    while (i < this.#free.length && this.#free[i]![0] < a) i++;
    this.#free.splice(i, 0, [a, l]);
    // Coalesce with neighbours.
    const merged: [number, number][] = [];
    for (const b of this.#free) {
      const last = merged[merged.length - 1];
      if (last && last[0] + last[1] === b[0]) last[1] += b[1];
      else merged.push([b[0], b[1]]);
    }
    this.#free = merged;
  }

  /** Bytes currently allocated. */
  get used(): number {
    let n = 0;
    for (const [, l] of this.#sizes.values()) n += l;
    return n;
  }
}

/** Records interrupts, standing in for the VMM's irqfds / interrupt controller. */
export class InterruptRecorder implements MsixSink, IntxLine {
  readonly vectors = new Map<number, number>();
  /** Current INTx / mmio line level. */
  level = false;
  raises = 0;

  signalVector(vector: number): void {
    this.vectors.set(vector, (this.vectors.get(vector) ?? 0) + 1);
  }
  raise(): void {
    this.level = true;
    this.raises++;
  }
  lower(): void {
    this.level = false;
  }
  /** How often `vector` fired. */
  count(vector: number): number {
    return this.vectors.get(vector) ?? 0;
  }
  clear(): void {
    this.vectors.clear();
    this.raises = 0;
  }
}

/** A raw split-ring descriptor, for building chains by hand (including malformed ones). */
export interface RawDescriptor {
  address: number | bigint;
  length: number;
  flags: number;
  next: number;
}

/** What the driver offers in one request. */
export interface ChainRequest {
  /** Device-readable buffers (the bytes are copied into freshly allocated guest buffers). */
  readable?: readonly Uint8Array[];
  /** Device-writable buffer lengths. */
  writable?: readonly number[];
  /** Put the buffers in an indirect table (one ring descriptor). */
  indirect?: boolean;
}

/** One used element as the driver sees it. */
export interface UsedBuffer {
  id: number;
  len: number;
  /** The first `len` bytes of the chain's writable buffers, concatenated (empty for raw chains). */
  written: Uint8Array;
}

/** What a {@link SimQueue} needs from its driver. */
export interface SimQueueHost {
  readonly memory: GuestMemoryAccess;
  readonly allocator: GuestAllocator;
  /** VIRTIO_F_EVENT_IDX negotiated (decides how {@link SimQueue.kickIfNeeded} reads suppression). */
  readonly eventIdx: boolean;
  /** Rings queue `index`'s doorbell. */
  notify(index: number): void;
}

interface Outstanding {
  descriptors: number[];
  buffers: number[];
  writable: { address: number; length: number }[];
}

/**
 * The driver side of one split virtqueue in the simulator: owns the rings in
 * guest memory, a free list of descriptors, and the buffers of in-flight
 * requests. The `raw*` / `write*` methods bypass all bookkeeping, for building
 * malformed rings.
 */
export class SimQueue {
  readonly index: number;
  readonly size: number;
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  readonly vector: number;
  readonly #host: SimQueueHost;
  readonly #memory: GuestMemoryAccess;
  /** The rings, checked once (a DataView over RAM when contiguous): no per-access lookup. */
  readonly #avail: GuestRange;
  readonly #used: GuestRange;
  #freeDesc: number[];
  #availIdx = 0;
  #lastUsed = 0;
  #kickedAt = 0;
  readonly #outstanding = new Map<number, Outstanding>();
  /**
   * With EVENT_IDX, {@link pollUsed} sets used_event to the new position, asking
   * for an interrupt on the next used buffer (what an interrupt-driven Linux
   * driver does). Turn off to drive used_event by hand.
   */
  autoUsedEvent = true;

  constructor(
    host: SimQueueHost,
    index: number,
    size: number,
    rings: { descTable: number; availRing: number; usedRing: number },
    vector: number,
  ) {
    this.#host = host;
    this.#memory = host.memory;
    this.index = index;
    this.size = size;
    this.descTable = rings.descTable;
    this.availRing = rings.availRing;
    this.usedRing = rings.usedRing;
    this.vector = vector;
    const sizes = splitRingSizes(size);
    this.#avail = new GuestRange(this.#memory, rings.availRing, sizes.availRing);
    this.#used = new GuestRange(this.#memory, rings.usedRing, sizes.usedRing);
    this.#freeDesc = Array.from({ length: size }, (_, i) => i);
  }

  /** Descriptors not in use by an outstanding request. */
  get freeDescriptors(): number {
    return this.#freeDesc.length;
  }

  /** Requests submitted and not yet seen in the used ring. */
  get inFlight(): number {
    return this.#outstanding.size;
  }

  /** The driver's shadow of avail.idx. */
  get availIdx(): number {
    return this.#availIdx;
  }

  /**
   * Allocates buffers, fills readable ones, writes the descriptors (direct or
   * one indirect table), publishes the head in the available ring and returns
   * the head id. Does not notify: call {@link kick}.
   */
  submit(req: ChainRequest): number {
    const mem = this.#memory;
    const alloc = this.#host.allocator;
    const parts: { address: number; length: number; writable: boolean }[] = [];
    const buffers: number[] = [];
    for (const data of req.readable ?? []) {
      const a = alloc.alloc(data.length, 8);
      buffers.push(a);
      mem.write(a, data);
      parts.push({ address: a, length: data.length, writable: false });
    }
    const writable: { address: number; length: number }[] = [];
    for (const length of req.writable ?? []) {
      const a = alloc.alloc(length, 8);
      buffers.push(a);
      mem.fill(a, length, 0);
      parts.push({ address: a, length, writable: true });
      writable.push({ address: a, length });
    }
    if (parts.length === 0) throw new Error("a chain needs at least one buffer");
    const descriptors: number[] = [];
    const take = (): number => {
      const d = this.#freeDesc.shift();
      if (d === undefined) throw new Error(`queue ${this.index}: no free descriptors`);
      descriptors.push(d);
      return d;
    };
    let head: number;
    if (req.indirect) {
      const table = alloc.alloc(parts.length * 16, 16);
      buffers.push(table);
      parts.forEach((p, i) => {
        const last = i === parts.length - 1;
        writeDescriptor(mem, table, i, {
          address: p.address,
          length: p.length,
          flags: (p.writable ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT),
          next: last ? 0 : i + 1,
        });
      });
      head = take();
      this.writeDescriptor(head, {
        address: table,
        length: parts.length * 16,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
      });
    } else {
      if (parts.length > this.#freeDesc.length) {
        for (const b of buffers) alloc.free(b);
        throw new Error(
          `queue ${this.index}: ${parts.length} descriptors needed, ${this.#freeDesc.length} free`,
        );
      }
      const ids = parts.map(() => take());
      head = ids[0]!;
      parts.forEach((p, i) => {
        const next = ids[i + 1];
        this.writeDescriptor(ids[i]!, {
          address: p.address,
          length: p.length,
          flags: (p.writable ? VIRTQ_DESC_F_WRITE : 0) | (next !== undefined ? VIRTQ_DESC_F_NEXT : 0),
          next: next ?? 0,
        });
      });
    }
    this.#outstanding.set(head, { descriptors, buffers, writable });
    this.publish(head);
    return head;
  }

  /** Puts `head` in the next available-ring slot and bumps avail.idx (no bookkeeping). */
  publish(head: number): void {
    const slot = this.#availIdx % this.size;
    this.#avail.setU16(4 + 2 * slot, head);
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    this.#avail.setU16(2, this.#availIdx);
  }

  /** Rings the doorbell unconditionally. */
  kick(): void {
    this.#kickedAt = this.#availIdx;
    this.#host.notify(this.index);
  }

  /**
   * Rings the doorbell only if the device asked for it (§2.7.10, driver side):
   * avail_event with EVENT_IDX, else the used ring's NO_NOTIFY flag.
   */
  kickIfNeeded(): boolean {
    const old = this.#kickedAt;
    const now = this.#availIdx;
    const need = this.#host.eventIdx
      ? needEvent(this.availEvent(), now, old)
      : (this.usedFlags() & VIRTQ_USED_F_NO_NOTIFY) === 0;
    if (need) this.kick();
    else this.#kickedAt = now;
    return need;
  }

  /** New used elements since the last call; frees their descriptors and buffers. */
  pollUsed(): UsedBuffer[] {
    const mem = this.#memory;
    const out: UsedBuffer[] = [];
    const idx = this.usedIdx();
    while (this.#lastUsed !== idx) {
      const o = 4 + 8 * (this.#lastUsed % this.size);
      const id = this.#used.u32(o);
      const len = this.#used.u32(o + 4);
      this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
      const req = this.#outstanding.get(id);
      let written = new Uint8Array(0);
      if (req) {
        this.#outstanding.delete(id);
        const total = req.writable.reduce((n, w) => n + w.length, 0);
        written = new Uint8Array(Math.min(len, total));
        let at = 0;
        for (const w of req.writable) {
          if (at >= written.length) break;
          const n = Math.min(w.length, written.length - at);
          written.set(mem.read(w.address, n), at);
          at += n;
        }
        for (const b of req.buffers) this.#host.allocator.free(b);
        this.#freeDesc.push(...req.descriptors);
      }
      out.push({ id, len, written });
    }
    if (this.#host.eventIdx && this.autoUsedEvent) this.setUsedEvent(this.#lastUsed);
    return out;
  }

  /** Polls until `count` used elements arrived (devices working in a worker). */
  async waitUsed(count = 1, timeoutMs = 5000): Promise<UsedBuffer[]> {
    const got: UsedBuffer[] = [];
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      got.push(...this.pollUsed());
      if (got.length >= count) return got;
      if (Date.now() > deadline)
        throw new Error(`queue ${this.index}: ${got.length}/${count} used elements after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  // ---- raw ring access ----

  writeDescriptor(index: number, d: RawDescriptor): void {
    writeDescriptor(this.#memory, this.descTable, index, d);
  }
  readDescriptor(index: number): RawDescriptor {
    return readDescriptor(this.#memory, this.descTable, index);
  }
  /** Writes avail.idx directly (and the driver's shadow of it). */
  setAvailIdx(idx: number): void {
    this.#availIdx = idx & 0xffff;
    this.#avail.setU16(2, this.#availIdx);
  }
  /** Writes one available-ring slot directly. */
  setAvailSlot(slot: number, head: number): void {
    this.#memory.writeU16(this.availRing + 4 + 2 * slot, head);
  }
  setAvailFlags(flags: number): void {
    this.#avail.setU16(0, flags);
  }
  /** used_event (EVENT_IDX): the used index at which the driver wants an interrupt. */
  setUsedEvent(v: number): void {
    this.#avail.setU16(4 + 2 * this.size, v);
  }
  usedIdx(): number {
    return this.#used.u16(2);
  }
  usedFlags(): number {
    return this.#used.u16(0);
  }
  availEvent(): number {
    return this.#used.u16(4 + 8 * this.size);
  }
  /** The driver's position in the used ring. */
  get lastUsed(): number {
    return this.#lastUsed;
  }
  /** Frees the buffers of every outstanding request (after a device reset). */
  releaseAll(): void {
    for (const req of this.#outstanding.values()) for (const b of req.buffers) this.#host.allocator.free(b);
    this.#outstanding.clear();
    this.#freeDesc = Array.from({ length: this.size }, (_, i) => i);
  }

  /** Moves the driver's shadow indices, e.g. to start near the 65535→0 wrap. */
  setIndices(availIdx: number, lastUsed: number): void {
    this.setAvailIdx(availIdx);
    this.#lastUsed = lastUsed & 0xffff;
    this.#kickedAt = this.#availIdx;
  }
}

export function writeDescriptor(
  mem: GuestMemoryAccess,
  table: number,
  index: number,
  d: RawDescriptor,
): void {
  const o = table + 16 * index;
  mem.writeU64(o, BigInt.asUintN(64, BigInt(d.address)));
  mem.writeU32(o + 8, d.length >>> 0);
  mem.writeU16(o + 12, d.flags & 0xffff);
  mem.writeU16(o + 14, d.next & 0xffff);
}

export function readDescriptor(mem: GuestMemoryAccess, table: number, index: number): RawDescriptor {
  const o = table + 16 * index;
  return {
    address: mem.readU64(o),
    length: mem.readU32(o + 8),
    flags: mem.readU16(o + 12),
    next: mem.readU16(o + 14),
  };
}

export interface SimulatorOptions {
  transport: DriverTransport;
  memory: GuestMemoryAccess;
  /** Guest memory the simulated driver allocates rings and buffers from. */
  heap: { address: number; size: number };
}

export interface QueueSetupOptions {
  /** Default: the device's maximum. */
  size?: number;
  /** MSI-X vector (default: 1 + index when MSI-X is in use, else none). */
  vector?: number;
  /** Ring addresses to use instead of allocating (e.g. outside RAM, for hostile tests). */
  rings?: { descTable: number; availRing: number; usedRing: number };
}

/**
 * A guest driver in a box, modelled on rust-vmm's mock.rs but driving a real
 * transport: resets and initialises the device (§3.1.1), negotiates features,
 * sets up queues in guest memory, submits chains, kicks and collects used
 * buffers, reads device config. Works over {@link PciDriverTransport} and
 * {@link MmioDriverTransport} with plain memory, no KVM.
 */
export class VirtioDriverSimulator implements SimQueueHost {
  readonly transport: DriverTransport;
  readonly memory: GuestMemoryAccess;
  readonly allocator: GuestAllocator;
  readonly queues = new Map<number, SimQueue>();
  #features = 0n;

  constructor(options: SimulatorOptions) {
    this.transport = options.transport;
    this.memory = options.memory;
    if (!this.memory.isValidRange(options.heap.address, options.heap.size))
      throw new RangeError("the simulator heap must be guest RAM");
    this.allocator = new GuestAllocator(options.heap.address, options.heap.size);
  }

  /** Negotiated features (after {@link negotiate}). */
  get features(): bigint {
    return this.#features;
  }

  get eventIdx(): boolean {
    return (this.#features & VIRTIO_F_EVENT_IDX) !== 0n;
  }

  get status(): number {
    return this.transport.getStatus();
  }

  notify(index: number): void {
    this.transport.notify(index);
  }

  /** Writes 0 to the status and checks it reads back 0; frees all queues. */
  reset(): void {
    this.transport.setStatus(0);
    if (this.transport.getStatus() !== 0) throw new Error("device did not reset");
    for (const q of this.queues.values()) {
      q.releaseAll();
      for (const a of [q.descTable, q.availRing, q.usedRing]) {
        try {
          this.allocator.free(a);
        } catch {
          // rings given by the caller were not allocated here
        }
      }
    }
    this.queues.clear();
    this.#features = 0n;
  }

  /**
   * Reset, ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK (§3.1.1 steps
   * 1-6). `wanted` defaults to everything offered; the driver accepts
   * `wanted & offered | VERSION_1`, or exactly `wanted` with `exact`. Throws if
   * the device does not keep FEATURES_OK.
   */
  negotiate(wanted?: bigint, options: { exact?: boolean } = {}): bigint {
    const t = this.transport;
    this.reset();
    t.setStatus(DeviceStatus.ACKNOWLEDGE);
    t.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
    const offered = t.deviceFeatures();
    const f = options.exact ? (wanted ?? offered) : ((wanted ?? offered) & offered) | VIRTIO_F_VERSION_1;
    t.setDriverFeatures(f);
    t.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
    if (!(t.getStatus() & DeviceStatus.FEATURES_OK)) {
      t.setStatus(t.getStatus() | DeviceStatus.FAILED);
      throw new Error(`device refused features 0x${f.toString(16)}`);
    }
    this.#features = f;
    return f;
  }

  /** Allocates and programs queue `index`, assigns its vector, enables it. */
  setupQueue(index: number, options: QueueSetupOptions = {}): SimQueue {
    const t = this.transport;
    t.selectQueue(index);
    const max = t.queueMaxSize();
    if (max === 0) throw new Error(`queue ${index} does not exist`);
    const size = options.size ?? max;
    t.setQueueSize(size);
    const sizes = splitRingSizes(size);
    const rings = options.rings ?? {
      descTable: this.allocator.alloc(sizes.descTable, 16),
      availRing: this.allocator.alloc(sizes.availRing, 2),
      usedRing: this.allocator.alloc(sizes.usedRing, 4),
    };
    if (!options.rings) {
      this.memory.fill(rings.descTable, sizes.descTable, 0);
      this.memory.fill(rings.availRing, sizes.availRing, 0);
      this.memory.fill(rings.usedRing, sizes.usedRing, 0);
    }
    t.setQueueAddresses(rings.descTable, rings.availRing, rings.usedRing);
    let vector = NO_VECTOR;
    if (t.msixVectors > 0) {
      vector = t.setQueueVector(options.vector ?? Math.min(1 + index, t.msixVectors - 1));
      if (t.setConfigVector(0) !== 0) throw new Error("config vector refused");
    }
    t.enableQueue();
    const q = new SimQueue(this, index, size, rings, vector);
    this.queues.set(index, q);
    return q;
  }

  /** Sets DRIVER_OK (§3.1.1 step 8). Returns the status read back. */
  driverOk(): number {
    const t = this.transport;
    t.setStatus(t.getStatus() | DeviceStatus.DRIVER_OK);
    return t.getStatus();
  }

  /**
   * Full bring-up: negotiate, set up `queues` (default all, at max size),
   * DRIVER_OK. Returns the negotiated features.
   */
  init(options: { features?: bigint; queues?: number[]; queueSize?: number } = {}): bigint {
    const f = this.negotiate(options.features);
    const n = this.transport.numQueues();
    const list = options.queues ?? Array.from({ length: n }, (_, i) => i);
    for (const i of list)
      this.setupQueue(i, options.queueSize !== undefined ? { size: options.queueSize } : {});
    const s = this.driverOk();
    if (!(s & DeviceStatus.DRIVER_OK) || s & DeviceStatus.DEVICE_NEEDS_RESET)
      throw new Error(`device did not start: status 0x${s.toString(16)}`);
    return f;
  }

  queue(index: number): SimQueue {
    const q = this.queues.get(index);
    if (!q) throw new Error(`queue ${index} is not set up`);
    return q;
  }

  /** Reads device config consistently (retries while config_generation changes, §2.5.1). */
  readConfig(offset: number, length: number): Uint8Array {
    const t = this.transport;
    for (let tries = 0; tries < 100; tries++) {
      const before = t.configGeneration();
      const data = t.readConfig(offset, length);
      if (t.configGeneration() === before) return data;
    }
    throw new Error("config generation kept changing");
  }

  writeConfig(offset: number, data: Uint8Array): void {
    this.transport.writeConfig(offset, data);
  }

  /** Reads and acknowledges the ISR / InterruptStatus. */
  takeInterruptStatus(): number {
    return this.transport.takeInterruptStatus();
  }
}

/**
 * A driver-side split queue over plain memory with no transport (rust-vmm's
 * `MockSplitQueue`): rings allocated from `heap`, plus the {@link QueueConfig}
 * to build the device-side {@link index!Queue} over the same memory.
 */
export function mockSplitQueue(
  memory: GuestMemoryAccess,
  options: { size: number; heap: { address: number; size: number }; eventIdx?: boolean },
): { driver: SimQueue; config: QueueConfig; allocator: GuestAllocator; notifications: number[] } {
  const allocator = new GuestAllocator(options.heap.address, options.heap.size);
  const sizes = splitRingSizes(options.size);
  const rings = {
    descTable: allocator.alloc(sizes.descTable, 16),
    availRing: allocator.alloc(sizes.availRing, 2),
    usedRing: allocator.alloc(sizes.usedRing, 4),
  };
  memory.fill(rings.descTable, sizes.descTable, 0);
  memory.fill(rings.availRing, sizes.availRing, 0);
  memory.fill(rings.usedRing, sizes.usedRing, 0);
  const notifications: number[] = [];
  const host: SimQueueHost = {
    memory,
    allocator,
    eventIdx: options.eventIdx ?? false,
    notify: (i) => {
      notifications.push(i);
    },
  };
  const driver = new SimQueue(host, 0, options.size, rings, NO_VECTOR);
  return {
    driver,
    config: { size: options.size, ...rings, eventIdx: options.eventIdx ?? false },
    allocator,
    notifications,
  };
}
