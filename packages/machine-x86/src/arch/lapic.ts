// Local APIC register page edits (the 1 KiB KVM_GET_LAPIC / KVM_SET_LAPIC state).

/** Register offsets in the APIC page. */
export const ApicReg = {
  ID: 0x20,
  VERSION: 0x30,
  SPURIOUS: 0xf0,
  LVT_LINT0: 0x350,
  LVT_LINT1: 0x360,
} as const;
export const ApicDeliveryMode = { FIXED: 0, SMI: 2, NMI: 4, INIT: 5, EXTINT: 7 } as const;

function setDeliveryMode(dv: DataView, reg: number, mode: number): void {
  const v = dv.getUint32(reg, true);
  dv.setUint32(reg, ((v & ~0x700) | (mode << 8)) >>> 0, true);
}

/**
 * LINT0 as ExtINT (the 8259 PIC's output) and LINT1 as NMI, the wiring of a PC and
 * what the MP table says; kvmtool's kvm_cpu__set_lint does the same.
 */
export function withPcLints(lapic: Uint8Array): Uint8Array {
  const out = lapic.slice();
  const dv = new DataView(out.buffer);
  setDeliveryMode(dv, ApicReg.LVT_LINT0, ApicDeliveryMode.EXTINT);
  setDeliveryMode(dv, ApicReg.LVT_LINT1, ApicDeliveryMode.NMI);
  return out;
}

/** The delivery mode field (bits 10:8) of an LVT register. */
export function lvtDeliveryMode(lapic: Uint8Array, reg: number): number {
  return (new DataView(lapic.buffer, lapic.byteOffset, lapic.byteLength).getUint32(reg, true) >> 8) & 0x7;
}
