import { describe, expect, it } from "vitest";
import {
  COMMON_CFG_LENGTH,
  CommonCfg,
  DeviceStatus,
  INTERRUPT_QUEUE,
  MSIX_ENABLE,
  MSIX_FUNCTION_MASK,
  NO_VECTOR,
  PCI_CAP_ID_MSIX,
  PCI_CAP_ID_VNDR,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_MEMORY,
  PciConfig,
  VIRTIO_PCI_VENDOR_ID,
  VirtioPciCapType,
  VirtioPciTransport,
} from "../src/index.js";
import { parseVirtioPciCapabilities } from "../src/testing.js";
import { EchoDevice } from "./echo-device.js";
import { pciRig, RAM, text } from "./rigs.js";

const { ACKNOWLEDGE, DRIVER, FEATURES_OK } = DeviceStatus;

function cfg(t: VirtioPciTransport, offset: number, length: number): number {
  const b = new Uint8Array(length);
  t.readConfig(offset, b);
  let v = 0;
  for (let i = length - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
}
function setCfg(t: VirtioPciTransport, offset: number, length: number, v: number): void {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (v >>> (8 * i)) & 0xff;
  t.writeConfig(offset, b);
}

describe("virtio-pci configuration header", () => {
  it("identifies a modern virtio device", () => {
    const { transport: t } = pciRig();
    expect(cfg(t, PciConfig.VENDOR_ID, 2)).toBe(0x1af4);
    expect(cfg(t, PciConfig.DEVICE_ID, 2)).toBe(0x1040 + 42);
    expect(cfg(t, PciConfig.REVISION_ID, 1)).toBe(1);
    expect(cfg(t, PciConfig.CLASS_PROG, 3)).toBe(0xff0000); // unknown type: "other"
    expect(cfg(t, PciConfig.HEADER_TYPE, 1)).toBe(0);
    expect(cfg(t, PciConfig.SUBSYSTEM_VENDOR_ID, 2)).toBe(0x1af4);
    expect(cfg(t, PciConfig.SUBSYSTEM_ID, 2)).toBeGreaterThanOrEqual(0x40);
    expect(cfg(t, PciConfig.INTERRUPT_PIN, 1)).toBe(1);
    expect(cfg(t, PciConfig.STATUS, 2) & 0x10).toBe(0x10);
    // Read-only fields ignore writes.
    setCfg(t, PciConfig.VENDOR_ID, 4, 0xffffffff);
    expect(cfg(t, PciConfig.VENDOR_ID, 2)).toBe(0x1af4);
    setCfg(t, PciConfig.INTERRUPT_LINE, 1, 11);
    expect(cfg(t, PciConfig.INTERRUPT_LINE, 1)).toBe(11);
  });

  it("takes the class code from the device type or the device", () => {
    const memory = new EchoDevice();
    const blk = Object.assign(new EchoDevice(), { deviceType: 2 });
    const own = Object.assign(new EchoDevice(), { pciClassCode: 0x0c0330 });
    const make = (device: EchoDevice) => new VirtioPciTransport({ device, memory: pciRig().memory });
    expect(cfg(make(blk), PciConfig.CLASS_PROG, 3)).toBe(0x018000);
    expect(cfg(make(blk), PciConfig.DEVICE_ID, 2)).toBe(0x1042);
    expect(cfg(make(own), PciConfig.CLASS_PROG, 3)).toBe(0x0c0330);
    expect(memory.deviceType).toBe(42);
  });

  it("sizes a 64-bit BAR 0 like firmware does", () => {
    const { transport: t } = pciRig();
    const [bar0] = t.bars();
    expect(bar0!.is64).toBe(true);
    setCfg(t, PciConfig.BAR0, 4, 0xffffffff);
    setCfg(t, PciConfig.BAR0 + 4, 4, 0xffffffff);
    const lo = cfg(t, PciConfig.BAR0, 4);
    expect(lo & 0xf).toBe(0x4); // memory, 64-bit, not prefetchable
    expect((~(lo & 0xfffffff0) >>> 0) + 1).toBe(bar0!.size);
    expect(cfg(t, PciConfig.BAR0 + 4, 4)).toBe(0xffffffff);
    // Unused BARs and the expansion ROM read 0 after sizing.
    setCfg(t, PciConfig.BAR0 + 8, 4, 0xffffffff);
    expect(cfg(t, PciConfig.BAR0 + 8, 4)).toBe(0);
    setCfg(t, 0x30, 4, 0xffffffff);
    expect(cfg(t, 0x30, 4)).toBe(0);
  });

  it("supports a 32-bit BAR 0 and the MSI-X table in a BAR of its own", () => {
    const { transport: t, driver } = pciRig({ bar64: false, msixBar: 2 });
    expect(t.bars().map((b) => [b.index, b.is64])).toEqual([
      [0, false],
      [2, false],
    ]);
    expect(driver.caps.msix?.tableBar).toBe(2);
    expect(driver.caps.msix?.pbaBar).toBe(2);
    expect(t.barAddress(2)).not.toBe(0);
    expect(() => pciRig({ msixBar: 1 })).toThrow(/not free/);
  });

  it("describes its PCI function as typed data that agrees with the header bytes", () => {
    const { transport: t } = pciRig({ bar64: false, msixBar: 2, subsystemId: 0x1234 });
    const f = t.describeFunction();
    expect(f).toEqual({
      vendorId: cfg(t, 0x00, 2),
      deviceId: cfg(t, 0x02, 2),
      revision: cfg(t, 0x08, 1),
      classCode: cfg(t, 0x09, 1) | (cfg(t, 0x0a, 1) << 8) | (cfg(t, 0x0b, 1) << 16),
      subsystemVendorId: cfg(t, 0x2c, 2),
      subsystemId: 0x1234,
      interruptPin: 1,
      bars: t
        .bars()
        .map((b) => ({ index: b.index, size: b.size, kind: "mmio32", prefetchable: b.prefetchable })),
      capabilityPointer: cfg(t, 0x34, 1),
    });
    expect(f.vendorId).toBe(VIRTIO_PCI_VENDOR_ID);
    expect(pciRig({ bar64: true }).transport.describeFunction().bars[0]?.kind).toBe("mmio64");
    // Structured-clone safe: what a worker's ready message carries.
    expect(structuredClone(f)).toEqual(f);
  });

  it("reports BAR moves and places BARs for a firmware-less VMM", () => {
    const { transport: t, hooks, driver } = pciRig();
    expect(hooks.bars.at(-1)).toEqual([0, driver.barAddresses.get(0)]);
    const t2 = new VirtioPciTransport({
      device: new EchoDevice(),
      memory: pciRig().memory,
      barAddresses: { 0: 0x8_0000_0000 },
      command: PCI_COMMAND_MEMORY,
    });
    expect(t2.barAddress(0)).toBe(0x8_0000_0000);
    expect(cfg(t2, PciConfig.BAR0 + 4, 4)).toBe(8);
    expect(() => t.setBarAddress(0, 0x1234)).toThrow(/aligned/);
    expect(() => t.setBarAddress(3, 0)).toThrow(/does not exist/);
  });
});

describe("virtio-pci capability list", () => {
  it("walks like Linux's pci_find_capability and finds every virtio structure inside BAR 0", () => {
    const { transport: t, driver } = pciRig();
    const caps = parseVirtioPciCapabilities((o, l) => cfg(t, o, l));
    expect(caps.ids).toEqual([
      PCI_CAP_ID_MSIX,
      PCI_CAP_ID_VNDR,
      PCI_CAP_ID_VNDR,
      PCI_CAP_ID_VNDR,
      PCI_CAP_ID_VNDR,
      PCI_CAP_ID_VNDR,
    ]);
    const byType = new Map(caps.virtio.map((c) => [c.cfgType, c]));
    expect([...byType.keys()].sort()).toEqual([
      VirtioPciCapType.COMMON_CFG,
      VirtioPciCapType.NOTIFY_CFG,
      VirtioPciCapType.ISR_CFG,
      VirtioPciCapType.DEVICE_CFG,
      VirtioPciCapType.PCI_CFG,
    ]);
    const barSize = t.bars()[0]!.size;
    for (const c of caps.virtio) {
      expect(c.capOffset % 4).toBe(0);
      expect(c.capOffset).toBeGreaterThanOrEqual(0x40);
      expect(c.bar).toBe(0);
      expect(c.offset + c.length).toBeLessThanOrEqual(barSize);
      expect(cfg(t, c.capOffset + 2, 1)).toBe(
        c.cfgType === VirtioPciCapType.NOTIFY_CFG || c.cfgType === VirtioPciCapType.PCI_CFG ? 20 : 16,
      );
    }
    expect(byType.get(VirtioPciCapType.COMMON_CFG)?.length).toBe(COMMON_CFG_LENGTH);
    expect(byType.get(VirtioPciCapType.NOTIFY_CFG)?.notifyOffMultiplier).toBe(4);
    expect(byType.get(VirtioPciCapType.DEVICE_CFG)?.length).toBe(8);
    expect(byType.get(VirtioPciCapType.ISR_CFG)?.length).toBe(1);
    // The notify area has a doorbell for every queue (queue_notify_off * multiplier + 2 fits).
    const notify = byType.get(VirtioPciCapType.NOTIFY_CFG)!;
    for (let q = 0; q < 2; q++)
      expect(driver.notifyOffset(q) + 2).toBeLessThanOrEqual(notify.offset + notify.length);
    expect(caps.msix).toMatchObject({ tableSize: 3, tableBar: 0, pbaBar: 0 });
    expect(caps.msix!.tableOffset % 8).toBe(0);
    expect(caps.msix!.pbaOffset).toBeGreaterThanOrEqual(caps.msix!.tableOffset + 3 * 16);
  });

  it("omits DEVICE_CFG for a device without config space and MSI-X when asked", () => {
    const device = Object.assign(new EchoDevice(), { configSize: 0 });
    const t = new VirtioPciTransport({ device, memory: pciRig().memory, msixVectors: 0 });
    const caps = parseVirtioPciCapabilities((o, l) => cfg(t, o, l));
    expect(caps.msix).toBeUndefined();
    expect(caps.virtio.map((c) => c.cfgType)).not.toContain(VirtioPciCapType.DEVICE_CFG);
  });

  it("stops on a broken capability pointer the way Linux does", () => {
    const reads = new Map<number, number>([
      [PciConfig.STATUS, 0x10],
      [PciConfig.CAPABILITY_LIST, 0x40],
      [0x40, PCI_CAP_ID_VNDR],
      [0x41, 0x40], // points at itself: bounded by the 48-hop TTL
    ]);
    const caps = parseVirtioPciCapabilities((o) => reads.get(o) ?? 0);
    expect(caps.ids.length).toBe(48);
    expect(parseVirtioPciCapabilities(() => 0).ids).toEqual([]);
  });

  it("reaches the BARs through the VIRTIO_PCI_CAP_PCI_CFG window", () => {
    const { transport: t, driver } = pciRig();
    const pc = driver.caps.virtio.find((c) => c.cfgType === VirtioPciCapType.PCI_CFG)!.capOffset;
    setCfg(t, pc + 4, 1, 0); // bar
    setCfg(t, pc + 8, 4, CommonCfg.NUM_QUEUES); // offset
    setCfg(t, pc + 12, 4, 2); // length
    expect(cfg(t, pc + 16, 2)).toBe(2);
    setCfg(t, pc + 8, 4, CommonCfg.DEVICE_STATUS);
    setCfg(t, pc + 12, 4, 1);
    setCfg(t, pc + 16, 1, ACKNOWLEDGE);
    expect(t.status).toBe(ACKNOWLEDGE);
    // An unaligned window does nothing.
    setCfg(t, pc + 8, 4, CommonCfg.NUM_QUEUES + 1);
    setCfg(t, pc + 12, 4, 2);
    expect(cfg(t, pc + 16, 4)).toBe(0);
  });
});

describe("virtio-pci common configuration", () => {
  it("exposes per-queue registers through queue_select", () => {
    const { driver, transport: t } = pciRig();
    const C = CommonCfg;
    expect(driver.common(C.NUM_QUEUES, 2)).toBe(2);
    driver.selectQueue(0);
    expect(driver.common(C.QUEUE_SIZE, 2)).toBe(256);
    expect(driver.common(C.QUEUE_NOTIFY_OFF, 2)).toBe(0);
    driver.selectQueue(1);
    expect(driver.common(C.QUEUE_SIZE, 2)).toBe(64);
    expect(driver.common(C.QUEUE_NOTIFY_OFF, 2)).toBe(1);
    expect(driver.common(C.QUEUE_NOTIFY_DATA, 2)).toBe(1);
    driver.selectQueue(7); // no such queue
    expect(driver.common(C.QUEUE_SIZE, 2)).toBe(0);
    expect(driver.common(C.QUEUE_MSIX_VECTOR, 2)).toBe(NO_VECTOR);

    // Queue registers are writable only after FEATURES_OK (§3.1.1).
    driver.selectQueue(1);
    driver.setQueueSize(32);
    expect(driver.common(C.QUEUE_SIZE, 2)).toBe(64);
    driver.setStatus(ACKNOWLEDGE);
    driver.setStatus(ACKNOWLEDGE | DRIVER);
    driver.setDriverFeatures(1n << 32n);
    driver.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    driver.selectQueue(1);
    driver.setQueueSize(32);
    driver.setQueueAddresses(0x1_2345_6780, 0x2000, 0x3000);
    expect(driver.common(C.QUEUE_SIZE, 2)).toBe(32);
    expect(driver.common(C.QUEUE_DESC, 4)).toBe(0x2345_6780);
    expect(driver.common(C.QUEUE_DESC + 4, 4)).toBe(1);
    expect(driver.common(C.QUEUE_DRIVER, 4)).toBe(0x2000);
    expect(driver.common(C.QUEUE_DEVICE, 4)).toBe(0x3000);
    // 64-bit write of queue_device in one access.
    t.writeBar(0, C.QUEUE_DEVICE, Uint8Array.of(0, 0x40, 0, 0, 2, 0, 0, 0));
    expect(driver.common(C.QUEUE_DEVICE, 4)).toBe(0x4000);
    expect(driver.common(C.QUEUE_DEVICE + 4, 4)).toBe(2);
    driver.selectQueue(0);
    expect(driver.common(C.QUEUE_SIZE, 2)).toBe(256);
    // Enabling freezes the queue's registers.
    driver.selectQueue(1);
    driver.enableQueue();
    expect(driver.queueEnabled()).toBe(true);
    driver.setQueueSize(16);
    expect(driver.common(C.QUEUE_SIZE, 2)).toBe(32);
    driver.setCommon(C.QUEUE_ENABLE, 2, 0); // drivers may not disable: ignored
    expect(driver.queueEnabled()).toBe(true);
    expect(t.core.queues[1]).toMatchObject({ size: 32, ready: true, descLo: 0x2345_6780, descHi: 1 });
  });

  it("selects device and driver feature words", () => {
    const { driver } = pciRig();
    driver.setCommon(CommonCfg.DEVICE_FEATURE_SELECT, 4, 0);
    expect(driver.common(CommonCfg.DEVICE_FEATURE, 4)).toBe((1 << 29) | (1 << 28) | 1);
    driver.setCommon(CommonCfg.DEVICE_FEATURE_SELECT, 4, 1);
    expect(driver.common(CommonCfg.DEVICE_FEATURE, 4)).toBe(1); // VERSION_1
    driver.setCommon(CommonCfg.DEVICE_FEATURE_SELECT, 4, 2);
    expect(driver.common(CommonCfg.DEVICE_FEATURE, 4)).toBe(0);
    driver.setStatus(ACKNOWLEDGE | DRIVER);
    driver.setCommon(CommonCfg.DRIVER_FEATURE_SELECT, 4, 0);
    driver.setCommon(CommonCfg.DRIVER_FEATURE, 4, 0x1000_0001);
    expect(driver.common(CommonCfg.DRIVER_FEATURE, 4)).toBe(0x1000_0001);
    driver.setCommon(CommonCfg.DRIVER_FEATURE_SELECT, 4, 1);
    expect(driver.common(CommonCfg.DRIVER_FEATURE, 4)).toBe(0);
  });

  it("reports NO_VECTOR for vectors the MSI-X table does not have", () => {
    const { driver } = pciRig();
    expect(driver.setConfigVector(2)).toBe(2);
    expect(driver.setConfigVector(3)).toBe(NO_VECTOR);
    driver.selectQueue(0);
    expect(driver.setQueueVector(1)).toBe(1);
    expect(driver.setQueueVector(100)).toBe(NO_VECTOR);
    expect(driver.setQueueVector(NO_VECTOR)).toBe(NO_VECTOR);
  });

  it("ignores accesses outside the structures and BARs it does not have", () => {
    const { transport: t } = pciRig();
    const b = new Uint8Array(4).fill(0xee);
    t.readBar(0, COMMON_CFG_LENGTH, b);
    expect(Array.from(b)).toEqual([0, 0, 0, 0]);
    t.readBar(4, 0, b);
    t.writeBar(0, t.bars()[0]!.size - 2, b);
    t.writeBar(0, -4, b);
    t.readConfig(300, b);
    t.writeConfig(-1, b);
    expect(t.status).toBe(0);
  });
});

describe("virtio-pci MSI-X", () => {
  it("routes programmed, unmasked vectors and reports them to the VMM", () => {
    const { transport: t, hooks, driver } = pciRig();
    // The driver transport enabled MSI-X and programmed address/data for every vector.
    expect(t.msixEnabled).toBe(true);
    expect(hooks.routes.get(1)).toEqual({ address: 0xfee00000n, data: 0x4001 });
    expect(t.msixEntry(2)).toMatchObject({ masked: false, pending: false, message: { data: 0x4002 } });
    // Reprogramming a live entry reports the new message.
    const m = driver.caps.msix!;
    driver.barWrite(m.tableBar, m.tableOffset + 16 + 4, 4, 0x1); // address high dword
    expect(hooks.routes.get(1)).toEqual({ address: 0x1_fee00000n, data: 0x4001 });
    // Masking an entry tears its route down; the table reads back what was written.
    driver.setMsixVectorMask(1, true);
    expect(hooks.routes.get(1)).toBeNull();
    expect(driver.barRead(m.tableBar, m.tableOffset + 16 + 12, 4)).toBe(1);
    expect(driver.barRead(m.tableBar, m.tableOffset + 16 + 8, 4)).toBe(0x4001);
    // Function mask and MSI-X disable mask every vector.
    driver.setMsixFunctionMask(true);
    expect(hooks.routes.get(0)).toBeNull();
    expect(hooks.routes.get(2)).toBeNull();
    driver.setMsixFunctionMask(false);
    expect(hooks.routes.get(2)).not.toBeNull();
    expect(hooks.routes.get(1)).toBeNull();
  });

  it("holds interrupts of masked vectors in the PBA and delivers them on unmask", () => {
    const { sim, irq, driver, transport: t } = pciRig();
    sim.init();
    const q = sim.queue(0);
    driver.setMsixVectorMask(q.vector, true);
    q.submit({ readable: [text("x")], writable: [1] });
    q.kick();
    expect(irq.count(q.vector)).toBe(0);
    expect(t.msixEntry(q.vector)?.pending).toBe(true);
    const m = driver.caps.msix!;
    expect(driver.barRead(m.pbaBar, m.pbaOffset, 8)).toBe(1 << q.vector);
    driver.barWrite(m.pbaBar, m.pbaOffset, 4, 0); // PBA is read-only
    expect(t.msixEntry(q.vector)?.pending).toBe(true);
    driver.setMsixVectorMask(q.vector, false);
    expect(irq.count(q.vector)).toBe(1);
    expect(t.msixEntry(q.vector)?.pending).toBe(false);
    // A queue with NO_VECTOR gets no interrupt at all.
    driver.selectQueue(0);
    t.core.queues[0]!.vector = NO_VECTOR;
    q.submit({ readable: [text("y")], writable: [1] });
    q.kick();
    expect(irq.count(q.vector)).toBe(1);
    expect(q.pollUsed().length).toBe(2);
  });

  it("falls back to INTx with the ISR when MSI-X is disabled", () => {
    const { sim, irq, driver, transport: t } = pciRig({ useMsix: false });
    expect(cfg(t, driver.caps.msix!.capOffset + 2, 2) & (MSIX_ENABLE | MSIX_FUNCTION_MASK)).toBe(0);
    sim.init();
    const q = sim.queue(0);
    expect(q.vector).toBe(NO_VECTOR);
    q.submit({ readable: [text("x")], writable: [1] });
    q.kick();
    expect(irq.level).toBe(true);
    expect(q.pollUsed()).toHaveLength(1); // also re-arms used_event (EVENT_IDX)
    expect(cfg(t, PciConfig.STATUS, 2) & 0x8).toBe(0x8); // interrupt status
    expect(sim.takeInterruptStatus()).toBe(INTERRUPT_QUEUE);
    expect(irq.level).toBe(false);
    expect(sim.takeInterruptStatus()).toBe(0); // read clears
    // A worker set the ISR while the line was low: resample raises it again.
    Atomics.or(t.core.interruptStatus, 0, INTERRUPT_QUEUE);
    t.resampleIntx();
    expect(irq.level).toBe(true);
    sim.takeInterruptStatus();
    // INTx disable in the command register keeps the line low.
    driver.cfgWrite(PciConfig.COMMAND, 2, driver.cfgRead(PciConfig.COMMAND, 2) | PCI_COMMAND_INTX_DISABLE);
    q.submit({ readable: [text("x")], writable: [1] });
    q.kick();
    expect(irq.level).toBe(false);
    expect(sim.takeInterruptStatus()).toBe(INTERRUPT_QUEUE);
  });
});

describe("virtio-pci notify areas and ioeventfd hooks", () => {
  it("registers one doorbell per enabled queue and unregisters on reset", () => {
    const { sim, hooks, transport: t, driver, device } = pciRig();
    sim.negotiate();
    sim.setupQueue(1);
    const base = t.barAddress(0);
    expect(hooks.events).toEqual([`on 1 0x${(base + 0x3004).toString(16)}`]);
    expect(hooks.live.get(1)).toMatchObject({ bar: 0, barOffset: 0x3004, length: 0, space: "mmio" });
    expect(hooks.live.get(1)?.datamatch).toBeUndefined();
    sim.setupQueue(0);
    expect(t.liveNotifyRegions().map((r) => r.queue)).toEqual([0, 1]);
    sim.driverOk();
    // A doorbell write without an ioeventfd reaches the device's queueNotify.
    sim.queue(1).submit({ readable: [text("ab")], writable: [2] });
    driver.barWrite(0, 0x3004, 2, 1);
    expect(sim.queue(1).pollUsed()).toHaveLength(1);
    // So does the VMM's ioeventfd handler.
    sim.queue(0).submit({ readable: [text("cd")], writable: [2] });
    t.notifyQueue(0);
    expect(sim.queue(0).pollUsed()).toHaveLength(1);
    expect(device.completed).toBe(2);
    hooks.events.length = 0;
    sim.reset();
    expect(hooks.events.sort()).toEqual([
      `off 0 0x${(base + 0x3000).toString(16)}`,
      `off 1 0x${(base + 0x3004).toString(16)}`,
    ]);
  });

  it("moves doorbells with BAR 0 and drops them while memory decoding is off", () => {
    const { sim, hooks, driver } = pciRig();
    sim.init();
    expect(hooks.live.size).toBe(2);
    const cmd = driver.cfgRead(PciConfig.COMMAND, 2);
    driver.cfgWrite(PciConfig.COMMAND, 2, cmd & ~PCI_COMMAND_MEMORY);
    expect(hooks.live.size).toBe(0);
    driver.cfgWrite(PciConfig.BAR0, 4, 0x4000_0004);
    driver.cfgWrite(PciConfig.BAR0 + 4, 4, 0);
    driver.cfgWrite(PciConfig.COMMAND, 2, cmd);
    expect(hooks.live.get(0)?.address).toBe(0x4000_3000);
    expect(hooks.live.get(1)?.address).toBe(0x4000_3004);
    expect(hooks.bars.at(-1)).toEqual([0, 0x4000_0000]);
  });

  it("shares one doorbell with datamatch when notify_off_multiplier is 0", () => {
    const { sim, hooks, transport: t } = pciRig({ notifyOffMultiplier: 0 });
    sim.init();
    const r0 = hooks.live.get(0)!;
    const r1 = hooks.live.get(1)!;
    expect(r0.address).toBe(r1.address);
    expect([r0.datamatch, r1.datamatch, r0.length]).toEqual([0, 1, 2]);
    const q = sim.queue(1);
    q.submit({ readable: [text("z")], writable: [1] });
    q.kick();
    expect(q.pollUsed()).toHaveLength(1);
    expect(t.layout.notify.multiplier).toBe(0);
  });
});

describe("virtio-pci device status through common cfg", () => {
  it("refuses queues outside RAM at DRIVER_OK with DEVICE_NEEDS_RESET", () => {
    const { sim, transport: t, irq } = pciRig();
    sim.negotiate();
    sim.setupQueue(0, { rings: { descTable: RAM, availRing: 0x2000, usedRing: 0x3000 } });
    irq.clear();
    const s = sim.driverOk();
    expect(s & DeviceStatus.DEVICE_NEEDS_RESET).toBe(DeviceStatus.DEVICE_NEEDS_RESET);
    expect(t.core.brokenReason).toMatchObject({ kind: "InvalidRingAddress", ring: "descriptor table" });
    expect(irq.count(0)).toBe(1); // configuration change notification on the config vector
  });
});
