// Address-range dispatch for port I/O and MMIO (vm-device's Bus, much simplified).

/** A device on a bus: `offset` is relative to the range it was inserted with. */
export interface BusDevice {
  /** Fill `data` (1, 2, 4 or 8 bytes, little-endian) with the value read. */
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

interface Range {
  base: number;
  length: number;
  device: BusDevice;
  name: string;
}

/** Non-overlapping ranges, looked up by address. */
export class Bus {
  #ranges: Range[] = [];

  insert(base: number, length: number, device: BusDevice, name = "device"): void {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(length) || base < 0 || length <= 0)
      throw new RangeError(`bad bus range 0x${base.toString(16)}+${length}`);
    for (const r of this.#ranges)
      if (base < r.base + r.length && r.base < base + length)
        throw new RangeError(
          `${name} at 0x${base.toString(16)}+${length} overlaps ${r.name} at 0x${r.base.toString(16)}+${r.length}`,
        );
    this.#ranges.push({ base, length, device, name });
    this.#ranges.sort((a, b) => a.base - b.base);
  }

  /** Removes every range whose name starts with `prefix` (e.g. the BARs of a re-programmed device). */
  removeByPrefix(prefix: string): void {
    this.#ranges = this.#ranges.filter((r) => !r.name.startsWith(prefix));
  }

  find(address: number): Range | undefined {
    const rs = this.#ranges;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = rs[mid]!;
      if (address < r.base) hi = mid - 1;
      else if (address >= r.base + r.length) lo = mid + 1;
      else return r;
    }
    return undefined;
  }

  /** Dispatches a read; false when nothing is there (the caller decides what absent reads as). */
  read(address: number, data: Uint8Array): boolean {
    const r = this.find(address);
    if (!r) return false;
    r.device.read(address - r.base, data);
    return true;
  }

  write(address: number, data: Uint8Array): boolean {
    const r = this.find(address);
    if (!r) return false;
    r.device.write(address - r.base, data);
    return true;
  }
}

/** Little-endian value of up to 4 bytes. */
export function getLe(data: Uint8Array): number {
  let v = 0;
  for (let i = Math.min(data.length, 4) - 1; i >= 0; i--) v = v * 256 + data[i]!;
  return v;
}

export function setLe(data: Uint8Array, value: number): void {
  for (let i = 0; i < data.length; i++) data[i] = i < 4 ? Math.floor(value / 2 ** (8 * i)) & 0xff : 0;
}
