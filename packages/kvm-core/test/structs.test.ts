// Encoding round trips that need no KVM.
import { describe, expect, it } from "vitest";
import {
  decodeCpuid2,
  decodeMsrs,
  decodeRegs,
  decodeSregs,
  encodeCpuid2,
  encodeMsrs,
  encodeRegs,
  encodeSregs,
} from "../dist/structs.js";

describe("struct encodings", () => {
  it("regs round-trip and wrap negative values to u64", () => {
    const b = new Uint8Array(144);
    const r = decodeRegs(b);
    r.rax = -1n;
    r.rflags = 2n;
    r.r15 = 0x8000000000000000n;
    const back = decodeRegs(encodeRegs(r));
    expect(back.rax).toBe(0xffffffffffffffffn);
    expect(back.rflags).toBe(2n);
    expect(back.r15).toBe(0x8000000000000000n);
  });
  it("sregs round-trip every field", () => {
    const s = decodeSregs(new Uint8Array(312));
    s.cs = {
      base: 0x1000n,
      limit: 0xffff,
      selector: 8,
      type: 11,
      present: 1,
      dpl: 3,
      db: 0,
      s: 1,
      l: 1,
      g: 1,
      avl: 1,
      unusable: 0,
    };
    s.tr = { ...s.cs, selector: 0x18, type: 11, s: 0 };
    s.idt = { base: 0xfffff000n, limit: 0xfff };
    s.efer = 0xd01n;
    s.apicBase = 0xfee00900n;
    s.interruptBitmap = [1n, 0n, 0n, 1n << 63n];
    expect(decodeSregs(encodeSregs(s))).toEqual(s);
  });
  it("cpuid and msr lists", () => {
    const entries = [
      { function: 1, index: 0, flags: 0, eax: 1, ebx: 0xffffffff, ecx: 3, edx: 4 },
      { function: 0xb, index: 1, flags: 1, eax: 5, ebx: 6, ecx: 7, edx: 8 },
    ];
    expect(decodeCpuid2(encodeCpuid2(entries))).toEqual(entries);
    expect(decodeCpuid2(encodeCpuid2(entries, 8)).length).toBe(8);
    const msrs = [
      { index: 0x10, data: 5n },
      { index: 0xc0000080, data: 0xd01n },
    ];
    expect(decodeMsrs(encodeMsrs(msrs), 2)).toEqual(msrs);
  });
});
