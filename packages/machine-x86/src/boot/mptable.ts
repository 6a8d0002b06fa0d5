// Intel MultiProcessor Specification 1.4 tables: how Linux finds the APs and the IOAPIC
// without ACPI (modelled on kvmtool's x86/mptable.c).

import { Addr, IOAPIC_ADDRESS, LAPIC_ADDRESS } from "./layout.js";

export const MP_FLOATING_SIGNATURE = "_MP_";
export const MP_CONFIG_SIGNATURE = "PCMP";
export const MP_SPEC_REV = 4; // 1.4

export const MpEntry = { PROCESSOR: 0, BUS: 1, IOAPIC: 2, INTSRC: 3, LINTSRC: 4 } as const;
export const MpIrqType = { INT: 0, NMI: 1, SMI: 2, EXTINT: 3 } as const;
const CPU_ENABLED = 1;
const CPU_BOOTPROCESSOR = 2;
const MPC_APIC_USABLE = 1;

/** Versions KVM's in-kernel LAPIC and IOAPIC report. */
export const KVM_LAPIC_VERSION = 0x14;
export const KVM_IOAPIC_VERSION = 0x11;

export const PCI_BUS_ID = 0;
export const ISA_BUS_ID = 1;
/** xAPIC ids are 8 bits and 0xff is broadcast; the IOAPIC takes id = cpus. */
export const MP_MAX_CPUS = 254;

const FLOATING_SIZE = 16;
const HEADER_SIZE = 44;
const CPU_SIZE = 20;
const ENTRY_SIZE = 8;

/** A PCI interrupt: device `slot`, pin INTA..INTD (1-4), wired to IOAPIC input `gsi`. */
export interface MpPciIrq {
  slot: number;
  pin: number;
  gsi: number;
}

export interface MpTableOptions {
  cpus: number;
  /** PCI INTx routes; ISA IRQs 0-15 are always wired to IOAPIC inputs 0-15. */
  pciIrqs?: readonly MpPciIrq[];
  /** CPUID leaf 1 EAX (family/model/stepping) and EDX (features) for the processor entries. */
  cpuSignature?: number;
  cpuFeatures?: number;
  /** Where to put the floating pointer (the config table follows it); chosen by size if omitted. */
  address?: number;
}

export interface MpTable {
  /** Guest address of the floating pointer structure. */
  address: number;
  /** Guest address of the configuration table. */
  configAddress: number;
  /** Floating pointer then configuration table. */
  bytes: Uint8Array;
  ioapicId: number;
}

function checksum(b: Uint8Array): number {
  let s = 0;
  for (const x of b) s = (s + x) & 0xff;
  return (0x100 - s) & 0xff;
}

function ascii(b: Uint8Array, off: number, text: string, width: number): void {
  for (let i = 0; i < width; i++) b[off + i] = i < text.length ? text.charCodeAt(i) : 0x20;
}

/** Bytes the tables take for `cpus` processors and `pciIrqs` PCI interrupts. */
export function mpTableSize(cpus: number, pciIrqs: number): number {
  const entries = 2 /* buses */ + 1 /* ioapic */ + 16 /* ISA */ + pciIrqs + 2; /* LINT0/1 */
  return FLOATING_SIZE + HEADER_SIZE + cpus * CPU_SIZE + entries * ENTRY_SIZE;
}

/**
 * Builds the floating pointer and configuration table: one processor entry per vCPU
 * (APIC id = index, the first is the BSP), a PCI and an ISA bus, the IOAPIC, ISA
 * IRQs 0-15 on IOAPIC inputs 0-15 (KVM's default GSI routing), the PCI INTx routes,
 * and LINT0 = ExtINT, LINT1 = NMI. Placed in the EBDA when it fits in its 1 KiB,
 * else in the BIOS ROM area; Linux scans both.
 */
export function buildMpTable(o: MpTableOptions): MpTable {
  const cpus = o.cpus;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MP_MAX_CPUS)
    throw new RangeError(`an MP table describes 1 to ${MP_MAX_CPUS} processors, not ${cpus}`);
  const pci = o.pciIrqs ?? [];
  const size = mpTableSize(cpus, pci.length);
  const address = o.address ?? (size <= 1024 ? Addr.EBDA : Addr.BIOS_ROM);
  const configAddress = address + FLOATING_SIZE;
  const ioapicId = cpus;
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);

  // Configuration table.
  const t = FLOATING_SIZE;
  ascii(out, t, MP_CONFIG_SIGNATURE, 4);
  out[t + 6] = MP_SPEC_REV;
  ascii(out, t + 8, "TSKVM", 8);
  ascii(out, t + 16, "machine-x86", 12);
  dv.setUint32(t + 36, LAPIC_ADDRESS, true);
  let p = t + HEADER_SIZE;
  let count = 0;
  for (let i = 0; i < cpus; i++) {
    out[p] = MpEntry.PROCESSOR;
    out[p + 1] = i;
    out[p + 2] = KVM_LAPIC_VERSION;
    out[p + 3] = CPU_ENABLED | (i === 0 ? CPU_BOOTPROCESSOR : 0);
    dv.setUint32(p + 4, o.cpuSignature ?? 0x600, true);
    dv.setUint32(p + 8, o.cpuFeatures ?? 0x201, true);
    p += CPU_SIZE;
    count++;
  }
  const bus = (id: number, type: string) => {
    out[p] = MpEntry.BUS;
    out[p + 1] = id;
    ascii(out, p + 2, type, 6);
    p += ENTRY_SIZE;
    count++;
  };
  bus(PCI_BUS_ID, "PCI");
  bus(ISA_BUS_ID, "ISA");
  out[p] = MpEntry.IOAPIC;
  out[p + 1] = ioapicId;
  out[p + 2] = KVM_IOAPIC_VERSION;
  out[p + 3] = MPC_APIC_USABLE;
  dv.setUint32(p + 4, IOAPIC_ADDRESS, true);
  p += ENTRY_SIZE;
  count++;
  // Flags 0 = "conforms to the bus": edge/high for ISA, level/low for PCI.
  const intsrc = (type: number, kind: number, bus: number, busIrq: number, apic: number, pin: number) => {
    out[p] = type;
    out[p + 1] = kind;
    dv.setUint16(p + 2, 0, true);
    out[p + 4] = bus;
    out[p + 5] = busIrq;
    out[p + 6] = apic;
    out[p + 7] = pin;
    p += ENTRY_SIZE;
    count++;
  };
  for (let irq = 0; irq < 16; irq++) intsrc(MpEntry.INTSRC, MpIrqType.INT, ISA_BUS_ID, irq, ioapicId, irq);
  for (const r of pci) {
    if (r.slot < 0 || r.slot > 31 || r.pin < 1 || r.pin > 4 || r.gsi < 0 || r.gsi > 23)
      throw new RangeError(`bad PCI interrupt route slot ${r.slot} pin ${r.pin} gsi ${r.gsi}`);
    intsrc(MpEntry.INTSRC, MpIrqType.INT, PCI_BUS_ID, (r.slot << 2) | (r.pin - 1), ioapicId, r.gsi);
  }
  intsrc(MpEntry.LINTSRC, MpIrqType.EXTINT, ISA_BUS_ID, 0, 0xff, 0);
  intsrc(MpEntry.LINTSRC, MpIrqType.NMI, ISA_BUS_ID, 0, 0xff, 1);
  const tableLength = p - t;
  dv.setUint16(t + 4, tableLength, true);
  dv.setUint16(t + 34, count, true);
  out[t + 7] = checksum(out.subarray(t, p));

  // Floating pointer.
  ascii(out, 0, MP_FLOATING_SIGNATURE, 4);
  dv.setUint32(4, configAddress, true);
  out[8] = 1; // length in 16-byte units
  out[9] = MP_SPEC_REV;
  out[11] = 0; // feature1 0: a configuration table is present
  out[10] = checksum(out.subarray(0, FLOATING_SIZE));
  return { address, configAddress, bytes: out, ioapicId };
}
