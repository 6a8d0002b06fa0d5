// CPU state for the 64-bit boot protocol: flat GDT, paging on, long mode active.

import type { Regs, Segment, Sregs } from "@tskvm/kvm-core";

export const Cr0 = {
  PE: 1n << 0n,
  MP: 1n << 1n,
  ET: 1n << 4n,
  NE: 1n << 5n,
  WP: 1n << 16n,
  PG: 1n << 31n,
} as const;
export const Cr4 = { PAE: 1n << 5n } as const;
export const Efer = { SCE: 1n << 0n, LME: 1n << 8n, LMA: 1n << 10n, NXE: 1n << 11n } as const;
export const RFLAGS_RESERVED = 0x2n;
export const RFLAGS_IF = 0x200n;

/** The protocol's selectors: __BOOT_CS and __BOOT_DS. */
export const Selector = { CODE: 0x10, DATA: 0x18, TSS: 0x20 } as const;
/** null, null, code, data, then a 16-byte TSS descriptor. */
export const GDT_SIZE = 6 * 8;

/** One 8-byte descriptor: `flags` packs the access byte (bits 0-7) and G/D/L/AVL (bits 12-15). */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base >>> 0);
  const l = BigInt(limit & 0xfffff);
  const f = BigInt(flags & 0xf0ff);
  return (
    ((b & 0xff000000n) << 32n) |
    (f << 40n) |
    ((l & 0xf0000n) << 32n) |
    ((b & 0xffffffn) << 16n) |
    (l & 0xffffn)
  );
}

const CODE64_FLAGS = 0xa09b; // G, L; present, DPL 0, code execute/read, accessed
const DATA_FLAGS = 0xc093; // G, D/B; present, DPL 0, data read/write, accessed
const TSS_FLAGS = 0x008b; // present, 64-bit TSS (busy): VMX wants a usable busy TSS in TR
const TSS_LIMIT = 0x67;

/** The GDT bytes; KVM takes the hidden segment state from sregs, the guest may reload from these. */
export function buildGdt(): Uint8Array {
  const out = new Uint8Array(GDT_SIZE);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(Selector.CODE, gdtEntry(CODE64_FLAGS, 0, 0xfffff), true);
  dv.setBigUint64(Selector.DATA, gdtEntry(DATA_FLAGS, 0, 0xfffff), true);
  dv.setBigUint64(Selector.TSS, gdtEntry(TSS_FLAGS, 0, TSS_LIMIT), true);
  return out;
}

function segment(selector: number, type: number, extra: Partial<Segment>): Segment {
  return {
    base: 0n,
    limit: 0xffffffff,
    selector,
    type,
    present: 1,
    dpl: 0,
    db: 0,
    s: 1,
    l: 0,
    g: 1,
    avl: 0,
    unusable: 0,
    ...extra,
  };
}

export interface LongModeOptions {
  gdtAddress: number;
  idtAddress: number;
  /** PML4 address. */
  cr3: number;
}

/**
 * `sregs` switched to 64-bit mode as the boot protocol asks: CS = __BOOT_CS (64-bit
 * code), DS/ES/SS (and FS/GS) = __BOOT_DS (flat data), paging with PAE, EFER.LME/LMA.
 */
export function longModeSregs(sregs: Sregs, o: LongModeOptions): Sregs {
  const code = segment(Selector.CODE, 0xb, { l: 1 });
  const data = segment(Selector.DATA, 0x3, { db: 1 });
  const tr = segment(Selector.TSS, 0xb, { s: 0, g: 0, limit: TSS_LIMIT });
  return {
    ...sregs,
    cs: code,
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    tr,
    gdt: { base: BigInt(o.gdtAddress), limit: GDT_SIZE - 1 },
    // An empty IDT: any exception before the kernel installs its own is a triple fault we report.
    idt: { base: BigInt(o.idtAddress), limit: 0 },
    // Reset CR0 has CD/NW set; leave caching on or the decompressor may crawl.
    cr0: Cr0.PE | Cr0.ET | Cr0.PG,
    cr3: BigInt(o.cr3),
    cr4: Cr4.PAE,
    efer: Efer.LME | Efer.LMA,
  };
}

/** General registers at the 64-bit entry: rip = startup_64, rsi = &boot_params, IF clear. */
export function bootRegs(entry: number, bootParams: number, stack: number): Regs {
  const z = 0n;
  return {
    rax: z,
    rbx: z,
    rcx: z,
    rdx: z,
    rsi: BigInt(bootParams),
    rdi: z,
    rsp: BigInt(stack),
    rbp: BigInt(stack),
    r8: z,
    r9: z,
    r10: z,
    r11: z,
    r12: z,
    r13: z,
    r14: z,
    r15: z,
    rip: BigInt(entry),
    rflags: RFLAGS_RESERVED,
  };
}
