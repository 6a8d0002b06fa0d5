// Model-specific registers every vCPU starts with (as kvmtool's kvm_cpu__setup_msrs).

import type { MsrEntry } from "@tskvm/kvm-core";

export const Msr = {
  IA32_TSC: 0x10,
  IA32_SYSENTER_CS: 0x174,
  IA32_SYSENTER_ESP: 0x175,
  IA32_SYSENTER_EIP: 0x176,
  IA32_MISC_ENABLE: 0x1a0,
  STAR: 0xc000_0081,
  LSTAR: 0xc000_0082,
  CSTAR: 0xc000_0083,
  SYSCALL_MASK: 0xc000_0084,
  KERNEL_GS_BASE: 0xc000_0102,
} as const;

/** IA32_MISC_ENABLE bit 0: fast string operations (rep movs/stos), on at reset on real CPUs. */
export const MISC_ENABLE_FAST_STRING = 1n;

/**
 * SYSENTER/SYSCALL MSRs and the kernel GS base cleared, the TSC at 0 (KVM keeps the
 * vCPUs' TSCs in step when they are written together), fast strings enabled.
 */
export function bootMsrs(): MsrEntry[] {
  return [
    { index: Msr.IA32_SYSENTER_CS, data: 0n },
    { index: Msr.IA32_SYSENTER_ESP, data: 0n },
    { index: Msr.IA32_SYSENTER_EIP, data: 0n },
    { index: Msr.STAR, data: 0n },
    { index: Msr.CSTAR, data: 0n },
    { index: Msr.KERNEL_GS_BASE, data: 0n },
    { index: Msr.SYSCALL_MASK, data: 0n },
    { index: Msr.LSTAR, data: 0n },
    { index: Msr.IA32_TSC, data: 0n },
    { index: Msr.IA32_MISC_ENABLE, data: MISC_ENABLE_FAST_STRING },
  ];
}
