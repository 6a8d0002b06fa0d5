// The BIOS e820 memory map the kernel reads from boot_params.

import { Addr, FOUR_GIB, MiB, ramRanges } from "./layout.js";

export const E820Type = { RAM: 1, RESERVED: 2, ACPI: 3, NVS: 4, UNUSABLE: 5 } as const;
export type E820TypeValue = (typeof E820Type)[keyof typeof E820Type];

export interface E820Entry {
  address: number;
  size: number;
  type: E820TypeValue;
}

/** boot_params holds at most this many entries (E820_MAX_ENTRIES_ZEROPAGE). */
export const E820_MAX_ENTRIES = 128;

/**
 * The map of a PC with `memBytes` of RAM: conventional memory up to the EBDA, the
 * EBDA/VGA/ROM area reserved up to 1 MiB, RAM from 1 MiB to 3 GiB, and RAM above
 * 4 GiB for whatever did not fit below the PCI hole.
 */
export function buildE820(memBytes: number): E820Entry[] {
  const ranges = ramRanges(memBytes);
  const low = ranges[0]!;
  if (low.size <= MiB) throw new RangeError(`${memBytes} bytes of RAM: a Linux guest needs more than 1 MiB`);
  const map: E820Entry[] = [
    { address: 0, size: Addr.LOW_RAM_END, type: E820Type.RAM },
    { address: Addr.LOW_RAM_END, size: MiB - Addr.LOW_RAM_END, type: E820Type.RESERVED },
    { address: MiB, size: low.size - MiB, type: E820Type.RAM },
  ];
  const high = ranges[1];
  if (high) map.push({ address: FOUR_GIB, size: high.size, type: E820Type.RAM });
  return map;
}
