// The MC146818 CMOS RTC at ports 0x70 (index) / 0x71 (data): wall-clock time from the
// host clock, status registers and 114 bytes of CMOS RAM, shared by all vCPU threads.

import { SharedMutex } from "./shared.js";

export const CMOS_PORT = 0x70;
export const CmosReg = {
  SECONDS: 0x00,
  MINUTES: 0x02,
  HOURS: 0x04,
  DAY_OF_WEEK: 0x06,
  DAY_OF_MONTH: 0x07,
  MONTH: 0x08,
  YEAR: 0x09,
  STATUS_A: 0x0a,
  STATUS_B: 0x0b,
  STATUS_C: 0x0c,
  STATUS_D: 0x0d,
  CENTURY: 0x32,
} as const;
export const StatusB = { DM_BINARY: 0x04, HOUR_24: 0x02, SET: 0x80 } as const;
/** Status A: 32.768 kHz time base, 1024 Hz periodic rate; UIP (bit 7) is never set. */
const STATUS_A_DEFAULT = 0x26;
/** Status D: the RAM and time are valid (battery good). */
const STATUS_D_VRT = 0x80;

const S = { LOCK: 0, INDEX: 1, NMI_DISABLED: 2, OFFSET_S: 3 } as const;
const HEADER = 16;
const RAM_SIZE = 128;

export interface CmosState {
  buffer: SharedArrayBuffer;
}

export function toBcd(v: number): number {
  return ((Math.floor(v / 10) % 10) << 4) | (v % 10);
}

export function fromBcd(v: number): number {
  return (v >> 4) * 10 + (v & 0x0f);
}

interface Fields {
  sec: number;
  min: number;
  hour: number;
  wday: number;
  mday: number;
  month: number;
  year: number;
}

/**
 * The RTC. Time registers read the host's UTC clock plus an offset that guest writes
 * to them adjust (so `hwclock --systohc` sticks for the VM's life); the format follows
 * status register B (BCD or binary, 12- or 24-hour), as the kernel's mc146818 code expects.
 */
export class Cmos {
  readonly #r: Int32Array;
  readonly #ram: Uint8Array;
  readonly #lock: SharedMutex;
  readonly #now: () => number;

  static createState(): CmosState {
    const buffer = new SharedArrayBuffer(HEADER * 4 + RAM_SIZE);
    const ram = new Uint8Array(buffer, HEADER * 4, RAM_SIZE);
    ram[CmosReg.STATUS_A] = STATUS_A_DEFAULT;
    ram[CmosReg.STATUS_B] = StatusB.HOUR_24;
    ram[CmosReg.STATUS_D] = STATUS_D_VRT;
    return { buffer };
  }

  /** `now` returns milliseconds since the epoch (injectable for tests). */
  constructor(state: CmosState, now: () => number = Date.now) {
    this.#r = new Int32Array(state.buffer, 0, HEADER);
    this.#ram = new Uint8Array(state.buffer, HEADER * 4, RAM_SIZE);
    this.#lock = new SharedMutex(this.#r, S.LOCK);
    this.#now = now;
  }

  #fields(): Fields {
    const d = new Date(this.#now() + Atomics.load(this.#r, S.OFFSET_S) * 1000);
    return {
      sec: d.getUTCSeconds(),
      min: d.getUTCMinutes(),
      hour: d.getUTCHours(),
      wday: d.getUTCDay() + 1,
      mday: d.getUTCDate(),
      month: d.getUTCMonth() + 1,
      year: d.getUTCFullYear(),
    };
  }

  #encode(v: number): number {
    return this.#ram[CmosReg.STATUS_B]! & StatusB.DM_BINARY ? v : toBcd(v);
  }

  #decode(v: number): number {
    return this.#ram[CmosReg.STATUS_B]! & StatusB.DM_BINARY ? v : fromBcd(v);
  }

  #encodeHour(h: number): number {
    if (this.#ram[CmosReg.STATUS_B]! & StatusB.HOUR_24) return this.#encode(h);
    const pm = h >= 12;
    const h12 = h % 12 === 0 ? 12 : h % 12;
    return this.#encode(h12) | (pm ? 0x80 : 0);
  }

  #decodeHour(v: number): number {
    if (this.#ram[CmosReg.STATUS_B]! & StatusB.HOUR_24) return this.#decode(v);
    const h12 = this.#decode(v & 0x7f) % 12;
    return v & 0x80 ? h12 + 12 : h12;
  }

  #readRegister(index: number): number {
    const f = () => this.#fields();
    switch (index) {
      case CmosReg.SECONDS:
        return this.#encode(f().sec);
      case CmosReg.MINUTES:
        return this.#encode(f().min);
      case CmosReg.HOURS:
        return this.#encodeHour(f().hour);
      case CmosReg.DAY_OF_WEEK:
        return this.#encode(f().wday);
      case CmosReg.DAY_OF_MONTH:
        return this.#encode(f().mday);
      case CmosReg.MONTH:
        return this.#encode(f().month);
      case CmosReg.YEAR:
        return this.#encode(f().year % 100);
      case CmosReg.CENTURY:
        return this.#encode(Math.floor(f().year / 100));
      case CmosReg.STATUS_A:
        return this.#ram[index]! & 0x7f; // never "update in progress"
      case CmosReg.STATUS_C: {
        const v = this.#ram[index]!;
        this.#ram[index] = 0; // reading acknowledges the flags
        return v;
      }
      default:
        return this.#ram[index]!;
    }
  }

  /** A guest write to a time register moves the VM's clock, not the host's. */
  #setTimeField(index: number, value: number): void {
    const t = this.#fields();
    switch (index) {
      case CmosReg.SECONDS:
        t.sec = this.#decode(value);
        break;
      case CmosReg.MINUTES:
        t.min = this.#decode(value);
        break;
      case CmosReg.HOURS:
        t.hour = this.#decodeHour(value);
        break;
      case CmosReg.DAY_OF_MONTH:
        t.mday = this.#decode(value);
        break;
      case CmosReg.MONTH:
        t.month = this.#decode(value);
        break;
      case CmosReg.YEAR:
        t.year = Math.floor(t.year / 100) * 100 + this.#decode(value);
        break;
      case CmosReg.CENTURY:
        t.year = this.#decode(value) * 100 + (t.year % 100);
        break;
      default:
        return; // day of week follows from the date
    }
    const wanted = Date.UTC(t.year, t.month - 1, t.mday, t.hour, t.min, t.sec);
    if (Number.isNaN(wanted)) return;
    const offset = Math.round((wanted - this.#now()) / 1000);
    Atomics.store(this.#r, S.OFFSET_S, Math.max(-0x7fffffff, Math.min(0x7fffffff, offset)));
  }

  /** A guest read of port 0x70 (+0) or 0x71 (+1). */
  read(offset: number): number {
    if (offset !== 1) return 0xff; // the index register is write-only
    return this.#lock.with(() => this.#readRegister(Atomics.load(this.#r, S.INDEX)) & 0xff);
  }

  /** A guest write to port 0x70 (+0: index, bit 7 masks NMI) or 0x71 (+1: data). */
  write(offset: number, value: number): void {
    value &= 0xff;
    this.#lock.with(() => {
      if (offset === 0) {
        Atomics.store(this.#r, S.INDEX, value & 0x7f);
        Atomics.store(this.#r, S.NMI_DISABLED, value >> 7);
        return;
      }
      const index = Atomics.load(this.#r, S.INDEX);
      switch (index) {
        case CmosReg.SECONDS:
        case CmosReg.MINUTES:
        case CmosReg.HOURS:
        case CmosReg.DAY_OF_WEEK:
        case CmosReg.DAY_OF_MONTH:
        case CmosReg.MONTH:
        case CmosReg.YEAR:
        case CmosReg.CENTURY:
          this.#setTimeField(index, value);
          break;
        case CmosReg.STATUS_A:
          this.#ram[index] = value & 0x7f;
          break;
        case CmosReg.STATUS_C:
        case CmosReg.STATUS_D:
          break; // read-only
        default:
          this.#ram[index] = value;
      }
    });
  }
}
