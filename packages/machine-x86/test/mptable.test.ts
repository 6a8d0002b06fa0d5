import { describe, expect, it } from "vitest";
import { buildMpTable, Layout, MP_MAX_CPUS } from "../src/index.js";

function sum(b: Uint8Array): number {
  return b.reduce((s, x) => (s + x) & 0xff, 0);
}

interface Parsed {
  cpus: { apicId: number; flags: number }[];
  buses: { id: number; type: string }[];
  ioapics: { id: number; version: number; address: number }[];
  intsrc: { type: number; irqType: number; bus: number; busIrq: number; apic: number; pin: number }[];
}

/** An independent reader of the table, as Linux's mpparse walks it. */
function parse(bytes: Uint8Array, base: number): Parsed {
  const dv = new DataView(bytes.buffer);
  const mpf = 0;
  const configAt = dv.getUint32(mpf + 4, true) - base;
  const length = dv.getUint16(configAt + 4, true);
  const count = dv.getUint16(configAt + 34, true);
  const out: Parsed = { cpus: [], buses: [], ioapics: [], intsrc: [] };
  let p = configAt + 44;
  for (let i = 0; i < count; i++) {
    const type = bytes[p]!;
    if (type === 0) {
      out.cpus.push({ apicId: bytes[p + 1]!, flags: bytes[p + 3]! });
      p += 20;
    } else if (type === 1) {
      out.buses.push({
        id: bytes[p + 1]!,
        type: Buffer.from(bytes.subarray(p + 2, p + 8))
          .toString("latin1")
          .trim(),
      });
      p += 8;
    } else if (type === 2) {
      out.ioapics.push({ id: bytes[p + 1]!, version: bytes[p + 2]!, address: dv.getUint32(p + 4, true) });
      p += 8;
    } else {
      out.intsrc.push({
        type,
        irqType: bytes[p + 1]!,
        bus: bytes[p + 4]!,
        busIrq: bytes[p + 5]!,
        apic: bytes[p + 6]!,
        pin: bytes[p + 7]!,
      });
      p += 8;
    }
  }
  expect(p - configAt).toBe(length);
  return out;
}

describe("MP table", () => {
  const t = buildMpTable({
    cpus: 4,
    pciIrqs: [{ slot: 3, pin: 1, gsi: 19 }],
    cpuSignature: 0xa10f11,
    cpuFeatures: 0x78bfbff,
  });
  const dv = new DataView(t.bytes.buffer);
  const config = t.bytes.subarray(16, 16 + dv.getUint16(16 + 4, true));

  it("has a floating pointer in the EBDA pointing at the configuration table", () => {
    expect(t.address).toBe(Layout.Addr.EBDA);
    expect(Buffer.from(t.bytes.subarray(0, 4)).toString()).toBe("_MP_");
    expect(dv.getUint32(4, true)).toBe(t.configAddress);
    expect(t.bytes[8]).toBe(1);
    expect(t.bytes[9]).toBe(4);
    expect(sum(t.bytes.subarray(0, 16))).toBe(0);
  });

  it("has a configuration table with a valid checksum", () => {
    expect(Buffer.from(config.subarray(0, 4)).toString()).toBe("PCMP");
    expect(config[6]).toBe(4);
    expect(sum(config)).toBe(0);
    expect(dv.getUint32(16 + 36, true)).toBe(0xfee00000);
  });

  it("lists every vCPU with APIC id = index, the first as BSP", () => {
    const p = parse(t.bytes, t.address);
    expect(p.cpus).toEqual([
      { apicId: 0, flags: 3 },
      { apicId: 1, flags: 1 },
      { apicId: 2, flags: 1 },
      { apicId: 3, flags: 1 },
    ]);
    expect(dv.getUint32(16 + 44 + 4, true)).toBe(0xa10f11);
  });

  it("describes the buses, the IOAPIC and the interrupt wiring", () => {
    const p = parse(t.bytes, t.address);
    expect(p.buses).toEqual([
      { id: 0, type: "PCI" },
      { id: 1, type: "ISA" },
    ]);
    expect(p.ioapics).toEqual([{ id: 4, version: 0x11, address: 0xfec00000 }]);
    const isa = p.intsrc.filter((e) => e.type === 3 && e.bus === 1);
    expect(isa.map((e) => [e.busIrq, e.pin])).toEqual(Array.from({ length: 16 }, (_, i) => [i, i]));
    for (const e of isa) expect(e.apic).toBe(4);
    const pci = p.intsrc.filter((e) => e.type === 3 && e.bus === 0);
    expect(pci).toEqual([{ type: 3, irqType: 0, bus: 0, busIrq: (3 << 2) | 0, apic: 4, pin: 19 }]);
    const lint = p.intsrc.filter((e) => e.type === 4);
    expect(lint.map((e) => [e.irqType, e.pin])).toEqual([
      [3, 0], // ExtINT on LINT0
      [1, 1], // NMI on LINT1
    ]);
  });

  it("moves to the BIOS area when the EBDA's KiB is too small", () => {
    const big = buildMpTable({ cpus: 64 });
    expect(big.address).toBe(Layout.Addr.BIOS_ROM);
    expect(sum(big.bytes.subarray(0, 16))).toBe(0);
    expect(parse(big.bytes, big.address).cpus).toHaveLength(64);
    expect(big.ioapicId).toBe(64);
  });

  it("refuses impossible CPU counts and routes", () => {
    expect(() => buildMpTable({ cpus: 0 })).toThrow(RangeError);
    expect(() => buildMpTable({ cpus: MP_MAX_CPUS + 1 })).toThrow(RangeError);
    expect(() => buildMpTable({ cpus: 1, pciIrqs: [{ slot: 1, pin: 5, gsi: 16 }] })).toThrow(
      /bad PCI interrupt/,
    );
  });
});
