// Telling, from KVM's own state, whether a kicked vCPU sits in `cli; hlt` for good.
//
// With the in-kernel LAPIC a `hlt` never reaches userspace: KVM puts the vCPU in
// KVM_MP_STATE_HALTED and blocks it inside KVM_RUN. The probe's kick (a signal) makes
// KVM_RUN return -EINTR without changing that state, so the vCPU's own thread reads
// KVM_GET_MP_STATE right then, between two KVM_RUNs. Guest memory is never looked at:
// a guest can put any byte before its rip.
//
// KVM_GET_MP_STATE also processes a pending INIT/SIPI (kvm_apic_accept_events) outside
// KVM_RUN, which older kernels got wrong; INIT/SIPI is what an AP being brought up has
// pending, so an AP is not asked until it has left its reset state (see isResetState).

import { MpState, type Regs, type Sregs } from "@tskvm/kvm-core";
import { Cr0, RFLAGS_IF } from "../boot/long-mode.js";
import { HaltStatus } from "../control.js";

/**
 * Whether the registers are an x86 vCPU's reset state (real mode, CS base 0xffff0000,
 * rip 0xfff0): an AP that KVM has not started yet (never, or INIT without SIPI).
 */
export function isResetState(regs: Regs, sregs: Sregs): boolean {
  return regs.rip === 0xfff0n && sregs.cs.base === 0xffff0000n && (sregs.cr0 & Cr0.PE) === 0n;
}

/**
 * What a started vCPU is doing, from its KVM_GET_MP_STATE and rflags: halted with
 * interrupts off (only an NMI or INIT would wake it) is {@link HaltStatus.HALTED_IF0};
 * halted with them on is idle ({@link HaltStatus.HALTED_IF1}); INIT received and not
 * started again is waiting for SIPI; anything else is running.
 */
export function classifyHalt(mpState: number, rflags: bigint): number {
  switch (mpState) {
    case MpState.HALTED:
      return rflags & RFLAGS_IF ? HaltStatus.HALTED_IF1 : HaltStatus.HALTED_IF0;
    case MpState.UNINITIALIZED:
    case MpState.INIT_RECEIVED:
    case MpState.SIPI_RECEIVED:
      return HaltStatus.WAITING_SIPI;
    default:
      return HaltStatus.RUNNING;
  }
}
