// Reads and writes of many sizes and offsets against a byte model of the disk,
// in batches, with and without EVENT_IDX and indirect descriptors, over guest
// memory split into small host windows; notification suppression; the
// re-check after re-enabling notifications; virtio-mmio.
import { readFileSync } from "node:fs";
import { openDiskImage } from "@tskvm/disk-image";
import {
  type GuestMemoryAccess,
  PlainGuestMemory,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  VirtioMmioTransport,
  VirtioPciTransport,
} from "@tskvm/virtio";
import {
  InterruptRecorder,
  MmioDriverTransport,
  PciDriverTransport,
  VirtioDriverSimulator,
} from "@tskvm/virtio/testing";
import { afterEach, describe, expect, it } from "vitest";
import { VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VirtioBlkDevice } from "../src/index.js";
import { BlkTestDriver, blkRig, header, type Part, pattern, sameBytes, splitSizes } from "./driver.js";

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

const rigs: ReturnType<typeof blkRig>[] = [];
afterEach(() => {
  for (const r of rigs.splice(0)) r.close();
});

describe("reads and writes against a model", () => {
  for (const eventIdx of [true, false])
    for (const indirect of [false, true])
      it(`EVENT_IDX ${eventIdx ? "on" : "off"}, ${indirect ? "indirect" : "direct"} descriptors`, () => {
        const DISK = 4 << 20;
        const memory = new PlainGuestMemory([{ address: 0, size: 16 << 20 }], { windowSize: 4096 });
        const r = blkRig({ diskSize: DISK, memory, eventIdx });
        rigs.push(r);
        expect((r.negotiated & VIRTIO_F_EVENT_IDX) !== 0n).toBe(eventIdx);
        const model = r.initial.slice();
        const rnd = rng(eventIdx ? (indirect ? 1 : 2) : indirect ? 3 : 4);
        const int = (n: number) => Math.floor(rnd() * n);
        const sizes = [1, 1, 2, 3, 7, 8, 16, 64, 255, 256];
        let reads = 0;
        const pendingReads = new Map<number, Uint8Array>();
        for (let round = 0; round < 150; round++) {
          const batch = 1 + int(6);
          for (let i = 0; i < batch; i++) {
            const n = sizes[int(sizes.length)]!;
            const sector = rnd() < 0.1 ? DISK / 512 - n : int(DISK / 512 - n + 1);
            const pieces = splitSizes(n * 512, 1 + int(indirect ? 12 : 4), rnd);
            if (rnd() < 0.5) {
              const data = pattern(n * 512, round * 100 + i);
              model.set(data, sector * 512);
              const parts: Part[] = [{ data: header(VIRTIO_BLK_T_OUT, sector) }];
              let at = 0;
              for (const p of pieces) {
                parts.push({ data: data.subarray(at, at + p) });
                at += p;
              }
              parts.push({ length: 1 });
              r.driver.submit(parts, { indirect });
            } else {
              const parts: Part[] = [
                { data: header(VIRTIO_BLK_T_IN, sector) },
                ...pieces.map((length) => ({ length })),
              ];
              // The status shares the last data buffer half of the time.
              if (rnd() < 0.5)
                parts[parts.length - 1] = { length: (parts[parts.length - 1]!.length ?? 0) + 1 };
              else parts.push({ length: 1 });
              const head = r.driver.submit(parts, { indirect });
              pendingReads.set(head, model.slice(sector * 512, (sector + n) * 512));
              reads++;
            }
          }
          r.driver.kick();
          const done = r.driver.reap();
          expect(done.length).toBe(batch);
          for (const c of done) {
            expect(c.status).toBe(0);
            const want = pendingReads.get(c.head);
            if (want) {
              pendingReads.delete(c.head);
              expect(c.len).toBe(want.length + 1);
              expect(sameBytes(c.data, want)).toBe(true);
            } else expect(c.len).toBe(1);
          }
        }
        expect(reads).toBeGreaterThan(100);
        expect(sameBytes(new Uint8Array(readFileSync(r.path)), model)).toBe(true);
        const s = r.device.stats;
        expect(s.completed).toBe(s.reads + s.writes);
        expect(s.batches).toBe(150);
      });
});

describe("used-buffer notifications", () => {
  const read = (r: ReturnType<typeof blkRig>, n = 1) => {
    for (let i = 0; i < n; i++) r.driver.submit([{ data: header(VIRTIO_BLK_T_IN, i) }, { length: 513 }]);
    r.driver.kick();
  };

  it("with EVENT_IDX: one interrupt per batch, none while used_event is elsewhere", () => {
    const r = blkRig();
    rigs.push(r);
    const q = r.driver.q;
    const vector = q.vector;
    read(r, 5);
    expect(r.irq.count(vector)).toBe(1);
    expect(r.driver.reap().length).toBe(5);
    // The device moved avail_event past what it consumed: the driver kicks for the next one.
    expect(q.availEvent()).toBe(q.availIdx);
    q.autoUsedEvent = false;
    q.setUsedEvent((q.lastUsed + 100) & 0xffff);
    read(r, 3);
    expect(r.irq.count(vector)).toBe(1);
    expect(r.driver.reap().length).toBe(3);
    q.setUsedEvent(q.lastUsed);
    read(r, 1);
    expect(r.irq.count(vector)).toBe(2);
    r.driver.reap();
  });

  it("without EVENT_IDX: VIRTQ_AVAIL_F_NO_INTERRUPT is honoured, notifications are left on", () => {
    const r = blkRig({ features: VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH });
    rigs.push(r);
    const q = r.driver.q;
    read(r, 2);
    expect(r.irq.count(q.vector)).toBe(1);
    expect(q.usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(0);
    q.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    read(r, 2);
    expect(r.irq.count(q.vector)).toBe(1);
    expect(r.driver.reap().length).toBe(4);
  });

  for (const eventIdx of [true, false])
    it(`a request made available as notifications come back on is still served (EVENT_IDX ${eventIdx ? "on" : "off"})`, () => {
      // Guest memory that calls back when the device re-enables notifications (avail_event, or
      // clearing NO_NOTIFY): the moment a racing driver would publish without kicking.
      let hook: ((address: number, v: number) => void) | undefined;
      const base = new PlainGuestMemory([{ address: 0, size: 16 << 20 }]);
      let usedRing = -1;
      let usedLength = 0;
      const inUsed = (a: number, n: number) => usedRing >= 0 && a < usedRing + usedLength && a + n > usedRing;
      const memory: GuestMemoryAccess = new Proxy(base, {
        get(target, prop) {
          const v = Reflect.get(target, prop, target);
          if (prop === "view")
            return (a: number, n: number) => {
              // Force the queue's used ring through writeU16 so the hook sees it.
              if (inUsed(a, n)) throw new RangeError("not contiguous (test)");
              return target.view(a, n);
            };
          if (prop === "writeU16")
            return (a: number, val: number) => {
              target.writeU16(a, val);
              hook?.(a, val);
            };
          return typeof v === "function" ? v.bind(target) : v;
        },
      });
      const dir = blkRig({ diskSize: 1 << 20 });
      rigs.push(dir);
      dir.image.close();
      const image = openDiskImage(dir.path, { format: "raw" });
      const device = new VirtioBlkDevice({ image, eventIdx });
      const irq = new InterruptRecorder();
      const pci = new VirtioPciTransport({ device, memory, msix: irq, intx: irq });
      const sim = new VirtioDriverSimulator({
        transport: new PciDriverTransport(pci),
        memory,
        heap: { address: 0x10000, size: 8 << 20 },
      });
      sim.negotiate();
      const q = sim.setupQueue(0, { size: 16 });
      usedRing = q.usedRing;
      usedLength = 6 + 8 * 16;
      sim.driverOk();
      const driver = new BlkTestDriver(q, memory, sim.allocator);
      let injected = 0;
      const watch = eventIdx ? q.usedRing + 4 + 8 * 16 : q.usedRing;
      hook = (a, v) => {
        const enabling = eventIdx ? true : (v & VIRTQ_USED_F_NO_NOTIFY) === 0;
        if (a === watch && enabling && injected < 3) {
          injected++;
          driver.submit([{ data: header(VIRTIO_BLK_T_IN, 1) }, { length: 513 }]); // published, no kick
        }
      };
      driver.submit([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 513 }]);
      driver.kick();
      hook = undefined;
      const done = driver.reap();
      expect(injected).toBe(3);
      expect(done.length).toBe(4);
      expect(done.every((c) => c.status === 0 && c.len === 513)).toBe(true);
      image.close();
    });
});

describe("virtio-mmio", () => {
  it("the same device behind the mmio transport", () => {
    const r = blkRig();
    rigs.push(r);
    r.image.close();
    const image = openDiskImage(r.path, { format: "raw" });
    const device = new VirtioBlkDevice({ image, serial: "mmio" });
    const memory = new PlainGuestMemory([{ address: 0, size: 8 << 20 }]);
    const irq = new InterruptRecorder();
    const mmio = new VirtioMmioTransport({ device, memory, base: 0xd000_0000, irq });
    const sim = new VirtioDriverSimulator({
      transport: new MmioDriverTransport(mmio),
      memory,
      heap: { address: 0x10000, size: 4 << 20 },
    });
    sim.init();
    const driver = new BlkTestDriver(sim.queue(0), memory, sim.allocator);
    const data = pattern(2048, 5);
    driver.submit([{ data: header(VIRTIO_BLK_T_OUT, 4) }, { data }, { length: 1 }]);
    driver.submit([{ data: header(VIRTIO_BLK_T_IN, 4) }, { length: 2049 }]);
    driver.kick();
    const done = driver.reap();
    expect(done.map((c) => [c.status, c.len])).toEqual([
      [0, 1],
      [0, 2049],
    ]);
    expect(sameBytes(done[1]!.data, data)).toBe(true);
    expect(irq.level).toBe(true);
    expect(sim.takeInterruptStatus() & 1).toBe(1);
    expect(irq.level).toBe(false);
    image.close();
  });
});
