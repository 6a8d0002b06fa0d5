import { describe, expect, it } from "vitest";
import { liveBars, PciBus, PciConfigPorts, PciReg } from "../src/index.js";

function bus() {
  const b = new PciBus();
  const resets: string[] = [];
  const ports = new PciConfigPorts(b.spaces, (w) => resets.push(w));
  const addr = (slot: number, reg: number, fn = 0, busNo = 0) =>
    ports.write(0xcf8, 4, (0x80000000 | (busNo << 16) | (slot << 11) | (fn << 8) | (reg & 0xfc)) >>> 0);
  const read = (slot: number, reg: number, size = 4) => {
    addr(slot, reg);
    return ports.read(0xcfc + (reg & 3), size);
  };
  const write = (slot: number, reg: number, value: number, size = 4) => {
    addr(slot, reg);
    ports.write(0xcfc + (reg & 3), size, value);
  };
  return { b, ports, read, write, addr, resets };
}

describe("PCI configuration mechanism 1", () => {
  it("passes Linux's type-1 probe (pci_check_type1)", () => {
    const { ports } = bus();
    ports.write(0xcfb, 1, 0x01);
    const saved = ports.read(0xcf8, 4);
    ports.write(0xcf8, 4, 0x80000000);
    expect(ports.read(0xcf8, 4)).toBe(0x80000000);
    ports.write(0xcf8, 4, saved);
  });

  it("has a host bridge at 00:00.0", () => {
    const { read } = bus();
    expect(read(0, PciReg.VENDOR_ID, 2)).toBe(0x1b36);
    expect(read(0, PciReg.DEVICE_ID, 2)).toBe(0x0008);
    expect(read(0, 0x08) >>> 8).toBe(0x060000);
    expect(read(0, PciReg.HEADER_TYPE, 1)).toBe(0);
  });

  it("reads all ones for empty slots, other functions, other buses and a disabled address", () => {
    const { read, addr, ports } = bus();
    expect(read(7, 0)).toBe(0xffffffff);
    addr(0, 0, 1);
    expect(ports.read(0xcfc, 4)).toBe(0xffffffff);
    addr(0, 0, 0, 1);
    expect(ports.read(0xcfc, 2)).toBe(0xffff);
    ports.write(0xcf8, 4, 0);
    expect(ports.read(0xcfc, 1)).toBe(0xff);
  });

  it("resets through 0xcf9 bit 2", () => {
    const { ports, resets } = bus();
    ports.write(0xcf9, 1, 0x02);
    expect(resets).toHaveLength(0);
    ports.write(0xcf9, 1, 0x06);
    expect(resets).toHaveLength(1);
  });
});

describe("PCI devices", () => {
  it("allocate BARs in the MMIO window and I/O space, and route INTx", () => {
    const { b } = bus();
    const info = b.register({
      vendorId: 0x1af4,
      deviceId: 0x1041,
      classCode: 0x020000,
      bars: [
        { index: 0, size: 0x1000, kind: "mmio32" },
        { index: 1, size: 0x40, kind: "io" },
        { index: 2, size: 0x4000, kind: "mmio64", prefetchable: true },
      ],
    });
    expect(info.slot).toBe(1);
    expect(info.bdf).toBe("00:01.0");
    expect(info.bars).toEqual([
      { index: 0, kind: "mmio32", size: 0x1000, address: 0xc0000000 },
      { index: 1, kind: "io", size: 0x40, address: 0xc000 },
      { index: 2, kind: "mmio64", size: 0x4000, address: 0xc0004000 },
    ]);
    expect(info.interruptPin).toBe(1);
    expect(info.gsi).toBe(17);
    const second = b.register({ vendorId: 1, deviceId: 2, classCode: 0xff0000, interruptPin: 2 });
    expect(second.slot).toBe(2);
    expect(second.gsi).toBe(19);
  });

  it("read back the header and size BARs the way Linux does", () => {
    const { b, read, write } = bus();
    b.register({
      vendorId: 0x1af4,
      deviceId: 0x1041,
      classCode: 0x020000,
      subsystemVendorId: 0x1af4,
      subsystemId: 1,
      bars: [
        { index: 0, size: 0x1000, kind: "mmio32" },
        { index: 1, size: 0x40, kind: "io" },
        { index: 2, size: 0x4000, kind: "mmio64", prefetchable: true },
      ],
      slot: 3,
    });
    expect(read(3, 0)).toBe(0x10411af4);
    expect(read(3, PciReg.SUBSYSTEM_VENDOR_ID)).toBe(0x00011af4);
    expect(read(3, PciReg.BAR0)).toBe(0xc0000000);
    expect(read(3, PciReg.BAR0 + 4)).toBe(0xc001);
    expect(read(3, PciReg.BAR0 + 8)).toBe(0xc000400c); // 64-bit, prefetchable
    expect(read(3, PciReg.BAR0 + 12)).toBe(0);
    // Sizing: write all ones, read the mask, restore.
    write(3, PciReg.BAR0, 0xffffffff);
    expect(read(3, PciReg.BAR0)).toBe(0xfffff000);
    write(3, PciReg.BAR0 + 4, 0xffffffff);
    expect(read(3, PciReg.BAR0 + 4) & 0xffff).toBe(0xffc1);
    write(3, PciReg.BAR0 + 8, 0xffffffff);
    write(3, PciReg.BAR0 + 12, 0xffffffff);
    expect(read(3, PciReg.BAR0 + 8)).toBe(0xffffc00c);
    expect(read(3, PciReg.BAR0 + 12)).toBe(0xffffffff);
    write(3, PciReg.BAR0, 0xc0000000);
    expect(read(3, PciReg.BAR0)).toBe(0xc0000000);
    // Unimplemented BARs and the ROM BAR read as zero whatever is written.
    write(3, PciReg.BAR0 + 20, 0xffffffff);
    expect(read(3, PciReg.BAR0 + 20)).toBe(0);
    write(3, PciReg.ROM_ADDRESS, 0xffffffff);
    expect(read(3, PciReg.ROM_ADDRESS)).toBe(0);
  });

  it("keep read-only fields and let the guest set command and interrupt line", () => {
    const { b, read, write } = bus();
    b.register({ vendorId: 0x1234, deviceId: 0x5678, classCode: 0x010000, slot: 4 });
    write(4, 0, 0);
    expect(read(4, 0)).toBe(0x56781234);
    write(4, PciReg.COMMAND, 0xffff, 2);
    expect(read(4, PciReg.COMMAND, 2)).toBe(0x0547);
    expect(read(4, PciReg.INTERRUPT_PIN, 1)).toBe(1);
    expect(read(4, PciReg.INTERRUPT_LINE, 1)).toBe(16 + ((4 + 0) & 7));
    write(4, PciReg.INTERRUPT_LINE, 11, 1);
    expect(read(4, PciReg.INTERRUPT_LINE, 1)).toBe(11);
    write(4, PciReg.INTERRUPT_PIN, 3, 1);
    expect(read(4, PciReg.INTERRUPT_PIN, 1)).toBe(1);
  });

  it("chain capabilities from 0x34 with their writable bits", () => {
    const { b, read, write } = bus();
    b.register({
      vendorId: 1,
      deviceId: 2,
      classCode: 0,
      slot: 5,
      capabilities: [
        { id: 0x09, body: Uint8Array.from([14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) },
        {
          id: 0x11,
          body: Uint8Array.from([0x03, 0x00, 0x01, 0, 0, 0, 0x01, 0x08, 0, 0]),
          writable: Uint8Array.from([0, 0xc0]),
        },
      ],
    });
    expect(read(5, PciReg.STATUS, 2) & 0x10).toBe(0x10);
    const first = read(5, PciReg.CAPABILITY_LIST, 1);
    expect(first).toBe(0x40);
    expect(read(5, first, 1)).toBe(0x09);
    const next = read(5, first + 1, 1);
    expect(next).toBe(0x50);
    expect(read(5, next, 1)).toBe(0x11);
    expect(read(5, next + 1, 1)).toBe(0);
    write(5, next + 2, 0xffff, 2); // MSI-X message control: only enable and mask are writable
    expect(read(5, next + 2, 2)).toBe(0xc003);
  });

  it("decode BARs only where the guest put them with decoding enabled", () => {
    const { b, write } = bus();
    const info = b.register({
      vendorId: 1,
      deviceId: 2,
      classCode: 0,
      bars: [
        { index: 0, size: 0x1000, kind: "mmio32" },
        { index: 1, size: 0x20, kind: "io" },
      ],
    });
    const g0 = b.spaces.generation;
    expect(liveBars(b.spaces, [info])).toEqual([]);
    write(info.slot, PciReg.COMMAND, 0x3, 2);
    expect(b.spaces.generation).not.toBe(g0);
    expect(liveBars(b.spaces, [info])).toEqual([
      { slot: 1, index: 0, kind: "mmio32", address: 0xc0000000, size: 0x1000 },
      { slot: 1, index: 1, kind: "io", address: 0xc000, size: 0x20 },
    ]);
    write(info.slot, PciReg.BAR0, 0xffffffff);
    write(info.slot, PciReg.BAR0, 0xd0000000);
    expect(liveBars(b.spaces, [info])[0]!.address).toBe(0xd0000000);
    write(info.slot, PciReg.BAR0, 0xffffffff); // mid-sizing: not decoded
    expect(liveBars(b.spaces, [info]).map((x) => x.index)).toEqual([1]);
  });

  it("refuse bad registrations", () => {
    const { b } = bus();
    expect(() =>
      b.register({
        vendorId: 1,
        deviceId: 1,
        classCode: 0,
        bars: [{ index: 0, size: 0x1800, kind: "mmio32" }],
      }),
    ).toThrow(/power of two/);
    expect(() =>
      b.register({
        vendorId: 1,
        deviceId: 1,
        classCode: 0,
        bars: [{ index: 5, size: 0x1000, kind: "mmio64" }],
      }),
    ).toThrow(/does not fit/);
    b.register({ vendorId: 1, deviceId: 1, classCode: 0, slot: 9 });
    expect(() => b.register({ vendorId: 1, deviceId: 1, classCode: 0, slot: 9 })).toThrow(/taken/);
    expect(() => b.register({ vendorId: 1, deviceId: 1, classCode: 0, slot: 0 })).toThrow(/1-31/);
    b.seal();
    expect(() => b.register({ vendorId: 1, deviceId: 1, classCode: 0 })).toThrow(/before the machine starts/);
  });
});

describe("configuration space served by the device's handler", () => {
  function delegated() {
    const t = bus();
    const info = t.b.register({
      vendorId: 0x1af4,
      deviceId: 0x1042,
      classCode: 0x018000,
      bars: [{ index: 0, size: 0x4000, kind: "mmio64" }],
      handler: { module: "file:///nonexistent.js" },
      configFromHandler: 0x40,
    });
    const device = new Uint8Array(256);
    device.set([0x11, 0x00, 0xaa, 0xbb], 0x40);
    const writes: { offset: number; bytes: number[] }[] = [];
    t.ports.delegate(info.slot, 0x40, {
      readConfig: (o, data) => data.set(device.subarray(o, o + data.length)),
      writeConfig: (o, data) => {
        writes.push({ offset: o, bytes: [...data] });
        device.set(data, o);
      },
    });
    return { ...t, info, writes, device };
  }

  it("points the capability list at the handler's part and reads it from the handler", () => {
    const { read, info } = delegated();
    expect(read(info.slot, PciReg.STATUS, 2) & 0x10).toBe(0x10);
    expect(read(info.slot, PciReg.CAPABILITY_LIST, 1)).toBe(0x40);
    expect(read(info.slot, 0x40, 4)).toBe(0xbbaa0011);
    expect(read(info.slot, 0x42, 2)).toBe(0xbbaa);
    expect(read(info.slot, PciReg.VENDOR_ID, 2)).toBe(0x1af4);
  });

  it("keeps the header and copies header writes to the handler", () => {
    const { read, write, info, writes } = delegated();
    write(info.slot, PciReg.BAR0, 0xffffffff);
    expect(read(info.slot, PciReg.BAR0) >>> 0).toBe(0xffffc004);
    write(info.slot, PciReg.BAR0, 0xd0000000);
    write(info.slot, PciReg.COMMAND, 0x6, 2);
    write(info.slot, 0x44, 0x12345678);
    expect(writes).toEqual([
      { offset: PciReg.BAR0, bytes: [0xff, 0xff, 0xff, 0xff] },
      { offset: PciReg.BAR0, bytes: [0x00, 0x00, 0x00, 0xd0] },
      { offset: PciReg.COMMAND, bytes: [0x06, 0x00] },
      { offset: 0x44, bytes: [0x78, 0x56, 0x34, 0x12] },
    ]);
    expect(read(info.slot, 0x44)).toBe(0x12345678);
    expect(read(info.slot, PciReg.COMMAND, 2)).toBe(0x6);
  });

  it("refuses a bad offset, capabilities beside it, or no handler", () => {
    const b = new PciBus();
    const base = { vendorId: 1, deviceId: 2, classCode: 0, handler: { module: "file:///x.js" } };
    expect(() => b.register({ ...base, configFromHandler: 0x20 })).toThrow(/configFromHandler/);
    expect(() => b.register({ ...base, configFromHandler: 0x41 })).toThrow(/configFromHandler/);
    expect(() =>
      b.register({ ...base, configFromHandler: 0x40, capabilities: [{ id: 9, body: new Uint8Array(2) }] }),
    ).toThrow(/capabilities/);
    expect(() => b.register({ vendorId: 1, deviceId: 2, classCode: 0, configFromHandler: 0x40 })).toThrow(
      /handler/,
    );
  });
});
