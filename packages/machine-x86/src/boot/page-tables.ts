// Identity-mapping page tables for entering long mode, and a walker to check them.

import { GiB } from "./layout.js";

export const PageFlag = { PRESENT: 0x1n, WRITABLE: 0x2n, PAGE_SIZE: 0x80n } as const;
const TWO_MIB = 2 * 1024 * 1024;
const PAGE = 4096;

export interface PageTables {
  /** Guest address of the PML4 (the value for CR3). */
  cr3: number;
  /** PML4, PDPT and page directories, consecutive pages to copy to `cr3`. */
  bytes: Uint8Array;
}

/**
 * Builds a 4-level identity map of [0, `bytes`) with 2 MiB pages (every x86-64 CPU
 * has them; 1 GiB pages need a CPUID feature) at guest address `base`.
 * The kernel replaces these tables in its first instructions; they only need to
 * cover the kernel, boot_params, the command line and the initrd.
 */
export function buildIdentityPageTables(base: number, bytes = 4 * GiB): PageTables {
  if (base % PAGE !== 0) throw new RangeError("page tables must be page aligned");
  if (bytes <= 0 || bytes % GiB !== 0 || bytes > 512 * GiB)
    throw new RangeError("the identity map covers a whole number of GiB, at most 512");
  const directories = bytes / GiB;
  const out = new Uint8Array((2 + directories) * PAGE);
  const dv = new DataView(out.buffer);
  const pml4 = base;
  const pdpt = base + PAGE;
  const flags = PageFlag.PRESENT | PageFlag.WRITABLE;
  dv.setBigUint64(0, BigInt(pdpt) | flags, true);
  for (let d = 0; d < directories; d++) {
    const pd = base + (2 + d) * PAGE;
    dv.setBigUint64(PAGE + d * 8, BigInt(pd) | flags, true);
    for (let e = 0; e < 512; e++) {
      const phys = BigInt(d) * BigInt(GiB) + BigInt(e) * BigInt(TWO_MIB);
      dv.setBigUint64((2 + d) * PAGE + e * 8, phys | flags | PageFlag.PAGE_SIZE, true);
    }
  }
  return { cr3: pml4, bytes: out };
}

/**
 * Translates `virt` through 4-level (or, with `levels` 5, LA57) tables at `cr3` like
 * the MMU does (4 KiB, 2 MiB and 1 GiB pages); undefined when some level is not present.
 */
export function translate(
  readU64: (address: number) => bigint,
  cr3: number | bigint,
  virt: bigint,
  levels: 4 | 5 = 4,
): bigint | undefined {
  const ADDR = 0x000f_ffff_ffff_f000n;
  let table = BigInt(cr3) & ADDR;
  const shifts = levels === 5 ? [48n, 39n, 30n, 21n, 12n] : [39n, 30n, 21n, 12n];
  for (let i = 0; i < shifts.length; i++) {
    const shift = shifts[i]!;
    const index = (virt >> shift) & 0x1ffn;
    const entry = readU64(Number(table + index * 8n));
    if ((entry & PageFlag.PRESENT) === 0n) return undefined;
    const last = i === shifts.length - 1;
    // PS means a leaf in the PDPT (1 GiB) and the page directory (2 MiB).
    const large = (entry & PageFlag.PAGE_SIZE) !== 0n && (shift === 30n || shift === 21n);
    if (last || large) {
      const pageMask = (1n << shift) - 1n;
      return (entry & ADDR & ~pageMask) | (virt & pageMask);
    }
    table = entry & ADDR;
  }
  return undefined;
}
