import {
  DeviceStatus,
  FeatureBit,
  feature,
  MAX_QUEUE_SIZE,
  NO_VECTOR,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
} from "./constants.js";
import type { ActivateContext, ActiveQueue, VirtioDevice, VirtioInterrupt } from "./device.js";
import type { GuestMemoryAccess } from "./memory.js";
import { Queue, type QueueConfig, validateQueueConfig } from "./queue.js";

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, DEVICE_NEEDS_RESET, FAILED } = DeviceStatus;
const TWO_32 = 0x1_0000_0000;
/** Features the transports do not implement: never offered, whatever the device says. */
export const UNSUPPORTED_FEATURES = feature(FeatureBit.RING_PACKED) | feature(FeatureBit.RING_RESET);

/** The per-queue registers a driver programs (common to PCI and MMIO). */
export interface QueueRegisters {
  readonly maxSize: number;
  size: number;
  ready: boolean;
  descLo: number;
  descHi: number;
  driverLo: number;
  driverHi: number;
  deviceLo: number;
  deviceHi: number;
  /** MSI-X vector (PCI), NO_VECTOR otherwise. */
  vector: number;
}

/** What the register-level transport does for the core. */
export interface TransportLink {
  /** Deliver a used-buffer interrupt for `queue` (whose vector is `vector`). */
  queueInterrupt(queue: number, vector: number): void;
  /** Deliver a configuration-change interrupt on `vector`. */
  configInterrupt(vector: number): void;
  /** Queue `index` was enabled by the driver: its notify address becomes live. */
  queueEnabled(index: number): void;
  /** Queue `index` was disabled (reset): its notify address is dead. */
  queueDisabled(index: number): void;
  /** The device was reset: drop interrupt state. */
  reset(): void;
}

/** One status write refused, for diagnostics. */
export interface StatusRejection {
  written: number;
  status: number;
  reason: string;
}

/**
 * Transport-independent device state (rust-vmm's `VirtioConfig`): device
 * status state machine, feature negotiation, queue registers, config
 * generation, interrupt status. {@link VirtioPciTransport} and
 * {@link VirtioMmioTransport} are register maps over it.
 */
export class VirtioTransportCore {
  readonly device: VirtioDevice;
  readonly memory: GuestMemoryAccess;
  readonly queues: QueueRegisters[];
  /** ISR (PCI) / InterruptStatus (MMIO) in a SharedArrayBuffer so a worker can set it. */
  readonly interruptStatus = new Int32Array(new SharedArrayBuffer(4));
  /** Why the last status write was refused (undefined after an accepted one). */
  lastRejection: StatusRejection | undefined;
  deviceFeatureSelect = 0;
  driverFeatureSelect = 0;
  queueSelect = 0;
  configVector = NO_VECTOR;
  #status = 0;
  #driverFeatures = 0n;
  #generation = 0;
  #activeQueues: ActiveQueue[] | undefined;
  #epoch = 0;
  #brokenReason: Error | undefined;
  #link: TransportLink;

  constructor(device: VirtioDevice, memory: GuestMemoryAccess, link: TransportLink) {
    for (const m of device.queueMaxSizes) {
      if (!Number.isInteger(m) || m < 1 || m > MAX_QUEUE_SIZE || (m & (m - 1)) !== 0)
        throw new RangeError(`queue max size ${m} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    if (device.queueMaxSizes.length > 0xffff) throw new RangeError("too many queues");
    this.device = device;
    this.memory = memory;
    this.#link = link;
    this.queues = device.queueMaxSizes.map((maxSize) => ({
      maxSize,
      size: maxSize,
      ready: false,
      descLo: 0,
      descHi: 0,
      driverLo: 0,
      driverHi: 0,
      deviceLo: 0,
      deviceHi: 0,
      vector: NO_VECTOR,
    }));
  }

  /** Features offered to the driver: the device's plus VIRTIO_F_VERSION_1, less {@link UNSUPPORTED_FEATURES}. */
  get deviceFeatures(): bigint {
    return (BigInt.asUintN(64, this.device.features) | VIRTIO_F_VERSION_1) & ~UNSUPPORTED_FEATURES;
  }

  get status(): number {
    return this.#status;
  }

  /** Features written by the driver so far (accepted ones once FEATURES_OK is set). */
  get driverFeatures(): bigint {
    return this.#driverFeatures;
  }

  get configGeneration(): number {
    return this.#generation;
  }

  /** True between a successful DRIVER_OK and the next reset. */
  get activated(): boolean {
    return this.#activeQueues !== undefined;
  }

  /** Why the device was marked DEVICE_NEEDS_RESET, if it was (or why its last reset failed). */
  get brokenReason(): Error | undefined {
    return this.#brokenReason;
  }

  /** The queues given to the device at activation. */
  get activeQueues(): readonly ActiveQueue[] {
    return this.#activeQueues ?? [];
  }

  /** 32 bits of the offered features, selected by `deviceFeatureSelect`. */
  deviceFeatureWord(): number {
    return featureWord(this.deviceFeatures, this.deviceFeatureSelect);
  }

  driverFeatureWord(): number {
    return featureWord(this.#driverFeatures, this.driverFeatureSelect);
  }

  /** Sets 32 bits of the driver features; ignored once FEATURES_OK is set or before DRIVER. */
  setDriverFeatureWord(v: number): void {
    if (this.#status & (FEATURES_OK | FAILED) || !(this.#status & DRIVER)) return;
    const sel = this.driverFeatureSelect;
    if (sel > 1) return; // only 64 feature bits exist in this implementation
    const shift = BigInt(sel * 32);
    const mask = 0xffff_ffffn << shift;
    this.#driverFeatures = (this.#driverFeatures & ~mask) | (BigInt(v >>> 0) << shift);
  }

  /** The registers of the queue picked by `queueSelect`, or undefined when it names no queue. */
  selectedQueue(): QueueRegisters | undefined {
    return this.queues[this.queueSelect];
  }

  /** Whether the driver may change queue registers now (§3.1.1 step 7: after FEATURES_OK, before DRIVER_OK). */
  get queueConfigWritable(): boolean {
    const s = this.#status;
    return (s & FEATURES_OK) !== 0 && (s & (DRIVER_OK | FAILED | DEVICE_NEEDS_RESET)) === 0;
  }

  /** Applies `set` to the selected queue if it exists, is not enabled, and the status allows queue setup. */
  writeSelectedQueue(set: (q: QueueRegisters) => void): void {
    const q = this.selectedQueue();
    if (!q || q.ready || !this.queueConfigWritable) return;
    set(q);
  }

  /** queue_enable / QueueReady. */
  setQueueReady(ready: boolean): void {
    const q = this.selectedQueue();
    if (!q) return;
    const index = this.queueSelect;
    if (ready) {
      if (q.ready || !this.queueConfigWritable) return;
      q.ready = true;
      this.#link.queueEnabled(index);
    } else if (q.ready && !this.activated) {
      q.ready = false;
      this.#link.queueDisabled(index);
    }
  }

  /** The driver wrote the device status register. */
  writeStatus(value: number): void {
    // Bits the spec does not define (16, 32) are dropped.
    const written = value & (ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK | DEVICE_NEEDS_RESET | FAILED);
    if ((value & 0xff) === 0) {
      this.reset();
      return;
    }
    const old = this.#status;
    // DEVICE_NEEDS_RESET belongs to the device: keep it as it is whatever the driver writes.
    const next = (written & ~DEVICE_NEEDS_RESET) | (old & DEVICE_NEEDS_RESET);
    const why = transitionError(old, next);
    if (why !== undefined) {
      this.lastRejection = { written, status: old, reason: why };
      return;
    }
    const added = next & ~old;
    if (added === 0 || added & FAILED) {
      this.#status = next;
      this.lastRejection = undefined;
      return;
    }
    let status = next;
    if (added & FEATURES_OK) {
      const why = this.#checkFeatures(this.#driverFeatures);
      if (why !== undefined) {
        // Leave FEATURES_OK clear: the driver reads the status back and gives up (§3.1.1).
        status &= ~FEATURES_OK;
        if (status & DRIVER_OK) status &= ~DRIVER_OK;
        this.#status = status;
        this.lastRejection = { written, status: old, reason: why };
        return;
      }
    }
    this.#status = status;
    this.lastRejection = undefined;
    if (added & DRIVER_OK && !(status & DEVICE_NEEDS_RESET)) this.#activate();
  }

  #checkFeatures(f: bigint): string | undefined {
    const offered = this.deviceFeatures;
    const extra = f & ~offered;
    if (extra !== 0n) return `driver accepted features the device did not offer: 0x${extra.toString(16)}`;
    if (!(f & VIRTIO_F_VERSION_1))
      return "VIRTIO_F_VERSION_1 not accepted (legacy drivers are not supported)";
    if (!this.device.acceptFeatures) return undefined;
    try {
      if (!this.device.acceptFeatures(f)) return "the device refused this feature set";
    } catch (e) {
      return `the device failed to check this feature set: ${e instanceof Error ? e.message : String(e)}`;
    }
    return undefined;
  }

  #activate(): void {
    const eventIdx = (this.#driverFeatures & VIRTIO_F_EVENT_IDX) !== 0n;
    const active: ActiveQueue[] = [];
    for (let index = 0; index < this.queues.length; index++) {
      const r = this.queues[index]!;
      if (!r.ready) continue;
      const config: QueueConfig = {
        size: r.size,
        maxSize: r.maxSize,
        descTable: r.descHi * TWO_32 + r.descLo,
        availRing: r.driverHi * TWO_32 + r.driverLo,
        usedRing: r.deviceHi * TWO_32 + r.deviceLo,
        eventIdx,
      };
      const err = validateQueueConfig(this.memory, config);
      if (err) {
        err.message = `queue ${index}: ${err.message}`;
        this.needsReset(err);
        return;
      }
      active.push({ index, queue: new Queue(this.memory, config), vector: r.vector });
    }
    const epoch = ++this.#epoch;
    const live = (): boolean => epoch === this.#epoch && !(this.#status & DEVICE_NEEDS_RESET);
    const interrupt: VirtioInterrupt = {
      signalQueue: (index) => {
        const q = this.queues[index];
        if (q && live()) this.#link.queueInterrupt(index, q.vector);
      },
      signalConfig: () => {
        if (epoch !== this.#epoch) return;
        this.#generation = (this.#generation + 1) >>> 0;
        this.#link.configInterrupt(this.configVector);
      },
    };
    const ctx: ActivateContext = {
      memory: this.memory,
      driverFeatures: this.#driverFeatures,
      queues: active,
      interrupt,
      interruptStatus: this.interruptStatus,
      needsReset: (reason) => {
        if (epoch === this.#epoch) this.needsReset(reason);
      },
    };
    this.#activeQueues = active;
    try {
      this.device.activate(ctx);
    } catch (e) {
      this.needsReset(e instanceof Error ? e : new Error(String(e)));
    }
  }

  /**
   * Marks the device broken (DEVICE_NEEDS_RESET) and, once DRIVER_OK is set,
   * sends a configuration-change interrupt (§2.1.2). Notifications are ignored
   * until the driver resets the device.
   */
  needsReset(reason: Error): void {
    if (this.#status & DEVICE_NEEDS_RESET) return;
    this.#status |= DEVICE_NEEDS_RESET;
    this.#brokenReason = reason;
    if (this.#status & DRIVER_OK) this.#link.configInterrupt(this.configVector);
  }

  /** Bumps the config generation and interrupts the driver (device config changed). */
  configChanged(): void {
    this.#generation = (this.#generation + 1) >>> 0;
    if (this.#status & DRIVER_OK) this.#link.configInterrupt(this.configVector);
  }

  /**
   * The driver notified queue `index`: forwarded to the device once it is
   * running. An exception from the device marks it DEVICE_NEEDS_RESET (see
   * {@link brokenReason}) instead of unwinding into the VMM's exit handler.
   */
  notify(index: number): void {
    const q = this.queues[index];
    if (!q?.ready || !this.activated || this.#status & (DEVICE_NEEDS_RESET | FAILED)) return;
    this.#guard(() => this.device.queueNotify?.(index));
  }

  #guard(call: () => void): void {
    try {
      call();
    } catch (e) {
      this.needsReset(e instanceof Error ? e : new Error(String(e)));
    }
  }

  /** Reads device config, zero outside `configSize` (and if the device throws). */
  readDeviceConfig(offset: number, data: Uint8Array): void {
    data.fill(0);
    const size = this.device.configSize;
    if (offset >= size || offset < 0) return;
    const n = Math.min(data.length, size - offset);
    this.#guard(() => this.device.readConfig(offset, data.subarray(0, n)));
  }

  /** Writes device config, dropping bytes outside `configSize`. */
  writeDeviceConfig(offset: number, data: Uint8Array): void {
    const size = this.device.configSize;
    if (offset >= size || offset < 0) return;
    const n = Math.min(data.length, size - offset);
    this.#guard(() => this.device.writeConfig(offset, data.subarray(0, n)));
  }

  /** Sets bits in the interrupt status word. */
  setInterruptStatus(bits: number): void {
    Atomics.or(this.interruptStatus, 0, bits);
  }

  /** Reads and clears the interrupt status (PCI ISR read). */
  takeInterruptStatus(): number {
    return Atomics.exchange(this.interruptStatus, 0, 0);
  }

  /** Clears `bits` (MMIO InterruptACK); returns what is left. */
  ackInterruptStatus(bits: number): number {
    return Atomics.and(this.interruptStatus, 0, ~bits) & ~bits;
  }

  /** Device reset (status 0): stops the device, forgets the negotiation and the queues. */
  reset(): void {
    this.#epoch++;
    // A device that fails to reset (e.g. its worker is gone) must not take the register write
    // with it: the transport resets anyway, and the failure is kept in brokenReason.
    let failed: Error | undefined;
    try {
      this.device.reset();
    } catch (e) {
      failed = e instanceof Error ? e : new Error(String(e));
    }
    const wasReady = this.queues.map((q) => q.ready);
    for (const q of this.queues) {
      q.size = q.maxSize;
      q.ready = false;
      q.descLo = q.descHi = q.driverLo = q.driverHi = q.deviceLo = q.deviceHi = 0;
      q.vector = NO_VECTOR;
    }
    this.#activeQueues = undefined;
    this.#brokenReason = failed;
    this.#status = 0;
    this.#driverFeatures = 0n;
    this.deviceFeatureSelect = 0;
    this.driverFeatureSelect = 0;
    this.queueSelect = 0;
    this.configVector = NO_VECTOR;
    this.lastRejection = undefined;
    Atomics.store(this.interruptStatus, 0, 0);
    wasReady.forEach((ready, i) => {
      if (ready) this.#link.queueDisabled(i);
    });
    this.#link.reset();
  }
}

/** Why the driver may not move the status from `old` to `next`, or undefined if it may. */
function transitionError(old: number, next: number): string | undefined {
  if (old & ~next & ~DEVICE_NEEDS_RESET) return "the driver may not clear status bits (write 0 to reset)";
  const added = next & ~old;
  if (added === 0 || added & FAILED) return undefined;
  if (old & FAILED) return "FAILED is set: reset first";
  if (next & DRIVER && !(next & ACKNOWLEDGE)) return "DRIVER needs ACKNOWLEDGE";
  if (next & FEATURES_OK && !(next & DRIVER)) return "FEATURES_OK needs DRIVER";
  if (next & DRIVER_OK && !(next & FEATURES_OK)) return "DRIVER_OK needs FEATURES_OK";
  return undefined;
}

function featureWord(f: bigint, select: number): number {
  if (select < 0 || select > 1) return 0;
  return Number((f >> BigInt(select * 32)) & 0xffff_ffffn);
}
