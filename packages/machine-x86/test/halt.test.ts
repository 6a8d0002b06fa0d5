import type { Regs, Segment, Sregs } from "@tskvm/kvm-core";
import { describe, expect, it } from "vitest";
import { allHalted, buildIdentityPageTables, classifyHalt, HaltStatus, longModeSregs } from "../src/index.js";

const seg = (base: bigint): Segment => ({
  base,
  limit: 0xffff,
  selector: Number(base >> 4n),
  type: 11,
  present: 1,
  dpl: 0,
  db: 0,
  s: 1,
  l: 0,
  g: 0,
  avl: 0,
  unusable: 0,
});

function realMode(csBase: bigint): Sregs {
  const s = seg(csBase);
  const d = seg(0n);
  return {
    cs: s,
    ds: d,
    es: d,
    fs: d,
    gs: d,
    ss: d,
    tr: d,
    ldt: d,
    gdt: { base: 0n, limit: 0xffff },
    idt: { base: 0n, limit: 0x3ff },
    cr0: 0x60000010n,
    cr2: 0n,
    cr3: 0n,
    cr4: 0n,
    cr8: 0n,
    efer: 0n,
    apicBase: 0xfee00800n,
    interruptBitmap: [0n, 0n, 0n, 0n],
  };
}

const regs = (rip: bigint, rflags: bigint): Regs => ({
  rax: 0n,
  rbx: 0n,
  rcx: 0n,
  rdx: 0n,
  rsi: 0n,
  rdi: 0n,
  rsp: 0n,
  rbp: 0n,
  r8: 0n,
  r9: 0n,
  r10: 0n,
  r11: 0n,
  r12: 0n,
  r13: 0n,
  r14: 0n,
  r15: 0n,
  rip,
  rflags,
});

/** 64 KiB of "guest memory" with identity page tables at 0x9000 and code at 0x3000. */
function memory() {
  const ram = new Uint8Array(0x10000);
  ram.set(buildIdentityPageTables(0x9000, 2 ** 30).bytes.subarray(0, 3 * 4096), 0x9000);
  ram.set([0xfa, 0xf4, 0xeb, 0xfd], 0x3000); // cli; 1: hlt; jmp 1b
  const dv = new DataView(ram.buffer);
  return { readU8: (a: number) => ram[a]!, readU64: (a: number) => dv.getBigUint64(a, true) };
}

describe("halt classification (no KVM_GET_MP_STATE)", () => {
  const mem = memory();

  it("sees an AP in its reset state as waiting for SIPI", () => {
    expect(classifyHalt(regs(0xfff0n, 2n), realMode(0xffff0000n), mem)).toBe(HaltStatus.WAITING_SIPI);
  });

  it("sees cli; hlt in real mode and in long mode", () => {
    expect(classifyHalt(regs(2n, 2n), realMode(0x3000n), mem)).toBe(HaltStatus.HALTED_IF0);
    const lm = longModeSregs(realMode(0n), { gdtAddress: 0x500, idtAddress: 0x520, cr3: 0x9000 });
    expect(classifyHalt(regs(0x3002n, 2n), lm, mem)).toBe(HaltStatus.HALTED_IF0);
  });

  it("does not call running code, or a halt with interrupts on, halted for good", () => {
    expect(classifyHalt(regs(3n, 2n), realMode(0x3000n), mem)).toBe(HaltStatus.RUNNING);
    expect(classifyHalt(regs(2n, 0x202n), realMode(0x3000n), mem)).toBe(HaltStatus.RUNNING);
    const lm = longModeSregs(realMode(0n), { gdtAddress: 0x500, idtAddress: 0x520, cr3: 0x9000 });
    expect(classifyHalt(regs(0x4000_0002n, 2n), lm, mem)).toBe(HaltStatus.RUNNING); // unmapped
  });

  it("ends the machine only when every vCPU is halted or never started", () => {
    expect(allHalted([HaltStatus.HALTED_IF0, HaltStatus.WAITING_SIPI])).toBe(true);
    expect(allHalted([HaltStatus.HALTED_IF0, HaltStatus.RUNNING])).toBe(false);
    expect(allHalted([HaltStatus.WAITING_SIPI])).toBe(false);
    expect(allHalted([HaltStatus.HALTED_IF0, HaltStatus.UNKNOWN])).toBe(false);
  });
});
