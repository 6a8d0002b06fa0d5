// What a hostile guest tried against the device (issue #12): each case failed
// on the code before the fix — a worker killed by one request, limits offered
// but not enforced, one kick costing tens of seconds and gigabytes.
import { readFileSync } from "node:fs";
import {
  DeviceStatus,
  PlainGuestMemory,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "@tskvm/virtio";
import { writeDescriptor } from "@tskvm/virtio/testing";
import { afterEach, describe, expect, it } from "vitest";
import {
  BlkConfigOffset,
  MAX_BATCH_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from "../src/index.js";
import { BlkTestDriver, blkRig, header, pattern, sameBytes } from "./driver.js";

type Rig = ReturnType<typeof blkRig>;
const rigs: Rig[] = [];
const rig = (o: Parameters<typeof blkRig>[0] = {}): Rig => {
  const r = blkRig(o);
  rigs.push(r);
  return r;
};
afterEach(() => {
  for (const r of rigs.splice(0)) r.close();
});
const disk = (r: Rig): Uint8Array => new Uint8Array(readFileSync(r.path));
const same = sameBytes;
const broken = (r: Rig): boolean => (r.pci.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;

// RAM: [0, 16 MiB) (the driver's heap), a hole, [17 MiB, 18 MiB).
const twoRegions = (): PlainGuestMemory =>
  new PlainGuestMemory([
    { address: 0, size: 16 << 20 },
    { address: 17 << 20, size: 1 << 20 },
  ]);

describe("zero-length descriptors anywhere (issue #12, item 1)", () => {
  it("an IN whose empty data descriptor is not RAM gets used length 0, and the device goes on", () => {
    const r = rig({ memory: twoRegions() });
    // Before the fix, the first of these threw out of the device ("not a valid range").
    const outside: (number | bigint)[] = [2n ** 53n, 2n ** 64n - 1n, 16 << 20, 18 << 20];
    for (const address of outside) {
      const c = r.run([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 0, address }, { length: 1 }]);
      expect(c.len).toBe(0);
      // Readable, in the middle of an OUT, too.
      const w = r.run([
        { data: header(VIRTIO_BLK_T_OUT, 0) },
        { data: new Uint8Array(0), address },
        { data: new Uint8Array(512) },
        { length: 1 },
      ]);
      expect(w.len).toBe(0);
    }
    expect(r.device.stats.failed).toBe(2 * outside.length);
    expect(same(disk(r), r.initial)).toBe(true);
    // On RAM (address 0, the first and last byte of each region) an empty buffer is harmless.
    for (const address of [0, (16 << 20) - 1, 17 << 20, (18 << 20) - 1]) {
      const c = r.run([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 0, address }, { length: 1 }]);
      expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_OK, 1]);
    }
    expect(broken(r)).toBe(false);
    const c = r.run([{ data: header(VIRTIO_BLK_T_IN, 1) }, { length: 512 }, { length: 1 }]);
    expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_OK, 513]);
    expect(same(c.data, r.initial.subarray(512, 1024))).toBe(true);
  });
});

describe("seg_max and size_max are enforced (issue #12, item 5)", () => {
  it("IN / OUT data in more than seg_max segments, or a segment over size_max, is IOERR; at the limits it is served", () => {
    const r = rig({ segMax: 4, sizeMax: 4096 });
    const cfg = r.sim.readConfig(0, 16);
    const dv = new DataView(cfg.buffer, cfg.byteOffset);
    expect([
      dv.getUint32(BlkConfigOffset.SIZE_MAX, true),
      dv.getUint32(BlkConfigOffset.SEG_MAX, true),
    ]).toEqual([4096, 4]);
    const inParts = (sizes: number[]) => [
      { data: header(VIRTIO_BLK_T_IN, 2) },
      ...sizes.map((length) => ({ length })),
      { length: 1 },
    ];
    const read = (sizes: number[]) => {
      const c = r.run(inParts(sizes));
      return [c.status, c.len];
    };
    expect(read([1024, 1024, 1024, 1024])).toEqual([VIRTIO_BLK_S_OK, 4097]);
    expect(read([4096])).toEqual([VIRTIO_BLK_S_OK, 4097]);
    expect(read([512, 512, 512, 512, 512])).toEqual([VIRTIO_BLK_S_IOERR, 1]);
    expect(read([8192])).toEqual([VIRTIO_BLK_S_IOERR, 1]); // the one-descriptor fast path
    expect(read([512, 4608])).toEqual([VIRTIO_BLK_S_IOERR, 1]);
    // Empty descriptors are not segments; the status byte sharing a descriptor with data is not data.
    expect(read([512, 0, 512, 0, 512, 0, 512])).toEqual([VIRTIO_BLK_S_OK, 2049]);
    const c = r.run([{ data: header(VIRTIO_BLK_T_IN, 2) }, { length: 4097 }]);
    expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_OK, 4097]);

    const data = pattern(8192, 5);
    const write = (pieces: Uint8Array[], withHeader = false) => {
      const parts = withHeader
        ? [
            { data: Uint8Array.from([...header(VIRTIO_BLK_T_OUT, 8), ...pieces[0]!]) },
            ...pieces.slice(1).map((d) => ({ data: d })),
          ]
        : [{ data: header(VIRTIO_BLK_T_OUT, 8) }, ...pieces.map((d) => ({ data: d }))];
      const w = r.run([...parts, { length: 1 }]);
      return [w.status, w.len];
    };
    const before = disk(r);
    expect(write([0, 1, 2, 3, 4].map((i) => data.subarray(512 * i, 512 * (i + 1))))).toEqual([
      VIRTIO_BLK_S_IOERR,
      1,
    ]);
    expect(write([data.subarray(0, 4608)])).toEqual([VIRTIO_BLK_S_IOERR, 1]);
    expect(same(disk(r), before)).toBe(true);
    // The header sharing the first descriptor with data: that piece is one segment.
    expect(
      write(
        [0, 1, 2, 3].map((i) => data.subarray(1024 * i, 1024 * (i + 1))),
        true,
      ),
    ).toEqual([VIRTIO_BLK_S_OK, 1]);
    expect(same(disk(r).subarray(8 * 512, 8 * 512 + 4096), data.subarray(0, 4096))).toBe(true);
    expect(broken(r)).toBe(false);
  });
});

describe("one kick costs bounded time and memory (issue #12, item 5)", () => {
  it("250 indirect chains of 65,026 one-byte descriptors are refused at the queue size, in well under a second", () => {
    // A third region holds one indirect table of 65,026 entries that every chain points at.
    const memory = new PlainGuestMemory([
      { address: 0, size: 16 << 20 },
      { address: 32 << 20, size: 2 << 20 },
    ]);
    const r = rig({ memory });
    const table = 32 << 20;
    const buf = table + (1 << 20) + 0x8000;
    const n = 65026;
    for (let i = 0; i < n; i++)
      writeDescriptor(memory, table, i, {
        address: i === 0 ? buf : buf + 16 + i,
        length: i === 0 ? 16 : 1,
        flags: (i === 0 ? 0 : VIRTQ_DESC_F_WRITE) | (i < n - 1 ? VIRTQ_DESC_F_NEXT : 0),
        next: i + 1,
      });
    memory.write(buf, header(VIRTIO_BLK_T_IN, 0));
    const heads: number[] = [];
    for (let k = 0; k < 250; k++)
      heads.push(
        r.driver.submitRaw(1, ([id]) =>
          r.driver.q.writeDescriptor(id!, {
            address: table,
            length: n * 16,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
          }),
        ),
      );
    const heap = process.memoryUsage().heapUsed;
    const t0 = performance.now();
    r.driver.kick();
    const ms = performance.now() - t0;
    const done = r.driver.reap();
    expect(done.map((c) => c.len)).toEqual(heads.map(() => 0)); // ChainTooLong: more buffers than the queue size
    expect(ms).toBeLessThan(1000); // 26 s in the worker before the fix
    expect(process.memoryUsage().heapUsed - heap).toBeLessThan(256 << 20); // ~2.4 GB before
    expect(broken(r)).toBe(false);
    const c = r.run([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 512 }, { length: 1 }]);
    expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_OK, 513]);
  });

  it("processQueue stops at its byte budget and says more is pending; a batch stops at MAX_BATCH_BYTES", () => {
    const r = rig({ diskSize: 8 << 20, sizeMax: 1 << 20 });
    const d = r.driver;
    for (let i = 0; i < 6; i++)
      d.submit([{ data: header(VIRTIO_BLK_T_IN, i * 128) }, { length: 64 << 10 }, { length: 1 }]);
    // No kick: serve by hand with a 100 KiB budget — two 64 KiB reads, then it stops.
    expect(r.device.processQueue(0, Number.POSITIVE_INFINITY, undefined, 100 << 10)).toBe(true);
    expect(d.reap()).toHaveLength(2);
    expect(r.device.processQueue(0, Number.POSITIVE_INFINITY, undefined, 100 << 10)).toBe(true);
    expect(d.reap()).toHaveLength(2);
    expect(r.device.processQueue(0)).toBe(false);
    expect(d.reap().every((c) => c.status === VIRTIO_BLK_S_OK && c.len === (64 << 10) + 1)).toBe(true);
    expect(MAX_BATCH_BYTES).toBeGreaterThanOrEqual(1 << 20);
  });
});

describe("a device that meets something unexpected (issue #12: nothing throws out of a device)", () => {
  it("marks itself DEVICE_NEEDS_RESET instead of throwing; a reset brings it back", () => {
    const r = rig();
    const engine = r.device.engine!;
    const executeAll = engine.executeAll.bind(engine);
    engine.executeAll = () => {
      throw new TypeError("a device bug");
    };
    r.driver.submit([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 512 }, { length: 1 }]);
    expect(() => r.device.processQueue(0)).not.toThrow();
    expect(broken(r)).toBe(true);
    expect(r.pci.core.brokenReason).toBeInstanceOf(TypeError);
    engine.executeAll = executeAll;
    r.driver.abandon();
    r.sim.init();
    const driver = new BlkTestDriver(r.sim.queue(0), r.memory, r.sim.allocator);
    driver.submit([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 512 }, { length: 1 }]);
    driver.kick();
    const [c] = driver.reap();
    expect([c?.status, c?.len]).toEqual([VIRTIO_BLK_S_OK, 513]);
    expect(broken(r)).toBe(false);
  });
});
