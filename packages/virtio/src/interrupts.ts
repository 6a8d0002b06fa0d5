/** Where MSI-X interrupts go: the VMM maps each vector to an irqfd (or KVM_SIGNAL_MSI). */
export interface MsixSink {
  signalVector(vector: number): void;
}

/**
 * A level-triggered INTx / virtio-mmio interrupt line. The transport sets its
 * ISR (InterruptStatus) bits, then calls `raise()`; it calls `lower()` when the
 * driver has read (PCI) or acknowledged (MMIO) every bit.
 */
export interface IntxLine {
  raise(): void;
  lower(): void;
}

/** An MSI message as the guest programmed it in the MSI-X table. */
export interface MsiMessage {
  /** 64-bit message address (upper dword included). */
  address: bigint;
  data: number;
}

/**
 * Where a queue's notification (doorbell) lands, for registering an ioeventfd:
 * shaped like kvm-core's `IoeventfdOptions` plus the queue and, for PCI, the
 * BAR-relative position.
 */
export interface QueueNotifyRegion {
  queue: number;
  space: "mmio";
  /** Guest-physical address of the doorbell. */
  address: number;
  /** Access width to match; 0 matches any width. */
  length: 0 | 2 | 4;
  /** Match only this written value (when several queues share the address). */
  datamatch?: number;
  /** PCI only: the BAR and offset in it. */
  bar?: number;
  barOffset?: number;
}

/** Hooks a transport calls so the VMM can wire ioeventfds for queue notifications. */
export interface NotifyHooks {
  /** The driver enabled a queue (and, for PCI, the BAR is mapped): register an ioeventfd here. */
  queueNotifyEnabled?(region: QueueNotifyRegion): void;
  /** The region is dead (device reset, queue disabled, BAR moved or unmapped): unregister it. */
  queueNotifyDisabled?(region: QueueNotifyRegion): void;
}
