// Random chains, many of them wrong, against the rng device behind virtio-pci
// and virtio-mmio (with and without the rate limit). Each outcome is checked
// against an independent reading of the spec (`expected` below): the used
// length, the exact guest ranges the device filled (the recording fill sees
// every view it hands out, in order), guard bytes and readable buffers
// untouched. Chains carry buffers at hostile addresses (0, 2^53, 2^64-1, the
// first and last byte of each RAM region, the hole between them, zero-length
// or not, either direction), are longer than the queue, loop, point outside
// the table, nest indirect tables; now and then the ring itself breaks (the
// device must be DEVICE_NEEDS_RESET, and a driver reset brings it back) or
// the driver resets in the middle of a chain. Guest memory is audited: any
// access outside RAM, or a device write through the memory API anywhere but
// the used ring, fails the run; memory outside the driver's heap must be as
// it was. And the contract of processQueue is held to: when it says nothing
// is left (no retryAfterMs), every chain made available has been answered.
//
// `pnpm test` runs 5,000 chains per configuration; `pnpm fuzz` 500,000
// (VIRTIO_RNG_FUZZ_CHAINS). Replay a failure with VIRTIO_RNG_FUZZ_SEED=<seed>
// (and the same VIRTIO_RNG_FUZZ_CHAINS).
import {
  DeviceStatus,
  type GuestMemoryAccess,
  type PlainGuestMemory,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  writeDescriptor,
} from "@tskvm/virtio";
import { describe, expect, it } from "vitest";
import { checkChain, type Part, type RigOptions, rngRig, type Submitted, writableRanges } from "./rig.js";

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const env = process.env.VIRTIO_RNG_FUZZ_SEED;
const SEED = env !== undefined && env !== "" ? Number(env) >>> 0 : 20261207;
const CHAINS = Number(process.env.VIRTIO_RNG_FUZZ_CHAINS || 5000);
console.log(
  `[virtio-rng fuzz] seed ${SEED}, ${CHAINS} chains per configuration (replay with VIRTIO_RNG_FUZZ_SEED=${SEED} VIRTIO_RNG_FUZZ_CHAINS=${CHAINS})`,
);

// Guest RAM: [0, 8 MiB) with the driver's heap in [64 KiB, 8 MiB - 64 KiB); a hole; [9 MiB, 12 MiB) a
// canary region readable buffers may point at.
const REGIONS = [
  { address: 0, size: 8 << 20 },
  { address: 9 << 20, size: 3 << 20 },
];
const HEAP = { address: 0x10000, size: (8 << 20) - 0x20000 };
const RAM_END = 12 << 20;
/** Where hostile buffers point: every edge of RAM, its hole, and far beyond. */
const EDGES: readonly (number | bigint)[] = [
  0,
  1,
  (8 << 20) - 1,
  8 << 20,
  (8 << 20) + 0x1234,
  (9 << 20) - 1,
  9 << 20,
  RAM_END - 1,
  RAM_END,
  2 ** 32,
  2 ** 53 - 1,
  2n ** 53n,
  2n ** 63n,
  2n ** 64n - 1n,
];
/** In RAM, outside the heap and the canary: where a hostile writable buffer may be filled. */
const SCRATCH: readonly number[] = [0, 0x100, (8 << 20) - 0x8000, (8 << 20) - 1];

/** Independent of PlainGuestMemory: a range is RAM when one region holds it (a zero-length one: its address). */
function inRam(address: number | bigint, length: number): boolean {
  if (typeof address !== "number" || !Number.isSafeInteger(address)) return false;
  return REGIONS.some((r) => address >= r.address && address + Math.max(1, length) <= r.address + r.size);
}

/** What the device must answer for a well-formed list of buffers (§2.7.5, §5.4.6.1). */
function expected(parts: readonly Part[], queueSize: number): number {
  if (parts.length > queueSize) return 0; // more buffers than the queue size (§2.7.5.3.1)
  if (!parts.every((p) => inRam(p.address ?? 0x10000, p.length))) return 0; // a buffer outside RAM
  if (parts.some((p) => !p.writable)) return 0; // readable buffers: the device must not write them
  return parts.reduce((n, p) => n + p.length, 0); // 0 when nothing to fill
}

/**
 * The device's view of guest memory: records any access outside RAM, and any
 * write through the memory API outside the used ring (random bytes go through
 * views from `segments`, which the recording fill checks).
 */
class AuditedMemory implements GuestMemoryAccess {
  readonly violations: string[] = [];
  usedRing: { address: number; length: number } | undefined;
  constructor(readonly inner: PlainGuestMemory) {}
  #check(op: string, address: number, length: number, write = false): void {
    if (this.violations.length >= 20) return;
    if (!this.inner.isValidRange(address, length)) this.violations.push(`${op}(${address}, ${length})`);
    else if (write) {
      const u = this.usedRing;
      if (!u || address < u.address || address + length > u.address + u.length)
        this.violations.push(`${op}(${address}, ${length}) outside the used ring`);
    }
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

/** Merges adjacent ranges (the recorder does the same). */
function merged(ranges: { address: number; length: number }[]): { address: number; length: number }[] {
  const out: { address: number; length: number }[] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last && last.address + last.length === r.address) last.length += r.length;
    else out.push({ ...r });
  }
  return out;
}

interface Counts {
  chains: number;
  filled: number;
  bytes: number;
  len0: number;
  readable: number;
  empty: number;
  hostile: number;
  tooLong: number;
  raw: number;
  ringBreaks: number;
  midResets: number;
  calls: number;
  throttledCalls: number;
  boundedCalls: number;
}

interface Config {
  name: string;
  seed: number;
  queueSize: number;
  options: RigOptions;
  clock?: boolean;
}

async function runFuzz(cfg: Config): Promise<Counts> {
  const rnd = prng(cfg.seed);
  const int = (n: number): number => Math.floor(rnd() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  let t = 0;
  let audited: AuditedMemory | undefined;
  const rig = rngRig({
    regions: REGIONS,
    heapSize: HEAP.size,
    queueSize: cfg.queueSize,
    wrapMemory: (m) => {
      audited = new AuditedMemory(m);
      return audited;
    },
    ...(cfg.clock ? { now: () => t } : {}),
    ...cfg.options,
  });
  const audit = audited!;
  const memory = rig.memory;
  // Memory outside the heap: a pattern that must survive (hostile writable buffers that the device
  // legitimately fills are checked, then restored).
  const outside = [
    { address: 0, length: HEAP.address },
    { address: HEAP.address + HEAP.size, length: (8 << 20) - HEAP.address - HEAP.size },
    { address: 9 << 20, length: 3 << 20 },
  ];
  const original = outside.map((r) => {
    const b = new Uint8Array(r.length);
    for (let i = 0; i < b.length; i++) b[i] = (i * 7 + r.address) & 0xff;
    memory.write(r.address, b);
    return b;
  });
  const restore = (address: number, length: number): void => {
    for (const [i, r] of outside.entries()) {
      const lo = Math.max(address, r.address);
      const hi = Math.min(address + length, r.address + r.length);
      if (lo < hi) memory.write(lo, original[i]!.subarray(lo - r.address, hi - r.address));
    }
  };
  const setUsedRing = (): void => {
    const q = rig.driver.q;
    audit.usedRing = { address: q.usedRing, length: 6 + 8 * q.size };
  };
  setUsedRing();
  const c: Counts = {
    chains: 0,
    filled: 0,
    bytes: 0,
    len0: 0,
    readable: 0,
    empty: 0,
    hostile: 0,
    tooLong: 0,
    raw: 0,
    ringBreaks: 0,
    midResets: 0,
    calls: 0,
    throttledCalls: 0,
    boundedCalls: 0,
  };
  const size = cfg.queueSize;
  let stream = rig.recorder.written;

  const randomPart = (): Part => {
    const writable = rnd() < 0.85;
    const r = rnd();
    const length = r < 0.1 ? 0 : r < 0.5 ? 1 + int(64) : r < 0.95 ? int(4096) : int(40000);
    if (rnd() < 0.06) {
      // A hostile address. A writable buffer that lands in RAM must be somewhere the fill may go.
      const pool = writable
        ? [...EDGES.filter((a) => !inRam(a, 0) || SCRATCH.includes(a as number)), ...SCRATCH]
        : EDGES;
      const address = pick(pool);
      const len = pick([0, 1, 2, 16, 512, length]);
      return { writable, length: len, address };
    }
    return { writable, length };
  };

  /** Builds a malformed chain by hand; the device must answer it with used length 0. */
  const rawChain = (): Submitted | undefined => {
    const d = rig.driver;
    const kind = int(6);
    const WF = VIRTQ_DESC_F_WRITE;
    const NX = VIRTQ_DESC_F_NEXT;
    const IN = VIRTQ_DESC_F_INDIRECT;
    const buf = rig.sim.allocator.alloc(64, 16);
    memory.fill(buf, 64, 0);
    const need = kind === 0 ? 2 : 1;
    if (d.freeDescriptors < need) {
      rig.sim.allocator.free(buf);
      return undefined;
    }
    return d.submitRaw(
      need,
      (ids) => {
        const [a, b] = ids;
        switch (kind) {
          case 0: // a loop of two
            d.q.writeDescriptor(a!, { address: buf, length: 8, flags: WF | NX, next: b! });
            d.q.writeDescriptor(b!, { address: buf + 8, length: 8, flags: WF | NX, next: a! });
            break;
          case 1: // next outside the table
            d.q.writeDescriptor(a!, { address: buf, length: 8, flags: WF | NX, next: size + int(1000) });
            break;
          case 2: // indirect table of a bad length
            d.q.writeDescriptor(a!, { address: buf, length: pick([0, 8, 17, 24]), flags: IN, next: 0 });
            break;
          case 3: // indirect table outside RAM
            d.q.writeDescriptor(a!, { address: pick(EDGES.slice(3)), length: 32, flags: IN, next: 0 });
            break;
          case 4: // nested indirect
            writeDescriptor(memory, buf, 0, { address: buf + 32, length: 16, flags: IN, next: 0 });
            d.q.writeDescriptor(a!, { address: buf, length: 16, flags: IN, next: 0 });
            break;
          default: // indirect with NEXT
            d.q.writeDescriptor(a!, { address: buf, length: 16, flags: IN | NX, next: 0 });
        }
      },
      [buf],
    );
  };

  const drive = (): boolean => {
    // Call until the device says nothing is left, as a host would (advancing the clock when throttled).
    for (let guard = 0; guard < 100_000; guard++) {
      const r = rig.device.processQueue(0);
      c.calls++;
      if (r.bytes > rig.device.maxBytesPerCall) throw new Error(`a call wrote ${r.bytes} bytes`);
      if (r.retryAfterMs === undefined) return true;
      if (r.retryAfterMs > 0) {
        c.throttledCalls++;
        t += rnd() < 0.2 ? int(r.retryAfterMs) : r.retryAfterMs;
      } else c.boundedCalls++;
    }
    return false;
  };

  let done = 0;
  let yielded = 0;
  while (done < CHAINS) {
    if (done - yielded >= 2000) {
      // Let vitest's worker talk to its parent now and then (a long synchronous run times its RPC out).
      yielded = done;
      await new Promise((r) => setImmediate(r));
    }
    const batch: { sub: Submitted; want: number; kind: string }[] = [];
    const n = 1 + int(6);
    for (let i = 0; i < n && done < CHAINS; i++) {
      const d = rig.driver;
      if (rnd() < 0.04) {
        const sub = rawChain();
        if (!sub) break;
        batch.push({ sub, want: 0, kind: "raw" });
        done++;
        continue;
      }
      const tooLong = rnd() < 0.01;
      const count = tooLong ? size + 1 + int(4) : 1 + int(rnd() < 0.2 ? 12 : 3);
      const parts = Array.from({ length: count }, randomPart);
      // Mostly well-ordered (readable first); sometimes not.
      if (rnd() < 0.9) parts.sort((a, b) => Number(a.writable) - Number(b.writable));
      const indirect = tooLong || count > d.freeDescriptors || rnd() < 0.3;
      if (!indirect && count > d.freeDescriptors) break;
      if (indirect && d.freeDescriptors < 1) break;
      let want = expected(parts, size);
      // Readable after writable is malformed (§2.7.4.2).
      const firstW = parts.findIndex((p) => p.writable);
      if (firstW >= 0 && parts.slice(firstW).some((p) => !p.writable)) want = 0;
      let kind = "ok";
      if (count > size) kind = "tooLong";
      else if (parts.some((p) => p.address !== undefined && !inRam(p.address, p.length))) kind = "hostile";
      else if (parts.some((p) => !p.writable)) kind = "readable";
      else if (want === 0) kind = "empty";
      const sub = d.submit(parts, { indirect, seed: done });
      batch.push({ sub, want, kind });
      done++;
    }
    if (batch.length === 0) {
      // Out of descriptors (chains held by a throttled device): keep driving.
    }

    const roll = rnd();
    if (roll < 0.004) {
      // Break the ring: a head outside the table, or avail.idx running away.
      const q = rig.driver.q;
      if (rnd() < 0.5) {
        q.setAvailSlot(q.availIdx % q.size, size + int(60000));
        q.setAvailIdx(q.availIdx + 1);
      } else q.setAvailIdx(q.availIdx + size + 1 + int(1000));
      q.kick();
      drive();
      if (!(rig.core.status & DeviceStatus.DEVICE_NEEDS_RESET))
        throw new Error(`[${cfg.name}] ring broken but the device is not NEEDS_RESET`);
      c.ringBreaks++;
      for (const { sub } of batch) restoreHostile(sub);
      rig.recorder.take();
      stream = rig.recorder.written;
      rig.reinit();
      setUsedRing();
      continue;
    }
    rig.driver.q.kick();
    if (roll < 0.01) {
      // A driver reset in the middle: whatever the device did so far is dropped with the ring.
      c.midResets++;
      rig.reinit();
      setUsedRing();
      for (const { sub } of batch) restoreHostile(sub);
      for (const r of rig.recorder.take().ranges) restore(r.address, r.length);
      stream = rig.recorder.written;
      continue;
    }
    if (!drive()) throw new Error(`[${cfg.name}] the device never finished`);
    const got = rig.driver.reap();
    if (rig.driver.inflight.size !== 0)
      throw new Error(
        `[${cfg.name}] processQueue said nothing is left, but ${rig.driver.inflight.size} chains are unanswered`,
      );
    const { ranges } = rig.recorder.take();
    const wantRanges: { address: number; length: number }[] = [];
    for (const { len, sub } of got) {
      const b = batch.find((x) => x.sub === sub);
      if (!b) throw new Error(`[${cfg.name}] unknown completion ${sub.head}`);
      if (len !== b.want)
        throw new Error(
          `[${cfg.name}] chain ${b.kind} ${JSON.stringify(sub.parts.map((p) => [String(p.address), p.length, p.writable]))}: used length ${len}, expected ${b.want}`,
        );
      const problems = checkChain(memory, sub, len, stream);
      if (problems.length > 0) throw new Error(`[${cfg.name}] chain ${b.kind}: ${problems.join("; ")}`);
      if (len > 0) wantRanges.push(...writableRanges(sub));
      stream += len;
      c.chains++;
      c.bytes += len;
      if (len > 0) c.filled++;
      else c.len0++;
      if (b.kind in c) (c as unknown as Record<string, number>)[b.kind]!++;
      restoreHostile(sub);
      rig.driver.release(sub);
    }
    const a = JSON.stringify(merged(ranges));
    const e = JSON.stringify(merged(wantRanges));
    if (a !== e) throw new Error(`[${cfg.name}] the device filled ${a}, expected ${e}`);
    if (rig.core.status & DeviceStatus.DEVICE_NEEDS_RESET)
      throw new Error(`[${cfg.name}] NEEDS_RESET without a broken ring: ${rig.core.brokenReason?.message}`);
    if (audit.violations.length > 0)
      throw new Error(`[${cfg.name}] bad accesses: ${audit.violations.join(", ")}`);
  }

  function restoreHostile(sub: Submitted): void {
    for (const p of sub.parts)
      if (!p.guarded && typeof p.address === "number" && inRam(p.address, p.length))
        restore(p.address, p.length);
  }

  // Memory outside the heap is as it was, the recorder saw only RAM views, and the device still works.
  for (const [i, r] of outside.entries())
    if (!Buffer.from(memory.read(r.address, r.length)).equals(Buffer.from(original[i]!)))
      throw new Error(`[${cfg.name}] memory outside the heap at 0x${r.address.toString(16)} changed`);
  expect(rig.recorder.errors).toEqual([]);
  expect(audit.violations).toEqual([]);
  const last = rig.driver.submit([{ length: 32, writable: true }]);
  rig.driver.q.kick();
  drive();
  const [fin] = rig.driver.reap();
  expect(fin?.sub).toBe(last);
  expect(fin?.len).toBe(32);
  return c;
}

const CONFIGS: Config[] = [
  {
    name: "pci, EVENT_IDX, 4 KiB and 5 chains per call",
    seed: SEED,
    queueSize: 16,
    options: { transport: "pci", maxBytesPerCall: 4096, maxChainsPerCall: 5 },
  },
  {
    name: "mmio, no EVENT_IDX, rate limit 64 KB/s burst 6000",
    seed: SEED ^ 0x5bd1e995,
    queueSize: 32,
    clock: true,
    options: {
      transport: "mmio",
      features: VIRTIO_F_INDIRECT_DESC,
      rateLimit: { bytesPerSecond: 64_000, burst: 6000 },
    },
  },
  {
    name: "pci, EVENT_IDX, rate limit 1 MB/s burst 100, 2 KiB per call",
    seed: SEED ^ 0x27d4eb2f,
    queueSize: 8,
    clock: true,
    options: {
      transport: "pci",
      features: VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC,
      rateLimit: { bytesPerSecond: 1_000_000, burst: 100 },
      maxBytesPerCall: 2048,
    },
  },
];

describe("virtio-rng fuzz", () => {
  for (const cfg of CONFIGS)
    it(cfg.name, { timeout: Math.max(60_000, CHAINS * 5) }, async () => {
      const c = await runFuzz(cfg);
      console.log(`[virtio-rng fuzz] ${cfg.name}: ${JSON.stringify(c)}`);
      expect(c.chains + c.midResets + c.ringBreaks).toBeGreaterThan(0);
      expect(c.filled).toBeGreaterThan(CHAINS / 4);
      expect(c.hostile).toBeGreaterThan(0);
      expect(c.readable).toBeGreaterThan(0);
      expect(c.empty).toBeGreaterThan(0);
      expect(c.raw).toBeGreaterThan(0);
    });
});
