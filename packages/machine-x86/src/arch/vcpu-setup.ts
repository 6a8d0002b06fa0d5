// Puts a freshly created vCPU into its boot state.

import { type CpuidEntry, MpState, type Regs, type Sregs, type Vcpu } from "@tskvm/kvm-core";
import { withPcLints } from "./lapic.js";
import { bootMsrs } from "./msrs.js";

/** x87 control word and MXCSR after FNINIT / reset: all exceptions masked. */
export const FPU_FCW = 0x37f;
export const FPU_MXCSR = 0x1f80;

export interface VcpuBootState {
  cpuid: readonly CpuidEntry[];
  /** MSR indices KVM accepts (KVM_GET_MSR_INDEX_LIST); others are left alone. */
  supportedMsrs?: readonly number[];
  /** For the BSP: registers at the kernel entry. APs get none and wait for INIT/SIPI. */
  entry?: { regs: Regs; sregs: (current: Sregs) => Sregs };
}

/**
 * CPUID, MSRs, FPU and LAPIC LINT wiring for every vCPU; the entry registers for the
 * BSP; MP_STATE_UNINITIALIZED for application processors, which the kernel starts
 * with INIT/SIPI through the in-kernel LAPIC.
 */
export function setupVcpu(vcpu: Vcpu, s: VcpuBootState): void {
  vcpu.setCpuid(s.cpuid);
  const known = s.supportedMsrs ? new Set(s.supportedMsrs) : undefined;
  vcpu.setMsrs(bootMsrs().filter((m) => !known || known.has(m.index)));
  const fpu = vcpu.getFpu();
  vcpu.setFpu({ ...fpu, fcw: FPU_FCW, mxcsr: FPU_MXCSR });
  vcpu.setLapic(withPcLints(vcpu.getLapic()));
  if (s.entry) {
    vcpu.setSregs(s.entry.sregs(vcpu.getSregs()));
    vcpu.setRegs(s.entry.regs);
  } else {
    vcpu.setMpState(MpState.UNINITIALIZED);
  }
}
