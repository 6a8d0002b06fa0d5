// The device inline, driven by the virtio driver simulator over virtio-pci:
// every request type and every driver mistake, with the exact status byte and
// used length, and what reached the disk.
import { readFileSync } from "node:fs";
import { type DiskImage, DiskImageError } from "@tskvm/disk-image";
import {
  DeviceStatus,
  PlainGuestMemory,
  Queue,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "@tskvm/virtio";
import { writeDescriptor } from "@tskvm/virtio/testing";
import { afterEach, describe, expect, it } from "vitest";
import { COMPLETION_BATCH } from "../src/device.js";
import {
  BlkConfigOffset,
  GuestViewCache,
  parseBlockRequest,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "../src/index.js";
import { blkRig, FILL, header, pattern, sameBytes, segments } from "./driver.js";

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
const sectorBytes = (r: Rig, sector: number, n: number): Uint8Array =>
  r.initial.subarray(sector * 512, sector * 512 + n);

describe("features and configuration space", () => {
  it("offers the block features and lays out virtio_blk_config (§5.2.4)", () => {
    const r = rig({ diskSize: (3 << 20) + 700, serial: "x" });
    const f = r.sim.transport.deviceFeatures();
    for (const bit of [
      VIRTIO_BLK_F_SIZE_MAX,
      VIRTIO_BLK_F_SEG_MAX,
      VIRTIO_BLK_F_BLK_SIZE,
      VIRTIO_BLK_F_FLUSH,
      VIRTIO_F_EVENT_IDX,
      VIRTIO_F_INDIRECT_DESC,
      VIRTIO_F_VERSION_1,
    ])
      expect(f & bit).toBe(bit);
    expect(f & VIRTIO_BLK_F_RO).toBe(0n);
    // ext4/tmpfs punch holes: discard and write zeroes are offered for a writable raw file.
    expect(f & VIRTIO_BLK_F_DISCARD).toBe(VIRTIO_BLK_F_DISCARD);
    expect(f & VIRTIO_BLK_F_WRITE_ZEROES).toBe(VIRTIO_BLK_F_WRITE_ZEROES);
    const c = r.sim.readConfig(0, 60);
    const dv = new DataView(c.buffer);
    const O = BlkConfigOffset;
    expect(dv.getBigUint64(O.CAPACITY, true)).toBe(BigInt(Math.floor(((3 << 20) + 700) / 512)));
    expect(dv.getUint32(O.SIZE_MAX, true)).toBe(1 << 20);
    expect(dv.getUint32(O.SEG_MAX, true)).toBe(254);
    expect(dv.getUint32(O.GEOMETRY_CYLINDERS, true)).toBe(0);
    expect(dv.getUint32(O.BLK_SIZE, true)).toBe(512);
    expect(dv.getUint8(O.WRITEBACK)).toBe(0);
    expect(dv.getUint16(O.NUM_QUEUES, true)).toBe(1);
    expect(dv.getUint32(O.MAX_DISCARD_SECTORS, true)).toBe(0x3fffff);
    expect(dv.getUint32(O.MAX_DISCARD_SEG, true)).toBe(32);
    expect(dv.getUint32(O.DISCARD_SECTOR_ALIGNMENT, true)).toBeGreaterThanOrEqual(1);
    expect(dv.getUint32(O.MAX_WRITE_ZEROES_SECTORS, true)).toBe(0x3fffff);
    expect(dv.getUint32(O.MAX_WRITE_ZEROES_SEG, true)).toBe(32);
    expect(dv.getUint8(O.WRITE_ZEROES_MAY_UNMAP)).toBe(1);
    expect(Array.from(c.subarray(57, 60))).toEqual([0, 0, 0]);
    // The config space is read-only.
    r.sim.writeConfig(0, new Uint8Array(8));
    expect(r.sim.readConfig(0, 8)).toEqual(c.subarray(0, 8));
    expect(r.pci.readConfig === undefined).toBe(false);
    expect(r.device.queueMaxSizes).toEqual([256]);
  });

  it("marks a read-only disk RO and offers neither discard nor write zeroes", () => {
    const r = rig({ readOnly: true });
    const f = r.sim.transport.deviceFeatures();
    expect(f & VIRTIO_BLK_F_RO).toBe(VIRTIO_BLK_F_RO);
    expect(f & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES)).toBe(0n);
  });

  it("honours options: queue size, seg_max, size_max, serial length, no event idx / indirect", () => {
    const r = rig({ queueSize: 64, sizeMax: 4096, segMax: 10, eventIdx: false, indirect: false });
    const f = r.sim.transport.deviceFeatures();
    expect(f & (VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC)).toBe(0n);
    const dv = new DataView(r.sim.readConfig(0, 60).buffer);
    expect(dv.getUint32(BlkConfigOffset.SIZE_MAX, true)).toBe(4096);
    expect(dv.getUint32(BlkConfigOffset.SEG_MAX, true)).toBe(10);
    expect(r.device.queueMaxSizes).toEqual([64]);
    expect(() => rig({ serial: "bad\u0001" })).toThrow(RangeError);
    expect(() => rig({ queueSize: 100 })).toThrow(RangeError);
  });
});

describe("reads and writes", () => {
  it("IN reads the sectors into the guest buffers: status OK, used length = data + 1", () => {
    const r = rig();
    const c = r.run([{ data: header(VIRTIO_BLK_T_IN, 3) }, { length: 1024 }, { length: 1 }]);
    expect(c.status).toBe(VIRTIO_BLK_S_OK);
    expect(c.len).toBe(1025);
    expect(c.data).toEqual(sectorBytes(r, 3, 1024));
  });

  it("IN with data, status and header split anyhow across descriptors (and indirect)", () => {
    const r = rig();
    const h = header(VIRTIO_BLK_T_IN, 5);
    for (const indirect of [false, true]) {
      const c = r.run(
        [
          { data: h.subarray(0, 3) },
          { data: h.subarray(3, 16) },
          { length: 100 },
          { length: 412 },
          { length: 511 },
          { length: 2 }, // last data byte + status
        ],
        { indirect },
      );
      expect(c.status).toBe(VIRTIO_BLK_S_OK);
      expect(c.len).toBe(1025);
      expect(c.data).toEqual(sectorBytes(r, 5, 1024));
    }
  });

  it("OUT writes the guest data: status OK, used length 1; IN of zero sectors is fine", () => {
    const r = rig();
    const data = pattern(1536, 99);
    const c = r.run([
      { data: header(VIRTIO_BLK_T_OUT, 10) },
      { data: data.subarray(0, 700) },
      { data: data.subarray(700) },
      { length: 1 },
    ]);
    expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_OK, 1]);
    expect(disk(r).subarray(10 * 512, 10 * 512 + 1536)).toEqual(data);
    const z = r.run([{ data: header(VIRTIO_BLK_T_IN, 2048) }, { length: 1 }]);
    expect([z.status, z.len]).toEqual([VIRTIO_BLK_S_OK, 1]);
  });

  it("the last sector is readable and writable; one past is IOERR with nothing touched", () => {
    const r = rig();
    const last = 2047;
    expect(r.run([{ data: header(VIRTIO_BLK_T_IN, last) }, { length: 513 }]).status).toBe(VIRTIO_BLK_S_OK);
    const w = r.run([{ data: header(VIRTIO_BLK_T_OUT, last) }, { data: new Uint8Array(512) }, { length: 1 }]);
    expect(w.status).toBe(VIRTIO_BLK_S_OK);
    const c = r.run([{ data: header(VIRTIO_BLK_T_IN, last) }, { length: 1024 }, { length: 1 }]);
    expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_IOERR, 1]);
    expect(c.data.every((b) => b === FILL)).toBe(true);
    const before = disk(r);
    const o = r.run([{ data: header(VIRTIO_BLK_T_OUT, 2048) }, { data: new Uint8Array(512) }, { length: 1 }]);
    expect([o.status, o.len]).toEqual([VIRTIO_BLK_S_IOERR, 1]);
    expect(same(disk(r), before)).toBe(true);
    expect(r.device.stats.rejected).toBe(2);
  });

  it("a sector range overflowing 64 bits, or with a huge sector, is IOERR", () => {
    const r = rig();
    for (const sector of [0xffff_ffff_ffff_ffffn, 0xffff_ffff_ffff_fffen, 1n << 40n, 1n << 53n]) {
      const c = r.run([{ data: header(VIRTIO_BLK_T_IN, sector) }, { length: 1024 }, { length: 1 }]);
      expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_IOERR, 1]);
    }
  });

  it("data that is not a multiple of 512, or goes the wrong way, is IOERR", () => {
    const r = rig();
    const before = disk(r);
    const cases = [
      [{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 100 }, { length: 1 }],
      [{ data: header(VIRTIO_BLK_T_OUT, 0) }, { data: new Uint8Array(513) }, { length: 1 }],
      // IN with device-readable data
      [{ data: header(VIRTIO_BLK_T_IN, 0) }, { data: new Uint8Array(512) }, { length: 1 }],
      // OUT with device-writable data before the status
      [{ data: header(VIRTIO_BLK_T_OUT, 0) }, { data: new Uint8Array(512) }, { length: 513 }],
      [{ data: header(VIRTIO_BLK_T_OUT, 0) }, { length: 513 }],
    ];
    for (const parts of cases) {
      const c = r.run(parts);
      expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_IOERR, 1]);
    }
    expect(same(disk(r), before)).toBe(true);
  });
});

describe("flush, get id, unsupported types", () => {
  it("FLUSH: OK with used length 1; a non-zero sector is IOERR; data in it is ignored", () => {
    const r = rig();
    expect(r.run([{ data: header(VIRTIO_BLK_T_FLUSH) }, { length: 1 }])).toMatchObject({ status: 0, len: 1 });
    expect(r.run([{ data: header(VIRTIO_BLK_T_FLUSH, 1) }, { length: 1 }])).toMatchObject({
      status: VIRTIO_BLK_S_IOERR,
      len: 1,
    });
    expect(
      r.run([{ data: header(VIRTIO_BLK_T_FLUSH) }, { data: new Uint8Array(8) }, { length: 1 }]),
    ).toMatchObject({
      status: 0,
      len: 1,
    });
    expect(r.device.stats.flushes).toBe(2);
  });

  it("GET_ID: the serial NUL-padded to 20 bytes, used length 21", () => {
    const r = rig({ serial: "tskvm-disk-0" });
    const c = r.run([{ data: header(VIRTIO_BLK_T_GET_ID) }, { length: 20 }, { length: 1 }]);
    expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_OK, 21]);
    const want = new Uint8Array(20);
    want.set(new TextEncoder().encode("tskvm-disk-0"));
    expect(c.data).toEqual(want);
    const full = rig({ serial: "0123456789abcdefghijKLMN" });
    const f = full.run([{ data: header(VIRTIO_BLK_T_GET_ID) }, { length: 24 }, { length: 1 }]);
    expect([f.status, f.len]).toEqual([VIRTIO_BLK_S_OK, 21]);
    expect(new TextDecoder().decode(f.data.subarray(0, 20))).toBe("0123456789abcdefghij");
    expect(f.data.subarray(20).every((b) => b === FILL)).toBe(true);
  });

  it("GET_ID with a short or device-readable buffer is IOERR", () => {
    const r = rig({ serial: "s" });
    for (const parts of [
      [{ data: header(VIRTIO_BLK_T_GET_ID) }, { length: 19 }, { length: 1 }],
      [{ data: header(VIRTIO_BLK_T_GET_ID) }, { length: 1 }],
      [{ data: header(VIRTIO_BLK_T_GET_ID) }, { data: new Uint8Array(20) }, { length: 1 }],
      [{ data: header(VIRTIO_BLK_T_GET_ID) }, { data: new Uint8Array(20) }, { length: 21 }],
    ]) {
      const c = r.run(parts);
      expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_IOERR, 1]);
      expect(c.data.every((b) => b === FILL)).toBe(true);
    }
  });

  it("unknown and unimplemented types are UNSUPP with used length 1", () => {
    const r = rig();
    for (const type of [2, 3, 5, 7, 10, 14, 15, 16, 0x8000_0000, 0xffff_ffff]) {
      const c = r.run([{ data: header(type, 0) }, { length: 512 }, { length: 1 }]);
      expect([type, c.status, c.len]).toEqual([type, VIRTIO_BLK_S_UNSUPP, 1]);
    }
  });
});

describe("discard and write zeroes", () => {
  const zeros = (b: Uint8Array) => b.every((x) => x === 0);

  it("DISCARD frees ranges (they read back as zeros on a raw file): OK, used length 1", () => {
    const r = rig();
    const c = r.run([
      { data: header(VIRTIO_BLK_T_DISCARD) },
      {
        data: segments([
          { sector: 8, num: 8 },
          { sector: 64, num: 16 },
        ]),
      },
      { length: 1 },
    ]);
    expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_OK, 1]);
    const d = disk(r);
    expect(zeros(d.subarray(8 * 512, 16 * 512))).toBe(true);
    expect(zeros(d.subarray(64 * 512, 80 * 512))).toBe(true);
    expect(d.subarray(16 * 512, 64 * 512)).toEqual(r.initial.subarray(16 * 512, 64 * 512));
  });

  it("WRITE_ZEROES zeroes ranges with and without UNMAP", () => {
    const r = rig();
    const c = r.run([
      { data: header(VIRTIO_BLK_T_WRITE_ZEROES) },
      {
        data: segments([
          { sector: 1, num: 3 },
          { sector: 100, num: 9, flags: 1 },
        ]),
      },
      { length: 1 },
    ]);
    expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_OK, 1]);
    const d = disk(r);
    expect(zeros(d.subarray(512, 4 * 512))).toBe(true);
    expect(zeros(d.subarray(100 * 512, 109 * 512))).toBe(true);
    expect(d.subarray(0, 512)).toEqual(r.initial.subarray(0, 512));
    expect(d.subarray(4 * 512, 100 * 512)).toEqual(r.initial.subarray(4 * 512, 100 * 512));
  });

  it("reserved flags, or UNMAP on a discard, are UNSUPP (§5.2.6.2); nothing is done", () => {
    const r = rig();
    const before = disk(r);
    for (const [type, flags] of [
      [VIRTIO_BLK_T_DISCARD, 1],
      [VIRTIO_BLK_T_DISCARD, 2],
      [VIRTIO_BLK_T_WRITE_ZEROES, 2],
      [VIRTIO_BLK_T_WRITE_ZEROES, 0x8000_0001],
    ] as const) {
      const c = r.run([
        { data: header(type) },
        {
          data: segments([
            { sector: 0, num: 8 },
            { sector: 16, num: 8, flags },
          ]),
        },
        { length: 1 },
      ]);
      expect([type, flags, c.status, c.len]).toEqual([type, flags, VIRTIO_BLK_S_UNSUPP, 1]);
    }
    expect(same(disk(r), before)).toBe(true);
  });

  it("malformed segment lists are IOERR and touch nothing", () => {
    const r = rig({ maxDiscardSegments: 2, maxDiscardSectors: 64 });
    const before = disk(r);
    const cases: [number, Uint8Array | undefined, number][] = [
      [VIRTIO_BLK_T_DISCARD, undefined, 1], // no segments
      [VIRTIO_BLK_T_DISCARD, new Uint8Array(15), 1], // not a multiple of 16
      [
        VIRTIO_BLK_T_DISCARD,
        segments([
          { sector: 0, num: 1 },
          { sector: 2, num: 1 },
          { sector: 4, num: 1 },
        ]),
        1,
      ],
      [VIRTIO_BLK_T_DISCARD, segments([{ sector: 0, num: 65 }]), 1], // over max_discard_sectors
      [VIRTIO_BLK_T_DISCARD, segments([{ sector: 2040, num: 9 }]), 1], // past the end
      [VIRTIO_BLK_T_DISCARD, segments([{ sector: 0xffff_ffff_ffff_fff0n, num: 32 }]), 1], // overflow
      [VIRTIO_BLK_T_WRITE_ZEROES, segments([{ sector: 0, num: 8 }]), 9], // writable data before status
      [VIRTIO_BLK_T_WRITE_ZEROES, segments([{ sector: 1n << 60n, num: 1 }]), 1],
    ];
    for (const [type, segs, statusLen] of cases) {
      const parts = [{ data: header(type) }, ...(segs ? [{ data: segs }] : []), { length: statusLen }];
      const c = r.run(parts);
      expect([type, c.status, c.len]).toEqual([type, VIRTIO_BLK_S_IOERR, 1]);
    }
    expect(same(disk(r), before)).toBe(true);
  });

  it("without the feature negotiated they are UNSUPP", () => {
    const r = rig({ features: VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH });
    for (const type of [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]) {
      const c = r.run([{ data: header(type) }, { data: segments([{ sector: 0, num: 8 }]) }, { length: 1 }]);
      expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_UNSUPP, 1]);
    }
    const off = rig({ discard: false, writeZeroes: false });
    expect(off.negotiated & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES)).toBe(0n);
  });
});

describe("a read-only disk", () => {
  it("refuses OUT, DISCARD and WRITE_ZEROES with IOERR, writes nothing, still reads", () => {
    const r = rig({ readOnly: true });
    const before = disk(r);
    const w = r.run([{ data: header(VIRTIO_BLK_T_OUT, 0) }, { data: new Uint8Array(512) }, { length: 1 }]);
    expect([w.status, w.len]).toEqual([VIRTIO_BLK_S_IOERR, 1]);
    for (const type of [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]) {
      const c = r.run([{ data: header(type) }, { data: segments([{ sector: 0, num: 8 }]) }, { length: 1 }]);
      expect([type, c.status, c.len]).toEqual([type, VIRTIO_BLK_S_IOERR, 1]);
    }
    expect(same(disk(r), before)).toBe(true);
    const c = r.run([{ data: header(VIRTIO_BLK_T_IN, 1) }, { length: 512 }, { length: 1 }]);
    expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_OK, 513]);
    expect(c.data).toEqual(sectorBytes(r, 1, 512));
    expect(r.run([{ data: header(VIRTIO_BLK_T_FLUSH) }, { length: 1 }]).status).toBe(VIRTIO_BLK_S_OK);
  });
});

describe("chains without a usable header or status", () => {
  it("no status byte: returned with used length 0, the device keeps working", () => {
    const r = rig();
    const before = disk(r);
    const cases = [
      [{ data: header(VIRTIO_BLK_T_IN, 0) }], // one descriptor
      [{ data: header(VIRTIO_BLK_T_OUT, 0) }, { data: new Uint8Array(512) }], // nothing writable
      [{ data: header(VIRTIO_BLK_T_OUT, 0) }, { data: new Uint8Array(512) }, { length: 0 }], // empty status
      [{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 0 }, { length: 0 }],
    ];
    for (const parts of cases) {
      const c = r.run(parts);
      expect(c.len).toBe(0);
    }
    expect(same(disk(r), before)).toBe(true);
    expect(r.device.stats.failed).toBe(4);
    expect(r.pci.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
    expect(r.run([{ data: header(VIRTIO_BLK_T_FLUSH) }, { length: 1 }]).status).toBe(VIRTIO_BLK_S_OK);
  });

  it("a header shorter than 16 bytes, or device-writable, is IOERR", () => {
    const r = rig();
    for (const parts of [
      [{ data: header(VIRTIO_BLK_T_IN, 0).subarray(0, 15) }, { length: 513 }],
      [{ data: new Uint8Array(0) }, { length: 513 }],
      [{ length: 16 }, { length: 513 }],
      [{ length: 1 }],
    ]) {
      const c = r.run(parts);
      expect([c.status, c.len]).toEqual([VIRTIO_BLK_S_IOERR, 1]);
    }
  });
});

describe("disk errors", () => {
  it("a failing disk gives IOERR, never an exception", () => {
    let fail = false;
    const wrap = (image: DiskImage): DiskImage =>
      new Proxy(image, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver);
          if (typeof v !== "function") return v;
          return (...args: unknown[]) => {
            if (fail && prop !== "close")
              throw new DiskImageError("EIO", "injected I/O error", { path: "x" });
            return (v as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      });
    const r = rig({ wrapImage: wrap });
    fail = true;
    const cases = [
      [{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 512 }, { length: 1 }],
      [{ data: header(VIRTIO_BLK_T_OUT, 0) }, { data: new Uint8Array(512) }, { length: 1 }],
      [{ data: header(VIRTIO_BLK_T_FLUSH) }, { length: 1 }],
      [{ data: header(VIRTIO_BLK_T_DISCARD) }, { data: segments([{ sector: 0, num: 1 }]) }, { length: 1 }],
      [
        { data: header(VIRTIO_BLK_T_WRITE_ZEROES) },
        { data: segments([{ sector: 0, num: 1 }]) },
        { length: 1 },
      ],
    ];
    for (const parts of cases) expect(r.run(parts)).toMatchObject({ status: VIRTIO_BLK_S_IOERR, len: 1 });
    expect(r.device.stats.ioErrors).toBe(5);
    expect(r.device.engine?.lastError).toBeInstanceOf(DiskImageError);
    fail = false;
    expect(r.run([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 512 }, { length: 1 }]).status).toBe(0);
  });
});

describe("parseBlockRequest fast paths", () => {
  it("a header or data buffer split across host views is read as a stream (view cache or not)", () => {
    const memory = new PlainGuestMemory([{ address: 0, size: 1 << 20 }], { windowSize: 4096 });
    const q = new Queue(memory, { size: 8, descTable: 0x1000, availRing: 0x2000, usedRing: 0x3000 });
    const limits = {
      capacity: 2048,
      readOnly: false,
      segMax: 254,
      sizeMax: 1 << 20,
      discard: undefined,
      writeZeroes: undefined,
    };
    const hdr = 0x4ff8; // the 16-byte header straddles the window boundary at 0x5000
    memory.write(hdr, header(VIRTIO_BLK_T_IN, 7));
    writeDescriptor(memory, 0x1000, 0, { address: hdr, length: 16, flags: VIRTQ_DESC_F_NEXT, next: 1 });
    writeDescriptor(memory, 0x1000, 1, {
      address: 0x6e00, // the data straddles 0x7000
      length: 1024,
      flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
      next: 2,
    });
    writeDescriptor(memory, 0x1000, 2, { address: 0x8000, length: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    for (const views of [undefined, new GuestViewCache(memory)]) {
      for (let round = 0; round < 2; round++) {
        const idx = memory.readU16(0x2002);
        memory.writeU16(0x2004 + 2 * (idx % 8), 0);
        memory.writeU16(0x2002, (idx + 1) & 0xffff);
        const chain = q.pop();
        if (!chain) throw new Error("no chain");
        const req = parseBlockRequest(chain, limits, views);
        expect(req.type).toBe("in");
        if (req.type !== "in") return;
        expect(req.sector).toBe(7);
        expect(req.header.sector).toBe(7n);
        expect(req.buffers.map((b) => b.length)).toEqual([512, 512]);
        expect(req.status.byteOffset).toBe(0x8000);
        q.addUsed(chain.head, 1025);
      }
    }
  });
});

describe("batched disk I/O", () => {
  /** Records the image calls in order; `onCall` may look at the disk or change the answer. */
  const recording = (log: string[], onCall?: (name: string, args: unknown[], result: unknown) => void) => {
    return (image: DiskImage): DiskImage =>
      new Proxy(image, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver);
          if (typeof v !== "function" || prop === "close") return v;
          return (...args: unknown[]) => {
            const name = String(prop);
            log.push(name.endsWith("Batch") ? `${name}(${(args[0] as { count: number }).count})` : name);
            const result = (v as (...a: unknown[]) => unknown).apply(target, args);
            onCall?.(name, args, result);
            return result;
          };
        },
      });
  };

  it("one kick: writes, a FLUSH, more writes and reads — the FLUSH ends the batch and follows the writes before it", () => {
    const log: string[] = [];
    let r!: Rig;
    let atFlush: Uint8Array | undefined;
    r = rig({
      wrapImage: recording(log, (name) => {
        if (name === "flush") atFlush = disk(r);
      }),
    });
    const d = [pattern(1024, 1), pattern(512, 2), pattern(2048, 3), pattern(512, 4)];
    const out = (sector: number, data: Uint8Array) => [
      { data: header(VIRTIO_BLK_T_OUT, sector) },
      { data },
      { length: 1 },
    ];
    const heads = [
      r.driver.submit(out(0, d[0]!)),
      r.driver.submit(out(8, d[1]!)),
      r.driver.submit([{ data: header(VIRTIO_BLK_T_FLUSH) }, { length: 1 }]),
      r.driver.submit(out(16, d[2]!)),
      r.driver.submit(out(0, d[3]!)),
      r.driver.submit([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 1024 }, { length: 1 }]),
      r.driver.submit([{ data: header(VIRTIO_BLK_T_IN, 16) }, { length: 2048 }, { length: 1 }]),
    ];
    r.driver.kick();
    const done = r.driver.reap();
    expect(done.map((c) => c.head)).toEqual(heads); // completed in ring order
    expect(done.map((c) => [c.status, c.len])).toEqual([
      [0, 1],
      [0, 1],
      [0, 1],
      [0, 1],
      [0, 1],
      [0, 1025],
      [0, 2049],
    ]);
    // Two writes in one batch, then the flush, then the rest.
    expect(log.filter((x) => x !== "readv" && x !== "writev")).toEqual([
      "writevBatch(2)",
      "flush",
      "writevBatch(2)",
      "readvBatch(2)",
    ]);
    // At the flush the writes before it were on the disk, the ones after it not yet.
    expect(same(atFlush!.subarray(0, 1024), d[0]!)).toBe(true);
    expect(same(atFlush!.subarray(8 * 512, 9 * 512), d[1]!)).toBe(true);
    expect(same(atFlush!.subarray(16 * 512, 20 * 512), sectorBytes(r, 16, 2048))).toBe(true);
    // Reads after writes in the same batch see them (never reordered).
    expect(same(done[5]!.data, concat2(d[3]!, d[0]!.subarray(512)))).toBe(true);
    expect(same(done[6]!.data, d[2]!)).toBe(true);
    expect(r.device.stats).toMatchObject({ writes: 4, flushes: 1, reads: 2, completed: 7, ioErrors: 0 });
  });

  it("a disk error or a driver mistake in the middle of a batch fails only that request", () => {
    const log: string[] = [];
    const r = rig({
      wrapImage: recording(log, (name, args) => {
        if (name === "readvBatch") {
          const b = args[0] as { errors: unknown[] };
          b.errors[1] = new DiskImageError("EIO", "injected I/O error", { path: "x" });
        }
      }),
    });
    const read = (sector: number) => [
      { data: header(VIRTIO_BLK_T_IN, sector) },
      { length: 512 },
      { length: 1 },
    ];
    const heads = [
      r.driver.submit(read(1)),
      r.driver.submit(read(2)), // the disk fails this one
      r.driver.submit(read(2048)), // one past the end: the driver's mistake
      r.driver.submit([{ data: header(VIRTIO_BLK_T_IN, 3) }]), // no status byte
      r.driver.submit(read(3)),
    ];
    r.driver.kick();
    const done = r.driver.reap();
    expect(done.map((c) => c.head)).toEqual(heads);
    expect(done.map((c) => [c.status, c.len])).toEqual([
      [VIRTIO_BLK_S_OK, 513],
      [VIRTIO_BLK_S_IOERR, 1],
      [VIRTIO_BLK_S_IOERR, 1],
      [undefined, 0],
      [VIRTIO_BLK_S_OK, 513],
    ]);
    // The first batch holds COMPLETION_BATCH (4) chains: two valid reads go to the disk together;
    // the fifth chain is the next batch, alone.
    expect(log).toEqual(["readvBatch(2)", "readv"]);
    expect(same(done[0]!.data, sectorBytes(r, 1, 512))).toBe(true);
    expect(same(done[4]!.data, sectorBytes(r, 3, 512))).toBe(true);
    expect(r.device.stats).toMatchObject({ reads: 2, ioErrors: 1, rejected: 1, failed: 1, completed: 4 });
  });

  it("publishes and interrupts after every batch of COMPLETION_BATCH chains, not once after the whole run", () => {
    // Without EVENT_IDX the driver asks for an interrupt after every used entry.
    const r = rig({ features: VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH });
    const n = 2 * COMPLETION_BATCH + 1;
    const answeredAtInterrupt: number[] = [];
    const signal = r.irq.signalVector.bind(r.irq);
    r.irq.signalVector = (vector) => {
      answeredAtInterrupt.push(r.device.served);
      signal(vector);
    };
    const heads = Array.from({ length: n }, (_, i) =>
      r.driver.submit([{ data: header(VIRTIO_BLK_T_IN, i) }, { length: 512 }, { length: 1 }]),
    );
    r.driver.kick();
    const done = r.driver.reap();
    expect(done.map((c) => c.head)).toEqual(heads);
    expect(done.every((c) => c.status === VIRTIO_BLK_S_OK)).toBe(true);
    // The driver heard of the first batch while the rest were still to be served.
    expect(answeredAtInterrupt).toEqual([COMPLETION_BATCH, 2 * COMPLETION_BATCH, n]);
  });

  it("without batch methods (e.g. qcow2) every request goes alone, same answers", () => {
    const log: string[] = [];
    const strip = (image: DiskImage): DiskImage =>
      new Proxy(image, {
        get(target, prop, receiver) {
          if (prop === "readvBatch" || prop === "writevBatch") return undefined;
          const v = Reflect.get(target, prop, receiver);
          if (typeof v !== "function") return v;
          return (...args: unknown[]) => {
            log.push(String(prop));
            return (v as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      });
    const r = rig({ wrapImage: strip });
    const data = pattern(512, 9);
    r.driver.submit([{ data: header(VIRTIO_BLK_T_OUT, 4) }, { data }, { length: 1 }]);
    r.driver.submit([{ data: header(VIRTIO_BLK_T_IN, 4) }, { length: 512 }, { length: 1 }]);
    r.driver.submit([{ data: header(VIRTIO_BLK_T_IN, 5) }, { length: 512 }, { length: 1 }]);
    r.driver.kick();
    const done = r.driver.reap();
    expect(done.map((c) => c.status)).toEqual([0, 0, 0]);
    expect(same(done[1]!.data, data)).toBe(true);
    expect(log.filter((x) => x !== "close")).toEqual(["writev", "readv", "readv"]);
  });
});

function concat2(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
