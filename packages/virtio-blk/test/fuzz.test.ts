// Random requests, most of them wrong in some way, against the inline device
// over virtio-pci. Each outcome (status byte, used length, data returned,
// effect on the disk) is checked against an independent reading of the spec
// (`expected` below) and a byte model of the disk; at the end the disk file
// must equal the model (only well-formed writes changed it), guest memory the
// driver never handed out must be untouched, no access may have gone outside
// guest RAM, and the device must still work. Besides malformed requests, the
// chains carry buffers at hostile addresses (the fuzz kit's `hostileAddresses`
// from @tskvm/virtio/testing: 0, 1, 2^32, 2^52, 2^53 − 1, 2^53, 2^60, 2^63,
// 2^64 − 4096, 2^64 − 1, the first and last byte of each RAM region, the hole
// between them, zero-length or not), break seg_max / size_max, come as the
// kit's malformed chains (loops, next outside the table, bad, nested and
// outside-RAM indirect tables, a buffer outside RAM, readable after
// writable), and now and then break the ring itself (the device must then be
// DEVICE_NEEDS_RESET, and a driver reset brings it back).
//
// `pnpm test` runs 10,000 chains (5,000 per disk); `pnpm fuzz` runs
// 1,000,000 (VIRTIO_BLK_FUZZ_CHAINS per disk). Replay a failure with
// VIRTIO_BLK_FUZZ_SEED=<seed> (and the same VIRTIO_BLK_FUZZ_CHAINS).
import { readFileSync } from "node:fs";
import { DeviceStatus, type GuestMemoryAccess, PlainGuestMemory } from "@tskvm/virtio";
import {
  AuditedMemory,
  FuzzRng,
  fuzzCount,
  fuzzSeed,
  hostileAddresses,
  inRam,
  MALFORMED_CHAIN_KINDS,
  MemoryGuard,
  malformedChainSlots,
  writeMalformedChain,
} from "@tskvm/virtio/testing";
import { afterAll, describe, expect, it } from "vitest";
import {
  BlkTestDriver,
  blkRig,
  type Completion,
  concat,
  FILL,
  header,
  type Part,
  pattern,
  sameBytes,
} from "./driver.js";

const SEED = fuzzSeed("VIRTIO_BLK_FUZZ_SEED", 20261125);
/** Chains per disk (writable, read-only). */
const CHAINS = fuzzCount("VIRTIO_BLK_FUZZ_CHAINS", 5000);
console.log(
  `[virtio-blk fuzz] seed ${SEED}, ${CHAINS} chains per disk (replay with VIRTIO_BLK_FUZZ_SEED=${SEED} VIRTIO_BLK_FUZZ_CHAINS=${CHAINS})`,
);

const DISK = 1 << 20;
const CAPACITY = DISK / 512;
const SERIAL = "fuzz-serial-0001";
const MAX_SEG = 4;
const MAX_SECTORS = 256;
/** seg_max and size_max, small enough for the random requests to cross them. */
const SEG_MAX = 6;
const SIZE_MAX = 3072;
// Guest RAM: [0, 8 MiB) holds the driver's heap in [64 KiB, 8 MiB - 64 KiB); a hole; [9 MiB, 12 MiB) is a
// canary the device may read (hostile buffers point there) but never write.
const CANARY = { address: 9 << 20, size: 3 << 20 };
const RAM_END = 12 << 20;
const REGIONS = [{ address: 0, size: 8 << 20 }, CANARY];
/** Addresses a hostile buffer points at: every edge of RAM, its holes, and far beyond. */
const HOSTILE = hostileAddresses(REGIONS);
/** The hostile addresses outside RAM (for malformed chains). */
const OUTSIDE = HOSTILE.filter((a) => !inRam(REGIONS, a, 0));
/** Outside the heap and the canary: where a hostile writable buffer may land (one chain per kick). */
const SCRATCH: readonly number[] = [0, 0x100, (8 << 20) - 512, (8 << 20) - 1];

/** Whether a part at a chosen address lies in RAM (a zero-length one: its address is RAM). */
function partInRam(memory: GuestMemoryAccess, p: Part): boolean {
  if (p.address === undefined) return true;
  const length = p.data ? p.data.length : (p.length ?? 0);
  return typeof p.address === "number" && memory.isValidRange(p.address, length);
}

/** Segments of `bytes` data bytes starting `skip` bytes into `lengths` (empty pieces do not count), and the largest. */
function dataSegments(
  lengths: readonly number[],
  skip: number,
  bytes: number,
): { count: number; largest: number } {
  let count = 0;
  let largest = 0;
  let off = skip;
  let left = bytes;
  for (const len of lengths) {
    if (left === 0) break;
    const avail = Math.max(0, len - off);
    off = Math.max(0, off - len);
    const take = Math.min(avail, left);
    if (take === 0) continue;
    count++;
    largest = Math.max(largest, take);
    left -= take;
  }
  return { count, largest };
}

interface Expected {
  len: number;
  status?: number;
  /** Bytes before the status that must come back (IN / GET_ID); the rest stays FILL. */
  data?: Uint8Array;
  apply?: (model: Uint8Array) => void;
}

/** What the spec (and this device's documented choices) say a chain made of `parts` gets. */
function expected(
  parts: readonly Part[],
  model: Uint8Array,
  readOnly: boolean,
  memory: GuestMemoryAccess,
): Expected {
  const isW = (p: Part): boolean => p.writable ?? p.data === undefined;
  if (parts.length > 256) return { len: 0 }; // more buffers than the queue size
  if (!parts.every((p) => partInRam(memory, p))) return { len: 0 }; // a buffer outside RAM
  const firstW = parts.findIndex(isW);
  if (firstW >= 0 && parts.slice(firstW).some((p) => !isW(p))) return { len: 0 }; // readable after writable
  const W = parts.filter(isW).reduce((n, p) => n + (p.length ?? 0), 0);
  if (firstW < 0 || W === 0) return { len: 0 }; // no status byte
  const R = concat(parts.filter((p) => !isW(p)).map((p) => p.data ?? new Uint8Array(0)));
  const IOERR = { len: 1, status: 1 };
  const UNSUPP = { len: 1, status: 2 };
  if (R.length < 16) return IOERR;
  const dv = new DataView(R.buffer, R.byteOffset, R.length);
  const type = dv.getUint32(0, true);
  const sector = dv.getBigUint64(8, true);
  const rd = R.length - 16;
  const wd = W - 1;
  const inRange = (s: bigint, n: number): boolean => s + BigInt(n) <= BigInt(CAPACITY);
  // seg_max / size_max over the IN data (the writable stream less its last byte) or the OUT data.
  const badSegments = (lengths: number[], skip: number, bytes: number): boolean => {
    const s = dataSegments(lengths, skip, bytes);
    return s.count > SEG_MAX || s.largest > SIZE_MAX;
  };
  const lengthsOf = (ps: Part[]): number[] => ps.map((p) => (p.data ? p.data.length : (p.length ?? 0)));
  switch (type) {
    case 0: {
      if (rd > 0 || wd % 512 !== 0 || !inRange(sector, wd / 512)) return IOERR;
      if (badSegments(lengthsOf(parts.filter(isW)), 0, wd)) return IOERR;
      const at = Number(sector) * 512;
      return { len: wd + 1, status: 0, data: model.slice(at, at + wd) };
    }
    case 1: {
      if (readOnly || wd > 0 || rd % 512 !== 0 || !inRange(sector, rd / 512)) return IOERR;
      if (badSegments(lengthsOf(parts.filter((p) => !isW(p))), 16, rd)) return IOERR;
      const data = R.slice(16);
      return { len: 1, status: 0, apply: (m) => m.set(data, Number(sector) * 512) };
    }
    case 4:
      return sector === 0n ? { len: 1, status: 0 } : IOERR;
    case 8: {
      if (rd > 0 || wd < 20) return IOERR;
      const id = new Uint8Array(20);
      id.set(new TextEncoder().encode(SERIAL));
      return { len: 21, status: 0, data: id };
    }
    case 11:
    case 13: {
      if (readOnly) return IOERR;
      if (wd > 0 || rd === 0 || rd % 16 !== 0 || rd / 16 > MAX_SEG) return IOERR;
      const segs = Array.from({ length: rd / 16 }, (_, i) => ({
        sector: dv.getBigUint64(16 + 16 * i, true),
        num: dv.getUint32(16 + 16 * i + 8, true),
        flags: dv.getUint32(16 + 16 * i + 12, true),
      }));
      if (segs.some((g) => (g.flags & ~1) !== 0 || (type === 11 && g.flags & 1))) return UNSUPP;
      if (segs.some((g) => g.num > MAX_SECTORS || !inRange(g.sector, g.num))) return IOERR;
      return {
        len: 1,
        status: 0,
        apply: (m) => {
          for (const g of segs) m.fill(0, Number(g.sector) * 512, (Number(g.sector) + g.num) * 512);
        },
      };
    }
    default:
      return UNSUPP;
  }
}

type Chain = { kind: "parts"; parts: Part[]; indirect: boolean } | { kind: "raw"; why: string };

describe(`fuzz: thousands of random and malformed requests (seed ${SEED})`, () => {
  const rigs: ReturnType<typeof blkRig>[] = [];
  afterAll(() => {
    for (const r of rigs) r.close();
  });

  for (const readOnly of [false, true]) {
    it(
      `${readOnly ? "read-only" : "writable"} disk: no crash, no hang, no stray write, nothing outside RAM; the disk equals the model`,
      async () => {
        const plain = new PlainGuestMemory(REGIONS, { windowSize: 64 << 10 });
        const canary = new MemoryGuard(plain, [{ address: CANARY.address, length: CANARY.size }]);
        // No access outside guest RAM, ever (writes anywhere in RAM are the model's to judge).
        const memory = new AuditedMemory(plain);
        const r = blkRig({
          diskSize: DISK,
          readOnly,
          memory,
          serial: SERIAL,
          maxDiscardSegments: MAX_SEG,
          maxDiscardSectors: MAX_SECTORS,
          maxWriteZeroesSegments: MAX_SEG,
          maxWriteZeroesSectors: MAX_SECTORS,
          // Offer both on the read-only disk too, so the RO answers are exercised.
          discard: true,
          writeZeroes: true,
          segMax: SEG_MAX,
          sizeMax: SIZE_MAX,
          heapSize: (8 << 20) - 0x20000,
        });
        rigs.push(r);
        const model = r.initial.slice();
        const rand = new FuzzRng(SEED + (readOnly ? 1 : 0));
        const sectorFor = (n: number): bigint =>
          rand.pick([
            () => BigInt(rand.int(CAPACITY)),
            () => BigInt(Math.max(0, CAPACITY - n)),
            () => BigInt(CAPACITY - n + 1),
            () => 0n,
            () => 0xffff_ffff_ffff_ffffn - BigInt(rand.int(4)),
            () => 1n << BigInt(32 + rand.int(31)),
            () => BigInt.asUintN(64, BigInt(Math.floor(rand.next() * 2 ** 53))),
          ])();

        /** A well-formed request, then 0-3 mutations. */
        const randomParts = (): Part[] => {
          const type = rand.pick([0, 0, 1, 1, 4, 8, 11, 13]);
          const n = rand.int(9);
          const sector = type === 4 ? 0n : sectorFor(n);
          const h = header(
            type,
            type === 0 || type === 1
              ? sector < BigInt(CAPACITY - n)
                ? sector
                : BigInt(rand.int(CAPACITY - n))
              : sector,
          );
          let readable: Uint8Array[] = [h];
          let writable: number[] = [];
          if (type === 0) writable = [n * 512];
          if (type === 1) readable.push(pattern(n * 512, rand.int(1 << 30)));
          if (type === 8) writable = [20];
          if (type === 11 || type === 13) {
            const count = 1 + rand.int(MAX_SEG);
            const b = new Uint8Array(16 * count);
            const sdv = new DataView(b.buffer);
            for (let i = 0; i < count; i++) {
              const num = rand.int(MAX_SECTORS / 4);
              sdv.setBigUint64(16 * i, BigInt(rand.int(CAPACITY - num)), true);
              sdv.setUint32(16 * i + 8, num, true);
              sdv.setUint32(16 * i + 12, type === 13 && rand.chance(0.5) ? 1 : 0, true);
            }
            readable.push(b);
          }
          writable.push(1);
          // Mutations: each is something a driver can get wrong.
          for (let m = rand.int(4); m > 0; m--) {
            const all = concat(readable);
            const adv = new DataView(all.buffer);
            switch (rand.int(12)) {
              case 0:
                if (all.length >= 4)
                  adv.setUint32(0, rand.pick([2, 3, 5, 10, 14, 16, 0xffffffff, rand.int(32)]), true);
                break;
              case 1:
                if (all.length >= 16) adv.setBigUint64(8, sectorFor(n), true);
                break;
              case 2: // truncate the readable stream
                readable = [all.subarray(0, rand.int(all.length + 1))];
                continue;
              case 3: // grow or shrink a writable buffer
                if (writable.length) writable[rand.int(writable.length)] = rand.int(1100);
                break;
              case 4: // drop the status (or everything writable)
                writable = rand.chance(0.5) ? writable.slice(0, -1) : [];
                break;
              case 5: // extra readable data
                readable.push(pattern(rand.pick([1, 16, 511, 512, 32]), rand.int(1000)));
                continue;
              case 6: // extra writable data
                writable.unshift(rand.pick([1, 20, 512, 1000]));
                break;
              case 7: // segment flags / counts
                if (all.length >= 32) adv.setUint32(16 + 12, rand.pick([1, 2, 0x80000000, 3]), true);
                if (all.length >= 32 && rand.chance(0.3))
                  adv.setUint32(16 + 8, rand.pick([MAX_SECTORS + 1, 0xffffffff]), true);
                break;
              case 8:
                if (all.length >= 4) adv.setUint32(0, rand.pick([0, 1, 4, 8, 11, 13]), true);
                break;
              case 9: // too many segments
                readable.push(new Uint8Array(16 * (MAX_SEG + 1)));
                continue;
              case 10: // zero-length writable buffers
                writable = writable.map(() => 0);
                break;
              default:
                break;
            }
            readable = [all];
          }
          // Split the streams into random descriptors.
          const parts: Part[] = [];
          const all = concat(readable);
          // Sometimes in many small pieces: more segments than seg_max.
          const shatter = rand.chance(0.1);
          let at = 0;
          while (at < all.length) {
            const take = Math.min(all.length - at, 1 + rand.int(shatter ? 700 : all.length));
            parts.push({ data: all.slice(at, at + take) });
            at += take;
          }
          if (all.length === 0 && rand.chance(0.5)) parts.push({ data: new Uint8Array(0) });
          for (const len of writable) {
            if (shatter && len > 8) {
              for (let left = len; left > 0; ) {
                const take = Math.min(left, 1 + rand.int(700));
                parts.push({ length: take });
                left -= take;
              }
            } else if (len > 1 && rand.chance(0.5)) {
              const cut = 1 + rand.int(len - 1);
              parts.push({ length: cut }, { length: len - cut });
            } else parts.push({ length: len });
          }
          // Sometimes the direction of one part is flipped (a readable part after a writable one is a
          // virtqueue error; a writable header is a blk one).
          if (rand.chance(0.08) && parts.length > 1) {
            const i = rand.int(parts.length);
            const p = parts[i]!;
            parts[i] = p.data ? { length: p.data.length } : { data: new Uint8Array(p.length ?? 0) };
          }
          if (parts.length === 0) parts.push({ length: 1 });
          // Hostile addresses: empty buffers anywhere (RAM edges, the hole, 2^53, 2^64-1), in either direction.
          if (rand.chance(0.12)) {
            hostile++;
            for (let k = 1 + rand.int(2); k > 0; k--) {
              const i = rand.int(parts.length + 1);
              const w = i > 0 && parts[i - 1]!.data === undefined;
              parts.splice(
                i,
                0,
                w
                  ? { length: 0, address: rand.pick(HOSTILE) }
                  : { data: new Uint8Array(0), address: rand.pick(HOSTILE) },
              );
            }
          }
          // A buffer of the driver's replaced by one at a chosen address (one such chain per kick: they share
          // the scratch areas). Readable ones may point anywhere; writable ones at scratch or outside RAM.
          if (fixedFree && rand.chance(0.06)) {
            fixedFree = false;
            fixed++;
            const i = rand.int(parts.length);
            const p = parts[i]!;
            const length = p.data ? p.data.length : (p.length ?? 0);
            if (p.data) {
              const address = rand.pick([...HOSTILE, ...SCRATCH]);
              const ok = typeof address === "number" && memory.isValidRange(address, length);
              parts[i] = {
                address,
                data: ok ? plain.read(address as number, length) : new Uint8Array(length),
              };
            } else {
              const address = rand.pick([...SCRATCH, ...SCRATCH, 8 << 20, RAM_END, 2n ** 64n - 1n]);
              if (typeof address === "number" && memory.isValidRange(address, length))
                plain.fill(address, length, FILL);
              parts[i] = { address, length };
            }
          }
          // Now and then more buffers than the queue has entries (the chain must be cut, not walked).
          if (rand.chance(0.003)) {
            long++;
            const extra = 250 + rand.int(60);
            for (let k = 0; k < extra; k++) parts.splice(1, 0, { data: new Uint8Array(0), address: 0 });
          }
          return parts;
        };

        let d = r.driver;
        let hostile = 0;
        let fixed = 0;
        let fixedFree = true;
        let long = 0;
        let ringBreaks = 0;
        /** One of the kit's malformed chains, which the virtqueue itself rejects (used length 0). */
        const rawChain = (): [number, string] => {
          const buf = d.alloc.alloc(64, 16);
          const kind = rand.pick(MALFORMED_CHAIN_KINDS);
          const head = d.submitRaw(
            malformedChainSlots(kind),
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
          return [head, kind];
        };

        const total = CHAINS;
        const pendingChains: Map<number, Chain> = new Map();
        let made = 0;
        let okCount = 0;
        let rejected = 0;
        let failedChains = 0;
        const check = (c: Completion): void => {
          const chain = pendingChains.get(c.head);
          pendingChains.delete(c.head);
          if (!chain) throw new Error(`unexpected completion ${c.head}`);
          if (chain.kind === "raw") {
            expect([chain.why, c.len]).toEqual([chain.why, 0]);
            failedChains++;
            return;
          }
          const e = expected(chain.parts, model, readOnly, memory);
          const ctx = {
            parts: chain.parts
              .map(
                (p) =>
                  `${p.data ? `R${p.data.length}` : `W${p.length}`}${p.address !== undefined ? `@${p.address}` : ""}`,
              )
              .join(","),
            head: c.head,
          };
          expect({ ...ctx, len: c.len }).toEqual({ ...ctx, len: e.len });
          if (e.len === 0) {
            failedChains++;
            return;
          }
          expect({ ...ctx, status: c.status }).toEqual({ ...ctx, status: e.status });
          if (e.status === 0) okCount++;
          else rejected++;
          const back = e.data ?? new Uint8Array(0);
          expect(sameBytes(c.data.subarray(0, back.length), back)).toBe(true);
          expect(c.data.subarray(back.length).every((b) => b === FILL)).toBe(true);
          e.apply?.(model);
        };

        const started = performance.now();
        let kicks = 0;
        while (made < total) {
          // Long runs (pnpm fuzz): let the test runner's own messages through now and then.
          if (++kicks % 2000 === 0) await new Promise((resolve) => setImmediate(resolve));
          const batch = 1 + rand.int(8);
          fixedFree = true;
          for (let i = 0; i < batch && made < total; i++, made++) {
            if (d.freeDescriptors < 24) break;
            if (rand.chance(0.1)) {
              const [head, why] = rawChain();
              pendingChains.set(head, { kind: "raw", why });
            } else {
              const parts = randomParts();
              const indirect = parts.length > 16 || rand.chance(0.3);
              const head = d.submit(parts, { indirect });
              pendingChains.set(head, { kind: "parts", parts, indirect });
            }
          }
          // Rarely, the ring itself is broken: a head outside the table, or avail.idx running away.
          const ringBreak = rand.chance(0.002) ? rand.pick(["head", "idx"] as const) : undefined;
          if (ringBreak === "head") d.q.publish(d.q.size + rand.int(0x10000 - d.q.size));
          if (ringBreak === "idx") d.q.setAvailIdx(d.q.availIdx + d.q.size + 1 + rand.int(1000));
          d.kick();
          for (const c of d.reap()) check(c);
          const broken = (r.pci.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
          if (!ringBreak) {
            if (broken) throw new Error(`device broken (seed ${SEED}): ${r.pci.core.brokenReason?.stack}`);
            expect(pendingChains.size).toBe(0); // inline: everything is served before kick() returns
            continue;
          }
          // The device stopped at the break: the chains after it were never taken (the disk model says
          // whether they touched anything). The driver resets the device and starts again.
          expect(broken).toBe(true);
          ringBreaks++;
          pendingChains.clear();
          d.abandon();
          r.sim.init();
          d = new BlkTestDriver(r.sim.queue(0), memory, r.sim.allocator);
        }
        const seconds = (performance.now() - started) / 1000;
        expect(memory.violations).toEqual([]); // no access outside guest RAM, ever
        expect(r.pci.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
        expect(sameBytes(new Uint8Array(readFileSync(r.path)), model)).toBe(true);
        expect(canary.changed()).toEqual([]);
        // Still works.
        d.submit([{ data: header(0, 1) }, { length: 512 }, { length: 1 }]);
        d.kick();
        const [c] = d.reap();
        expect([c?.status, c?.len]).toEqual([0, 513]);
        expect(sameBytes(c!.data, model.subarray(512, 1024))).toBe(true);
        console.log(
          `[virtio-blk fuzz] ${readOnly ? "ro" : "rw"}: ${made} chains in ${seconds.toFixed(1)} s: ${okCount} OK, ` +
            `${rejected} IOERR/UNSUPP, ${failedChains} used length 0; ${hostile} with buffers at hostile addresses, ` +
            `${fixed} with a buffer at a chosen address, ${long} longer than the queue, ${ringBreaks} ring breaks ` +
            `(device reset); 0 accesses outside RAM, 0 crashes`,
        );
        expect(okCount).toBeGreaterThan(total / 25);
        expect(rejected).toBeGreaterThan(total / 5);
        expect(failedChains).toBeGreaterThan(total / 25);
      },
      Math.max(60_000, CHAINS * 3),
    );
  }
});
