import { DeviceStatus, INTERRUPT_CONFIG, INTERRUPT_QUEUE, NO_VECTOR, VirtioDeviceId } from "./constants.js";
import { type QueueRegisters, VirtioTransportCore } from "./core.js";
import type { VirtioDevice } from "./device.js";
import type { IntxLine, MsiMessage, MsixSink, NotifyHooks, QueueNotifyRegion } from "./interrupts.js";
import type { GuestMemoryAccess } from "./memory.js";

export const VIRTIO_PCI_VENDOR_ID = 0x1af4;
/** Modern (non-transitional) device IDs are 0x1040 + virtio device type (§4.1.2). */
export const VIRTIO_PCI_DEVICE_ID_BASE = 0x1040;

/** virtio_pci_cap.cfg_type (§4.1.4). */
export const VirtioPciCapType = {
  COMMON_CFG: 1,
  NOTIFY_CFG: 2,
  ISR_CFG: 3,
  DEVICE_CFG: 4,
  PCI_CFG: 5,
  SHARED_MEMORY_CFG: 8,
  VENDOR_CFG: 9,
} as const;

export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_MSIX = 0x11;

/** Offsets in the PCI type-0 configuration header. */
export const PciConfig = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  CLASS_PROG: 0x09,
  HEADER_TYPE: 0x0e,
  BAR0: 0x10,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
} as const;

export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
export const PCI_STATUS_INTERRUPT = 0x8;
export const PCI_STATUS_CAP_LIST = 0x10;

/** Offsets of the fields of struct virtio_pci_common_cfg (§4.1.4.3). */
export const CommonCfg = {
  DEVICE_FEATURE_SELECT: 0,
  DEVICE_FEATURE: 4,
  DRIVER_FEATURE_SELECT: 8,
  DRIVER_FEATURE: 12,
  CONFIG_MSIX_VECTOR: 16,
  NUM_QUEUES: 18,
  DEVICE_STATUS: 20,
  CONFIG_GENERATION: 21,
  QUEUE_SELECT: 22,
  QUEUE_SIZE: 24,
  QUEUE_MSIX_VECTOR: 26,
  QUEUE_ENABLE: 28,
  QUEUE_NOTIFY_OFF: 30,
  QUEUE_DESC: 32,
  QUEUE_DRIVER: 40,
  QUEUE_DEVICE: 48,
  QUEUE_NOTIFY_DATA: 56,
  QUEUE_RESET: 58,
} as const;
export const COMMON_CFG_LENGTH = 60;

/** MSI-X capability message control bits. */
export const MSIX_ENABLE = 0x8000;
export const MSIX_FUNCTION_MASK = 0x4000;
/** MSI-X table entry: vector control mask bit. */
export const MSIX_ENTRY_MASKED = 1;

/** Default PCI class codes per virtio device type (class << 16 | subclass << 8 | prog-if). */
const DEFAULT_CLASS: Record<number, number> = {
  [VirtioDeviceId.NET]: 0x020000,
  [VirtioDeviceId.BLOCK]: 0x018000,
  [VirtioDeviceId.CONSOLE]: 0x078000,
  [VirtioDeviceId.SCSI]: 0x010000,
  [VirtioDeviceId.P9]: 0x028000,
  [VirtioDeviceId.GPU]: 0x038000,
  [VirtioDeviceId.INPUT]: 0x098000,
  [VirtioDeviceId.VSOCK]: 0x028000,
  [VirtioDeviceId.FS]: 0x018000,
};
const CLASS_OTHER = 0xff0000;

export interface VirtioPciHooks extends NotifyHooks {
  /**
   * An MSI-X vector's routing changed: `message` is what the guest programmed,
   * now deliverable (MSI-X enabled, function and vector unmasked); null when
   * the vector can no longer fire (masked or MSI-X disabled). The VMM points
   * the vector's irqfd GSI route at the message, or tears it down.
   */
  msixVectorChanged?(vector: number, message: MsiMessage | null): void;
  /** A BAR's guest-physical address changed (programmed by the guest or {@link VirtioPciTransport.setBarAddress}). */
  barChanged?(index: number, address: number): void;
}

export interface VirtioPciOptions {
  device: VirtioDevice;
  memory: GuestMemoryAccess;
  /** MSI-X delivery (used while the guest has MSI-X enabled). */
  msix?: MsixSink;
  /** INTx line (used while MSI-X is disabled). */
  intx?: IntxLine;
  hooks?: VirtioPciHooks;
  /** BAR 0 as a 64-bit memory BAR (default true) or a 32-bit one. */
  bar64?: boolean;
  /** Mark memory BARs prefetchable (default false). */
  prefetchable?: boolean;
  /** BAR holding the MSI-X table and PBA: 0 (default, after the virtio structures) or another free BAR. */
  msixBar?: number;
  /** MSI-X table size (default: queues + 1; 0 disables the MSI-X capability). At most 2048. */
  msixVectors?: number;
  /** notify_off_multiplier (default 4: one doorbell address per queue; 0: one shared address). */
  notifyOffMultiplier?: number;
  subsystemVendorId?: number;
  /** Default 0x1100 (≥ 0x40 as §4.1.2.1 recommends). */
  subsystemId?: number;
  /** Default 1 (non-transitional). */
  revisionId?: number;
  /** Overrides the device's `pciClassCode` and the per-type default. */
  classCode?: number;
  /** Initial BAR addresses, by BAR index (a VMM that places BARs itself, like kvmtool). */
  barAddresses?: Record<number, number>;
  /** Initial command register (e.g. PCI_COMMAND_MEMORY when the VMM pre-assigns BARs). Default 0. */
  command?: number;
}

/** One memory BAR of the device. */
export interface PciBarInfo {
  index: number;
  size: number;
  is64: boolean;
  prefetchable: boolean;
  /** Current guest-physical address (0 until assigned). */
  address: number;
}

/**
 * The PCI function a transport presents, as a PCI bus needs it to place the
 * device: identity, interrupt pin, memory BARs with their kinds, and where the
 * capability list starts (the transport serves config space from there up).
 * Plain data: what a device worker's ready message carries to the machine.
 */
export interface PciFunctionDescription {
  vendorId: number;
  deviceId: number;
  revision: number;
  /** class << 16 | subclass << 8 | prog-if. */
  classCode: number;
  subsystemVendorId: number;
  subsystemId: number;
  /** INTA..INTD = 1..4, 0 for none. */
  interruptPin: number;
  bars: { index: number; size: number; kind: "mmio32" | "mmio64"; prefetchable: boolean }[];
  /** Offset of the first capability (the header's capability pointer). */
  capabilityPointer: number;
}

/** Where each virtio structure lives in BAR 0 (and the MSI-X BAR). */
export interface VirtioPciLayout {
  common: { offset: number; length: number };
  isr: { offset: number; length: number };
  device: { offset: number; length: number } | undefined;
  notify: { offset: number; length: number; multiplier: number };
  msix: { bar: number; tableOffset: number; pbaOffset: number; vectors: number } | undefined;
}

/** Offsets of the capabilities in configuration space. */
interface CapOffsets {
  msix: number | undefined;
  common: number;
  notify: number;
  isr: number;
  device: number | undefined;
  pciCfg: number;
}

const PAGE = 0x1000;
const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;
const pow2AtLeast = (n: number): number => {
  let p = PAGE;
  while (p < n) p *= 2;
  return p;
};

interface Bar {
  index: number;
  size: number;
  is64: boolean;
  prefetchable: boolean;
}

/**
 * Register access to one PCI function, as a bus gives it to a driver:
 * {@link VirtioPciTransport} has it, and so does a channel to a device served
 * elsewhere (a worker). The driver simulator's `PciDriverTransport`
 * (`@tskvm/virtio/testing`) drives one.
 */
export interface PciFunction {
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
  readBar(bar: number, offset: number, data: Uint8Array): void;
  writeBar(bar: number, offset: number, data: Uint8Array): void;
}

/**
 * A virtio-pci modern device (virtio 1.2 §4.1) as a pure register model: a PCI
 * type-0 configuration space with the virtio vendor capabilities and MSI-X,
 * and memory BARs holding the common config, ISR, device config, one doorbell
 * per queue, and the MSI-X table + PBA. A PCI bus calls {@link readConfig} /
 * {@link writeConfig} and {@link readBar} / {@link writeBar}; KVM wiring is
 * injected through {@link VirtioPciHooks}, {@link MsixSink} and {@link IntxLine}.
 */
export class VirtioPciTransport {
  readonly core: VirtioTransportCore;
  readonly layout: VirtioPciLayout;
  readonly #cfg = new Uint8Array(256);
  readonly #wmask = new Uint8Array(256);
  readonly #cfgView = new DataView(this.#cfg.buffer);
  readonly #bars: Bar[] = [];
  readonly #caps: CapOffsets;
  readonly #hooks: VirtioPciHooks;
  readonly #msixSink: MsixSink | undefined;
  readonly #intx: IntxLine | undefined;
  readonly #msixTable: DataView;
  readonly #pba: Uint8Array;
  readonly #vectors: number;
  #intxRaised = false;
  /** Per queue: the region registered with the VMM, if any. */
  readonly #registered: (QueueNotifyRegion | undefined)[];
  /** Per MSI-X vector: whether it was last reported deliverable, with which message. */
  readonly #routed: (MsiMessage | null)[];

  constructor(options: VirtioPciOptions) {
    const { device } = options;
    this.#hooks = options.hooks ?? {};
    this.#msixSink = options.msix;
    this.#intx = options.intx;
    const numQueues = device.queueMaxSizes.length;
    this.core = new VirtioTransportCore(device, options.memory, {
      queueInterrupt: (_queue, vector) => this.#interrupt(INTERRUPT_QUEUE, vector),
      configInterrupt: (vector) => this.#interrupt(INTERRUPT_CONFIG, vector),
      queueEnabled: () => this.#syncNotify(),
      queueDisabled: () => this.#syncNotify(),
      reset: () => this.#updateIntx(),
    });
    this.#registered = new Array(numQueues).fill(undefined);

    const vectors = options.msixVectors ?? numQueues + 1;
    if (!Number.isInteger(vectors) || vectors < 0 || vectors > 2048)
      throw new RangeError(`bad MSI-X vector count ${vectors}`);
    this.#vectors = vectors;
    this.#routed = new Array(vectors).fill(null);
    const multiplier = options.notifyOffMultiplier ?? 4;
    if (!Number.isInteger(multiplier) || multiplier < 0 || multiplier % 2 !== 0)
      throw new RangeError(`notify_off_multiplier ${multiplier} must be an even number ≥ 0`);
    const configSize = device.configSize;
    if (!Number.isInteger(configSize) || configSize < 0 || configSize > PAGE)
      throw new RangeError(`device config size ${configSize} must be in 0..4096`);

    // ---- BAR layout ----
    const bar64 = options.bar64 ?? true;
    const prefetchable = options.prefetchable ?? false;
    const msixBar = options.msixBar ?? 0;
    const notifyLength = Math.max(2, multiplier === 0 ? 2 : numQueues * multiplier);
    const notifyOffset = 3 * PAGE;
    let end = alignUp(notifyOffset + notifyLength, PAGE);
    let msix: VirtioPciLayout["msix"];
    let msixBarSize = 0;
    if (vectors > 0) {
      const tableLen = vectors * 16;
      const pbaLen = alignUp(Math.ceil(vectors / 64) * 8, 8);
      const base = msixBar === 0 ? end : 0;
      const tableOffset = base;
      const pbaOffset = alignUp(base + tableLen, PAGE);
      msix = { bar: msixBar, tableOffset, pbaOffset, vectors };
      if (msixBar === 0) end = alignUp(pbaOffset + pbaLen, PAGE);
      else msixBarSize = pow2AtLeast(pbaOffset + pbaLen);
    }
    this.layout = {
      common: { offset: 0, length: COMMON_CFG_LENGTH },
      isr: { offset: PAGE, length: 1 },
      device: configSize > 0 ? { offset: 2 * PAGE, length: configSize } : undefined,
      notify: { offset: notifyOffset, length: notifyLength, multiplier },
      msix,
    };
    this.#bars.push({ index: 0, size: pow2AtLeast(end), is64: bar64, prefetchable });
    if (msix && msixBar !== 0) {
      const taken = bar64 ? [0, 1] : [0];
      if (
        !Number.isInteger(msixBar) ||
        msixBar < 0 ||
        msixBar > 5 ||
        taken.includes(msixBar) ||
        (bar64 && msixBar === 5)
      )
        throw new RangeError(`MSI-X BAR ${msixBar} is not free`);
      this.#bars.push({ index: msixBar, size: msixBarSize, is64: bar64, prefetchable });
    }
    this.#msixTable = new DataView(new ArrayBuffer(vectors * 16));
    for (let v = 0; v < vectors; v++) this.#msixTable.setUint32(v * 16 + 12, MSIX_ENTRY_MASKED, true);
    this.#pba = new Uint8Array(alignUp(Math.ceil(vectors / 64) * 8, 8));

    // ---- configuration header ----
    const cv = this.#cfgView;
    cv.setUint16(PciConfig.VENDOR_ID, VIRTIO_PCI_VENDOR_ID, true);
    cv.setUint16(PciConfig.DEVICE_ID, VIRTIO_PCI_DEVICE_ID_BASE + device.deviceType, true);
    cv.setUint16(PciConfig.COMMAND, (options.command ?? 0) & 0x0407, true);
    this.#setMask(PciConfig.COMMAND, 2, 0x0407);
    cv.setUint16(PciConfig.STATUS, PCI_STATUS_CAP_LIST, true);
    cv.setUint8(PciConfig.REVISION_ID, options.revisionId ?? 1);
    const classCode =
      options.classCode ?? device.pciClassCode ?? DEFAULT_CLASS[device.deviceType] ?? CLASS_OTHER;
    cv.setUint8(PciConfig.CLASS_PROG, classCode & 0xff);
    cv.setUint8(PciConfig.CLASS_PROG + 1, (classCode >> 8) & 0xff);
    cv.setUint8(PciConfig.CLASS_PROG + 2, (classCode >> 16) & 0xff);
    this.#setMask(0x0c, 1, 0xff); // cache line size
    cv.setUint8(PciConfig.HEADER_TYPE, 0);
    cv.setUint16(PciConfig.SUBSYSTEM_VENDOR_ID, options.subsystemVendorId ?? VIRTIO_PCI_VENDOR_ID, true);
    cv.setUint16(PciConfig.SUBSYSTEM_ID, options.subsystemId ?? 0x1100, true);
    cv.setUint8(PciConfig.INTERRUPT_PIN, 1); // INTA#
    this.#setMask(PciConfig.INTERRUPT_LINE, 1, 0xff);
    for (const bar of this.#bars) {
      const o = PciConfig.BAR0 + 4 * bar.index;
      const type = (bar.is64 ? 0x4 : 0) | (bar.prefetchable ? 0x8 : 0);
      cv.setUint32(o, type, true);
      this.#setMask(o, 4, ~(bar.size - 1) & 0xffff_fff0);
      if (bar.is64) this.#setMask(o + 4, 4, 0xffff_ffff);
    }

    // ---- capabilities ----
    let at = 0x40;
    const chain: number[] = [];
    const addCap = (len: number): number => {
      const o = at;
      chain.push(o);
      at = alignUp(at + len, 4);
      return o;
    };
    const msixCap = msix ? addCap(12) : undefined;
    const common = addCap(16);
    const notify = addCap(20);
    const isr = addCap(16);
    const dev = configSize > 0 ? addCap(16) : undefined;
    const pciCfg = addCap(20);
    this.#caps = { msix: msixCap, common, notify, isr, device: dev, pciCfg };
    cv.setUint8(PciConfig.CAPABILITY_LIST, chain[0]!);
    chain.forEach((o, i) => {
      cv.setUint8(o + 1, chain[i + 1] ?? 0);
    });
    if (msix && msixCap !== undefined) {
      cv.setUint8(msixCap, PCI_CAP_ID_MSIX);
      cv.setUint16(msixCap + 2, vectors - 1, true);
      this.#setMask(msixCap + 2, 2, MSIX_ENABLE | MSIX_FUNCTION_MASK);
      cv.setUint32(msixCap + 4, msix.tableOffset | msix.bar, true);
      cv.setUint32(msixCap + 8, msix.pbaOffset | msix.bar, true);
    }
    const vendorCap = (o: number, len: number, type: number, offset: number, length: number): void => {
      cv.setUint8(o, PCI_CAP_ID_VNDR);
      cv.setUint8(o + 2, len);
      cv.setUint8(o + 3, type);
      cv.setUint8(o + 4, 0); // BAR 0
      cv.setUint32(o + 8, offset, true);
      cv.setUint32(o + 12, length, true);
    };
    vendorCap(common, 16, VirtioPciCapType.COMMON_CFG, 0, COMMON_CFG_LENGTH);
    vendorCap(notify, 20, VirtioPciCapType.NOTIFY_CFG, notifyOffset, notifyLength);
    cv.setUint32(notify + 16, multiplier, true);
    vendorCap(isr, 16, VirtioPciCapType.ISR_CFG, PAGE, 1);
    if (dev !== undefined) vendorCap(dev, 16, VirtioPciCapType.DEVICE_CFG, 2 * PAGE, configSize);
    vendorCap(pciCfg, 20, VirtioPciCapType.PCI_CFG, 0, 0);
    // cap.bar, cap.offset, cap.length and pci_cfg_data are driver-writable in the PCI_CFG capability.
    this.#setMask(pciCfg + 4, 1, 0xff);
    this.#setMask(pciCfg + 8, 4, 0xffff_ffff);
    this.#setMask(pciCfg + 12, 4, 0xffff_ffff);
    this.#setMask(pciCfg + 16, 4, 0xffff_ffff);

    for (const [index, address] of Object.entries(options.barAddresses ?? {}))
      this.setBarAddress(Number(index), address);
  }

  #setMask(offset: number, length: number, mask: number): void {
    for (let i = 0; i < length; i++) this.#wmask[offset + i] = (mask >>> (8 * i)) & 0xff;
  }

  get device(): VirtioDevice {
    return this.core.device;
  }

  get vendorId(): number {
    return VIRTIO_PCI_VENDOR_ID;
  }

  get deviceId(): number {
    return this.#cfgView.getUint16(PciConfig.DEVICE_ID, true);
  }

  get command(): number {
    return this.#cfgView.getUint16(PciConfig.COMMAND, true);
  }

  /** The function as a PCI bus sees it (read from the configuration header this transport built). */
  describeFunction(): PciFunctionDescription {
    const cv = this.#cfgView;
    return {
      vendorId: cv.getUint16(PciConfig.VENDOR_ID, true),
      deviceId: cv.getUint16(PciConfig.DEVICE_ID, true),
      revision: cv.getUint8(PciConfig.REVISION_ID),
      classCode: cv.getUint32(PciConfig.REVISION_ID, true) >>> 8,
      subsystemVendorId: cv.getUint16(PciConfig.SUBSYSTEM_VENDOR_ID, true),
      subsystemId: cv.getUint16(PciConfig.SUBSYSTEM_ID, true),
      interruptPin: cv.getUint8(PciConfig.INTERRUPT_PIN),
      bars: this.#bars.map((b) => ({
        index: b.index,
        size: b.size,
        kind: b.is64 ? "mmio64" : "mmio32",
        prefetchable: b.prefetchable,
      })),
      capabilityPointer: cv.getUint8(PciConfig.CAPABILITY_LIST),
    };
  }

  /** The memory BARs, for a PCI bus to place them. */
  bars(): PciBarInfo[] {
    return this.#bars.map((b) => ({ ...b, address: this.barAddress(b.index) }));
  }

  /** Current guest-physical address of BAR `index` (0 if unassigned or not a BAR of this device). */
  barAddress(index: number): number {
    const bar = this.#bars.find((b) => b.index === index);
    if (!bar) return 0;
    const o = PciConfig.BAR0 + 4 * index;
    const lo = (this.#cfgView.getUint32(o, true) & 0xffff_fff0) >>> 0;
    const hi = bar.is64 ? this.#cfgView.getUint32(o + 4, true) : 0;
    return hi * 0x1_0000_0000 + lo;
  }

  /** Places BAR `index` (what firmware or a firmware-less VMM does before boot). */
  setBarAddress(index: number, address: number): void {
    const bar = this.#bars.find((b) => b.index === index);
    if (!bar) throw new RangeError(`BAR ${index} does not exist`);
    if (!Number.isSafeInteger(address) || address < 0 || address % bar.size !== 0)
      throw new RangeError(
        `BAR ${index} address 0x${address.toString(16)} is not aligned to its size 0x${bar.size.toString(16)}`,
      );
    if (!bar.is64 && address >= 0x1_0000_0000) throw new RangeError(`BAR ${index} is 32-bit`);
    const before = this.barAddress(index);
    const o = PciConfig.BAR0 + 4 * index;
    const type = this.#cfgView.getUint32(o, true) & 0xf;
    this.#cfgView.setUint32(o, (address % 0x1_0000_0000) | type, true);
    if (bar.is64) this.#cfgView.setUint32(o + 4, Math.floor(address / 0x1_0000_0000), true);
    if (this.barAddress(index) !== before) this.#barMoved(index);
  }

  // ------------------------------------------------------------------ config space

  /** Configuration-space read of `data.length` bytes at `offset` (the PCI bus's entry point). */
  readConfig(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset < 0 || offset >= 256) return;
    const n = Math.min(data.length, 256 - offset);
    const status = offset <= PciConfig.STATUS && offset + n > PciConfig.STATUS;
    if (status) {
      const intx = this.#intxRaised ? PCI_STATUS_INTERRUPT : 0;
      this.#cfgView.setUint16(PciConfig.STATUS, PCI_STATUS_CAP_LIST | intx, true);
    }
    const dataOff = this.#caps.pciCfg + 16;
    if (offset < dataOff + 4 && offset + n > dataOff) this.#pciCfgAccess(false);
    data.set(this.#cfg.subarray(offset, offset + n));
  }

  /** Configuration-space write (the PCI bus's entry point). */
  writeConfig(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset >= 256) return;
    const n = Math.min(data.length, 256 - offset);
    const msixCtl = this.#caps.msix !== undefined ? this.#caps.msix + 2 : -1;
    const oldMsixCtl = msixCtl >= 0 ? this.#cfgView.getUint16(msixCtl, true) : 0;
    const oldBars = this.#bars.map((b) => this.barAddress(b.index));
    const oldCommand = this.command;
    for (let i = 0; i < n; i++) {
      const o = offset + i;
      const m = this.#wmask[o]!;
      this.#cfg[o] = (this.#cfg[o]! & ~m) | (data[i]! & m);
    }
    const touches = (start: number, len: number): boolean => offset < start + len && offset + n > start;
    if (touches(PciConfig.BAR0, 24)) {
      this.#bars.forEach((b, i) => {
        if (this.barAddress(b.index) !== oldBars[i]) this.#barMoved(b.index);
      });
    }
    if (touches(PciConfig.COMMAND, 2) && this.command !== oldCommand) {
      this.#syncNotify();
      this.#updateIntx();
    }
    if (msixCtl >= 0 && touches(msixCtl, 2)) {
      const now = this.#cfgView.getUint16(msixCtl, true);
      if (now !== oldMsixCtl) {
        for (let v = 0; v < this.#vectors; v++) this.#msixUpdate(v);
        this.#updateIntx();
      }
    }
    if (touches(this.#caps.pciCfg + 16, 4)) this.#pciCfgAccess(true);
  }

  /** VIRTIO_PCI_CAP_PCI_CFG window: a config-space route into the BARs (§4.1.4.9). */
  #pciCfgAccess(write: boolean): void {
    const c = this.#caps.pciCfg;
    const bar = this.#cfgView.getUint8(c + 4);
    const off = this.#cfgView.getUint32(c + 8, true);
    const len = this.#cfgView.getUint32(c + 12, true);
    const window = this.#cfg.subarray(c + 16, c + 20);
    if ((len !== 1 && len !== 2 && len !== 4) || off % len !== 0) {
      if (!write) window.fill(0);
      return;
    }
    if (write) this.writeBar(bar, off, window.slice(0, len));
    else {
      const tmp = new Uint8Array(len);
      this.readBar(bar, off, tmp);
      window.fill(0);
      window.set(tmp);
    }
  }

  // ------------------------------------------------------------------ BARs

  /** Memory read of `data.length` bytes at `offset` in BAR `bar` (the PCI bus's entry point). */
  readBar(bar: number, offset: number, data: Uint8Array): void {
    data.fill(0);
    const b = this.#bars.find((x) => x.index === bar);
    if (!b || offset < 0 || offset + data.length > b.size) return;
    const L = this.layout;
    if (L.msix && bar === L.msix.bar) {
      const tableLen = L.msix.vectors * 16;
      if (offset >= L.msix.tableOffset && offset + data.length <= L.msix.tableOffset + tableLen) {
        const t = new Uint8Array(this.#msixTable.buffer);
        const o = offset - L.msix.tableOffset;
        data.set(t.subarray(o, o + data.length));
        return;
      }
      if (offset >= L.msix.pbaOffset && offset + data.length <= L.msix.pbaOffset + this.#pba.length) {
        const o = offset - L.msix.pbaOffset;
        data.set(this.#pba.subarray(o, o + data.length));
        return;
      }
    }
    if (bar !== 0) return;
    if (offset + data.length <= L.common.offset + L.common.length) {
      this.#readCommon(offset - L.common.offset, data);
      return;
    }
    if (offset === L.isr.offset) {
      // Reading the ISR clears it and deasserts INTx (§4.1.4.5).
      data[0] = this.core.takeInterruptStatus() & 0xff;
      this.#updateIntx();
      return;
    }
    if (L.device && offset >= L.device.offset && offset < L.device.offset + PAGE)
      this.core.readDeviceConfig(offset - L.device.offset, data);
  }

  /** Memory write at `offset` in BAR `bar` (the PCI bus's entry point). */
  writeBar(bar: number, offset: number, data: Uint8Array): void {
    const b = this.#bars.find((x) => x.index === bar);
    if (!b || offset < 0 || offset + data.length > b.size) return;
    const L = this.layout;
    if (L.msix && bar === L.msix.bar) {
      const tableLen = L.msix.vectors * 16;
      if (offset >= L.msix.tableOffset && offset + data.length <= L.msix.tableOffset + tableLen) {
        const o = offset - L.msix.tableOffset;
        new Uint8Array(this.#msixTable.buffer).set(data, o);
        const first = Math.floor(o / 16);
        const last = Math.floor((o + data.length - 1) / 16);
        for (let v = first; v <= last; v++) this.#msixUpdate(v);
        return;
      }
      if (offset >= L.msix.pbaOffset && offset < L.msix.pbaOffset + this.#pba.length) return; // PBA is read-only
    }
    if (bar !== 0) return;
    if (offset + data.length <= L.common.offset + L.common.length) {
      this.#writeCommon(offset - L.common.offset, data);
      return;
    }
    const n = L.notify;
    if (offset >= n.offset && offset < n.offset + n.length) {
      const rel = offset - n.offset;
      let queue: number;
      if (n.multiplier === 0) queue = data.length >= 2 ? data[0]! | (data[1]! << 8) : data[0]!;
      else if (rel % n.multiplier === 0) queue = rel / n.multiplier;
      else return;
      this.core.notify(queue);
      return;
    }
    if (L.device && offset >= L.device.offset && offset < L.device.offset + PAGE)
      this.core.writeDeviceConfig(offset - L.device.offset, data);
  }

  /** Delivers queue `index`'s notification as if the driver wrote its doorbell (the VMM's ioeventfd handler). */
  notifyQueue(index: number): void {
    this.core.notify(index);
  }

  // ------------------------------------------------------------------ common cfg

  #commonFields(): [number, number, () => number, ((v: number) => void) | undefined][] {
    const c = this.core;
    const q = (): QueueRegisters | undefined => c.selectedQueue();
    const qw = (set: (r: QueueRegisters, v: number) => void) => (v: number) =>
      c.writeSelectedQueue((r) => set(r, v));
    const F = CommonCfg;
    return [
      [F.DEVICE_FEATURE_SELECT, 4, () => c.deviceFeatureSelect, (v) => (c.deviceFeatureSelect = v >>> 0)],
      [F.DEVICE_FEATURE, 4, () => c.deviceFeatureWord(), undefined],
      [F.DRIVER_FEATURE_SELECT, 4, () => c.driverFeatureSelect, (v) => (c.driverFeatureSelect = v >>> 0)],
      [F.DRIVER_FEATURE, 4, () => c.driverFeatureWord(), (v) => c.setDriverFeatureWord(v)],
      [F.CONFIG_MSIX_VECTOR, 2, () => c.configVector, (v) => (c.configVector = this.#acceptVector(v))],
      [F.NUM_QUEUES, 2, () => c.queues.length, undefined],
      [F.DEVICE_STATUS, 1, () => c.status, (v) => c.writeStatus(v)],
      [F.CONFIG_GENERATION, 1, () => c.configGeneration & 0xff, undefined],
      [F.QUEUE_SELECT, 2, () => c.queueSelect, (v) => (c.queueSelect = v)],
      [F.QUEUE_SIZE, 2, () => q()?.size ?? 0, qw((r, v) => (r.size = v))],
      [
        F.QUEUE_MSIX_VECTOR,
        2,
        () => q()?.vector ?? NO_VECTOR,
        (v) => {
          const r = q();
          if (r) r.vector = this.#acceptVector(v);
        },
      ],
      [F.QUEUE_ENABLE, 2, () => (q()?.ready ? 1 : 0), (v) => v === 1 && c.setQueueReady(true)],
      [F.QUEUE_NOTIFY_OFF, 2, () => (q() ? c.queueSelect : 0), undefined],
      [F.QUEUE_DESC, 4, () => q()?.descLo ?? 0, qw((r, v) => (r.descLo = v >>> 0))],
      [F.QUEUE_DESC + 4, 4, () => q()?.descHi ?? 0, qw((r, v) => (r.descHi = v >>> 0))],
      [F.QUEUE_DRIVER, 4, () => q()?.driverLo ?? 0, qw((r, v) => (r.driverLo = v >>> 0))],
      [F.QUEUE_DRIVER + 4, 4, () => q()?.driverHi ?? 0, qw((r, v) => (r.driverHi = v >>> 0))],
      [F.QUEUE_DEVICE, 4, () => q()?.deviceLo ?? 0, qw((r, v) => (r.deviceLo = v >>> 0))],
      [F.QUEUE_DEVICE + 4, 4, () => q()?.deviceHi ?? 0, qw((r, v) => (r.deviceHi = v >>> 0))],
      [F.QUEUE_NOTIFY_DATA, 2, () => (q() ? c.queueSelect : 0), undefined],
      [F.QUEUE_RESET, 2, () => 0, undefined],
    ];
  }

  #readCommon(offset: number, data: Uint8Array): void {
    const snap = new DataView(new ArrayBuffer(COMMON_CFG_LENGTH));
    for (const [o, size, get] of this.#commonFields()) {
      const v = get();
      if (size === 1) snap.setUint8(o, v);
      else if (size === 2) snap.setUint16(o, v, true);
      else snap.setUint32(o, v >>> 0, true);
    }
    data.set(new Uint8Array(snap.buffer, offset, data.length));
  }

  #writeCommon(offset: number, data: Uint8Array): void {
    const end = offset + data.length;
    for (const [o, size, get, set] of this.#commonFields()) {
      if (!set || end <= o || offset >= o + size) continue;
      // Merge the written bytes into the field (drivers write whole fields; this also covers 64-bit writes).
      const bytes = new DataView(new ArrayBuffer(4));
      bytes.setUint32(0, get() >>> 0, true);
      for (let i = Math.max(o, offset); i < Math.min(o + size, end); i++)
        bytes.setUint8(i - o, data[i - offset]!);
      const v =
        size === 1 ? bytes.getUint8(0) : size === 2 ? bytes.getUint16(0, true) : bytes.getUint32(0, true);
      set(v);
    }
  }

  #acceptVector(v: number): number {
    // A vector the table does not have cannot be mapped: report NO_VECTOR (§4.1.5.1.2).
    return v < this.#vectors ? v : NO_VECTOR;
  }

  // ------------------------------------------------------------------ interrupts

  get msixEnabled(): boolean {
    const c = this.#caps.msix;
    return c !== undefined && (this.#cfgView.getUint16(c + 2, true) & MSIX_ENABLE) !== 0;
  }

  get msixFunctionMasked(): boolean {
    const c = this.#caps.msix;
    return c !== undefined && (this.#cfgView.getUint16(c + 2, true) & MSIX_FUNCTION_MASK) !== 0;
  }

  /** The guest-programmed MSI-X table entry `vector`. */
  msixEntry(vector: number): { message: MsiMessage; masked: boolean; pending: boolean } | undefined {
    if (vector < 0 || vector >= this.#vectors) return undefined;
    const t = this.#msixTable;
    const o = vector * 16;
    const address = (BigInt(t.getUint32(o + 4, true)) << 32n) | BigInt(t.getUint32(o, true));
    return {
      message: { address, data: t.getUint32(o + 8, true) },
      masked: (t.getUint32(o + 12, true) & MSIX_ENTRY_MASKED) !== 0,
      pending: ((this.#pba[vector >> 3]! >> (vector & 7)) & 1) !== 0,
    };
  }

  #msixDeliverable(vector: number): MsiMessage | null {
    if (!this.msixEnabled || this.msixFunctionMasked) return null;
    const e = this.msixEntry(vector);
    return e && !e.masked ? e.message : null;
  }

  /** Re-evaluates one vector after a table or control change: report routing, flush pending. */
  #msixUpdate(vector: number): void {
    if (vector >= this.#vectors) return;
    const now = this.#msixDeliverable(vector);
    const before = this.#routed[vector] ?? null;
    const same =
      now === null
        ? before === null
        : before !== null && before.address === now.address && before.data === now.data;
    if (!same) {
      this.#routed[vector] = now;
      this.#hooks.msixVectorChanged?.(vector, now);
    }
    if (now && this.msixEntry(vector)?.pending) {
      this.#pba[vector >> 3]! &= ~(1 << (vector & 7));
      this.#msixSink?.signalVector(vector);
    }
  }

  #interrupt(bit: number, vector: number): void {
    // The config-change ISR bit is set whether or not MSI-X is in use (§4.1.4.5.1).
    if (bit === INTERRUPT_CONFIG) this.core.setInterruptStatus(bit);
    if (this.msixEnabled) {
      if (vector === NO_VECTOR || vector >= this.#vectors) return;
      if (this.#msixDeliverable(vector)) this.#msixSink?.signalVector(vector);
      else this.#pba[vector >> 3]! |= 1 << (vector & 7);
      return;
    }
    this.core.setInterruptStatus(bit);
    this.#updateIntx();
  }

  /** Raises or lowers INTx from the ISR, MSI-X state and the command register's INTx-disable bit. */
  #updateIntx(): void {
    const want =
      !this.msixEnabled &&
      (this.command & PCI_COMMAND_INTX_DISABLE) === 0 &&
      Atomics.load(this.core.interruptStatus, 0) !== 0;
    if (want === this.#intxRaised) return;
    this.#intxRaised = want;
    if (want) this.#intx?.raise();
    else this.#intx?.lower();
  }

  /**
   * For a level-triggered irqfd with a resample eventfd: the guest EOIed the
   * line; raise it again if the ISR is still set (e.g. set by a worker).
   */
  resampleIntx(): void {
    this.#intxRaised = false;
    this.#updateIntx();
  }

  // ------------------------------------------------------------------ notify regions

  /** Queue `index`'s doorbell, BAR-relative and absolute (at the current BAR 0 address). */
  queueNotifyRegion(index: number): QueueNotifyRegion {
    const n = this.layout.notify;
    const barOffset = n.offset + (n.multiplier === 0 ? 0 : index * n.multiplier);
    const region: QueueNotifyRegion = {
      queue: index,
      space: "mmio",
      address: this.barAddress(0) + barOffset,
      length: n.multiplier === 0 ? 2 : 0,
      bar: 0,
      barOffset,
    };
    if (n.multiplier === 0) region.datamatch = index;
    return region;
  }

  #barMoved(index: number): void {
    this.#hooks.barChanged?.(index, this.barAddress(index));
    if (index === 0) this.#syncNotify();
  }

  /**
   * Keeps the VMM's ioeventfds equal to the set of live doorbells: a queue's is
   * live while it is enabled, memory decoding is on and BAR 0 has an address.
   */
  #syncNotify(): void {
    const base = this.barAddress(0);
    const decoding = (this.command & PCI_COMMAND_MEMORY) !== 0 && base !== 0 && Number.isSafeInteger(base);
    for (let i = 0; i < this.core.queues.length; i++) {
      const q = this.core.queues[i]!;
      const want = decoding && q.ready ? this.queueNotifyRegion(i) : undefined;
      const have = this.#registered[i];
      if (have && (!want || want.address !== have.address)) {
        this.#registered[i] = undefined;
        this.#hooks.queueNotifyDisabled?.(have);
      }
      if (want && this.#registered[i] === undefined) {
        this.#registered[i] = want;
        this.#hooks.queueNotifyEnabled?.(want);
      }
    }
  }

  /** Doorbells currently registered through the hooks. */
  liveNotifyRegions(): QueueNotifyRegion[] {
    return this.#registered.filter((r): r is QueueNotifyRegion => r !== undefined);
  }

  /** The device status (for diagnostics). */
  get status(): number {
    return this.core.status;
  }

  get needsReset(): boolean {
    return (this.core.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
  }
}
