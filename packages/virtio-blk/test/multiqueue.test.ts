// Multiqueue (VIRTIO_BLK_F_MQ): the feature and num_queues, every queue served, each answer
// on its own queue's used ring and MSI-X vector — with sync I/O and with io_uring (the
// hand-driven io_uring queue has its own tests in async.test.ts).
import { ioUringSupport } from "@tskvm/disk-image";
import { afterEach, describe, expect, it } from "vitest";
import {
  BLK_MAX_QUEUES,
  BlkConfigOffset,
  blkConfiguration,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  virtioBlkPciDevice,
} from "../src/index.js";
import { blkRig, header, pattern, type RigOptions, sameBytes } from "./driver.js";

const rigs: ReturnType<typeof blkRig>[] = [];
afterEach(() => {
  for (const r of rigs.splice(0)) r.close();
});
const rig = (options: RigOptions) => {
  const r = blkRig(options);
  rigs.push(r);
  return r;
};

const info = {
  size: 1 << 20,
  readOnly: false,
  supportsDiscard: false,
  supportsWriteZeroes: false,
  discardGranularity: 512,
  format: "raw",
  path: "disk.img",
};

describe("multiqueue configuration", () => {
  it("offers VIRTIO_BLK_F_MQ and num_queues (le16 at 34) with more than one queue, not with one", () => {
    for (const queues of [1, 2, 4, BLK_MAX_QUEUES]) {
      const c = blkConfiguration(info, { queues });
      expect(c.queues).toBe(queues);
      expect(c.features & VIRTIO_BLK_F_MQ).toBe(queues > 1 ? VIRTIO_BLK_F_MQ : 0n);
      expect(BlkConfigOffset.NUM_QUEUES).toBe(34);
      expect(new DataView(c.configSpace.buffer).getUint16(34, true)).toBe(queues);
    }
    expect(VIRTIO_BLK_F_MQ).toBe(1n << 12n);
    expect(blkConfiguration(info).queues).toBe(1);
  });

  it("refuses queue counts outside 1..16 with a clear error", () => {
    for (const queues of [0, -1, 17, 1.5, Number.NaN])
      expect(() => blkConfiguration(info, { queues })).toThrow(`queues ${queues} is not an integer in 1..16`);
    expect(() => virtioBlkPciDevice({ path: "/srv/a.img", queues: 17 })).toThrow(
      "disk /srv/a.img: queues must be 1-16, not 17",
    );
    expect(() => virtioBlkPciDevice({ path: "/srv/a.img", queues: 0 })).toThrow(RangeError);
    expect(typeof virtioBlkPciDevice({ path: "/srv/a.img", queues: 16 })).toBe("function");
  });

  it("the device has one queue per `queues` and the driver negotiates MQ and reads num_queues", () => {
    const r = rig({ queues: 4 });
    expect(r.device.queueMaxSizes).toEqual([256, 256, 256, 256]);
    expect(r.negotiated & VIRTIO_BLK_F_MQ).toBe(VIRTIO_BLK_F_MQ);
    const n = new Uint8Array(2);
    r.device.readConfig(34, n);
    expect(n[0]! | (n[1]! << 8)).toBe(4);
  });
});

describe.each(["sync", "io_uring"] as const)("4 queues, aio=%s", (aio) => {
  it("requests on every queue complete on their own queue, with their own vector", () => {
    if (aio === "io_uring")
      expect(ioUringSupport(), "io_uring is not available here").toMatchObject({ available: true });
    const r = rig({ queues: 4, aio, diskSize: 4 << 20 });
    expect(r.device.aio).toBe(aio);
    const model = r.initial.slice();
    const wanted = r.drivers.map(() => new Map<number, { sector: number; length: number }>());
    let round = 0;
    for (; round < 20; round++) {
      // Every queue gets a write and a read of its own sectors, then all are kicked together.
      for (let q = 0; q < 4; q++) {
        const d = r.drivers[q]!;
        const sector = (q * 20 + round) * 16;
        const data = pattern(4096, round * 4 + q + 1);
        model.set(data, sector * 512);
        d.submit([{ data: header(VIRTIO_BLK_T_OUT, sector) }, { data }, { length: 1 }]);
        const other = ((q * 20 + ((round + 7) % 20)) * 16 + 8) * 512; // never written: the initial bytes
        wanted[q]!.set(
          d.submit([{ data: header(VIRTIO_BLK_T_IN, other / 512) }, { length: 2048 }, { length: 1 }]),
          {
            sector: other / 512,
            length: 2048,
          },
        );
      }
      for (const d of r.drivers) d.kick();
      let left = 8;
      for (let spins = 0; left > 0 && spins < 10_000; spins++) {
        r.device.completeRequests();
        for (let q = 0; q < 4; q++)
          for (const c of r.drivers[q]!.reap()) {
            left--;
            expect(c.status).toBe(VIRTIO_BLK_S_OK);
            const w = wanted[q]!.get(c.head);
            if (w && c.len > 1) {
              wanted[q]!.delete(c.head);
              expect(sameBytes(c.data, model.subarray(w.sector * 512, w.sector * 512 + w.length))).toBe(true);
            }
          }
      }
      expect(left).toBe(0);
    }
    for (const w of wanted) expect(w.size).toBe(0);
    expect(r.device.stats).toMatchObject({
      queues: 4,
      completed: 4 * 2 * round,
      inFlight: 0,
      requests: { read: 4 * round, write: 4 * round },
    });
    // A request on queue 2 alone interrupts through queue 2's vector (1 + 2) only.
    r.irq.clear();
    r.drivers[2]!.submit([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 512 }, { length: 1 }]);
    r.drivers[2]!.kick();
    for (let spins = 0; r.drivers[2]!.inFlight > 0 && spins < 10_000; spins++) {
      r.device.completeRequests();
      r.drivers[2]!.reap();
    }
    expect(r.drivers[2]!.inFlight).toBe(0);
    expect([...r.irq.vectors.keys()]).toEqual([3]);
  });
});
