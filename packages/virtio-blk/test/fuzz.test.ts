// Thousands of random requests, most of them wrong in some way, against the
// inline device over virtio-pci. Each outcome (status byte, used length, data
// returned, effect on the disk) is checked against an independent reading of
// the spec (`expected` below) and a byte model of the disk; at the end the
// disk file must equal the model (only well-formed writes changed it), guest
// memory the driver never handed out must be untouched, and the device must
// still work. Replay a failure with VIRTIO_BLK_FUZZ_SEED=<seed>.
import { readFileSync } from "node:fs";
import {
  DeviceStatus,
  PlainGuestMemory,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  writeDescriptor,
} from "@tskvm/virtio";
import { afterAll, describe, expect, it } from "vitest";
import { blkRig, type Completion, concat, FILL, header, type Part, pattern, sameBytes } from "./driver.js";

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const env = process.env.VIRTIO_BLK_FUZZ_SEED;
const SEED = env !== undefined && env !== "" ? Number(env) >>> 0 : 20261125;
console.log(`[virtio-blk fuzz] seed ${SEED} (replay with VIRTIO_BLK_FUZZ_SEED=${SEED})`);

const DISK = 1 << 20;
const CAPACITY = DISK / 512;
const SERIAL = "fuzz-serial-0001";
const MAX_SEG = 4;
const MAX_SECTORS = 256;
// Guest RAM: [0, 8 MiB) holds the driver's heap; a hole; [9 MiB, 12 MiB) is a canary nobody may touch.
const CANARY = { address: 9 << 20, size: 3 << 20 };

interface Expected {
  len: number;
  status?: number;
  /** Bytes before the status that must come back (IN / GET_ID); the rest stays FILL. */
  data?: Uint8Array;
  apply?: (model: Uint8Array) => void;
}

/** What the spec (and this device's documented choices) say a chain made of `parts` gets. */
function expected(parts: readonly Part[], model: Uint8Array, readOnly: boolean): Expected {
  const isW = (p: Part): boolean => p.writable ?? p.data === undefined;
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
  switch (type) {
    case 0: {
      if (rd > 0 || wd % 512 !== 0 || !inRange(sector, wd / 512)) return IOERR;
      const at = Number(sector) * 512;
      return { len: wd + 1, status: 0, data: model.slice(at, at + wd) };
    }
    case 1: {
      if (readOnly || wd > 0 || rd % 512 !== 0 || !inRange(sector, rd / 512)) return IOERR;
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
    it(`${readOnly ? "read-only" : "writable"} disk: no crash, no hang, no stray write; the disk equals the model`, () => {
      const memory = new PlainGuestMemory(
        [
          { address: 0, size: 8 << 20 },
          { address: CANARY.address, size: CANARY.size },
        ],
        { windowSize: 64 << 10 },
      );
      memory.write(CANARY.address, pattern(CANARY.size, 3));
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
        heapSize: (8 << 20) - 0x20000,
      });
      rigs.push(r);
      const model = r.initial.slice();
      const rnd = rng(SEED + (readOnly ? 1 : 0));
      const int = (n: number): number => Math.floor(rnd() * n);
      const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
      const sectorFor = (n: number): bigint =>
        pick([
          () => BigInt(int(CAPACITY)),
          () => BigInt(Math.max(0, CAPACITY - n)),
          () => BigInt(CAPACITY - n + 1),
          () => 0n,
          () => 0xffff_ffff_ffff_ffffn - BigInt(int(4)),
          () => 1n << BigInt(32 + int(31)),
          () => BigInt.asUintN(64, BigInt(Math.floor(rnd() * 2 ** 53))),
        ])();

      /** A well-formed request, then 0-3 mutations. */
      const randomParts = (): Part[] => {
        const type = pick([0, 0, 1, 1, 4, 8, 11, 13]);
        const n = int(9);
        const sector = type === 4 ? 0n : sectorFor(n);
        const h = header(
          type,
          type === 0 || type === 1
            ? sector < BigInt(CAPACITY - n)
              ? sector
              : BigInt(int(CAPACITY - n))
            : sector,
        );
        let readable: Uint8Array[] = [h];
        let writable: number[] = [];
        if (type === 0) writable = [n * 512];
        if (type === 1) readable.push(pattern(n * 512, int(1 << 30)));
        if (type === 8) writable = [20];
        if (type === 11 || type === 13) {
          const count = 1 + int(MAX_SEG);
          const b = new Uint8Array(16 * count);
          const sdv = new DataView(b.buffer);
          for (let i = 0; i < count; i++) {
            const num = int(MAX_SECTORS / 4);
            sdv.setBigUint64(16 * i, BigInt(int(CAPACITY - num)), true);
            sdv.setUint32(16 * i + 8, num, true);
            sdv.setUint32(16 * i + 12, type === 13 && rnd() < 0.5 ? 1 : 0, true);
          }
          readable.push(b);
        }
        writable.push(1);
        // Mutations: each is something a driver can get wrong.
        for (let m = int(4); m > 0; m--) {
          const all = concat(readable);
          const adv = new DataView(all.buffer);
          switch (int(12)) {
            case 0:
              if (all.length >= 4) adv.setUint32(0, pick([2, 3, 5, 10, 14, 16, 0xffffffff, int(32)]), true);
              break;
            case 1:
              if (all.length >= 16) adv.setBigUint64(8, sectorFor(n), true);
              break;
            case 2: // truncate the readable stream
              readable = [all.subarray(0, int(all.length + 1))];
              continue;
            case 3: // grow or shrink a writable buffer
              if (writable.length) writable[int(writable.length)] = int(1100);
              break;
            case 4: // drop the status (or everything writable)
              writable = rnd() < 0.5 ? writable.slice(0, -1) : [];
              break;
            case 5: // extra readable data
              readable.push(pattern(pick([1, 16, 511, 512, 32]), int(1000)));
              continue;
            case 6: // extra writable data
              writable.unshift(pick([1, 20, 512, 1000]));
              break;
            case 7: // segment flags / counts
              if (all.length >= 32) adv.setUint32(16 + 12, pick([1, 2, 0x80000000, 3]), true);
              if (all.length >= 32 && rnd() < 0.3)
                adv.setUint32(16 + 8, pick([MAX_SECTORS + 1, 0xffffffff]), true);
              break;
            case 8:
              if (all.length >= 4) adv.setUint32(0, pick([0, 1, 4, 8, 11, 13]), true);
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
        let at = 0;
        while (at < all.length) {
          const take = Math.min(all.length - at, 1 + int(all.length));
          parts.push({ data: all.slice(at, at + take) });
          at += take;
        }
        if (all.length === 0 && rnd() < 0.5) parts.push({ data: new Uint8Array(0) });
        for (const len of writable) {
          if (len > 1 && rnd() < 0.5) {
            const cut = 1 + int(len - 1);
            parts.push({ length: cut }, { length: len - cut });
          } else parts.push({ length: len });
        }
        // Sometimes the direction of one part is flipped (a readable part after a writable one is a
        // virtqueue error; a writable header is a blk one).
        if (rnd() < 0.08 && parts.length > 1) {
          const i = int(parts.length);
          const p = parts[i]!;
          parts[i] = p.data ? { length: p.data.length } : { data: new Uint8Array(p.length ?? 0) };
        }
        return parts.length > 0 ? parts : [{ length: 1 }];
      };

      const d = r.driver;
      /** A chain the virtqueue itself rejects (used length 0). */
      const rawChain = (): [number, string] => {
        const buf = d.alloc.alloc(64, 16);
        memory.write(buf, header(0, 0));
        const why = pick([
          "hole",
          "past-end",
          "next-out",
          "loop",
          "r-after-w",
          "indirect-next",
          "nested",
          "bad-table",
        ]);
        const size = d.q.size;
        const head = d.submitRaw(
          3,
          (ids) => {
            const [a, b, c] = ids as [number, number, number];
            const table = buf + 32;
            const desc = (i: number, address: number | bigint, length: number, flags: number, next: number) =>
              d.q.writeDescriptor(i, { address, length, flags, next });
            switch (why) {
              case "hole":
                desc(a, buf, 16, VIRTQ_DESC_F_NEXT, b);
                desc(b, (8 << 20) + int(1 << 20), 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, c);
                desc(c, buf + 16, 1, VIRTQ_DESC_F_WRITE, 0);
                break;
              case "past-end":
                desc(a, buf, 16, VIRTQ_DESC_F_NEXT, b);
                desc(b, pick([12 << 20, 2 ** 52, 0xffff_ffff_ffff_f000n]), 4096, VIRTQ_DESC_F_WRITE, 0);
                break;
              case "next-out":
                desc(a, buf, 16, VIRTQ_DESC_F_NEXT, size + int(100));
                break;
              case "loop":
                desc(a, buf, 16, VIRTQ_DESC_F_NEXT, b);
                desc(b, buf + 16, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, a);
                break;
              case "r-after-w":
                desc(a, buf + 16, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, b);
                desc(b, buf, 16, 0, 0);
                break;
              case "indirect-next":
                desc(a, table, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, b);
                desc(b, buf + 16, 1, VIRTQ_DESC_F_WRITE, 0);
                break;
              case "nested":
                writeDescriptor(memory, table, 0, {
                  address: table,
                  length: 16,
                  flags: VIRTQ_DESC_F_INDIRECT,
                  next: 0,
                });
                desc(a, table, 16, VIRTQ_DESC_F_INDIRECT, 0);
                break;
              default:
                desc(a, table, pick([0, 8, 17]), VIRTQ_DESC_F_INDIRECT, 0);
            }
          },
          [buf],
        );
        return [head, why];
      };

      const total = 2500;
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
        const e = expected(chain.parts, model, readOnly);
        const ctx = {
          parts: chain.parts.map((p) => (p.data ? `R${p.data.length}` : `W${p.length}`)).join(","),
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

      while (made < total) {
        const batch = 1 + int(8);
        for (let i = 0; i < batch && made < total; i++, made++) {
          if (d.freeDescriptors < 24) break;
          if (rnd() < 0.1) {
            const [head, why] = rawChain();
            pendingChains.set(head, { kind: "raw", why });
          } else {
            const parts = randomParts();
            const indirect = rnd() < 0.3;
            const head = d.submit(parts, { indirect });
            pendingChains.set(head, { kind: "parts", parts, indirect });
          }
        }
        d.kick();
        for (const c of d.reap()) check(c);
        expect(pendingChains.size).toBe(0); // inline: everything is served before kick() returns
      }
      expect(r.pci.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
      expect(sameBytes(new Uint8Array(readFileSync(r.path)), model)).toBe(true);
      expect(sameBytes(memory.read(CANARY.address, CANARY.size), pattern(CANARY.size, 3))).toBe(true);
      // Still works.
      const c = r.run([{ data: header(0, 1) }, { length: 512 }, { length: 1 }]);
      expect([c.status, c.len]).toEqual([0, 513]);
      expect(sameBytes(c.data, model.subarray(512, 1024))).toBe(true);
      console.log(
        `[virtio-blk fuzz] ${readOnly ? "ro" : "rw"}: ${made} chains, ${okCount} OK, ${rejected} IOERR/UNSUPP, ${failedChains} used length 0`,
      );
      expect(okCount).toBeGreaterThan(100);
      expect(rejected).toBeGreaterThan(500);
      expect(failedChains).toBeGreaterThan(100);
    });
  }
});
