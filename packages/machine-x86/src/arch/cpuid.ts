// The CPUID table each vCPU gets: what KVM supports, with this vCPU's APIC id and a
// topology of `cpus` single-threaded cores in one package.

import { CPUID_FLAG_SIGNIFICANT_INDEX, type CpuidEntry } from "@tskvm/kvm-core";

export const CpuidBit = {
  /** Leaf 1 ECX: running under a hypervisor. */
  HYPERVISOR: 1 << 31,
  /** Leaf 1 ECX: the LAPIC timer's TSC-deadline mode (MSR 0x6e0). */
  TSC_DEADLINE_TIMER: 1 << 24,
  /** Leaf 1 EDX: EBX[23:16] holds the logical processor count. */
  HTT: 1 << 28,
  /** Leaf 0x80000001 ECX: leaf 0x8000001e topology extensions (AMD). */
  TOPOEXT: 1 << 22,
} as const;

export type CpuVendor = "intel" | "amd" | "other";

export interface CpuTopology {
  /** This vCPU's index, which is also its APIC id. */
  vcpuId: number;
  /** vCPUs in the machine, as cores of one package. */
  cpus: number;
  /**
   * Offer the TSC-deadline timer (leaf 1 ECX[24]). KVM's in-kernel LAPIC emulates it but
   * KVM_GET_SUPPORTED_CPUID leaves the bit clear: the VMM sets it where KVM_CAP_TSC_DEADLINE_TIMER
   * says so and the LAPIC is in the kernel (the KVM API document; QEMU and Firecracker do).
   * One MSR write then arms the guest's timer, where the one-shot mode costs more exits.
   */
  tscDeadlineTimer?: boolean;
}

function regString(...regs: number[]): string {
  const b = new Uint8Array(regs.length * 4);
  const dv = new DataView(b.buffer);
  regs.forEach((r, i) => {
    dv.setUint32(i * 4, r >>> 0, true);
  });
  return new TextDecoder("latin1").decode(b);
}

/** The vendor named by leaf 0 (EBX, EDX, ECX spell it). */
export function cpuVendor(entries: readonly CpuidEntry[]): CpuVendor {
  const l0 = entries.find((e) => e.function === 0);
  if (!l0) return "other";
  const id = regString(l0.ebx, l0.edx, l0.ecx);
  if (id === "GenuineIntel") return "intel";
  if (id === "AuthenticAMD" || id === "HygonGenuine") return "amd";
  return "other";
}

/** Bits needed to number `n` things (ceil(log2 n)). */
export function bitsFor(n: number): number {
  let b = 0;
  while (1 << b < n) b++;
  return b;
}

/** Topology leaf 0xb / 0x1f: level 0 SMT (one thread per core), level 1 core, then the invalid level. */
function extendedTopology(fn: number, t: CpuTopology): CpuidEntry[] {
  const flags = CPUID_FLAG_SIGNIFICANT_INDEX;
  const id = t.vcpuId;
  return [
    { function: fn, index: 0, flags, eax: 0, ebx: 1, ecx: (1 << 8) | 0, edx: id },
    { function: fn, index: 1, flags, eax: bitsFor(t.cpus), ebx: t.cpus, ecx: (2 << 8) | 1, edx: id },
    { function: fn, index: 2, flags, eax: 0, ebx: 0, ecx: 2, edx: id },
  ];
}

/**
 * This vCPU's CPUID from KVM_GET_SUPPORTED_CPUID: leaf 1 gets the APIC id (EBX[31:24]),
 * the processor count, the hypervisor bit and, if asked, the TSC-deadline timer; leaves 4, 0xb, 0x1f (Intel) and
 * 0x80000008, 0x8000001d, 0x8000001e (AMD) describe `cpus` cores of one thread each.
 * KVM's own signature leaves (0x40000000...) pass through as supported.
 */
export function buildCpuid(supported: readonly CpuidEntry[], t: CpuTopology): CpuidEntry[] {
  if (!Number.isInteger(t.cpus) || t.cpus < 1 || t.cpus > 255)
    throw new RangeError(`bad vCPU count ${t.cpus}`);
  if (!Number.isInteger(t.vcpuId) || t.vcpuId < 0 || t.vcpuId >= t.cpus)
    throw new RangeError(`bad vCPU id ${t.vcpuId}`);
  const vendor = cpuVendor(supported);
  const amdTopo = (supported.find((e) => e.function === 0x8000_0001)?.ecx ?? 0) & CpuidBit.TOPOEXT;
  const out: CpuidEntry[] = [];
  const seen = new Set<number>();
  for (const src of supported) {
    const e = { ...src };
    switch (e.function) {
      case 0x1:
        e.ebx = ((e.ebx & 0x0000ffff) | ((t.cpus & 0xff) << 16) | ((t.vcpuId & 0xff) << 24)) >>> 0;
        e.ecx = (e.ecx | CpuidBit.HYPERVISOR) >>> 0;
        if (t.tscDeadlineTimer) e.ecx = (e.ecx | CpuidBit.TSC_DEADLINE_TIMER) >>> 0;
        e.edx = (t.cpus > 1 ? e.edx | CpuidBit.HTT : e.edx & ~CpuidBit.HTT) >>> 0;
        break;
      case 0x4:
        if (vendor === "intel" && (e.eax & 0x1f) !== 0) {
          const level = (e.eax >> 5) & 0x7;
          const sharing = level >= 3 ? t.cpus - 1 : 0;
          e.eax = ((e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((t.cpus - 1) & 0x3f) << 26)) >>> 0;
        }
        break;
      case 0xb:
      case 0x1f:
        if (!seen.has(e.function)) {
          seen.add(e.function);
          out.push(...extendedTopology(e.function, t));
        }
        continue;
      case 0x8000_0008:
        if (vendor === "amd")
          e.ecx = ((e.ecx & ~0xf0ff) | ((t.cpus - 1) & 0xff) | (bitsFor(t.cpus) << 12)) >>> 0;
        break;
      case 0x8000_001d:
        if (vendor === "amd" && (e.eax & 0x1f) !== 0) {
          const level = (e.eax >> 5) & 0x7;
          const sharing = level >= 3 ? t.cpus - 1 : 0;
          e.eax = ((e.eax & ~(0xfff << 14)) | ((sharing & 0xfff) << 14)) >>> 0;
        }
        break;
      case 0x8000_001e:
        if (vendor === "amd" && amdTopo) {
          e.eax = t.vcpuId; // extended APIC id
          e.ebx = t.vcpuId & 0xff; // core id; threads per core - 1 = 0 in EBX[15:8]
          e.ecx = 0; // node 0, one node per package
        }
        break;
    }
    out.push(e);
  }
  return out;
}

/** The entry for (function, index), as the CPU would answer CPUID. */
export function findCpuid(entries: readonly CpuidEntry[], fn: number, index = 0): CpuidEntry | undefined {
  return entries.find(
    (e) => e.function === fn && ((e.flags & CPUID_FLAG_SIGNIFICANT_INDEX) === 0 || e.index === index),
  );
}
