import { DeviceStatus, INTERRUPT_CONFIG, INTERRUPT_QUEUE } from "./constants.js";
import { VirtioTransportCore } from "./core.js";
import type { VirtioDevice } from "./device.js";
import type { IntxLine, NotifyHooks, QueueNotifyRegion } from "./interrupts.js";
import type { GuestMemoryAccess } from "./memory.js";

/** "virt" little-endian. */
export const VIRTIO_MMIO_MAGIC = 0x74726976;
/** Register offsets of the virtio-mmio version 2 layout (§4.2.2). */
export const MmioReg = {
  MAGIC_VALUE: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  SHM_SEL: 0x0ac,
  SHM_LEN_LOW: 0x0b0,
  SHM_LEN_HIGH: 0x0b4,
  SHM_BASE_LOW: 0x0b8,
  SHM_BASE_HIGH: 0x0bc,
  QUEUE_RESET: 0x0c0,
  CONFIG_GENERATION: 0x0fc,
  CONFIG: 0x100,
} as const;

/** Size of the register window a VMM maps for one device. */
export const VIRTIO_MMIO_SIZE = 0x200;

export interface VirtioMmioOptions {
  device: VirtioDevice;
  memory: GuestMemoryAccess;
  /** Guest-physical base of the register window (for the notify regions). Default 0. */
  base?: number;
  /** The device's interrupt line (level-triggered). */
  irq?: IntxLine;
  hooks?: NotifyHooks;
  /** VendorID register. Default 0x4b535354 ("TSSK"). */
  vendorId?: number;
}

/**
 * Register access to one virtio-mmio window: {@link VirtioMmioTransport} has
 * it. The driver simulator's `MmioDriverTransport` (`@tskvm/virtio/testing`)
 * drives one.
 */
export interface MmioWindow {
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

/**
 * A virtio-mmio version 2 device (§4.2) as a register model over the same
 * {@link VirtioDevice} interface as PCI. A VMM's MMIO bus calls {@link read} /
 * {@link write} with offsets relative to {@link base}.
 */
export class VirtioMmioTransport {
  readonly core: VirtioTransportCore;
  readonly base: number;
  readonly vendorId: number;
  readonly #irq: IntxLine | undefined;
  readonly #hooks: NotifyHooks;
  #raised = false;
  readonly #registered: (QueueNotifyRegion | undefined)[];

  constructor(options: VirtioMmioOptions) {
    this.base = options.base ?? 0;
    this.vendorId = options.vendorId ?? 0x4b535354;
    this.#irq = options.irq;
    this.#hooks = options.hooks ?? {};
    this.#registered = new Array(options.device.queueMaxSizes.length).fill(undefined);
    this.core = new VirtioTransportCore(options.device, options.memory, {
      queueInterrupt: () => this.#interrupt(INTERRUPT_QUEUE),
      configInterrupt: () => this.#interrupt(INTERRUPT_CONFIG),
      queueEnabled: (i) => this.#enable(i),
      queueDisabled: (i) => this.#disable(i),
      reset: () => this.#updateLine(),
    });
  }

  get device(): VirtioDevice {
    return this.core.device;
  }

  /** Register read (the bus's entry point). Registers below 0x100 need 32-bit accesses; config any width. */
  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset >= MmioReg.CONFIG) {
      this.core.readDeviceConfig(offset - MmioReg.CONFIG, data);
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0 || offset < 0) return;
    const v = this.#readReg(offset);
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, v >>> 0, true);
  }

  /** Register write (the bus's entry point). */
  write(offset: number, data: Uint8Array): void {
    if (offset >= MmioReg.CONFIG) {
      this.core.writeDeviceConfig(offset - MmioReg.CONFIG, data);
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0 || offset < 0) return;
    this.#writeReg(offset, new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true));
  }

  /** 32-bit register read by offset. */
  readRegister(offset: number): number {
    const b = new Uint8Array(4);
    this.read(offset, b);
    return new DataView(b.buffer).getUint32(0, true);
  }

  /** 32-bit register write by offset. */
  writeRegister(offset: number, value: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    this.write(offset, b);
  }

  #readReg(offset: number): number {
    const c = this.core;
    const q = c.selectedQueue();
    switch (offset) {
      case MmioReg.MAGIC_VALUE:
        return VIRTIO_MMIO_MAGIC;
      case MmioReg.VERSION:
        return 2;
      case MmioReg.DEVICE_ID:
        return c.device.deviceType;
      case MmioReg.VENDOR_ID:
        return this.vendorId;
      case MmioReg.DEVICE_FEATURES:
        return c.deviceFeatureWord();
      case MmioReg.QUEUE_NUM_MAX:
        return q?.maxSize ?? 0;
      case MmioReg.QUEUE_READY:
        return q?.ready ? 1 : 0;
      case MmioReg.INTERRUPT_STATUS:
        return Atomics.load(c.interruptStatus, 0);
      case MmioReg.STATUS:
        return c.status;
      case MmioReg.SHM_LEN_LOW:
      case MmioReg.SHM_LEN_HIGH:
      case MmioReg.SHM_BASE_LOW:
      case MmioReg.SHM_BASE_HIGH:
        return 0xffff_ffff; // no shared memory regions: length (and base) -1 (§4.2.2)
      case MmioReg.QUEUE_RESET:
        return 0;
      case MmioReg.CONFIG_GENERATION:
        return c.configGeneration;
      default:
        return 0; // write-only and reserved registers read as 0
    }
  }

  #writeReg(offset: number, v: number): void {
    const c = this.core;
    switch (offset) {
      case MmioReg.DEVICE_FEATURES_SEL:
        c.deviceFeatureSelect = v;
        return;
      case MmioReg.DRIVER_FEATURES:
        c.setDriverFeatureWord(v);
        return;
      case MmioReg.DRIVER_FEATURES_SEL:
        c.driverFeatureSelect = v;
        return;
      case MmioReg.QUEUE_SEL:
        c.queueSelect = v;
        return;
      case MmioReg.QUEUE_NUM:
        c.writeSelectedQueue((q) => {
          q.size = v;
        });
        return;
      case MmioReg.QUEUE_READY:
        c.setQueueReady(v === 1);
        return;
      case MmioReg.QUEUE_NOTIFY:
        // With VIRTIO_F_NOTIFICATION_DATA the upper bits carry more; the queue index is the low 16.
        c.notify(v & 0xffff);
        return;
      case MmioReg.INTERRUPT_ACK:
        c.ackInterruptStatus(v);
        this.#updateLine();
        return;
      case MmioReg.STATUS:
        c.writeStatus(v);
        return;
      case MmioReg.QUEUE_DESC_LOW:
        c.writeSelectedQueue((q) => {
          q.descLo = v;
        });
        return;
      case MmioReg.QUEUE_DESC_HIGH:
        c.writeSelectedQueue((q) => {
          q.descHi = v;
        });
        return;
      case MmioReg.QUEUE_DRIVER_LOW:
        c.writeSelectedQueue((q) => {
          q.driverLo = v;
        });
        return;
      case MmioReg.QUEUE_DRIVER_HIGH:
        c.writeSelectedQueue((q) => {
          q.driverHi = v;
        });
        return;
      case MmioReg.QUEUE_DEVICE_LOW:
        c.writeSelectedQueue((q) => {
          q.deviceLo = v;
        });
        return;
      case MmioReg.QUEUE_DEVICE_HIGH:
        c.writeSelectedQueue((q) => {
          q.deviceHi = v;
        });
        return;
      default:
        return; // read-only, SHMSel and reserved registers ignore writes
    }
  }

  /** Delivers queue `index`'s notification (the VMM's ioeventfd handler). */
  notifyQueue(index: number): void {
    this.core.notify(index);
  }

  /** Queue `index`'s doorbell: QueueNotify, shared by all queues, told apart by the value written. */
  queueNotifyRegion(index: number): QueueNotifyRegion {
    return {
      queue: index,
      space: "mmio",
      address: this.base + MmioReg.QUEUE_NOTIFY,
      length: 4,
      datamatch: index,
    };
  }

  #enable(index: number): void {
    if (this.#registered[index]) return;
    const r = this.queueNotifyRegion(index);
    this.#registered[index] = r;
    this.#hooks.queueNotifyEnabled?.(r);
  }

  #disable(index: number): void {
    const r = this.#registered[index];
    if (!r) return;
    this.#registered[index] = undefined;
    this.#hooks.queueNotifyDisabled?.(r);
  }

  /** Doorbells currently registered through the hooks. */
  liveNotifyRegions(): QueueNotifyRegion[] {
    return this.#registered.filter((r): r is QueueNotifyRegion => r !== undefined);
  }

  #interrupt(bit: number): void {
    this.core.setInterruptStatus(bit);
    this.#updateLine();
  }

  #updateLine(): void {
    const want = Atomics.load(this.core.interruptStatus, 0) !== 0;
    if (want === this.#raised) return;
    this.#raised = want;
    if (want) this.#irq?.raise();
    else this.#irq?.lower();
  }

  /** For an irqfd with a resample eventfd: re-raise the line if InterruptStatus is still set. */
  resampleIrq(): void {
    this.#raised = false;
    this.#updateLine();
  }

  get status(): number {
    return this.core.status;
  }

  get needsReset(): boolean {
    return (this.core.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
  }
}
