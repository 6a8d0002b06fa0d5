import type { GuestMemoryAccess } from "./memory.js";

/**
 * Little-endian access to a range of guest memory that was checked to be RAM
 * once, at construction: a DataView over the RAM itself when the range is one
 * contiguous host view (the common case), else the memory's checked scalar
 * accessors. Offsets are relative to the start of the range and are trusted
 * (callers compute them from the validated queue size).
 */
export class GuestRange {
  readonly address: number;
  readonly length: number;
  readonly #memory: GuestMemoryAccess;
  readonly #dv: DataView | undefined;

  constructor(memory: GuestMemoryAccess, address: number, length: number) {
    this.#memory = memory;
    this.address = address;
    this.length = length;
    let dv: DataView | undefined;
    try {
      const v = memory.view(address, length);
      dv = new DataView(v.buffer, v.byteOffset, v.byteLength);
    } catch {
      dv = undefined; // split across regions or windows: use the memory's scalar accessors
    }
    this.#dv = dv;
  }

  /** True when accesses go straight to a DataView over guest RAM. */
  get contiguous(): boolean {
    return this.#dv !== undefined;
  }

  u16(off: number): number {
    const dv = this.#dv;
    return dv ? dv.getUint16(off, true) : this.#memory.readU16(this.address + off);
  }

  u32(off: number): number {
    const dv = this.#dv;
    return dv ? dv.getUint32(off, true) : this.#memory.readU32(this.address + off);
  }

  setU16(off: number, v: number): void {
    const dv = this.#dv;
    if (dv) dv.setUint16(off, v, true);
    else this.#memory.writeU16(this.address + off, v);
  }

  setU32(off: number, v: number): void {
    const dv = this.#dv;
    if (dv) dv.setUint32(off, v, true);
    else this.#memory.writeU32(this.address + off, v);
  }
}
