// Random chains, many of them wrong, against the rng device behind virtio-pci
// and virtio-mmio (with and without the rate limit). Each outcome is checked
// against an independent reading of the spec (`expected` below): the used
// length, the exact guest ranges the device filled (the recording fill sees
// every view it hands out, in order), guard bytes and readable buffers
// untouched. Chains carry buffers at hostile addresses (the fuzz kit's
// `hostileAddresses` from @tskvm/virtio/testing: 0, 1, 2^32, 2^52, 2^53 − 1,
// 2^53, 2^60, 2^63, 2^64 − 4096, 2^64 − 1, the first and last byte of each RAM
// region, the hole between them; zero-length or not, lengths up to 2^32 − 1,
// either direction), are longer than the queue; the kit's malformed chains
// loop, point outside the table, nest indirect tables, put a buffer outside
// RAM or a readable one after a writable one; now and then the ring itself
// breaks (the device must be DEVICE_NEEDS_RESET, and a driver reset brings it
// back) or the driver resets in the middle of a chain. Guest memory is audited: any
// access outside RAM, or a device write through the memory API anywhere but
// the used ring, fails the run; memory outside the driver's heap must be as
// it was. And the contract of processQueue is held to: when it says nothing
// is left (no retryAfterMs), every chain made available has been answered.
//
// `pnpm test` runs 5,000 chains per configuration; `pnpm fuzz` 500,000
// (VIRTIO_RNG_FUZZ_CHAINS). Replay a failure with VIRTIO_RNG_FUZZ_SEED=<seed>
// (and the same VIRTIO_RNG_FUZZ_CHAINS).
import { DeviceStatus, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "@tskvm/virtio";
import {
  AuditedMemory,
  FuzzRng,
  fuzzCount,
  fuzzSeed,
  HOSTILE_LENGTHS,
  hostileAddresses,
  inRam,
  MALFORMED_CHAIN_KINDS,
  MemoryGuard,
  malformedChainSlots,
  writeMalformedChain,
} from "@tskvm/virtio/testing";
import { describe, expect, it } from "vitest";
import { checkChain, type Part, type RigOptions, rngRig, type Submitted, writableRanges } from "./rig.js";

const SEED = fuzzSeed("VIRTIO_RNG_FUZZ_SEED", 20261207);
const CHAINS = fuzzCount("VIRTIO_RNG_FUZZ_CHAINS", 5000);
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
/** Where hostile buffers point: every edge of RAM, its hole, and far beyond. */
const HOSTILE = hostileAddresses(REGIONS);
/** The hostile addresses outside RAM (for malformed chains). */
const OUTSIDE = HOSTILE.filter((a) => !ram(a, 0));
/** In RAM, outside the heap and the canary: where a hostile writable buffer may be filled. */
const SCRATCH: readonly number[] = [0, 0x100, (8 << 20) - 0x8000, (8 << 20) - 1];

/** Independent of PlainGuestMemory: a range is RAM when one region holds it (a zero-length one: its address). */
function ram(address: number | bigint, length: number): boolean {
  return inRam(REGIONS, address, length);
}

/** What the device must answer for a well-formed list of buffers (§2.7.5, §5.4.6.1). */
function expected(parts: readonly Part[], queueSize: number): number {
  if (parts.length > queueSize) return 0; // more buffers than the queue size (§2.7.5.3.1)
  if (!parts.every((p) => ram(p.address ?? 0x10000, p.length))) return 0; // a buffer outside RAM
  if (parts.some((p) => !p.writable)) return 0; // readable buffers: the device must not write them
  return parts.reduce((n, p) => n + p.length, 0); // 0 when nothing to fill
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
  const rand = new FuzzRng(cfg.seed);
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
  const guard = new MemoryGuard(memory, [
    { address: 0, length: HEAP.address },
    { address: HEAP.address + HEAP.size, length: (8 << 20) - HEAP.address - HEAP.size },
    { address: 9 << 20, length: 3 << 20 },
  ]);
  const setUsedRing = (): void => {
    const q = rig.driver.q;
    audit.writable = [{ address: q.usedRing, length: 6 + 8 * q.size }];
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
    const writable = rand.chance(0.85);
    const r = rand.next();
    const length = r < 0.1 ? 0 : r < 0.5 ? 1 + rand.int(64) : r < 0.95 ? rand.int(4096) : rand.int(40000);
    if (rand.chance(0.06)) {
      // A hostile address. A writable buffer that lands in RAM must be somewhere the fill may go.
      const pool = writable
        ? [...HOSTILE.filter((a) => !ram(a, 0) || SCRATCH.includes(a as number)), ...SCRATCH]
        : HOSTILE;
      const address = rand.pick(pool);
      const len = rand.pick([...HOSTILE_LENGTHS, length]);
      return { writable, length: len, address };
    }
    return { writable, length };
  };

  /** One of the kit's malformed chains; the device must answer it with used length 0. */
  const rawChain = (): Submitted | undefined => {
    const d = rig.driver;
    const kind = rand.pick(MALFORMED_CHAIN_KINDS);
    const buf = rig.sim.allocator.alloc(64, 16);
    memory.fill(buf, 64, 0);
    const need = malformedChainSlots(kind);
    if (d.freeDescriptors < need) {
      rig.sim.allocator.free(buf);
      return undefined;
    }
    return d.submitRaw(
      need,
      (ids) =>
        writeMalformedChain(kind, {
          queue: d.q,
          memory,
          slots: ids,
          scratch: buf,
          rng: rand,
          outside: OUTSIDE,
        }),
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
        t += rand.chance(0.2) ? rand.int(r.retryAfterMs) : r.retryAfterMs;
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
    const n = 1 + rand.int(6);
    for (let i = 0; i < n && done < CHAINS; i++) {
      const d = rig.driver;
      if (rand.chance(0.04)) {
        const sub = rawChain();
        if (!sub) break;
        batch.push({ sub, want: 0, kind: "raw" });
        done++;
        continue;
      }
      const tooLong = rand.chance(0.01);
      const count = tooLong ? size + 1 + rand.int(4) : 1 + rand.int(rand.chance(0.2) ? 12 : 3);
      const parts = Array.from({ length: count }, randomPart);
      // Mostly well-ordered (readable first); sometimes not.
      if (rand.chance(0.9)) parts.sort((a, b) => Number(a.writable) - Number(b.writable));
      const indirect = tooLong || count > d.freeDescriptors || rand.chance(0.3);
      if (!indirect && count > d.freeDescriptors) break;
      if (indirect && d.freeDescriptors < 1) break;
      let want = expected(parts, size);
      // Readable after writable is malformed (§2.7.4.2).
      const firstW = parts.findIndex((p) => p.writable);
      if (firstW >= 0 && parts.slice(firstW).some((p) => !p.writable)) want = 0;
      let kind = "ok";
      if (count > size) kind = "tooLong";
      else if (parts.some((p) => p.address !== undefined && !ram(p.address, p.length))) kind = "hostile";
      else if (parts.some((p) => !p.writable)) kind = "readable";
      else if (want === 0) kind = "empty";
      const sub = d.submit(parts, { indirect, seed: done });
      batch.push({ sub, want, kind });
      done++;
    }
    if (batch.length === 0) {
      // Out of descriptors (chains held by a throttled device): keep driving.
    }

    const roll = rand.next();
    if (roll < 0.004) {
      // Break the ring: a head outside the table, or avail.idx running away.
      const q = rig.driver.q;
      if (rand.chance(0.5)) {
        q.setAvailSlot(q.availIdx % q.size, size + rand.int(60000));
        q.setAvailIdx(q.availIdx + 1);
      } else q.setAvailIdx(q.availIdx + size + 1 + rand.int(1000));
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
      for (const r of rig.recorder.take().ranges) guard.restore(r.address, r.length);
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
      if (!p.guarded && typeof p.address === "number" && ram(p.address, p.length))
        guard.restore(p.address, p.length);
  }

  // Memory outside the heap is as it was, the recorder saw only RAM views, and the device still works.
  expect(guard.changed(), `[${cfg.name}] memory outside the heap changed`).toEqual([]);
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
