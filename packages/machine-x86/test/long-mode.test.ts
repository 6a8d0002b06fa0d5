import { describe, expect, it } from "vitest";
import {
  bootRegs,
  buildGdt,
  buildIdentityPageTables,
  Cr0,
  Cr4,
  Efer,
  gdtEntry,
  longModeSregs,
  Selector,
  translate,
} from "../src/index.js";

const GiB = 2 ** 30;

/** Guest memory as a sparse map, enough for the walker. */
function memoryWith(base: number, bytes: Uint8Array): (a: number) => bigint {
  const dv = new DataView(bytes.buffer);
  return (a) => {
    const off = a - base;
    if (off < 0 || off + 8 > bytes.length)
      throw new Error(`walk read outside the tables at 0x${a.toString(16)}`);
    return dv.getBigUint64(off, true);
  };
}

describe("identity page tables", () => {
  const base = 0x9000;
  const pt = buildIdentityPageTables(base);
  const read = memoryWith(base, pt.bytes);

  it("are a PML4, a PDPT and four page directories", () => {
    expect(pt.cr3).toBe(base);
    expect(pt.bytes.length).toBe(6 * 4096);
  });

  it("map every address below 4 GiB to itself", () => {
    const probes = [
      0n,
      0x7000n,
      0x100000n,
      0x1000000n,
      0x0fe58123n,
      0x7fffffffn,
      0xc0000000n,
      0xfec00000n,
      0xfee00300n,
    ];
    for (let i = 0n; i < 4096n; i++) probes.push(i * 0x100000n + ((i * 0x1234n) % 0x100000n));
    for (const v of probes) expect(translate(read, pt.cr3, v), `0x${v.toString(16)}`).toBe(v);
    expect(translate(read, pt.cr3, 4n * BigInt(GiB) - 1n)).toBe(4n * BigInt(GiB) - 1n);
  });

  it("map nothing at or above 4 GiB", () => {
    expect(translate(read, pt.cr3, 4n * BigInt(GiB))).toBeUndefined();
    expect(translate(read, pt.cr3, 0xffffffff80000000n)).toBeUndefined();
  });

  it("use present, writable 2 MiB pages", () => {
    const pd0 = new DataView(pt.bytes.buffer, 2 * 4096);
    expect(pd0.getBigUint64(0, true)).toBe(0x83n);
    expect(pd0.getBigUint64(8, true)).toBe(0x200083n);
  });

  it("walk five levels when CR4.LA57 is on", () => {
    const pml4 = buildIdentityPageTables(0x10000);
    const all = new Uint8Array(4096 + pml4.bytes.length);
    new DataView(all.buffer).setBigUint64(0, 0x10000n | 3n, true); // PML5[0] -> PML4
    all.set(pml4.bytes, 4096);
    const r = memoryWith(0xf000, all);
    expect(translate(r, 0xf000, 0x1234_5678n, 5)).toBe(0x1234_5678n);
    expect(translate(r, 0xf000, 1n << 48n, 5)).toBeUndefined();
  });

  it("can cover more than 4 GiB", () => {
    const big = buildIdentityPageTables(0x10000, 8 * GiB);
    const r = memoryWith(0x10000, big.bytes);
    expect(translate(r, big.cr3, 0x1_8000_1234n)).toBe(0x1_8000_1234n);
    expect(() => buildIdentityPageTables(0x9001)).toThrow(/aligned/);
  });
});

describe("64-bit entry state", () => {
  it("has the protocol's GDT: flat 64-bit code at 0x10, flat data at 0x18", () => {
    const gdt = new DataView(buildGdt().buffer);
    expect(gdt.getBigUint64(0, true)).toBe(0n);
    expect(gdt.getBigUint64(Selector.CODE, true)).toBe(0x00af9b000000ffffn);
    expect(gdt.getBigUint64(Selector.DATA, true)).toBe(0x00cf93000000ffffn);
    expect(gdtEntry(0xa09b, 0x12345678, 0xfffff)).toBe(0x12af9b345678ffffn);
  });

  it("switches sregs to long mode with paging", () => {
    const reset = {
      cs: {
        base: 0xffff0000n,
        limit: 0xffff,
        selector: 0xf000,
        type: 11,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
      },
    };
    const seg = reset.cs;
    const s = longModeSregs(
      {
        cs: seg,
        ds: seg,
        es: seg,
        fs: seg,
        gs: seg,
        ss: seg,
        tr: seg,
        ldt: seg,
        gdt: { base: 0n, limit: 0xffff },
        idt: { base: 0n, limit: 0xffff },
        cr0: 0x60000010n,
        cr2: 0n,
        cr3: 0n,
        cr4: 0n,
        cr8: 0n,
        efer: 0n,
        apicBase: 0xfee00900n,
        interruptBitmap: [0n, 0n, 0n, 0n],
      },
      { gdtAddress: 0x500, idtAddress: 0x520, cr3: 0x9000 },
    );
    expect(s.cs).toMatchObject({ selector: 0x10, l: 1, db: 0, type: 0xb, s: 1, present: 1, base: 0n });
    for (const r of [s.ds, s.es, s.ss]) expect(r).toMatchObject({ selector: 0x18, type: 3, db: 1, l: 0 });
    expect(s.tr).toMatchObject({ selector: 0x20, type: 0xb, s: 0, present: 1 });
    expect(s.gdt).toEqual({ base: 0x500n, limit: 47 });
    expect(s.cr0 & (Cr0.PE | Cr0.PG)).toBe(Cr0.PE | Cr0.PG);
    expect(s.cr0 & (3n << 29n)).toBe(0n); // caches on (CD, NW clear)
    expect(s.cr4 & Cr4.PAE).toBe(Cr4.PAE);
    expect(s.efer).toBe(Efer.LME | Efer.LMA);
    expect(s.cr3).toBe(0x9000n);
    expect(s.apicBase).toBe(0xfee00900n);
  });

  it("enters startup_64 with rsi = boot_params and interrupts off", () => {
    const r = bootRegs(0x100200, 0x7000, 0x8ff0);
    expect(r.rip).toBe(0x100200n);
    expect(r.rsi).toBe(0x7000n);
    expect(r.rflags).toBe(2n);
    expect(r.rsp).toBe(0x8ff0n);
  });
});
