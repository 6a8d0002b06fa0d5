// Telling, from registers and memory alone, whether a vCPU sits in `cli; hlt` for good.
//
// KVM_GET_MP_STATE would say "halted" directly, but it also processes a pending INIT
// or SIPI (kvm_apic_accept_events) outside KVM_RUN, which older kernels get wrong
// (the guest FPU is not loaded there), so the probe never calls it.

import type { Regs, Sregs } from "@tskvm/kvm-core";
import { Cr0, Efer, RFLAGS_IF } from "../boot/long-mode.js";
import { translate } from "../boot/page-tables.js";
import { HaltStatus } from "../control.js";

const HLT = 0xf4;
const CR4_LA57 = 1n << 12n;

export interface GuestReader {
  readU8(address: number): number;
  readU64(address: number): bigint;
}

/** The guest physical address of linear address `linear`, or undefined if unmapped or unsupported. */
export function linearToPhysical(sregs: Sregs, linear: bigint, mem: GuestReader): bigint | undefined {
  if ((sregs.cr0 & Cr0.PG) === 0n) return linear & 0xffff_ffffn;
  // Only long-mode paging (4 or 5 levels); 32-bit paging modes are not looked into.
  if ((sregs.efer & Efer.LMA) === 0n) return undefined;
  return translate((a) => mem.readU64(a), sregs.cr3, linear, sregs.cr4 & CR4_LA57 ? 5 : 4);
}

/**
 * What a kicked vCPU is doing: an AP still in its reset state (never started, or INIT
 * without SIPI yet) is waiting for SIPI; interrupts off with the byte before rip a
 * `hlt` means halted for good (the caller also checks rip does not move); anything
 * else is running.
 */
export function classifyHalt(regs: Regs, sregs: Sregs, mem: GuestReader): number {
  if (regs.rflags & RFLAGS_IF) return HaltStatus.RUNNING;
  if (regs.rip === 0xfff0n && sregs.cs.base === 0xffff0000n && (sregs.cr0 & Cr0.PE) === 0n)
    return HaltStatus.WAITING_SIPI;
  if (regs.rip === 0n) return HaltStatus.RUNNING;
  try {
    const phys = linearToPhysical(sregs, sregs.cs.base + regs.rip - 1n, mem);
    if (phys !== undefined && mem.readU8(Number(phys)) === HLT) return HaltStatus.HALTED_IF0;
  } catch {
    // rip outside guest RAM: not a halt we can see
  }
  return HaltStatus.RUNNING;
}
