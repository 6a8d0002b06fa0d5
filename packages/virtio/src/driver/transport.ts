import { NO_VECTOR } from "../constants.js";
import { MmioReg, type MmioWindow, VIRTIO_MMIO_MAGIC } from "../mmio.js";
import {
  CommonCfg,
  MSIX_ENABLE,
  MSIX_FUNCTION_MASK,
  PCI_CAP_ID_MSIX,
  PCI_CAP_ID_VNDR,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_STATUS_CAP_LIST,
  PciConfig,
  type PciFunction,
  VIRTIO_PCI_DEVICE_ID_BASE,
  VIRTIO_PCI_VENDOR_ID,
  VirtioPciCapType,
} from "../pci.js";

/**
 * The driver's view of a virtio transport: what a guest driver does through
 * registers, independent of PCI or MMIO. {@link VirtioDriverSimulator} drives a
 * device through one of these.
 */
export interface DriverTransport {
  readonly kind: "pci" | "mmio";
  /** Virtio device type read from the transport. */
  deviceType(): number;
  getStatus(): number;
  setStatus(status: number): void;
  deviceFeatures(): bigint;
  setDriverFeatures(features: bigint): void;
  numQueues(): number;
  selectQueue(index: number): void;
  /** Largest size of the selected queue (0: no such queue). */
  queueMaxSize(): number;
  setQueueSize(size: number): void;
  setQueueAddresses(descTable: number, availRing: number, usedRing: number): void;
  enableQueue(): void;
  queueEnabled(): boolean;
  /** MSI-X vectors available to the driver (0 without MSI-X). */
  readonly msixVectors: number;
  /** Assigns an MSI-X vector to the selected queue; returns what the device read back (NO_VECTOR: refused). */
  setQueueVector(vector: number): number;
  setConfigVector(vector: number): number;
  /** Rings queue `index`'s doorbell. */
  notify(index: number): void;
  readConfig(offset: number, length: number): Uint8Array;
  writeConfig(offset: number, data: Uint8Array): void;
  configGeneration(): number;
  /** Reads (and for PCI clears) the ISR / InterruptStatus, acknowledging it on MMIO. */
  takeInterruptStatus(): number;
}

function leRead(b: Uint8Array): number {
  let v = 0;
  for (let i = b.length - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
}

function leBytes(v: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  let x = v;
  for (let i = 0; i < len; i++) {
    b[i] = x % 256;
    x = Math.floor(x / 256);
  }
  return b;
}

/** One virtio vendor capability, as found in configuration space. */
export interface VirtioPciCapability {
  /** Where the capability sits in configuration space. */
  capOffset: number;
  cfgType: number;
  bar: number;
  id: number;
  offset: number;
  length: number;
  /** NOTIFY_CFG only. */
  notifyOffMultiplier?: number;
}

export interface MsixCapability {
  capOffset: number;
  tableSize: number;
  tableBar: number;
  tableOffset: number;
  pbaBar: number;
  pbaOffset: number;
}

export interface ParsedPciCapabilities {
  virtio: VirtioPciCapability[];
  msix: MsixCapability | undefined;
  /** Every capability ID in list order. */
  ids: number[];
}

/**
 * Walks the capability list the way Linux's `pci_find_capability` does
 * (status CAP_LIST bit, pointer at 0x34, dword-aligned next pointers, at most
 * 48 hops) and decodes the virtio vendor capabilities and MSI-X.
 */
export function parseVirtioPciCapabilities(
  read: (offset: number, length: number) => number,
): ParsedPciCapabilities {
  const out: ParsedPciCapabilities = { virtio: [], msix: undefined, ids: [] };
  if (!(read(PciConfig.STATUS, 2) & PCI_STATUS_CAP_LIST)) return out;
  let pos = read(PciConfig.CAPABILITY_LIST, 1);
  for (let ttl = 48; ttl > 0; ttl--) {
    pos &= ~3;
    if (pos < 0x40) break;
    const id = read(pos, 1);
    if (id === 0xff) break;
    out.ids.push(id);
    if (id === PCI_CAP_ID_VNDR) {
      const cap: VirtioPciCapability = {
        capOffset: pos,
        cfgType: read(pos + 3, 1),
        bar: read(pos + 4, 1),
        id: read(pos + 5, 1),
        offset: read(pos + 8, 4),
        length: read(pos + 12, 4),
      };
      if (cap.cfgType === VirtioPciCapType.NOTIFY_CFG) cap.notifyOffMultiplier = read(pos + 16, 4);
      out.virtio.push(cap);
    } else if (id === PCI_CAP_ID_MSIX) {
      const table = read(pos + 4, 4);
      const pba = read(pos + 8, 4);
      out.msix = {
        capOffset: pos,
        tableSize: (read(pos + 2, 2) & 0x7ff) + 1,
        tableBar: table & 7,
        tableOffset: (table & ~7) >>> 0,
        pbaBar: pba & 7,
        pbaOffset: (pba & ~7) >>> 0,
      };
    }
    pos = read(pos + 1, 1);
  }
  return out;
}

/** Where a mapped virtio structure is. */
interface Mapped {
  bar: number;
  offset: number;
  length: number;
}

export interface PciDriverOptions {
  /** Program MSI-X (default true when the device has it); false uses INTx + ISR. */
  useMsix?: boolean;
  /** Where to place BARs that have no address yet (default 0xe000_0000, each aligned to its size). */
  mmioBase?: number;
}

/**
 * The driver side of virtio-pci modern, done like Linux's virtio_pci_modern:
 * checks IDs, sizes and places BARs, walks the capability list, maps the
 * common/notify/ISR/device structures (checking they fit in their BARs),
 * enables MSI-X and programs one table entry per vector.
 */
export class PciDriverTransport implements DriverTransport {
  readonly kind = "pci";
  readonly fn: PciFunction;
  readonly caps: ParsedPciCapabilities;
  readonly barSizes: Map<number, number> = new Map();
  readonly barAddresses: Map<number, number> = new Map();
  readonly msixVectors: number;
  readonly #common: Mapped;
  readonly #notify: Mapped & { multiplier: number };
  readonly #isr: Mapped;
  readonly #device: Mapped | undefined;

  constructor(fn: PciFunction, options: PciDriverOptions = {}) {
    this.fn = fn;
    const vendor = this.cfgRead(PciConfig.VENDOR_ID, 2);
    const device = this.cfgRead(PciConfig.DEVICE_ID, 2);
    if (vendor !== VIRTIO_PCI_VENDOR_ID)
      throw new Error(`not a virtio device: vendor 0x${vendor.toString(16)}`);
    if (device < VIRTIO_PCI_DEVICE_ID_BASE || device > 0x107f)
      throw new Error(`not a modern virtio device: device id 0x${device.toString(16)}`);
    this.caps = parseVirtioPciCapabilities((o, l) => this.cfgRead(o, l));

    // Size every memory BAR, then place the unassigned ones (decode off while sizing, as Linux does).
    const command = this.cfgRead(PciConfig.COMMAND, 2);
    this.cfgWrite(PciConfig.COMMAND, 2, command & ~PCI_COMMAND_MEMORY);
    let next = options.mmioBase ?? 0xe000_0000;
    for (let i = 0; i < 6; i++) {
      const o = PciConfig.BAR0 + 4 * i;
      const lo = this.cfgRead(o, 4);
      if (lo & 1) continue; // I/O BAR
      const is64 = (lo & 6) === 4;
      const hi = is64 ? this.cfgRead(o + 4, 4) : 0;
      this.cfgWrite(o, 4, 0xffff_ffff);
      const mask = this.cfgRead(o, 4) & 0xffff_fff0;
      this.cfgWrite(o, 4, lo);
      if (mask !== 0) {
        const size = (~mask >>> 0) + 1;
        let address = hi * 0x1_0000_0000 + ((lo & 0xffff_fff0) >>> 0);
        if (address === 0) {
          address = Math.ceil(next / size) * size;
          next = address + size;
          this.cfgWrite(o, 4, (address % 0x1_0000_0000) | (lo & 0xf));
          if (is64) this.cfgWrite(o + 4, 4, Math.floor(address / 0x1_0000_0000));
        }
        this.barSizes.set(i, size);
        this.barAddresses.set(i, address);
      }
      if (is64) i++;
    }
    this.cfgWrite(PciConfig.COMMAND, 2, command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);

    this.#common = this.#map(VirtioPciCapType.COMMON_CFG, CommonCfg.QUEUE_NOTIFY_DATA, 4);
    const notifyCap = this.#find(VirtioPciCapType.NOTIFY_CFG);
    this.#notify = {
      ...this.#map(VirtioPciCapType.NOTIFY_CFG, 2, 2),
      multiplier: notifyCap?.notifyOffMultiplier ?? 0,
    };
    this.#isr = this.#map(VirtioPciCapType.ISR_CFG, 1, 1);
    this.#device = this.#find(VirtioPciCapType.DEVICE_CFG)
      ? this.#map(VirtioPciCapType.DEVICE_CFG, 0, 4)
      : undefined;

    const msix = this.caps.msix;
    if (msix && (options.useMsix ?? true)) {
      this.msixVectors = msix.tableSize;
      for (let v = 0; v < msix.tableSize; v++) {
        const e = msix.tableOffset + v * 16;
        this.barWrite(msix.tableBar, e, 4, 0xfee0_0000);
        this.barWrite(msix.tableBar, e + 4, 4, 0);
        this.barWrite(msix.tableBar, e + 8, 4, 0x4000 | v);
        this.barWrite(msix.tableBar, e + 12, 4, 0); // unmask
      }
      const ctl = this.cfgRead(msix.capOffset + 2, 2);
      this.cfgWrite(msix.capOffset + 2, 2, (ctl | MSIX_ENABLE) & ~MSIX_FUNCTION_MASK);
    } else {
      this.msixVectors = 0;
    }
  }

  #find(type: number): VirtioPciCapability | undefined {
    // Linux takes the first capability of the type whose BAR exists.
    return this.caps.virtio.find((c) => c.cfgType === type && c.bar < 6 && this.barSizes.has(c.bar));
  }

  /** vp_modern_map_capability's checks: minimum length, alignment, inside the BAR. */
  #map(type: number, minLength: number, align: number): Mapped {
    const cap = this.#find(type);
    if (!cap) throw new Error(`virtio-pci capability type ${type} missing`);
    if (cap.length < minLength)
      throw new Error(`capability type ${type} too short: ${cap.length} < ${minLength}`);
    if (cap.offset % align !== 0)
      throw new Error(`capability type ${type} offset ${cap.offset} not ${align}-aligned`);
    const barSize = this.barSizes.get(cap.bar) ?? 0;
    if (cap.offset + cap.length > barSize)
      throw new Error(
        `capability type ${type} (${cap.offset}+${cap.length}) exceeds BAR ${cap.bar} size ${barSize}`,
      );
    return { bar: cap.bar, offset: cap.offset, length: cap.length };
  }

  cfgRead(offset: number, length: number): number {
    const b = new Uint8Array(length);
    this.fn.readConfig(offset, b);
    return leRead(b);
  }

  cfgWrite(offset: number, length: number, value: number): void {
    this.fn.writeConfig(offset, leBytes(value >>> 0, length));
  }

  barRead(bar: number, offset: number, length: number): number {
    const b = new Uint8Array(length);
    this.fn.readBar(bar, offset, b);
    return leRead(b);
  }

  barWrite(bar: number, offset: number, length: number, value: number): void {
    this.fn.writeBar(bar, offset, leBytes(value, length));
  }

  /** Reads a common-config field. */
  common(field: number, length: number): number {
    return this.barRead(this.#common.bar, this.#common.offset + field, length);
  }

  setCommon(field: number, length: number, value: number): void {
    this.barWrite(this.#common.bar, this.#common.offset + field, length, value);
  }

  deviceType(): number {
    return this.cfgRead(PciConfig.DEVICE_ID, 2) - VIRTIO_PCI_DEVICE_ID_BASE;
  }
  getStatus(): number {
    return this.common(CommonCfg.DEVICE_STATUS, 1);
  }
  setStatus(status: number): void {
    this.setCommon(CommonCfg.DEVICE_STATUS, 1, status);
  }
  deviceFeatures(): bigint {
    this.setCommon(CommonCfg.DEVICE_FEATURE_SELECT, 4, 0);
    const lo = this.common(CommonCfg.DEVICE_FEATURE, 4);
    this.setCommon(CommonCfg.DEVICE_FEATURE_SELECT, 4, 1);
    const hi = this.common(CommonCfg.DEVICE_FEATURE, 4);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }
  setDriverFeatures(features: bigint): void {
    this.setCommon(CommonCfg.DRIVER_FEATURE_SELECT, 4, 0);
    this.setCommon(CommonCfg.DRIVER_FEATURE, 4, Number(features & 0xffff_ffffn));
    this.setCommon(CommonCfg.DRIVER_FEATURE_SELECT, 4, 1);
    this.setCommon(CommonCfg.DRIVER_FEATURE, 4, Number((features >> 32n) & 0xffff_ffffn));
  }
  numQueues(): number {
    return this.common(CommonCfg.NUM_QUEUES, 2);
  }
  selectQueue(index: number): void {
    this.setCommon(CommonCfg.QUEUE_SELECT, 2, index);
  }
  queueMaxSize(): number {
    // After reset queue_size holds the maximum (§4.1.4.3).
    return this.common(CommonCfg.QUEUE_SIZE, 2);
  }
  setQueueSize(size: number): void {
    this.setCommon(CommonCfg.QUEUE_SIZE, 2, size);
  }
  setQueueAddresses(descTable: number, availRing: number, usedRing: number): void {
    const two = (field: number, v: number): void => {
      this.setCommon(field, 4, v % 0x1_0000_0000);
      this.setCommon(field + 4, 4, Math.floor(v / 0x1_0000_0000));
    };
    two(CommonCfg.QUEUE_DESC, descTable);
    two(CommonCfg.QUEUE_DRIVER, availRing);
    two(CommonCfg.QUEUE_DEVICE, usedRing);
  }
  enableQueue(): void {
    this.setCommon(CommonCfg.QUEUE_ENABLE, 2, 1);
  }
  queueEnabled(): boolean {
    return this.common(CommonCfg.QUEUE_ENABLE, 2) === 1;
  }
  setQueueVector(vector: number): number {
    this.setCommon(CommonCfg.QUEUE_MSIX_VECTOR, 2, vector);
    return this.common(CommonCfg.QUEUE_MSIX_VECTOR, 2);
  }
  setConfigVector(vector: number): number {
    this.setCommon(CommonCfg.CONFIG_MSIX_VECTOR, 2, vector);
    return this.common(CommonCfg.CONFIG_MSIX_VECTOR, 2);
  }
  /** Doorbell address (BAR-relative) of queue `index`, as the driver computes it. */
  notifyOffset(index: number): number {
    this.selectQueue(index);
    const off = this.common(CommonCfg.QUEUE_NOTIFY_OFF, 2);
    return this.#notify.offset + off * this.#notify.multiplier;
  }
  notify(index: number): void {
    this.barWrite(this.#notify.bar, this.notifyOffset(index), 2, index);
  }
  readConfig(offset: number, length: number): Uint8Array {
    const b = new Uint8Array(length);
    if (this.#device) this.fn.readBar(this.#device.bar, this.#device.offset + offset, b);
    return b;
  }
  writeConfig(offset: number, data: Uint8Array): void {
    if (this.#device) this.fn.writeBar(this.#device.bar, this.#device.offset + offset, data);
  }
  configGeneration(): number {
    return this.common(CommonCfg.CONFIG_GENERATION, 1);
  }
  takeInterruptStatus(): number {
    return this.barRead(this.#isr.bar, this.#isr.offset, 1);
  }
  /** Clears or sets the function mask bit (tests of pending-bit delivery). */
  setMsixFunctionMask(masked: boolean): void {
    const m = this.caps.msix;
    if (!m) return;
    const ctl = this.cfgRead(m.capOffset + 2, 2);
    this.cfgWrite(m.capOffset + 2, 2, masked ? ctl | MSIX_FUNCTION_MASK : ctl & ~MSIX_FUNCTION_MASK);
  }
  /** Masks or unmasks one MSI-X table entry. */
  setMsixVectorMask(vector: number, masked: boolean): void {
    const m = this.caps.msix;
    if (!m) return;
    this.barWrite(m.tableBar, m.tableOffset + vector * 16 + 12, 4, masked ? 1 : 0);
  }
}

/** The driver side of virtio-mmio version 2 (Linux's virtio_mmio). */
export class MmioDriverTransport implements DriverTransport {
  readonly kind = "mmio";
  readonly msixVectors = 0;
  readonly window: MmioWindow;

  constructor(window: MmioWindow) {
    this.window = window;
    const magic = this.reg(MmioReg.MAGIC_VALUE);
    if (magic !== VIRTIO_MMIO_MAGIC) throw new Error(`bad virtio-mmio magic 0x${magic.toString(16)}`);
    const version = this.reg(MmioReg.VERSION);
    if (version !== 2) throw new Error(`virtio-mmio version ${version} is not supported`);
    if (this.reg(MmioReg.DEVICE_ID) === 0) throw new Error("virtio-mmio placeholder device (id 0)");
  }

  reg(offset: number): number {
    const b = new Uint8Array(4);
    this.window.read(offset, b);
    return leRead(b);
  }
  setReg(offset: number, value: number): void {
    this.window.write(offset, leBytes(value >>> 0, 4));
  }

  deviceType(): number {
    return this.reg(MmioReg.DEVICE_ID);
  }
  getStatus(): number {
    return this.reg(MmioReg.STATUS);
  }
  setStatus(status: number): void {
    this.setReg(MmioReg.STATUS, status);
  }
  deviceFeatures(): bigint {
    this.setReg(MmioReg.DEVICE_FEATURES_SEL, 0);
    const lo = this.reg(MmioReg.DEVICE_FEATURES);
    this.setReg(MmioReg.DEVICE_FEATURES_SEL, 1);
    const hi = this.reg(MmioReg.DEVICE_FEATURES);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }
  setDriverFeatures(features: bigint): void {
    this.setReg(MmioReg.DRIVER_FEATURES_SEL, 0);
    this.setReg(MmioReg.DRIVER_FEATURES, Number(features & 0xffff_ffffn));
    this.setReg(MmioReg.DRIVER_FEATURES_SEL, 1);
    this.setReg(MmioReg.DRIVER_FEATURES, Number((features >> 32n) & 0xffff_ffffn));
  }
  numQueues(): number {
    let n = 0;
    while (n < 1024) {
      this.selectQueue(n);
      if (this.queueMaxSize() === 0) break;
      n++;
    }
    return n;
  }
  selectQueue(index: number): void {
    this.setReg(MmioReg.QUEUE_SEL, index);
  }
  queueMaxSize(): number {
    return this.reg(MmioReg.QUEUE_NUM_MAX);
  }
  setQueueSize(size: number): void {
    this.setReg(MmioReg.QUEUE_NUM, size);
  }
  setQueueAddresses(descTable: number, availRing: number, usedRing: number): void {
    const two = (lo: number, v: number): void => {
      this.setReg(lo, v % 0x1_0000_0000);
      this.setReg(lo + 4, Math.floor(v / 0x1_0000_0000));
    };
    two(MmioReg.QUEUE_DESC_LOW, descTable);
    two(MmioReg.QUEUE_DRIVER_LOW, availRing);
    two(MmioReg.QUEUE_DEVICE_LOW, usedRing);
  }
  enableQueue(): void {
    this.setReg(MmioReg.QUEUE_READY, 1);
  }
  queueEnabled(): boolean {
    return this.reg(MmioReg.QUEUE_READY) === 1;
  }
  setQueueVector(): number {
    return NO_VECTOR;
  }
  setConfigVector(): number {
    return NO_VECTOR;
  }
  notify(index: number): void {
    this.setReg(MmioReg.QUEUE_NOTIFY, index);
  }
  readConfig(offset: number, length: number): Uint8Array {
    const b = new Uint8Array(length);
    this.window.read(MmioReg.CONFIG + offset, b);
    return b;
  }
  writeConfig(offset: number, data: Uint8Array): void {
    this.window.write(MmioReg.CONFIG + offset, data);
  }
  configGeneration(): number {
    return this.reg(MmioReg.CONFIG_GENERATION);
  }
  takeInterruptStatus(): number {
    const s = this.reg(MmioReg.INTERRUPT_STATUS);
    if (s) this.setReg(MmioReg.INTERRUPT_ACK, s);
    return s;
  }
}
