import { MpState, type Regs, type Segment, type Sregs } from "@tskvm/kvm-core";
import { describe, expect, it } from "vitest";
import { allHalted, classifyHalt, HaltStatus, isResetState } from "../src/index.js";

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

describe("halt classification (KVM_GET_MP_STATE and rflags, never guest memory)", () => {
  it("sees an AP in its reset state (the probe does not ask KVM about it)", () => {
    expect(isResetState(regs(0xfff0n, 2n), realMode(0xffff0000n))).toBe(true);
    expect(isResetState(regs(0xfff0n, 2n), realMode(0x3000n))).toBe(false);
    expect(isResetState(regs(0n, 2n), realMode(0x3000n))).toBe(false); // started by SIPI at 0x300:0
  });

  it("calls a vCPU halted for good only when KVM says halted and interrupts are off", () => {
    expect(classifyHalt(MpState.HALTED, 2n)).toBe(HaltStatus.HALTED_IF0);
    expect(classifyHalt(MpState.HALTED, 0x202n)).toBe(HaltStatus.HALTED_IF1);
    expect(classifyHalt(MpState.RUNNABLE, 2n)).toBe(HaltStatus.RUNNING);
    expect(classifyHalt(MpState.RUNNABLE, 0x202n)).toBe(HaltStatus.RUNNING);
  });

  it("sees INIT without SIPI as waiting", () => {
    for (const s of [MpState.UNINITIALIZED, MpState.INIT_RECEIVED, MpState.SIPI_RECEIVED])
      expect(classifyHalt(s, 2n)).toBe(HaltStatus.WAITING_SIPI);
  });

  it("ends the machine only when every vCPU is halted or never started", () => {
    expect(allHalted([HaltStatus.HALTED_IF0, HaltStatus.WAITING_SIPI])).toBe(true);
    expect(allHalted([HaltStatus.HALTED_IF0, HaltStatus.RUNNING])).toBe(false);
    expect(allHalted([HaltStatus.WAITING_SIPI])).toBe(false);
    expect(allHalted([HaltStatus.HALTED_IF0, HaltStatus.UNKNOWN])).toBe(false);
  });
});
