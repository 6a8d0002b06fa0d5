import { describe, expect, it } from "vitest";
import {
  DeviceStatus,
  MmioReg,
  PlainGuestMemory,
  Queue,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VirtioMmioTransport,
  VirtioPciTransport,
  VirtqueueError,
  type VirtqueueErrorKind,
} from "../src/index.js";
import { FuzzRng, fuzzCount, fuzzSeed, writeDescriptor } from "../src/testing.js";
import { EchoDevice } from "./echo-device.js";

/** `pnpm test` runs these counts; `pnpm fuzz` runs 100 times as many (VIRTIO_FUZZ_SCALE=100). */
const SCALE = fuzzCount("VIRTIO_FUZZ_SCALE", 1);
const ITERATIONS = 4000 * SCALE;

/** The seed for a suite: VIRTIO_FUZZ_SEED if set, else `fallback`. Printed so a failure can be replayed. */
function seedFor(name: string, fallback: number): number {
  const seed = fuzzSeed("VIRTIO_FUZZ_SEED", fallback);
  console.log(`[${name}] seed ${seed} (replay with VIRTIO_FUZZ_SEED=${seed})`);
  return seed;
}

/**
 * RAM: [0, 64 KiB) and [96 KiB, 128 KiB), a hole between; with `big`, also
 * [1 MiB, 2 MiB) (room for chains that add up to more than 4 GiB).
 */
function fuzzMemory(r: FuzzRng, big = false): PlainGuestMemory {
  const regions = [
    { address: 0, size: 0x10000 },
    { address: 0x18000, size: 0x8000 },
  ];
  if (big) regions.push({ address: 0x100000, size: 0x100000 });
  return new PlainGuestMemory(regions, {
    windowSize: r.pick([Number.POSITIVE_INFINITY, 0x1000, 0x100, 0x40]),
  });
}

function randomAddress(r: FuzzRng): number | bigint {
  switch (r.int(8)) {
    case 0:
      return r.int(0x20000); // anywhere, holes included
    case 1:
      return 0x10000 - r.int(64); // straddling the hole
    case 2:
      return 0x20000 - r.int(64); // straddling the end
    case 3:
      return (BigInt(r.u32()) << 32n) | BigInt(r.u32()); // 64-bit garbage
    case 4:
      return 2 ** 53 - r.int(4);
    default:
      return r.chance(0.5) ? 0x8000 + r.int(0x7000) : 0x18000 + r.int(0x7000); // plausibly valid
  }
}

function randomLength(r: FuzzRng): number {
  switch (r.int(7)) {
    case 0:
      return 0;
    case 1:
      return 0xffff_ffff;
    case 2:
      return r.u32();
    case 3:
      return 16 * (1 + r.int(40)); // indirect-table-like
    default:
      return 1 + r.int(512);
  }
}

function randomDescriptor(r: FuzzRng, size: number) {
  const flags = r.chance(0.1)
    ? r.int(0x10000)
    : (r.chance(0.6) ? VIRTQ_DESC_F_NEXT : 0) |
      (r.chance(0.4) ? 2 : 0) |
      (r.chance(0.15) ? VIRTQ_DESC_F_INDIRECT : 0);
  return { address: randomAddress(r), length: randomLength(r), flags, next: r.int(size + 3) };
}

function ringAddress(r: FuzzRng, valid: number, align: number): number {
  if (r.chance(0.9)) return valid;
  return r.pick([0x10000 - align, 0x20000, 0x1_0000_0000, valid + 1, 2 ** 60, -align, 0x1fff0]);
}

describe("fuzz: random descriptor tables and rings", () => {
  it(
    `${ITERATIONS} malformed queues: only typed errors, no access outside RAM, always terminates`,
    async () => {
      const seed = seedFor("virtqueue fuzz", 0x5eed_0001);
      const r = new FuzzRng(seed);
      const kinds = new Map<VirtqueueErrorKind, number>();
      let chainsOk = 0;
      const count = (e: unknown, iteration: number): VirtqueueError => {
        if (!(e instanceof VirtqueueError)) {
          throw new Error(`iteration ${iteration} (seed ${seed}): unexpected ${String(e)}`, { cause: e });
        }
        kinds.set(e.kind, (kinds.get(e.kind) ?? 0) + 1);
        return e;
      };
      for (let it = 0; it < ITERATIONS; it++) {
        // Long runs (pnpm fuzz): let the test runner's own messages through now and then.
        if (it % 2000 === 1999) await new Promise((resolve) => setImmediate(resolve));
        const big = r.chance(0.03);
        const mem = fuzzMemory(r, big);
        // A chain may have at most `size` buffers: the big case needs a queue longer than its table.
        const size = big
          ? 8192
          : r.chance(0.9)
            ? r.pick([1, 2, 4, 8, 16, 32, 64])
            : r.pick([0, 3, 5, 100, 65536, 32768]);
        const rings = big ? [0x120000, 0x140000, 0x150000] : [0x1000, 0x3000, 0x4000];
        let queue: Queue;
        try {
          queue = new Queue(mem, {
            size,
            descTable: ringAddress(r, rings[0]!, 16),
            availRing: ringAddress(r, rings[1]!, 2),
            usedRing: ringAddress(r, rings[2]!, 4),
            eventIdx: r.chance(0.5),
            nextAvail: r.int(0x10000),
            nextUsed: r.int(0x10000),
          });
        } catch (e) {
          count(e, it);
          continue;
        }
        // A random descriptor table, random indirect tables, random avail ring (for the big case, whose
        // one chain is the big one, only the start of them: its queue is long).
        const filled = big ? 64 : size;
        for (let i = 0; i < filled; i++) writeDescriptor(mem, queue.descTable, i, randomDescriptor(r, size));
        for (let t = 0; t < 3; t++) {
          const table = 0x18000 + 0x800 * t;
          const n = 1 + r.int(40);
          for (let i = 0; i < n; i++) writeDescriptor(mem, table, i, randomDescriptor(r, n));
          if (r.chance(0.5))
            writeDescriptor(mem, queue.descTable, r.int(size), {
              address: table,
              length: 16 * n,
              flags: VIRTQ_DESC_F_INDIRECT,
              next: 0,
            });
        }
        let bigHead: number | undefined;
        if (big) {
          // An indirect table of ~4100 entries of up to 1 MiB each: near or past 2^32 bytes in total.
          const table = 0x100000;
          const n = 4094 + r.int(10);
          for (let i = 0; i < n; i++)
            writeDescriptor(mem, table, i, {
              address: 0x100000,
              length: r.chance(0.9995) ? 0x100000 : r.int(0x100000),
              flags: i < n - 1 ? VIRTQ_DESC_F_NEXT : 0,
              next: i + 1,
            });
          const head = r.int(size);
          writeDescriptor(mem, queue.descTable, head, {
            address: table,
            length: 16 * n,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
          });
          bigHead = head;
        }
        mem.writeU16(queue.availRing, r.int(4));
        const ahead = r.chance(0.9) ? r.int(size + 1) : r.int(0x10000);
        mem.writeU16(queue.availRing + 2, (queue.nextAvail + ahead) & 0xffff);
        for (let i = 0; i < filled; i++)
          mem.writeU16(queue.availRing + 4 + 2 * i, r.chance(0.95) ? r.int(size) : r.int(0x10000));
        if (bigHead !== undefined) {
          // Make it the next chain the device pops.
          mem.writeU16(queue.availRing + 2, (queue.nextAvail + 1) & 0xffff);
          mem.writeU16(queue.availRing + 4 + 2 * (queue.nextAvail % size), bigHead);
        }
        mem.writeU16(queue.availRing + 4 + 2 * size, r.int(0x10000));

        // The device loop, bounded: at most `size` chains can be pending.
        for (let n = 0; n <= size + 1; n++) {
          let chain: ReturnType<Queue["pop"]>;
          try {
            chain = queue.pop();
          } catch (e) {
            const err = count(e, it);
            if (err.fatal) break;
            expect(err.head).toBeLessThan(size);
            queue.addUsed(err.head!, 0);
            continue;
          }
          if (!chain) break;
          expect(chain.count).toBeLessThanOrEqual(size);
          // Zero-length buffers included: every address a chain hands out is RAM.
          const outside = chain.buffers().filter((b) => !mem.isValidRange(b.address, b.length));
          expect(outside).toEqual([]);
          expect(chain.readableLength + chain.writableLength).toBeLessThan(2 ** 32);
          const reader = chain.reader();
          let sum = 0;
          for (const v of reader.readViews(Math.min(reader.remaining, 4096))) sum += v.length;
          const w = chain.writer();
          const out = Math.min(w.remaining, 4096);
          for (const v of w.writeViews(out)) v.fill(0x5a);
          expect(sum).toBeLessThanOrEqual(chain.readableLength);
          queue.addUsed(chain.head, w.bytesWritten);
          chainsOk++;
        }
        try {
          queue.needsNotification();
          queue.disableNotification();
          queue.enableNotification();
        } catch (e) {
          expect(count(e, it).fatal).toBe(true);
        }
      }
      console.log(
        `[virtqueue fuzz] ${chainsOk} valid chains; errors: ${JSON.stringify(Object.fromEntries(kinds))}`,
      );
      // The generator reaches every guest-side error class.
      for (const k of [
        "InvalidQueueSize",
        "InvalidRingAddress",
        "InvalidRingAlignment",
        "InvalidAvailRingIndex",
        "InvalidHeadIndex",
        "InvalidDescriptorIndex",
        "ChainTooLong",
        "InvalidDescriptorAddress",
        "DescriptorChainOverflow",
        "ReadableAfterWritable",
        "NestedIndirectDescriptor",
        "IndirectWithNext",
        "InvalidIndirectDescriptorTable",
      ] as const)
        expect(kinds.get(k) ?? 0, k).toBeGreaterThan(0);
      expect(chainsOk).toBeGreaterThan(ITERATIONS / 4);
    },
    60_000 * SCALE,
  );
});

describe("fuzz: random register traffic against both transports", () => {
  const ROUNDS = 300 * SCALE;
  const ACCESSES = 300;

  it.each(["pci", "mmio"] as const)(
    "%s: any guest access sequence is handled without an exception",
    async (kind) => {
      const seed = seedFor(`${kind} register fuzz`, kind === "pci" ? 0x5eed_0002 : 0x5eed_0003);
      const r = new FuzzRng(seed);
      const statuses = new Set<number>();
      let activations = 0;
      let served = 0;
      let failed = 0;
      let broken = 0;
      for (let round = 0; round < ROUNDS; round++) {
        if (round % 200 === 199) await new Promise((resolve) => setImmediate(resolve));
        const mem = fuzzMemory(r);
        const device = new EchoDevice([8, 4]);
        const pci =
          kind === "pci"
            ? new VirtioPciTransport({ device, memory: mem, barAddresses: { 0: 0xe000_0000 } })
            : undefined;
        const mmio = kind === "mmio" ? new VirtioMmioTransport({ device, memory: mem }) : undefined;
        const access = (write: boolean, offset: number, data: Uint8Array): void => {
          if (pci) {
            const space = r.int(10);
            if (space < 2) (write ? pci.writeConfig : pci.readConfig).call(pci, offset & 0xff, data);
            else (write ? pci.writeBar : pci.readBar).call(pci, r.chance(0.9) ? 0 : r.int(6), offset, data);
          } else if (mmio) {
            (write ? mmio.write : mmio.read).call(mmio, offset, data);
          }
        };
        const offsets =
          kind === "pci"
            ? [
                0, 4, 8, 12, 16, 18, 20, 21, 22, 24, 26, 28, 30, 32, 36, 40, 44, 48, 52, 56, 58, 0x1000,
                0x2000, 0x3000, 0x3004, 0x4000, 0x4010, 0x5000,
              ]
            : (Object.values(MmioReg) as number[]);
        const reg32 = (offset: number, v: number): void => {
          const b = new Uint8Array(4);
          new DataView(b.buffer).setUint32(0, v >>> 0, true);
          if (pci)
            pci.writeBar(0, offset, b.subarray(0, offset === 20 ? 1 : offset >= 22 && offset < 32 ? 2 : 4));
          else mmio?.write(offset, b);
        };
        // A mostly well-behaved bring-up (random sizes, addresses, features), so queues get activated.
        const bringUp = (): void => {
          const P = kind === "pci";
          reg32(P ? 20 : MmioReg.STATUS, 0);
          reg32(P ? 20 : MmioReg.STATUS, 1);
          reg32(P ? 20 : MmioReg.STATUS, 3);
          reg32(P ? 8 : MmioReg.DRIVER_FEATURES_SEL, 1);
          reg32(P ? 12 : MmioReg.DRIVER_FEATURES, r.chance(0.9) ? 1 : r.u32());
          reg32(P ? 8 : MmioReg.DRIVER_FEATURES_SEL, 0);
          reg32(P ? 12 : MmioReg.DRIVER_FEATURES, r.u32() & (r.chance(0.8) ? 0x3000_0001 : 0xffff_ffff));
          reg32(P ? 20 : MmioReg.STATUS, 11);
          for (let q = 0; q < 2; q++) {
            reg32(P ? 22 : MmioReg.QUEUE_SEL, q);
            reg32(P ? 24 : MmioReg.QUEUE_NUM, r.chance(0.9) ? r.pick([1, 2, 4, 8]) : r.int(0x10000));
            reg32(P ? 32 : MmioReg.QUEUE_DESC_LOW, r.chance(0.9) ? 0x1000 + 0x1000 * q : r.u32());
            reg32(P ? 40 : MmioReg.QUEUE_DRIVER_LOW, r.chance(0.9) ? 0x3000 + 0x1000 * q : r.u32());
            reg32(P ? 48 : MmioReg.QUEUE_DEVICE_LOW, r.chance(0.9) ? 0x5000 + 0x1000 * q : r.u32());
            if (r.chance(0.9)) reg32(P ? 28 : MmioReg.QUEUE_READY, 1);
          }
          reg32(P ? 20 : MmioReg.STATUS, 15);
        };
        for (let a = 0; a < ACCESSES; a++) {
          if (r.chance(0.02)) bringUp();
          const width = r.pick([1, 2, 4, 4, 4, 8, 3]);
          const data = new Uint8Array(width);
          for (let i = 0; i < width; i++) data[i] = r.int(256);
          let offset = r.chance(0.85) ? r.pick(offsets) : r.int(0x6000) - 8;
          if (r.chance(0.2)) {
            // Status writes that follow the protocol, to get past FEATURES_OK and DRIVER_OK often.
            const s = r.pick([1, 3, 11, 15, 0]);
            offset = kind === "pci" ? 20 : MmioReg.STATUS;
            data.fill(0);
            data[0] = s;
            if (kind === "mmio" && width !== 4) continue;
          }
          access(r.chance(0.6), offset, data);
          if (device.ctx && r.chance(0.05)) {
            // Scribble over the rings the device is using, then notify.
            for (const q of device.ctx.queues) {
              const { size, descTable, availRing, usedRing } = q.queue;
              for (let k = r.int(6); k >= 0; k--) {
                switch (r.int(4)) {
                  case 0:
                    writeDescriptor(mem, descTable, r.int(size), randomDescriptor(r, size));
                    break;
                  case 1:
                    mem.writeU16(availRing + 4 + 2 * r.int(size), r.int(size + 1));
                    break;
                  case 2:
                    mem.writeU16(availRing + 2, (mem.readU16(availRing + 2) + 1 + r.int(2)) & 0xffff);
                    break;
                  default: {
                    const at = r.pick([descTable, availRing, usedRing]) + r.int(64);
                    if (mem.isValidRange(at, 2)) mem.writeU16(at, r.int(0x10000));
                  }
                }
              }
              if (pci) pci.notifyQueue(q.index);
              if (mmio) mmio.notifyQueue(q.index);
            }
          }
        }
        statuses.add((pci ?? mmio)!.status);
        activations += device.activations;
        served += device.completed;
        failed += device.failed.length;
        if (device.fatal) broken++;
      }
      console.log(
        `[${kind} register fuzz] ${activations} activations, ${served} requests served, ${failed} failed, ${broken} devices broken`,
      );
      console.log(`[${kind} register fuzz] statuses seen: ${[...statuses].sort((a, b) => a - b).join(",")}`);
      expect(activations).toBeGreaterThan(0);
      expect(served + failed + broken).toBeGreaterThan(0);
      expect([...statuses].some((s) => s & DeviceStatus.DRIVER_OK)).toBe(true);
    },
    60_000 * SCALE,
  );
});
