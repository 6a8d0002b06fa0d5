import type { GuestMemoryAccess } from "./memory.js";
import type { Queue } from "./queue.js";

/**
 * Interrupts a device raises towards the driver. The transport routes them
 * (MSI-X vector, INTx + ISR, or virtio-mmio InterruptStatus + line).
 */
export interface VirtioInterrupt {
  /** Used buffers were added to queue `index`; call after `queue.needsNotification()` said so. */
  signalQueue(index: number): void;
  /** The device configuration changed: bumps the config generation and notifies the driver. */
  signalConfig(): void;
}

/** One queue the driver enabled, handed to the device at activation. */
export interface ActiveQueue {
  index: number;
  queue: Queue;
  /** The MSI-X vector the driver gave this queue, or NO_VECTOR (0xffff) when MSI-X is not in use. */
  vector: number;
}

/** What a device gets when the driver sets DRIVER_OK. */
export interface ActivateContext {
  memory: GuestMemoryAccess;
  /** The features the driver accepted (includes VIRTIO_F_VERSION_1). */
  driverFeatures: bigint;
  /** The enabled queues, validated, in index order (disabled queues are absent). */
  queues: readonly ActiveQueue[];
  interrupt: VirtioInterrupt;
  /**
   * The interrupt status word (ISR / InterruptStatus) on a SharedArrayBuffer, for
   * devices that raise INTx-style interrupts from a worker: `Atomics.or(isr, 0, 1)`
   * then signal the line's irqfd. Not needed with MSI-X.
   */
  interruptStatus: Int32Array;
  /**
   * Marks the device broken: sets DEVICE_NEEDS_RESET and, if DRIVER_OK is set,
   * sends a configuration-change notification (§2.1.2). Later notifications are
   * ignored until the driver resets the device.
   */
  needsReset(reason: Error): void;
}

/**
 * A virtio device model, independent of the transport (rust-vmm's
 * `VirtioDevice`). A device package implements this; a transport
 * (`VirtioPciTransport`, `VirtioMmioTransport`) exposes it to the guest.
 */
export interface VirtioDevice {
  /** Virtio device type (§5), e.g. 2 for block. */
  readonly deviceType: number;
  /** One entry per queue: the largest size the device accepts (a power of two ≤ 32768). */
  readonly queueMaxSizes: readonly number[];
  /** Feature bits offered; the transport adds VIRTIO_F_VERSION_1. */
  readonly features: bigint;
  /** Size of the device-specific configuration space in bytes. */
  readonly configSize: number;
  /** PCI class code (class << 16 | subclass << 8 | prog-if); transports pick a default per device type. */
  readonly pciClassCode?: number;
  /** Reads device config bytes [offset, offset + data.length) into `data` (always within configSize). */
  readConfig(offset: number, data: Uint8Array): void;
  /** A driver write to device config (always within configSize). */
  writeConfig(offset: number, data: Uint8Array): void;
  /** Called when the driver sets FEATURES_OK with features the device offered; return false to refuse. */
  acceptFeatures?(features: bigint): boolean;
  /** The driver set DRIVER_OK. Throwing marks the device DEVICE_NEEDS_RESET. */
  activate(ctx: ActivateContext): void;
  /** The driver reset the device (status 0): stop all processing and drop the queues. */
  reset(): void;
  /**
   * The driver notified queue `index` (available buffers), on the thread that
   * handled the notify write. Devices that process in a worker (woken by an
   * ioeventfd) may leave this out or use it as a fallback.
   */
  queueNotify?(index: number): void;
}
