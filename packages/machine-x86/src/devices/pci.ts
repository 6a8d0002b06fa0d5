// PCI bus 0 behind configuration mechanism 1 (ports 0xcf8/0xcfc): a host bridge at
// 00:00.0 and a registry for endpoint devices with BAR allocation and INTx routing.
// Config spaces live in one SharedArrayBuffer so every vCPU thread sees the same
// registers; each byte has a writable mask, which also makes BAR sizing work.

import { PCI_IO_END, PCI_IO_START, PCI_MMIO_END, PCI_MMIO_START } from "../boot/layout.js";
import { SharedMutex } from "./shared.js";

export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
export const PCI_CONFIG_DATA_PORT = 0xcfc;
/** The PC reset control register, next to CONFIG_ADDRESS (Linux's `reboot=pci`). */
export const RESET_CONTROL_PORT = 0xcf9;

export const PciReg = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION: 0x08,
  CLASS_PROG: 0x09,
  CACHE_LINE_SIZE: 0x0c,
  LATENCY_TIMER: 0x0d,
  HEADER_TYPE: 0x0e,
  BAR0: 0x10,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  ROM_ADDRESS: 0x30,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
} as const;
export const PciCommand = {
  IO: 0x1,
  MEMORY: 0x2,
  MASTER: 0x4,
  PARITY: 0x40,
  SERR: 0x100,
  INTX_DISABLE: 0x400,
} as const;
export const PCI_STATUS_CAP_LIST = 0x10;
export const PCI_CLASS_BRIDGE_HOST = 0x060000;
/** Red Hat, Inc. / QEMU PCIe host bridge ids: a generic host bridge Linux needs no driver for. */
export const HOST_BRIDGE_IDS = { vendorId: 0x1b36, deviceId: 0x0008 } as const;
/** IOAPIC inputs 16-23 carry PCI INTx (ISA owns 0-15). */
export const PCI_FIRST_GSI = 16;
export const PCI_SLOTS = 32;

export type PciBarKind = "mmio32" | "mmio64" | "io";

export interface PciBarSpec {
  /** BAR register 0-5; a 64-bit BAR also takes the next one. */
  index: number;
  /** Bytes, a power of two (MMIO at least 16, I/O at least 4). */
  size: number;
  kind: PciBarKind;
  prefetchable?: boolean;
}

export interface PciCapabilitySpec {
  /** Capability id (e.g. 0x09 vendor-specific, 0x11 MSI-X). */
  id: number;
  /** The bytes after the id and next-pointer bytes. */
  body: Uint8Array;
  /** Which bits of `body` the guest may change (default: none). */
  writable?: Uint8Array;
}

/** A JavaScript module that each vCPU worker imports to serve a device's BARs. */
export interface PciDeviceModule {
  /** URL or absolute path of a module exporting `createPciDevice(ctx)`. */
  module: string | URL;
  /** Structured-cloneable data passed to it (SharedArrayBuffers stay shared). */
  data?: unknown;
}

export interface PciDeviceSpec {
  vendorId: number;
  deviceId: number;
  /** Class, subclass and programming interface, e.g. 0x020000 for Ethernet. */
  classCode: number;
  revision?: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  bars?: readonly PciBarSpec[];
  /** INTA..INTD = 1..4, 0 for none. Default 1. */
  interruptPin?: number;
  capabilities?: readonly PciCapabilitySpec[];
  /** Serves guest accesses to the BARs, in every vCPU worker. */
  handler?: PciDeviceModule;
  /**
   * The device's handler owns configuration space from this offset up (its
   * capability list, e.g. 0x40): accesses there go to the handler's
   * `readConfig` / `writeConfig`, and the header's capability pointer is this
   * offset. The machine keeps the standard header (ids, command, BARs,
   * interrupt line) and copies every header write to the handler too, so a
   * device in another thread learns its command register and BAR addresses.
   * Use with a handler, and no `capabilities`.
   */
  configFromHandler?: number;
  /** Preferred slot (1-31); the first free one otherwise. */
  slot?: number;
}

export interface PciBarAssignment {
  index: number;
  kind: PciBarKind;
  address: number;
  size: number;
}

/** Where a registered device ended up. */
export interface PciDeviceInfo {
  slot: number;
  /** "00:SS.0" */
  bdf: string;
  bars: PciBarAssignment[];
  interruptPin: number;
  /** IOAPIC input (GSI) of its INTx pin, when it has one. */
  gsi: number | undefined;
}

// Shared layout: an Int32 header, then per slot: config bytes, writable mask.
const H = { LOCK: 0, ADDRESS: 1, GENERATION: 2, PRESENT: 3 } as const;
const HEADER_BYTES = 64;
const SLOT_BYTES = 512;

export interface PciState {
  buffer: SharedArrayBuffer;
}

export function createPciState(): PciState {
  return { buffer: new SharedArrayBuffer(HEADER_BYTES + PCI_SLOTS * SLOT_BYTES) };
}

/** The config spaces of bus 0, attached to shared state; usable from any thread. */
export class PciConfigSpaces {
  readonly #h: Int32Array;
  readonly #bytes: Uint8Array;
  readonly lock: SharedMutex;

  constructor(state: PciState) {
    this.#h = new Int32Array(state.buffer, 0, HEADER_BYTES / 4);
    this.#bytes = new Uint8Array(state.buffer);
    this.lock = new SharedMutex(this.#h, H.LOCK);
  }

  present(slot: number): boolean {
    return slot >= 0 && slot < PCI_SLOTS && (Atomics.load(this.#h, H.PRESENT) & (1 << slot)) !== 0;
  }

  /** Bumped on every write that may move a BAR or change decoding. */
  get generation(): number {
    return Atomics.load(this.#h, H.GENERATION);
  }

  get configAddress(): number {
    return Atomics.load(this.#h, H.ADDRESS) >>> 0;
  }

  set configAddress(v: number) {
    Atomics.store(this.#h, H.ADDRESS, v | 0);
  }

  #config(slot: number): Uint8Array {
    const o = HEADER_BYTES + slot * SLOT_BYTES;
    return this.#bytes.subarray(o, o + 256);
  }

  #mask(slot: number): Uint8Array {
    const o = HEADER_BYTES + slot * SLOT_BYTES + 256;
    return this.#bytes.subarray(o, o + 256);
  }

  /** Installs a device's initial config bytes and writable mask (before the guest runs). */
  install(slot: number, config: Uint8Array, writable: Uint8Array): void {
    this.#config(slot).set(config);
    this.#mask(slot).set(writable);
    Atomics.or(this.#h, H.PRESENT, 1 << slot);
    Atomics.add(this.#h, H.GENERATION, 1);
  }

  /** Reads `size` (1, 2 or 4) bytes at `offset`; all ones for an absent device. */
  read(slot: number, offset: number, size: number): number {
    if (!this.present(slot) || offset + size > 256) return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    const c = this.#config(slot);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + c[offset + i]!;
    return v;
  }

  /** Writes through the writable mask; read-only bits keep their value. */
  write(slot: number, offset: number, size: number, value: number): void {
    if (!this.present(slot) || offset + size > 256) return;
    const c = this.#config(slot);
    const m = this.#mask(slot);
    for (let i = 0; i < size; i++) {
      const b = Math.floor(value / 2 ** (8 * i)) & 0xff;
      const k = offset + i;
      c[k] = (c[k]! & ~m[k]!) | (b & m[k]!);
    }
    if (offset < 0x28 && offset + size > PciReg.COMMAND) Atomics.add(this.#h, H.GENERATION, 1);
  }
}

function le(b: Uint8Array, off: number, size: number, v: number): void {
  for (let i = 0; i < size; i++) b[off + i] = Math.floor(v / 2 ** (8 * i)) & 0xff;
}

function isPow2(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** Builds a type-0 header: ids, class, BARs at their addresses, interrupt, capabilities. */
export function buildConfigSpace(
  spec: PciDeviceSpec,
  bars: readonly PciBarAssignment[],
  gsi: number | undefined,
): { config: Uint8Array; writable: Uint8Array } {
  const c = new Uint8Array(256);
  const w = new Uint8Array(256);
  le(c, PciReg.VENDOR_ID, 2, spec.vendorId);
  le(c, PciReg.DEVICE_ID, 2, spec.deviceId);
  le(c, PciReg.REVISION, 1, spec.revision ?? 0);
  le(c, PciReg.CLASS_PROG, 3, spec.classCode);
  le(c, PciReg.SUBSYSTEM_VENDOR_ID, 2, spec.subsystemVendorId ?? 0);
  le(c, PciReg.SUBSYSTEM_ID, 2, spec.subsystemId ?? 0);
  const cmdMask =
    PciCommand.IO |
    PciCommand.MEMORY |
    PciCommand.MASTER |
    PciCommand.PARITY |
    PciCommand.SERR |
    PciCommand.INTX_DISABLE;
  le(w, PciReg.COMMAND, 2, cmdMask);
  w[PciReg.CACHE_LINE_SIZE] = 0xff;
  w[PciReg.LATENCY_TIMER] = 0xff;
  for (const b of bars) {
    const off = PciReg.BAR0 + b.index * 4;
    if (b.kind === "io") {
      le(c, off, 4, (b.address & 0xfffc) | 0x1);
      le(w, off, 4, ~(b.size - 1) & 0xfffc);
    } else {
      const pf = spec.bars?.find((s) => s.index === b.index)?.prefetchable ? 0x8 : 0;
      le(c, off, 4, ((b.address & 0xfffffff0) | (b.kind === "mmio64" ? 0x4 : 0) | pf) >>> 0);
      le(w, off, 4, (~(b.size - 1) & 0xfffffff0) >>> 0);
      if (b.kind === "mmio64") le(w, off + 4, 4, 0xffffffff); // upper half: allocated below 4 GiB
    }
  }
  const pin = spec.interruptPin ?? 1;
  c[PciReg.INTERRUPT_PIN] = pin;
  c[PciReg.INTERRUPT_LINE] = gsi ?? 0xff;
  w[PciReg.INTERRUPT_LINE] = 0xff;
  const caps = spec.capabilities ?? [];
  if (spec.configFromHandler !== undefined) {
    const from = spec.configFromHandler;
    if (!Number.isInteger(from) || from < 0x40 || from > 0xfc || from % 4)
      throw new RangeError(
        `configFromHandler 0x${from.toString(16)} must be a dword offset from 0x40 to 0xfc`,
      );
    if (caps.length) throw new RangeError("a device with configFromHandler lists its capabilities itself");
    c[PciReg.STATUS] = PCI_STATUS_CAP_LIST;
    c[PciReg.CAPABILITY_LIST] = from;
  } else if (caps.length) {
    c[PciReg.STATUS] = PCI_STATUS_CAP_LIST;
    let at = 0x40;
    c[PciReg.CAPABILITY_LIST] = at;
    caps.forEach((cap, i) => {
      const len = 2 + cap.body.length;
      const next = i + 1 < caps.length ? alignUp(at + len, 4) : 0;
      if (at + len > 256) throw new RangeError("PCI capabilities do not fit in the 256-byte config space");
      c[at] = cap.id;
      c[at + 1] = next;
      c.set(cap.body, at + 2);
      if (cap.writable) w.set(cap.writable.subarray(0, cap.body.length), at + 2);
      at = next;
    });
  }
  return { config: c, writable: w };
}

/**
 * The main thread's view of bus 0: registers devices before the machine starts,
 * choosing slots, BAR addresses (MMIO in 0xc0000000-0xfebfffff, I/O from 0xc000) and
 * INTx routes (IOAPIC inputs 16-23, swizzled by slot).
 */
export class PciBus {
  readonly state: PciState;
  readonly spaces: PciConfigSpaces;
  readonly #devices: { info: PciDeviceInfo; spec: PciDeviceSpec }[] = [];
  #nextMmio = PCI_MMIO_START;
  #nextIo = PCI_IO_START;
  #sealed = false;

  constructor() {
    this.state = createPciState();
    this.spaces = new PciConfigSpaces(this.state);
    const host = buildConfigSpace(
      { ...HOST_BRIDGE_IDS, classCode: PCI_CLASS_BRIDGE_HOST, interruptPin: 0 },
      [],
      undefined,
    );
    this.spaces.install(0, host.config, host.writable);
  }

  /** Devices registered so far, in slot order. */
  get devices(): readonly { info: PciDeviceInfo; spec: PciDeviceSpec }[] {
    return [...this.#devices].sort((a, b) => a.info.slot - b.info.slot);
  }

  /** No more devices once the guest may scan the bus. */
  seal(): void {
    this.#sealed = true;
  }

  register(spec: PciDeviceSpec): PciDeviceInfo {
    if (this.#sealed) throw new Error("PCI devices must be registered before the machine starts");
    const slot = spec.slot ?? this.#freeSlot();
    if (!Number.isInteger(slot) || slot < 1 || slot >= PCI_SLOTS)
      throw new RangeError(`PCI slot ${slot} is not 1-31`);
    if (this.spaces.present(slot)) throw new RangeError(`PCI slot ${slot} is taken`);
    const used = new Set<number>();
    const bars: PciBarAssignment[] = [];
    for (const b of spec.bars ?? []) {
      const span = b.kind === "mmio64" ? 2 : 1;
      if (!Number.isInteger(b.index) || b.index < 0 || b.index + span > 6)
        throw new RangeError(`BAR ${b.index} (${b.kind}) does not fit in BARs 0-5`);
      for (let i = b.index; i < b.index + span; i++) {
        if (used.has(i)) throw new RangeError(`BAR ${i} is used twice`);
        used.add(i);
      }
      if (!isPow2(b.size) || b.size < (b.kind === "io" ? 4 : 16))
        throw new RangeError(
          `BAR ${b.index} size ${b.size} must be a power of two (at least ${b.kind === "io" ? 4 : 16})`,
        );
      bars.push({ index: b.index, kind: b.kind, size: b.size, address: this.#allocate(b) });
    }
    if (spec.configFromHandler !== undefined && !spec.handler)
      throw new RangeError("configFromHandler needs a handler module to serve the configuration space");
    const pin = spec.interruptPin ?? 1;
    if (!Number.isInteger(pin) || pin < 0 || pin > 4) throw new RangeError(`interrupt pin ${pin} is not 0-4`);
    const gsi = pin ? PCI_FIRST_GSI + ((slot + pin - 1) & 7) : undefined;
    const { config, writable } = buildConfigSpace(spec, bars, gsi);
    this.spaces.install(slot, config, writable);
    const info: PciDeviceInfo = {
      slot,
      bdf: `00:${slot.toString(16).padStart(2, "0")}.0`,
      bars,
      interruptPin: pin,
      gsi,
    };
    this.#devices.push({ info, spec });
    return info;
  }

  #freeSlot(): number {
    for (let s = 1; s < PCI_SLOTS; s++) if (!this.spaces.present(s)) return s;
    throw new RangeError("all 31 PCI slots are taken");
  }

  #allocate(b: PciBarSpec): number {
    if (b.kind === "io") {
      const a = alignUp(this.#nextIo, b.size);
      if (a + b.size > PCI_IO_END) throw new RangeError("out of PCI I/O space");
      this.#nextIo = a + b.size;
      return a;
    }
    const a = alignUp(this.#nextMmio, Math.max(b.size, 4096));
    if (a + b.size > PCI_MMIO_END) throw new RangeError("out of PCI MMIO space");
    this.#nextMmio = a + b.size;
    return a;
  }
}

/** A BAR the guest has placed and enabled, as the worker's buses see it. */
export interface LiveBar {
  slot: number;
  index: number;
  kind: PciBarKind;
  address: number;
  size: number;
}

/**
 * The BARs that decode right now: programmed (not zero, not a sizing pattern) with
 * I/O or memory decoding enabled in the command register.
 */
export function liveBars(
  spaces: PciConfigSpaces,
  devices: readonly { slot: number; bars: readonly PciBarAssignment[] }[],
): LiveBar[] {
  const out: LiveBar[] = [];
  for (const d of devices) {
    const cmd = spaces.read(d.slot, PciReg.COMMAND, 2);
    for (const b of d.bars) {
      const off = PciReg.BAR0 + b.index * 4;
      const lo = spaces.read(d.slot, off, 4);
      let address: number;
      if (b.kind === "io") {
        if (!(cmd & PciCommand.IO)) continue;
        address = lo & 0xfffc;
      } else {
        if (!(cmd & PciCommand.MEMORY)) continue;
        const hi = b.kind === "mmio64" ? spaces.read(d.slot, off + 4, 4) : 0;
        address = hi * 2 ** 32 + ((lo & 0xfffffff0) >>> 0);
      }
      // Above the window are the IOAPIC, LAPIC and firmware, and the all-ones sizing pattern.
      const limit = b.kind === "io" ? 0x10000 : b.kind === "mmio32" ? PCI_MMIO_END : 2 ** 52;
      if (address === 0 || address + b.size > limit) continue;
      out.push({ slot: d.slot, index: b.index, kind: b.kind, address, size: b.size });
    }
  }
  return out;
}

/**
 * Configuration mechanism 1 on ports 0xcf8-0xcff: CONFIG_ADDRESS (dword at 0xcf8)
 * selects bus/device/function/register, CONFIG_DATA (0xcfc-0xcff) reads or writes it.
 * Only bus 0, function 0 exists. `reset` is called for a reset through 0xcf9.
 */
/** Configuration space served by a device's handler (see `PciDeviceSpec.configFromHandler`). */
export interface PciConfigHandler {
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
}

export class PciConfigPorts {
  readonly spaces: PciConfigSpaces;
  readonly #reset: (why: string) => void;
  readonly #delegated = new Map<number, { from: number; handler: PciConfigHandler }>();

  constructor(spaces: PciConfigSpaces, reset: (why: string) => void) {
    this.spaces = spaces;
    this.#reset = reset;
  }

  /** Sends `slot`'s config accesses from `from` up to `handler`, and copies header writes to it. */
  delegate(slot: number, from: number, handler: PciConfigHandler): void {
    this.#delegated.set(slot, { from, handler });
  }

  #readConfig(slot: number, offset: number, size: number): number {
    const d = this.#delegated.get(slot);
    if (!d || offset < d.from || !this.spaces.present(slot)) return this.spaces.read(slot, offset, size);
    const data = new Uint8Array(size);
    d.handler.readConfig(offset, data);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + data[i]!;
    return v;
  }

  #writeConfig(slot: number, offset: number, size: number, value: number): void {
    const d = this.#delegated.get(slot);
    if (!d || !this.spaces.present(slot)) {
      this.spaces.write(slot, offset, size, value);
      return;
    }
    if (offset < d.from) this.spaces.write(slot, offset, size, value);
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i++) data[i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
    d.handler.writeConfig(offset, data);
  }

  /** The slot and register CONFIG_ADDRESS selects, or undefined when disabled or not bus 0 / function 0. */
  #target(): { slot: number; reg: number } | undefined {
    const a = this.spaces.configAddress;
    if (!(a & 0x80000000)) return undefined;
    const bus = (a >>> 16) & 0xff;
    const fn = (a >>> 8) & 0x7;
    if (bus !== 0 || fn !== 0 || (a >>> 24) & 0x7f) return undefined;
    return { slot: (a >>> 11) & 0x1f, reg: a & 0xfc };
  }

  read(port: number, size: number): number {
    const ones = size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    return this.spaces.lock.with(() => {
      if (port === PCI_CONFIG_ADDRESS_PORT && size === 4) return this.spaces.configAddress;
      if (port === RESET_CONTROL_PORT && size === 1) return 0;
      if (port < PCI_CONFIG_DATA_PORT || port + size > PCI_CONFIG_DATA_PORT + 4) return ones;
      const t = this.#target();
      if (!t) return ones;
      return this.#readConfig(t.slot, t.reg + (port - PCI_CONFIG_DATA_PORT), size);
    });
  }

  write(port: number, size: number, value: number): void {
    this.spaces.lock.with(() => {
      if (port === PCI_CONFIG_ADDRESS_PORT && size === 4) {
        this.spaces.configAddress = value;
        return;
      }
      if (port === RESET_CONTROL_PORT && size === 1) {
        if (value & 0x04) this.#reset(`PCI reset control (0x${value.toString(16)} to port 0xcf9)`);
        return;
      }
      if (port < PCI_CONFIG_DATA_PORT || port + size > PCI_CONFIG_DATA_PORT + 4) return;
      const t = this.#target();
      if (t) this.#writeConfig(t.slot, t.reg + (port - PCI_CONFIG_DATA_PORT), size, value);
    });
  }
}
