import { describe, expect, it } from "vitest";
import { DeviceStatus, INTERRUPT_CONFIG, INTERRUPT_QUEUE, MmioReg, VIRTIO_MMIO_MAGIC } from "../src/index.js";
import { mmioRig, text } from "./rigs.js";

const { ACKNOWLEDGE, DRIVER, FEATURES_OK } = DeviceStatus;

describe("virtio-mmio registers", () => {
  it("identifies a version 2 device", () => {
    const { transport: t } = mmioRig();
    expect(t.readRegister(MmioReg.MAGIC_VALUE)).toBe(VIRTIO_MMIO_MAGIC);
    expect(t.readRegister(MmioReg.VERSION)).toBe(2);
    expect(t.readRegister(MmioReg.DEVICE_ID)).toBe(42);
    expect(t.readRegister(MmioReg.VENDOR_ID)).toBe(t.vendorId);
    expect(t.readRegister(MmioReg.SHM_LEN_LOW)).toBe(0xffffffff);
    expect(t.readRegister(MmioReg.SHM_LEN_HIGH)).toBe(0xffffffff);
    expect(t.readRegister(MmioReg.QUEUE_RESET)).toBe(0);
  });

  it("ignores register accesses that are not aligned 32-bit ones", () => {
    const { transport: t } = mmioRig();
    const b = new Uint8Array(2).fill(0xee);
    t.read(MmioReg.MAGIC_VALUE, b);
    expect(Array.from(b)).toEqual([0, 0]);
    t.write(MmioReg.STATUS, Uint8Array.of(ACKNOWLEDGE)); // 1 byte: ignored
    expect(t.status).toBe(0);
    t.write(MmioReg.STATUS + 1, Uint8Array.of(1, 0, 0, 0)); // unaligned: ignored
    expect(t.status).toBe(0);
    t.writeRegister(MmioReg.STATUS, ACKNOWLEDGE);
    expect(t.readRegister(MmioReg.STATUS)).toBe(ACKNOWLEDGE);
  });

  it("selects feature words", () => {
    const { transport: t } = mmioRig();
    t.writeRegister(MmioReg.DEVICE_FEATURES_SEL, 0);
    expect(t.readRegister(MmioReg.DEVICE_FEATURES)).toBe(((1 << 29) | (1 << 28) | 1) >>> 0);
    t.writeRegister(MmioReg.DEVICE_FEATURES_SEL, 1);
    expect(t.readRegister(MmioReg.DEVICE_FEATURES)).toBe(1);
    t.writeRegister(MmioReg.DEVICE_FEATURES_SEL, 5);
    expect(t.readRegister(MmioReg.DEVICE_FEATURES)).toBe(0);
    t.writeRegister(MmioReg.STATUS, ACKNOWLEDGE | DRIVER);
    t.writeRegister(MmioReg.DRIVER_FEATURES_SEL, 1);
    t.writeRegister(MmioReg.DRIVER_FEATURES, 1);
    expect(t.core.driverFeatures).toBe(1n << 32n);
  });

  it("programs queues through QueueSel and freezes them once ready", () => {
    const { transport: t } = mmioRig();
    t.writeRegister(MmioReg.QUEUE_SEL, 0);
    expect(t.readRegister(MmioReg.QUEUE_NUM_MAX)).toBe(256);
    t.writeRegister(MmioReg.QUEUE_SEL, 1);
    expect(t.readRegister(MmioReg.QUEUE_NUM_MAX)).toBe(64);
    t.writeRegister(MmioReg.QUEUE_SEL, 2);
    expect(t.readRegister(MmioReg.QUEUE_NUM_MAX)).toBe(0);
    t.writeRegister(MmioReg.QUEUE_SEL, 1);
    t.writeRegister(MmioReg.QUEUE_NUM, 16); // before FEATURES_OK: ignored
    expect(t.core.queues[1]!.size).toBe(64);
    t.writeRegister(MmioReg.STATUS, ACKNOWLEDGE);
    t.writeRegister(MmioReg.STATUS, ACKNOWLEDGE | DRIVER);
    t.writeRegister(MmioReg.DRIVER_FEATURES_SEL, 1);
    t.writeRegister(MmioReg.DRIVER_FEATURES, 1);
    t.writeRegister(MmioReg.STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    t.writeRegister(MmioReg.QUEUE_SEL, 1);
    t.writeRegister(MmioReg.QUEUE_NUM, 16);
    t.writeRegister(MmioReg.QUEUE_DESC_LOW, 0x1000);
    t.writeRegister(MmioReg.QUEUE_DESC_HIGH, 0x1);
    t.writeRegister(MmioReg.QUEUE_DRIVER_LOW, 0x2000);
    t.writeRegister(MmioReg.QUEUE_DEVICE_LOW, 0x3000);
    expect(t.readRegister(MmioReg.QUEUE_READY)).toBe(0);
    t.writeRegister(MmioReg.QUEUE_READY, 1);
    expect(t.readRegister(MmioReg.QUEUE_READY)).toBe(1);
    t.writeRegister(MmioReg.QUEUE_NUM, 8);
    t.writeRegister(MmioReg.QUEUE_DESC_LOW, 0x9000);
    expect(t.core.queues[1]).toMatchObject({
      size: 16,
      descLo: 0x1000,
      descHi: 1,
      driverLo: 0x2000,
      deviceLo: 0x3000,
    });
    // Before DRIVER_OK the driver may take the queue back (Linux's vm_del_vq does).
    t.writeRegister(MmioReg.QUEUE_READY, 0);
    expect(t.readRegister(MmioReg.QUEUE_READY)).toBe(0);
  });

  it("raises the line with InterruptStatus and lowers it on InterruptACK", () => {
    const { sim, transport: t, irq, device } = mmioRig();
    sim.init();
    const q = sim.queue(0);
    q.submit({ readable: [text("x")], writable: [1] });
    q.kick();
    expect(irq.level).toBe(true);
    expect(t.readRegister(MmioReg.INTERRUPT_STATUS)).toBe(INTERRUPT_QUEUE);
    device.setScratch(5);
    expect(t.readRegister(MmioReg.INTERRUPT_STATUS)).toBe(INTERRUPT_QUEUE | INTERRUPT_CONFIG);
    t.writeRegister(MmioReg.INTERRUPT_ACK, INTERRUPT_QUEUE);
    expect(irq.level).toBe(true);
    t.writeRegister(MmioReg.INTERRUPT_ACK, INTERRUPT_CONFIG);
    expect(irq.level).toBe(false);
    expect(t.readRegister(MmioReg.INTERRUPT_STATUS)).toBe(0);
    // A worker sets the status word; the VMM's resample handler re-raises.
    Atomics.or(device.ctx!.interruptStatus, 0, INTERRUPT_QUEUE);
    t.resampleIrq();
    expect(irq.level).toBe(true);
  });

  it("bumps ConfigGeneration on config changes and reads config at any width", () => {
    const { sim, transport: t, device } = mmioRig();
    sim.init();
    const g = t.readRegister(MmioReg.CONFIG_GENERATION);
    device.setScratch(0x11223344);
    expect(t.readRegister(MmioReg.CONFIG_GENERATION)).toBe(g + 1);
    const b = new Uint8Array(1);
    t.read(MmioReg.CONFIG + 5, b);
    expect(b[0]).toBe(0x33);
    const beyond = new Uint8Array(4).fill(0xee);
    t.read(MmioReg.CONFIG + 6, beyond); // runs past the 8-byte config: zero filled
    expect(Array.from(beyond)).toEqual([0x22, 0x11, 0, 0]);
  });

  it("registers doorbells with datamatch at QueueNotify and delivers QueueNotify writes", () => {
    const { sim, hooks, transport: t, device } = mmioRig({ base: 0xd000_0000 });
    sim.init();
    expect(hooks.live.get(0)).toEqual({
      queue: 0,
      space: "mmio",
      address: 0xd000_0050,
      length: 4,
      datamatch: 0,
    });
    expect(hooks.live.get(1)?.datamatch).toBe(1);
    const q = sim.queue(1);
    q.submit({ readable: [text("ab")], writable: [2] });
    t.writeRegister(MmioReg.QUEUE_NOTIFY, 1 | (5 << 16)); // NOTIFICATION_DATA style: index in the low 16 bits
    expect(q.pollUsed()).toHaveLength(1);
    t.writeRegister(MmioReg.QUEUE_NOTIFY, 9); // no such queue: ignored
    expect(device.completed).toBe(1);
    sim.reset();
    expect(hooks.live.size).toBe(0);
    expect(t.liveNotifyRegions()).toEqual([]);
  });
});
