// A test-side virtio-blk driver on top of the virtio simulator's raw queue
// access: builds chains buffer by buffer (any split, direct or indirect, or
// deliberately malformed), keeps track of where the status byte and the
// writable buffers are, and reads them back on completion.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type DiskImage, openDiskImage } from "@tskvm/disk-image";
import {
  type GuestMemoryAccess,
  PlainGuestMemory,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VirtioPciTransport,
} from "@tskvm/virtio";
import {
  type GuestAllocator,
  InterruptRecorder,
  PciDriverTransport,
  type SimQueue,
  VirtioDriverSimulator,
  writeDescriptor,
} from "@tskvm/virtio/testing";
import { type BlkAio, type BlkDeviceOptions, VirtioBlkDevice } from "../src/index.js";

export interface Part {
  /** Device-readable bytes (copied into a fresh buffer). */
  data?: Uint8Array;
  /** Device-writable length (filled with 0xa5 so untouched bytes show). */
  length?: number;
  writable?: boolean;
  /**
   * A guest address of the caller's choosing (anywhere, RAM or not): nothing is
   * allocated or written there; `data` only gives the length.
   */
  address?: number | bigint;
}

export interface Completion {
  head: number;
  len: number;
  /** The status byte (the last writable byte), or undefined when the chain had none. */
  status: number | undefined;
  /** Copies of the writable buffers, in order (status included in the last). */
  writable: Uint8Array[];
  /** Writable bytes before the status, concatenated. */
  data: Uint8Array;
}

interface InFlight {
  descriptors: number[];
  buffers: number[];
  writable: { address: number | bigint; length: number }[];
}

export const FILL = 0xa5;

export function header(type: number, sector: bigint | number = 0, reserved = 0): Uint8Array {
  const b = new Uint8Array(16);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, type >>> 0, true);
  dv.setUint32(4, reserved >>> 0, true);
  dv.setBigUint64(8, BigInt.asUintN(64, BigInt(sector)), true);
  return b;
}

export function segments(list: { sector: bigint | number; num: number; flags?: number }[]): Uint8Array {
  const b = new Uint8Array(16 * list.length);
  const dv = new DataView(b.buffer);
  list.forEach((s, i) => {
    dv.setBigUint64(16 * i, BigInt.asUintN(64, BigInt(s.sector)), true);
    dv.setUint32(16 * i + 8, s.num >>> 0, true);
    dv.setUint32(16 * i + 12, (s.flags ?? 0) >>> 0, true);
  });
  return b;
}

/** Splits `n` bytes into pieces of random sizes (at least 1 byte each, at most `parts` pieces). */
export function splitSizes(n: number, parts: number, rnd: () => number): number[] {
  if (n === 0 || parts <= 1) return [n];
  const cuts = new Set<number>();
  for (let i = 0; i < parts - 1; i++) cuts.add(1 + Math.floor(rnd() * (n - 1)));
  const sorted = [...cuts].sort((a, b) => a - b);
  const out: number[] = [];
  let prev = 0;
  for (const c of sorted) {
    out.push(c - prev);
    prev = c;
  }
  out.push(n - prev);
  return out;
}

export class BlkTestDriver {
  readonly q: SimQueue;
  readonly memory: GuestMemoryAccess;
  readonly alloc: GuestAllocator;
  #free: number[];
  readonly #inflight = new Map<number, InFlight>();

  constructor(q: SimQueue, memory: GuestMemoryAccess, alloc: GuestAllocator) {
    this.q = q;
    this.memory = memory;
    this.alloc = alloc;
    this.#free = Array.from({ length: q.size }, (_, i) => i);
  }

  get freeDescriptors(): number {
    return this.#free.length;
  }

  get inFlight(): number {
    return this.#inflight.size;
  }

  /** Builds one chain from `parts` (in order; flags as given, so a readable part may follow a writable one). */
  submit(parts: readonly Part[], options: { indirect?: boolean } = {}): number {
    const mem = this.memory;
    const buffers: number[] = [];
    const descs: { address: number | bigint; length: number; writable: boolean }[] = [];
    const writable: { address: number | bigint; length: number }[] = [];
    for (const p of parts) {
      const isW = p.writable ?? p.data === undefined;
      const length = p.data ? p.data.length : (p.length ?? 0);
      let a: number | bigint;
      if (p.address !== undefined) a = p.address;
      else {
        a = this.alloc.alloc(Math.max(1, length), 8);
        buffers.push(a);
        if (p.data) mem.write(a, p.data);
        else mem.fill(a, Math.max(1, length), FILL);
      }
      descs.push({ address: a, length, writable: isW });
      if (isW) writable.push({ address: a, length });
    }
    const ids: number[] = [];
    const take = (): number => {
      const d = this.#free.shift();
      if (d === undefined) throw new Error("no free descriptors");
      ids.push(d);
      return d;
    };
    let head: number;
    if (options.indirect) {
      const table = this.alloc.alloc(descs.length * 16, 16);
      buffers.push(table);
      descs.forEach((d, i) => {
        const last = i === descs.length - 1;
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
        length: descs.length * 16,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
      });
    } else {
      if (descs.length > this.#free.length) throw new Error("not enough free descriptors");
      const list = descs.map(() => take());
      head = list[0]!;
      descs.forEach((d, i) => {
        const next = list[i + 1];
        this.q.writeDescriptor(list[i]!, {
          address: d.address,
          length: d.length,
          flags: (d.writable ? VIRTQ_DESC_F_WRITE : 0) | (next !== undefined ? VIRTQ_DESC_F_NEXT : 0),
          next: next ?? 0,
        });
      });
    }
    this.#inflight.set(head, { descriptors: ids, buffers, writable });
    this.q.publish(head);
    return head;
  }

  /**
   * Publishes a chain made of raw descriptors written by `write(ids)` (any
   * flags, addresses, lengths, loops): the caller gets `count` free
   * descriptor ids; the chain's head is the first.
   */
  submitRaw(count: number, write: (ids: number[]) => void, buffers: number[] = []): number {
    if (count > this.#free.length) throw new Error("not enough free descriptors");
    const ids = this.#free.splice(0, count);
    write(ids);
    this.#inflight.set(ids[0]!, { descriptors: ids, buffers, writable: [] });
    this.q.publish(ids[0]!);
    return ids[0]!;
  }

  kick(): void {
    this.q.kick();
  }

  /** Forgets every chain in flight and frees its buffers (after a device reset). */
  abandon(): void {
    for (const f of this.#inflight.values()) for (const b of f.buffers) this.alloc.free(b);
    this.#inflight.clear();
    this.#free = Array.from({ length: this.q.size }, (_, i) => i);
  }

  /** Collects completions, reads their buffers, frees them. */
  reap(): Completion[] {
    const out: Completion[] = [];
    for (const u of this.q.pollUsed()) {
      const f = this.#inflight.get(u.id);
      if (!f) throw new Error(`used id ${u.id} was not in flight`);
      this.#inflight.delete(u.id);
      // Buffers outside RAM (a hostile chain's) read as empty.
      const writable = f.writable.map((w) =>
        typeof w.address === "number" && this.memory.isValidRange(w.address, w.length)
          ? this.memory.read(w.address, w.length)
          : new Uint8Array(0),
      );
      const all = concat(writable);
      const status = all.length > 0 ? all[all.length - 1] : undefined;
      out.push({
        head: u.id,
        len: u.len,
        status,
        writable,
        data: all.subarray(0, Math.max(0, all.length - 1)),
      });
      for (const b of f.buffers) this.alloc.free(b);
      this.#free.push(...f.descriptors);
    }
    return out;
  }
}

/** Byte-wise equality (fast, unlike a deep equal on big arrays). */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

export interface RigOptions extends BlkDeviceOptions {
  diskSize?: number;
  readOnly?: boolean;
  /** Features the driver accepts (default: all offered). */
  features?: bigint;
  memory?: GuestMemoryAccess;
  /** Simulator heap size (from 0x10000). Default 16 MiB - 128 KiB. */
  heapSize?: number;
  /** Wrap the opened image (e.g. to inject disk errors). */
  wrapImage?: (image: DiskImage) => DiskImage;
  aio?: BlkAio | "auto";
}

/** A raw disk file in a temp dir + device + virtio-pci transport + simulated driver, queue 0 up. */
export function blkRig(options: RigOptions = {}) {
  const dir = mkdtempSync(join(tmpdir(), "virtio-blk-"));
  const path = join(dir, "disk.img");
  const size = options.diskSize ?? 1 << 20;
  const initial = pattern(size, 7);
  writeFileSync(path, initial);
  const opened = openDiskImage(path, { format: "raw", readOnly: options.readOnly ?? false });
  const image = options.wrapImage ? options.wrapImage(opened) : opened;
  const {
    diskSize: _d,
    readOnly: _r,
    features,
    memory: m,
    wrapImage: _w,
    heapSize,
    ...deviceOptions
  } = options;
  const device = new VirtioBlkDevice({ image, ...deviceOptions });
  const memory = m ?? new PlainGuestMemory([{ address: 0, size: 16 << 20 }]);
  const irq = new InterruptRecorder();
  const pci = new VirtioPciTransport({ device, memory, msix: irq, intx: irq });
  const sim = new VirtioDriverSimulator({
    transport: new PciDriverTransport(pci),
    memory,
    heap: { address: 0x10000, size: heapSize ?? (16 << 20) - 0x20000 },
  });
  const negotiated = sim.init(features !== undefined ? { features } : {});
  // One driver per request queue (init set them all up); `driver` is queue 0's.
  const drivers = Array.from(
    { length: device.queueMaxSizes.length },
    (_, i) => new BlkTestDriver(sim.queue(i), memory, sim.allocator),
  );
  const driver = drivers[0]!;
  const run = (parts: readonly Part[], opts: { indirect?: boolean } = {}): Completion => {
    driver.submit(parts, opts);
    driver.kick();
    const done = driver.reap();
    if (done.length !== 1) throw new Error(`expected one completion, got ${done.length}`);
    return done[0]!;
  };
  return {
    dir,
    path,
    initial,
    image: opened,
    device,
    memory,
    irq,
    pci,
    sim,
    negotiated,
    driver,
    drivers,
    run,
    close() {
      opened.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
