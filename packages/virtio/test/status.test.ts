import { describe, expect, it } from "vitest";
import {
  type ActivateContext,
  createTestMemory,
  DeviceStatus,
  feature,
  NO_VECTOR,
  type TransportLink,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  type VirtioDevice,
  VirtioTransportCore,
} from "../src/index.js";
import { mmioRig, pciRig } from "./rigs.js";

const {
  ACKNOWLEDGE: A,
  DRIVER: D,
  FEATURES_OK: F,
  DRIVER_OK: OK,
  DEVICE_NEEDS_RESET: NR,
  FAILED,
} = DeviceStatus;

class TestDevice implements VirtioDevice {
  readonly deviceType = 5;
  readonly queueMaxSizes = [8, 8];
  readonly features = feature(0) | feature(3) | VIRTIO_F_EVENT_IDX | feature(34) /* RING_PACKED */;
  readonly configSize = 4;
  accept = true;
  throwOnActivate = false;
  ctx: ActivateContext | undefined;
  resets = 0;
  readConfig(_o: number, data: Uint8Array): void {
    data.fill(7);
  }
  writeConfig(): void {}
  acceptFeatures(f: bigint): boolean {
    return this.accept && !(f & feature(3) && !(f & feature(0))); // bit 3 needs bit 0
  }
  activate(ctx: ActivateContext): void {
    if (this.throwOnActivate) throw new Error("no backend");
    this.ctx = ctx;
  }
  reset(): void {
    this.resets++;
    this.ctx = undefined;
  }
}

function core() {
  const device = new TestDevice();
  const log: string[] = [];
  const link: TransportLink = {
    queueInterrupt: (q, v) => log.push(`queue ${q} v${v}`),
    configInterrupt: (v) => log.push(`config v${v}`),
    queueEnabled: (i) => log.push(`enabled ${i}`),
    queueDisabled: (i) => log.push(`disabled ${i}`),
    reset: () => log.push("reset"),
  };
  const memory = createTestMemory(0x10000);
  const c = new VirtioTransportCore(device, memory, link);
  const features = (f: bigint): void => {
    c.driverFeatureSelect = 0;
    c.setDriverFeatureWord(Number(f & 0xffff_ffffn));
    c.driverFeatureSelect = 1;
    c.setDriverFeatureWord(Number(f >> 32n));
  };
  const queue = (i: number, size = 8, base = 0x1000 * (i + 1)): void => {
    c.queueSelect = i;
    c.writeSelectedQueue((q) => {
      q.size = size;
      q.descLo = base;
      q.driverLo = base + 0x200;
      q.deviceLo = base + 0x400;
    });
    c.setQueueReady(true);
  };
  return { c, device, log, features, queue };
}

describe("device status state machine (§2.1, §3.1.1)", () => {
  it("walks ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK and activates with the enabled queues", () => {
    const { c, device, features, queue, log } = core();
    c.writeStatus(A);
    c.writeStatus(A | D);
    features(VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | feature(0));
    c.writeStatus(A | D | F);
    expect(c.status).toBe(A | D | F);
    queue(1);
    c.writeStatus(A | D | F | OK);
    expect(c.status).toBe(A | D | F | OK);
    expect(c.activated).toBe(true);
    expect(device.ctx?.driverFeatures).toBe(VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | feature(0));
    expect(device.ctx?.queues.map((q) => [q.index, q.queue.size, q.queue.eventIdx, q.vector])).toEqual([
      [1, 8, true, NO_VECTOR],
    ]);
    expect(log).toEqual(["enabled 1"]);
  });

  it("refuses steps out of order and bits being cleared", () => {
    const { c } = core();
    c.writeStatus(D);
    expect(c.status).toBe(0);
    expect(c.lastRejection?.reason).toMatch(/ACKNOWLEDGE/);
    c.writeStatus(A);
    c.writeStatus(A | F);
    expect(c.status).toBe(A);
    c.writeStatus(A | D);
    c.writeStatus(A | D | OK);
    expect(c.status).toBe(A | D);
    expect(c.lastRejection?.reason).toMatch(/DRIVER_OK needs FEATURES_OK/);
    c.writeStatus(A);
    expect(c.status).toBe(A | D);
    expect(c.lastRejection?.reason).toMatch(/clear/);
  });

  it("FAILED can be set at any time and blocks progress until reset", () => {
    const { c, features } = core();
    c.writeStatus(A);
    c.writeStatus(A | D);
    c.writeStatus(A | D | FAILED);
    expect(c.status).toBe(A | D | FAILED);
    features(VIRTIO_F_VERSION_1);
    expect(c.driverFeatures).toBe(0n);
    c.writeStatus(A | D | FAILED | F);
    expect(c.status).toBe(A | D | FAILED);
    c.writeStatus(0);
    expect(c.status).toBe(0);
  });

  it("writing 0 resets the device, its queues and the negotiation", () => {
    const { c, device, features, queue, log } = core();
    c.writeStatus(A);
    c.writeStatus(A | D);
    features(VIRTIO_F_VERSION_1);
    c.writeStatus(A | D | F);
    queue(0);
    queue(1);
    c.configVector = 3;
    c.writeStatus(A | D | F | OK);
    Atomics.store(c.interruptStatus, 0, 3);
    log.length = 0;
    c.writeStatus(0);
    expect(device.resets).toBe(1);
    expect(c.status).toBe(0);
    expect(c.activated).toBe(false);
    expect(c.driverFeatures).toBe(0n);
    expect(c.configVector).toBe(NO_VECTOR);
    expect(Atomics.load(c.interruptStatus, 0)).toBe(0);
    expect(c.queues.map((q) => [q.ready, q.size, q.descLo])).toEqual([
      [false, 8, 0],
      [false, 8, 0],
    ]);
    expect(log).toEqual(["disabled 0", "disabled 1", "reset"]);
  });
});

describe("feature negotiation (§2.2, §6)", () => {
  const negotiate = (f: bigint) => {
    const k = core();
    k.c.writeStatus(A);
    k.c.writeStatus(A | D);
    k.features(f);
    k.c.writeStatus(A | D | F);
    return k;
  };

  it("offers the device's features plus VERSION_1, less what the transport does not implement", () => {
    const { c } = core();
    expect(c.deviceFeatures).toBe(feature(0) | feature(3) | VIRTIO_F_EVENT_IDX | VIRTIO_F_VERSION_1);
  });

  it("accepts a subset of the offer that includes VERSION_1", () => {
    expect(negotiate(VIRTIO_F_VERSION_1).c.status).toBe(A | D | F);
    expect(negotiate(VIRTIO_F_VERSION_1 | feature(0) | feature(3)).c.status).toBe(A | D | F);
  });

  it("leaves FEATURES_OK clear for features not offered", () => {
    const { c } = negotiate(VIRTIO_F_VERSION_1 | feature(1));
    expect(c.status).toBe(A | D);
    expect(c.lastRejection?.reason).toMatch(/did not offer: 0x2/);
    // RING_PACKED is not offered even though the device lists it.
    expect(negotiate(VIRTIO_F_VERSION_1 | feature(34)).c.status).toBe(A | D);
  });

  it("leaves FEATURES_OK clear without VERSION_1 (legacy)", () => {
    const { c } = negotiate(feature(0));
    expect(c.status).toBe(A | D);
    expect(c.lastRejection?.reason).toMatch(/VERSION_1/);
  });

  it("lets the device refuse a combination", () => {
    expect(negotiate(VIRTIO_F_VERSION_1 | feature(3)).c.status).toBe(A | D);
  });

  it("freezes driver features once FEATURES_OK is set", () => {
    const { c, features } = negotiate(VIRTIO_F_VERSION_1);
    features(VIRTIO_F_VERSION_1 | feature(0));
    expect(c.driverFeatures).toBe(VIRTIO_F_VERSION_1);
  });
});

describe("DEVICE_NEEDS_RESET", () => {
  const ready = (setup: (k: ReturnType<typeof core>) => void) => {
    const k = core();
    k.c.writeStatus(A);
    k.c.writeStatus(A | D);
    k.features(VIRTIO_F_VERSION_1);
    k.c.writeStatus(A | D | F);
    setup(k);
    k.log.length = 0;
    k.c.writeStatus(A | D | F | OK);
    return k;
  };

  it("is set for a queue size that is not a power of two, with the typed reason", () => {
    const { c, log, device } = ready((k) => k.queue(0, 6));
    expect(c.status).toBe(A | D | F | OK | NR);
    expect(c.brokenReason).toMatchObject({ kind: "InvalidQueueSize", size: 6 });
    expect(c.brokenReason?.message).toMatch(/^queue 0:/);
    expect(device.ctx).toBeUndefined();
    expect(log).toEqual(["config v65535"]);
  });

  it("is set for rings outside RAM or misaligned", () => {
    expect(ready((k) => k.queue(0, 8, 0xff00)).c.brokenReason).toMatchObject({ kind: "InvalidRingAddress" });
    expect(ready((k) => k.queue(0, 8, 0x1008)).c.brokenReason).toMatchObject({
      kind: "InvalidRingAlignment",
    });
  });

  it("is set when activation throws", () => {
    const k = core();
    k.device.throwOnActivate = true;
    k.c.writeStatus(A);
    k.c.writeStatus(A | D);
    k.features(VIRTIO_F_VERSION_1);
    k.c.writeStatus(A | D | F);
    k.c.writeStatus(A | D | F | OK);
    expect(k.c.status & NR).toBe(NR);
    expect(k.c.brokenReason?.message).toBe("no backend");
  });

  it("survives driver status writes, drops notifications and stale interrupts, and clears on reset", () => {
    const k = ready((k) => k.queue(0));
    const ctx = k.device.ctx!;
    ctx.needsReset(new Error("backend gone"));
    expect(k.c.status).toBe(A | D | F | OK | NR);
    k.c.writeStatus(A | D | F | OK); // the driver writes back what it read, less NR: NR stays
    expect(k.c.status & NR).toBe(NR);
    k.log.length = 0;
    ctx.interrupt.signalQueue(0);
    expect(k.log).toEqual([]);
    k.c.writeStatus(0);
    expect(k.c.status).toBe(0);
    expect(k.c.brokenReason).toBeUndefined();
    ctx.needsReset(new Error("late")); // from the previous activation: ignored
    ctx.interrupt.signalConfig();
    expect(k.c.status).toBe(0);
  });
});

describe("device exceptions", () => {
  it("mark the device DEVICE_NEEDS_RESET instead of reaching the VMM", () => {
    const { sim, device, transport } = mmioRig();
    sim.init();
    device.queueNotify = () => {
      throw new TypeError("device bug");
    };
    sim.queue(0).kick();
    expect(sim.status & NR).toBe(NR);
    expect(transport.core.brokenReason).toBeInstanceOf(TypeError);
    device.readConfig = () => {
      throw new Error("config bug");
    };
    expect(Array.from(sim.transport.readConfig(0, 4))).toEqual([0, 0, 0, 0]);
  });
});

describe("a device that throws in acceptFeatures or reset", () => {
  it("refuses FEATURES_OK, and still resets to status 0 with the failure kept", () => {
    const k = core();
    k.device.acceptFeatures = () => {
      throw new Error("feature check bug");
    };
    k.c.writeStatus(A);
    k.c.writeStatus(A | D);
    k.features(VIRTIO_F_VERSION_1);
    expect(() => k.c.writeStatus(A | D | F)).not.toThrow();
    expect(k.c.status & F).toBe(0);
    expect(k.c.lastRejection?.reason).toMatch(/feature check bug/);
    k.device.reset = () => {
      throw new Error("worker gone");
    };
    expect(() => k.c.writeStatus(0)).not.toThrow();
    expect(k.c.status).toBe(0);
    expect(k.c.brokenReason?.message).toBe("worker gone");
    expect(k.log).toContain("reset");
  });
});

describe("status machine through both transports", () => {
  it.each([
    ["pci", () => pciRig().sim],
    ["mmio", () => mmioRig().sim],
  ])("%s: the simulator's negotiation is refused for unoffered features", (_n, make) => {
    const sim = make();
    expect(() => sim.negotiate(VIRTIO_F_VERSION_1 | feature(5), { exact: true })).toThrow(/refused/);
    expect(sim.status & FAILED).toBe(FAILED);
    expect(sim.status & F).toBe(0);
    expect(sim.negotiate(VIRTIO_F_VERSION_1 | feature(5))).toBe(VIRTIO_F_VERSION_1); // masked to the offer
    expect(sim.status).toBe(A | D | F);
  });
});
