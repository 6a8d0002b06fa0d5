// Typed values for the x86 KVM structs, with their exact byte layouts.

export interface Regs {
  rax: bigint;
  rbx: bigint;
  rcx: bigint;
  rdx: bigint;
  rsi: bigint;
  rdi: bigint;
  rsp: bigint;
  rbp: bigint;
  r8: bigint;
  r9: bigint;
  r10: bigint;
  r11: bigint;
  r12: bigint;
  r13: bigint;
  r14: bigint;
  r15: bigint;
  rip: bigint;
  rflags: bigint;
}

const REG_NAMES = [
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rsp",
  "rbp",
  "r8",
  "r9",
  "r10",
  "r11",
  "r12",
  "r13",
  "r14",
  "r15",
  "rip",
  "rflags",
] as const satisfies readonly (keyof Regs)[];

export const REGS_SIZE = 144;

export function decodeRegs(b: Uint8Array): Regs {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => {
    r[n] = dv.getBigUint64(i * 8, true);
  });
  return r;
}

export function encodeRegs(r: Regs): Uint8Array {
  const b = new Uint8Array(REGS_SIZE);
  const dv = new DataView(b.buffer);
  REG_NAMES.forEach((n, i) => {
    dv.setBigUint64(i * 8, BigInt.asUintN(64, r[n]), true);
  });
  return b;
}

/** A segment register as KVM sees it (`struct kvm_segment`). */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** A descriptor-table register (`struct kvm_dtable`). */
export interface DescriptorTable {
  base: bigint;
  limit: number;
}

export interface Sregs {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: DescriptorTable;
  idt: DescriptorTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apicBase: bigint;
  /** Pending external interrupt bitmap (256 bits). */
  interruptBitmap: [bigint, bigint, bigint, bigint];
}

export const SREGS_SIZE = 312;
const SEGS = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
const CRS = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apicBase"] as const;

function decodeSegment(dv: DataView, o: number): Segment {
  return {
    base: dv.getBigUint64(o, true),
    limit: dv.getUint32(o + 8, true),
    selector: dv.getUint16(o + 12, true),
    type: dv.getUint8(o + 14),
    present: dv.getUint8(o + 15),
    dpl: dv.getUint8(o + 16),
    db: dv.getUint8(o + 17),
    s: dv.getUint8(o + 18),
    l: dv.getUint8(o + 19),
    g: dv.getUint8(o + 20),
    avl: dv.getUint8(o + 21),
    unusable: dv.getUint8(o + 22),
  };
}

function encodeSegment(dv: DataView, o: number, s: Segment): void {
  dv.setBigUint64(o, BigInt.asUintN(64, s.base), true);
  dv.setUint32(o + 8, s.limit >>> 0, true);
  dv.setUint16(o + 12, s.selector, true);
  const bytes = [s.type, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable];
  bytes.forEach((v, i) => {
    dv.setUint8(o + 14 + i, v);
  });
}

export function decodeSregs(b: Uint8Array): Sregs {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const r = {} as Sregs;
  SEGS.forEach((n, i) => {
    r[n] = decodeSegment(dv, i * 24);
  });
  r.gdt = { base: dv.getBigUint64(192, true), limit: dv.getUint16(200, true) };
  r.idt = { base: dv.getBigUint64(208, true), limit: dv.getUint16(216, true) };
  CRS.forEach((n, i) => {
    r[n] = dv.getBigUint64(224 + i * 8, true);
  });
  r.interruptBitmap = [0, 1, 2, 3].map((i) => dv.getBigUint64(280 + i * 8, true)) as Sregs["interruptBitmap"];
  return r;
}

export function encodeSregs(r: Sregs): Uint8Array {
  const b = new Uint8Array(SREGS_SIZE);
  const dv = new DataView(b.buffer);
  SEGS.forEach((n, i) => {
    encodeSegment(dv, i * 24, r[n]);
  });
  dv.setBigUint64(192, r.gdt.base, true);
  dv.setUint16(200, r.gdt.limit, true);
  dv.setBigUint64(208, r.idt.base, true);
  dv.setUint16(216, r.idt.limit, true);
  CRS.forEach((n, i) => {
    dv.setBigUint64(224 + i * 8, BigInt.asUintN(64, r[n]), true);
  });
  r.interruptBitmap.forEach((v, i) => {
    dv.setBigUint64(280 + i * 8, v, true);
  });
  return b;
}

/** `struct kvm_fpu`: x87 and SSE state. */
export interface Fpu {
  /** 8 x87 registers, 16 bytes each. */
  fpr: Uint8Array;
  fcw: number;
  fsw: number;
  ftwx: number;
  lastOpcode: number;
  lastIp: bigint;
  lastDp: bigint;
  /** 16 XMM registers, 16 bytes each. */
  xmm: Uint8Array;
  mxcsr: number;
}

export const FPU_SIZE = 416;

export function decodeFpu(b: Uint8Array): Fpu {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    fpr: b.slice(0, 128),
    fcw: dv.getUint16(128, true),
    fsw: dv.getUint16(130, true),
    ftwx: dv.getUint8(132),
    lastOpcode: dv.getUint16(134, true),
    lastIp: dv.getBigUint64(136, true),
    lastDp: dv.getBigUint64(144, true),
    xmm: b.slice(152, 408),
    mxcsr: dv.getUint32(408, true),
  };
}

export function encodeFpu(f: Fpu): Uint8Array {
  const b = new Uint8Array(FPU_SIZE);
  const dv = new DataView(b.buffer);
  if (f.fpr.length !== 128 || f.xmm.length !== 256)
    throw new RangeError("fpu: fpr must be 128 bytes and xmm 256");
  b.set(f.fpr, 0);
  dv.setUint16(128, f.fcw, true);
  dv.setUint16(130, f.fsw, true);
  dv.setUint8(132, f.ftwx);
  dv.setUint16(134, f.lastOpcode, true);
  dv.setBigUint64(136, f.lastIp, true);
  dv.setBigUint64(144, f.lastDp, true);
  b.set(f.xmm, 152);
  dv.setUint32(408, f.mxcsr, true);
  return b;
}

/** One CPUID leaf (`struct kvm_cpuid_entry2`). */
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export const CPUID_ENTRY_SIZE = 40;
/** KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the leaf has sub-leaves selected by ECX. */
export const CPUID_FLAG_SIGNIFICANT_INDEX = 1;

export function decodeCpuid2(b: Uint8Array): CpuidEntry[] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const n = dv.getUint32(0, true);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + i * CPUID_ENTRY_SIZE;
    out.push({
      function: dv.getUint32(o, true),
      index: dv.getUint32(o + 4, true),
      flags: dv.getUint32(o + 8, true),
      eax: dv.getUint32(o + 12, true),
      ebx: dv.getUint32(o + 16, true),
      ecx: dv.getUint32(o + 20, true),
      edx: dv.getUint32(o + 24, true),
    });
  }
  return out;
}

export function encodeCpuid2(entries: readonly CpuidEntry[], capacity = entries.length): Uint8Array {
  const b = new Uint8Array(8 + capacity * CPUID_ENTRY_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, Math.max(entries.length, capacity), true);
  entries.forEach((e, i) => {
    const o = 8 + i * CPUID_ENTRY_SIZE;
    dv.setUint32(o, e.function >>> 0, true);
    dv.setUint32(o + 4, e.index >>> 0, true);
    dv.setUint32(o + 8, e.flags >>> 0, true);
    dv.setUint32(o + 12, e.eax >>> 0, true);
    dv.setUint32(o + 16, e.ebx >>> 0, true);
    dv.setUint32(o + 20, e.ecx >>> 0, true);
    dv.setUint32(o + 24, e.edx >>> 0, true);
  });
  if (capacity === entries.length) dv.setUint32(0, entries.length, true);
  return b;
}

/** One MSR (`struct kvm_msr_entry`). */
export interface MsrEntry {
  index: number;
  data: bigint;
}

export function encodeMsrs(entries: readonly MsrEntry[]): Uint8Array {
  const b = new Uint8Array(8 + entries.length * 16);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    dv.setUint32(8 + i * 16, e.index >>> 0, true);
    dv.setBigUint64(16 + i * 16, BigInt.asUintN(64, e.data), true);
  });
  return b;
}

export function decodeMsrs(b: Uint8Array, count: number): MsrEntry[] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: MsrEntry[] = [];
  for (let i = 0; i < count; i++)
    out.push({ index: dv.getUint32(8 + i * 16, true), data: dv.getBigUint64(16 + i * 16, true) });
  return out;
}

/** KVM_MP_STATE_* values. */
export const MpState = {
  RUNNABLE: 0,
  UNINITIALIZED: 1,
  INIT_RECEIVED: 2,
  HALTED: 3,
  SIPI_RECEIVED: 4,
} as const;

export const LAPIC_SIZE = 1024;

/** `struct kvm_clock_data`: the VM's kvmclock (KVM_GET_CLOCK / KVM_SET_CLOCK). */
export interface ClockData {
  /** kvmclock time, ns. */
  clock: bigint;
  /** KVM_CLOCK_* flags ({@link ClockFlag}); on set, only REALTIME means anything. */
  flags: number;
  /** Host CLOCK_REALTIME at `clock`, ns (with {@link ClockFlag.REALTIME}). */
  realtime: bigint;
  /** Host TSC at `clock` (with {@link ClockFlag.HOST_TSC}). */
  hostTsc: bigint;
}

export const ClockFlag = { TSC_STABLE: 2, REALTIME: 1 << 2, HOST_TSC: 1 << 3 } as const;

export const CLOCK_DATA_SIZE = 48;

export function decodeClockData(b: Uint8Array): ClockData {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    clock: dv.getBigUint64(0, true),
    flags: dv.getUint32(8, true),
    realtime: dv.getBigUint64(16, true),
    hostTsc: dv.getBigUint64(24, true),
  };
}

export function encodeClockData(c: Partial<ClockData> & { clock: bigint }): Uint8Array {
  const b = new Uint8Array(CLOCK_DATA_SIZE);
  const dv = new DataView(b.buffer);
  dv.setBigUint64(0, BigInt.asUintN(64, c.clock), true);
  dv.setUint32(8, c.flags ?? 0, true);
  dv.setBigUint64(16, BigInt.asUintN(64, c.realtime ?? 0n), true);
  dv.setBigUint64(24, BigInt.asUintN(64, c.hostTsc ?? 0n), true);
  return b;
}
