// Where the machine puts things in guest physical memory.

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

/** Fixed low-memory addresses, below the EBDA (the kernel reserves what it finds in use here). */
export const Addr = {
  /** BIOS data area word holding the EBDA segment (the kernel reads it to reserve the EBDA). */
  BDA_EBDA_SEGMENT: 0x40e,
  /** BIOS data area word holding base memory in KiB. */
  BDA_BASE_MEMORY_KB: 0x413,
  GDT: 0x500,
  IDT: 0x520,
  /** boot_params ("zero page"). */
  ZERO_PAGE: 0x7000,
  /** Initial rsp; the kernel sets its own stack at once, this only keeps rsp sane. */
  BOOT_STACK: 0x8ff0,
  /** PML4, PDPT and four page directories (identity map of 4 GiB with 2 MiB pages). */
  PAGE_TABLES: 0x9000,
  CMDLINE: 0x20000,
  CMDLINE_MAX: 0x10000,
  /** Extended BIOS data area: the last KiB of conventional memory, where the MP table goes. */
  EBDA: 0x9fc00,
  /** Conventional memory ends here; the rest below 1 MiB is VGA and ROM space. */
  LOW_RAM_END: 0x9fc00,
  /** BIOS ROM area, also scanned for the MP floating pointer. */
  BIOS_ROM: 0xf0000,
  /** Protected-mode kernel load address (code32_start default). */
  KERNEL: 0x100000,
} as const;

/** Above this, up to 4 GiB, is the PCI hole: device MMIO, IOAPIC, LAPIC, KVM's TSS. */
export const PCI_HOLE_START = 0xc000_0000;
/** PCI BARs are allocated in [PCI_MMIO_START, PCI_MMIO_END). */
export const PCI_MMIO_START = PCI_HOLE_START;
export const PCI_MMIO_END = 0xfec0_0000;
/** PCI I/O BARs are allocated in [PCI_IO_START, PCI_IO_END). */
export const PCI_IO_START = 0xc000;
export const PCI_IO_END = 0x1_0000;
export const IOAPIC_ADDRESS = 0xfec0_0000;
export const LAPIC_ADDRESS = 0xfee0_0000;
/** KVM_SET_TSS_ADDR: three pages KVM needs on Intel for real-mode emulation (kvmtool's value). */
export const KVM_TSS_ADDRESS = 0xfffb_d000;
/** KVM_SET_IDENTITY_MAP_ADDR: the page just below the TSS (KVM's own default on Intel). */
export const KVM_IDENTITY_MAP_ADDRESS = 0xfffb_c000;
export const FOUR_GIB = 4 * GiB;

/** One range of guest RAM. */
export interface RamRange {
  address: number;
  size: number;
}

/**
 * Splits `memBytes` of RAM around the PCI hole: everything up to 3 GiB sits at 0,
 * the rest starts at 4 GiB.
 */
export function ramRanges(memBytes: number): RamRange[] {
  if (!Number.isSafeInteger(memBytes) || memBytes <= 0 || memBytes % (4 * KiB) !== 0)
    throw new RangeError(`memory size ${memBytes} is not a positive multiple of 4 KiB`);
  const low = Math.min(memBytes, PCI_HOLE_START);
  const ranges: RamRange[] = [{ address: 0, size: low }];
  if (memBytes > low) ranges.push({ address: FOUR_GIB, size: memBytes - low });
  return ranges;
}

/** End of the RAM that starts at 0 (the highest address below 4 GiB that is RAM, plus one). */
export function lowRamEnd(memBytes: number): number {
  return Math.min(memBytes, PCI_HOLE_START);
}
