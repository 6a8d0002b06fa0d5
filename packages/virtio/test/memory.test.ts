import { describe, expect, it } from "vitest";
import { createTestMemory, GuestMemoryRangeError, PlainGuestMemory } from "../src/index.js";

describe("PlainGuestMemory", () => {
  const mem = new PlainGuestMemory([
    { address: 0x1000, size: 0x1000 },
    { address: 0x2000, size: 0x1000 },
    { address: 0x10000, size: 0x2000 },
  ]);

  it("checks ranges across adjacent regions and holes", () => {
    expect(mem.isValidRange(0x1000, 0x2000)).toBe(true); // two adjacent regions
    expect(mem.isValidRange(0x2ff0, 0x20)).toBe(false); // runs into the hole
    expect(mem.isValidRange(0x0, 1)).toBe(false);
    expect(mem.isValidRange(0x11fff, 1)).toBe(true);
    expect(mem.isValidRange(0x12000, 1)).toBe(false);
    expect(mem.isValidRange(0x1000, 0)).toBe(true);
    expect(mem.isValidRange(0x5000, 0)).toBe(false);
    expect(mem.isValidRange(-1, 1)).toBe(false);
    expect(mem.isValidRange(2 ** 60, 1)).toBe(false);
    expect(mem.isValidRange(0x1000, Number.NaN)).toBe(false);
  });

  it("splits segments at region boundaries and aliases the memory", () => {
    const segs = mem.segments(0x1ff8, 16);
    expect(segs.map((s) => s.length)).toEqual([8, 8]);
    segs[1]![0] = 0xab;
    expect(mem.readU8(0x2000)).toBe(0xab);
    expect(() => mem.view(0x1ff8, 16)).toThrow(GuestMemoryRangeError);
    expect(mem.view(0x1000, 16).length).toBe(16);
  });

  it("reads and writes little-endian scalars, including across a boundary", () => {
    mem.writeU32(0x1ffe, 0x11223344);
    expect(mem.readU16(0x1ffe)).toBe(0x3344);
    expect(mem.readU16(0x2000)).toBe(0x1122);
    expect(mem.readU32(0x1ffe)).toBe(0x11223344);
    mem.writeU64(0x10000, 0x0102030405060708n);
    expect(mem.readU64(0x10000)).toBe(0x0102030405060708n);
    expect(Array.from(mem.read(0x10000, 2))).toEqual([8, 7]);
  });

  it("throws GuestMemoryRangeError for any byte outside RAM", () => {
    expect(() => mem.readU8(0x3000)).toThrow(GuestMemoryRangeError);
    expect(() => mem.readU32(0x2ffe)).toThrow(GuestMemoryRangeError);
    expect(() => mem.write(0x11fff, new Uint8Array(2))).toThrow(GuestMemoryRangeError);
    expect(() => mem.fill(0x0, 1)).toThrow(GuestMemoryRangeError);
    expect(() => mem.segments(0x1000, -1)).toThrow(GuestMemoryRangeError);
  });

  it("windows split views inside a region like kvm-core's 2 GiB windows", () => {
    const m = createTestMemory(0x1000, 0, { windowSize: 0x100 });
    expect(m.segments(0xf0, 0x20).map((s) => s.length)).toEqual([0x10, 0x10]);
    expect(() => m.view(0xf0, 0x20)).toThrow(GuestMemoryRangeError);
    m.writeU32(0xfe, 0xdeadbeef);
    expect(m.readU32(0xfe)).toBe(0xdeadbeef);
  });

  it("shares its buffers through describe()/fromDescriptor()", () => {
    const a = createTestMemory(0x1000, 0x4000, { shared: true });
    const d = structuredClone(a.describe());
    const b = PlainGuestMemory.fromDescriptor(d);
    a.writeU32(0x4010, 42);
    expect(b.readU32(0x4010)).toBe(42);
  });

  it("rejects overlapping regions", () => {
    expect(
      () =>
        new PlainGuestMemory([
          { address: 0, size: 0x2000 },
          { address: 0x1000, size: 0x1000 },
        ]),
    ).toThrow(RangeError);
  });
});
