import { CPUID_FLAG_SIGNIFICANT_INDEX, type CpuidEntry } from "@tskvm/kvm-core";
import { describe, expect, it } from "vitest";
import { bitsFor, buildCpuid, CpuidBit, cpuVendor, findCpuid } from "../src/index.js";

function vendorLeaf(id: string, max = 0x1f): CpuidEntry {
  const b = Buffer.from(id, "latin1");
  return {
    function: 0,
    index: 0,
    flags: 0,
    eax: max,
    ebx: b.readUInt32LE(0),
    edx: b.readUInt32LE(4),
    ecx: b.readUInt32LE(8),
  };
}

const e = (fn: number, regs: Partial<CpuidEntry> = {}): CpuidEntry => ({
  function: fn,
  index: 0,
  flags: 0,
  eax: 0,
  ebx: 0,
  ecx: 0,
  edx: 0,
  ...regs,
});

const intel: CpuidEntry[] = [
  vendorLeaf("GenuineIntel"),
  e(1, { eax: 0x906ea, ebx: 0x00100800, ecx: 0x7ffafbff, edx: 0xbfebfbff }),
  e(4, { index: 0, flags: 1, eax: 0x1c004121 }), // L1d
  e(4, { index: 3, flags: 1, eax: 0x3c07c163 }), // L3, shared by 32
  e(0xb, { index: 0, flags: 1, eax: 1, ebx: 2, ecx: 0x100, edx: 7 }),
  e(0x4000_0000, { eax: 0x4000_0001, ebx: 0x4b4d564b, ecx: 0x564b4d56, edx: 0x4d }),
  e(0x8000_0008, { eax: 0x3027, ecx: 0x1234 }),
];

const amd: CpuidEntry[] = [
  vendorLeaf("AuthenticAMD"),
  e(1, { eax: 0xa10f11, ebx: 0x01020800, ecx: 0x81202000, edx: 0x78bfbff }),
  e(0xb, { index: 0, flags: 1 }),
  e(0x8000_0001, { ecx: CpuidBit.TOPOEXT }),
  e(0x8000_0008, { eax: 0x3030, ecx: 0x7001 }),
  e(0x8000_001d, { index: 3, flags: 1, eax: 0x4163 }),
  e(0x8000_001e, { eax: 9, ebx: 0x100, ecx: 0x300 }),
];

describe("per-vCPU CPUID", () => {
  it("knows the vendor", () => {
    expect(cpuVendor(intel)).toBe("intel");
    expect(cpuVendor(amd)).toBe("amd");
    expect(cpuVendor([])).toBe("other");
    expect([1, 2, 3, 4, 5, 8, 9].map(bitsFor)).toEqual([0, 1, 2, 2, 3, 3, 4]);
  });

  it("puts each vCPU's APIC id in leaf 1 and sets the hypervisor bit", () => {
    for (let id = 0; id < 3; id++) {
      const c = buildCpuid(intel, { vcpuId: id, cpus: 3 });
      const l1 = findCpuid(c, 1)!;
      expect(l1.ebx >>> 24).toBe(id);
      expect((l1.ebx >>> 16) & 0xff).toBe(3);
      expect(l1.ebx & 0xffff).toBe(0x0800); // CLFLUSH size kept
      expect(l1.ecx & CpuidBit.HYPERVISOR).not.toBe(0);
      expect(l1.edx & CpuidBit.HTT).not.toBe(0);
      expect(l1.eax).toBe(0x906ea);
    }
    expect(findCpuid(buildCpuid(intel, { vcpuId: 0, cpus: 1 }), 1)!.edx & CpuidBit.HTT).toBe(0);
  });

  it("offers the TSC-deadline timer only when asked (KVM's supported list leaves it clear)", () => {
    for (const list of [intel, amd]) {
      const supported = list.map((x) =>
        x.function === 1 ? { ...x, ecx: (x.ecx & ~CpuidBit.TSC_DEADLINE_TIMER) >>> 0 } : x,
      );
      const plain = findCpuid(buildCpuid(supported, { vcpuId: 0, cpus: 1 }), 1)!;
      const asked = findCpuid(buildCpuid(supported, { vcpuId: 0, cpus: 1, tscDeadlineTimer: true }), 1)!;
      expect(plain.ecx & CpuidBit.TSC_DEADLINE_TIMER).toBe(0);
      expect(asked.ecx >>> 0).toBe((plain.ecx | CpuidBit.TSC_DEADLINE_TIMER) >>> 0);
      expect(asked.ecx & CpuidBit.HYPERVISOR).not.toBe(0);
    }
  });

  it("describes the topology in leaf 0xb: one thread per core, cpus cores", () => {
    const c = buildCpuid(intel, { vcpuId: 5, cpus: 6 });
    const smt = findCpuid(c, 0xb, 0)!;
    const core = findCpuid(c, 0xb, 1)!;
    const end = findCpuid(c, 0xb, 2)!;
    expect(smt).toMatchObject({ eax: 0, ebx: 1, ecx: 0x100, edx: 5, flags: CPUID_FLAG_SIGNIFICANT_INDEX });
    expect(core).toMatchObject({ eax: 3, ebx: 6, ecx: 0x201, edx: 5 });
    expect(end).toMatchObject({ eax: 0, ebx: 0, ecx: 2, edx: 5 });
    expect(c.filter((x) => x.function === 0xb)).toHaveLength(3);
  });

  it("counts cores in Intel's leaf 4", () => {
    const c = buildCpuid(intel, { vcpuId: 0, cpus: 4 });
    const l1d = findCpuid(c, 4, 0)!;
    const l3 = findCpuid(c, 4, 3)!;
    expect(l1d.eax >>> 26).toBe(3);
    expect((l1d.eax >>> 14) & 0xfff).toBe(0);
    expect((l3.eax >>> 14) & 0xfff).toBe(3);
    expect(l3.eax & 0x3fff).toBe(0x3c07c163 & 0x3fff);
    // Intel's 0x80000008 ECX is left alone.
    expect(findCpuid(c, 0x8000_0008)!.ecx).toBe(0x1234);
  });

  it("keeps KVM's signature leaves", () => {
    const c = buildCpuid(intel, { vcpuId: 0, cpus: 1 });
    expect(findCpuid(c, 0x4000_0000)).toEqual(intel[5]);
  });

  it("fills AMD's core count and topology-extension leaves", () => {
    const c = buildCpuid(amd, { vcpuId: 2, cpus: 3 });
    const l88 = findCpuid(c, 0x8000_0008)!;
    expect(l88.ecx & 0xff).toBe(2);
    expect((l88.ecx >>> 12) & 0xf).toBe(2);
    expect(findCpuid(c, 0x8000_001e)).toMatchObject({ eax: 2, ebx: 2, ecx: 0 });
    expect((findCpuid(c, 0x8000_001d, 3)!.eax >>> 14) & 0xfff).toBe(2);
    expect(findCpuid(c, 1)!.ebx >>> 24).toBe(2);
  });

  it("refuses a vCPU id outside the machine", () => {
    expect(() => buildCpuid(amd, { vcpuId: 2, cpus: 2 })).toThrow(RangeError);
  });
});
