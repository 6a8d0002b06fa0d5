/**
 * Typed errors for everything a guest can get wrong in a virtqueue, modelled on
 * rust-vmm's `virtio_queue::Error`. Each has a literal `kind` (narrowable) and
 * its own class (for `instanceof` / `toThrow(Class)`).
 *
 * `fatal` tells a device what to do:
 * - false: only this request is malformed. The chain's head (`head`) was
 *   consumed; return it with `queue.addUsed(head, 0)` and go on.
 * - true: the queue itself is unusable (bad ring layout, avail index running
 *   away, a head index outside the table). Stop using it and mark the device
 *   DEVICE_NEEDS_RESET (`ActivateContext.needsReset`).
 */
export abstract class VirtqueueError extends Error {
  abstract readonly kind: VirtqueueErrorKind;
  abstract readonly fatal: boolean;
  /** Head index of the (already popped) chain this error belongs to, if any. */
  head: number | undefined;
  constructor(message: string, head?: number) {
    super(message);
    this.head = head;
    this.name = new.target.name;
  }
}

export type VirtqueueErrorKind =
  | "InvalidQueueSize"
  | "InvalidRingAddress"
  | "InvalidRingAlignment"
  | "InvalidAvailRingIndex"
  | "InvalidHeadIndex"
  | "InvalidUsedElement"
  | "InvalidDescriptorIndex"
  | "ChainTooLong"
  | "InvalidDescriptorAddress"
  | "DescriptorChainOverflow"
  | "ReadableAfterWritable"
  | "NestedIndirectDescriptor"
  | "IndirectWithNext"
  | "InvalidIndirectDescriptorTable"
  | "UnexpectedDescriptorDirection"
  | "BufferTooShort"
  | "SplitOutOfBounds";

export type VirtqueueRing = "descriptor table" | "available ring" | "used ring";

const hex = (n: number): string => `0x${n.toString(16)}`;

// ---- queue configuration (fatal) ----

/** Queue size 0, above the maximum, or not a power of two (§2.7). */
export class InvalidQueueSizeError extends VirtqueueError {
  readonly kind = "InvalidQueueSize";
  readonly fatal = true;
  constructor(
    readonly size: number,
    readonly maxSize: number,
  ) {
    super(`queue size ${size} is not a power of two in 1..${maxSize}`);
  }
}

/** A ring does not lie entirely in guest RAM. */
export class InvalidRingAddressError extends VirtqueueError {
  readonly kind = "InvalidRingAddress";
  readonly fatal = true;
  constructor(
    readonly ring: VirtqueueRing,
    readonly address: number,
    readonly length: number,
  ) {
    super(`${ring} at ${hex(address)}+${length} is not in guest memory`);
  }
}

/** A ring breaks its alignment (descriptor table 16, available ring 2, used ring 4; §2.7). */
export class InvalidRingAlignmentError extends VirtqueueError {
  readonly kind = "InvalidRingAlignment";
  readonly fatal = true;
  constructor(
    readonly ring: VirtqueueRing,
    readonly address: number,
    readonly alignment: number,
  ) {
    super(`${ring} at ${hex(address)} is not ${alignment}-byte aligned`);
  }
}

// ---- ring state (fatal) ----

/** The available index moved more than the queue size past the device's position. */
export class InvalidAvailRingIndexError extends VirtqueueError {
  readonly kind = "InvalidAvailRingIndex";
  readonly fatal = true;
  constructor(
    readonly availIdx: number,
    readonly nextAvail: number,
    readonly size: number,
  ) {
    super(
      `avail idx ${availIdx} is ${(availIdx - nextAvail) & 0xffff} entries ahead of ${nextAvail} (queue size ${size})`,
    );
  }
}

/** The available ring names a head descriptor outside the table. */
export class InvalidHeadIndexError extends VirtqueueError {
  readonly kind = "InvalidHeadIndex";
  readonly fatal = true;
  constructor(
    readonly index: number,
    readonly size: number,
  ) {
    super(`available ring head ${index} is outside the descriptor table (size ${size})`);
  }
}

/** The device tried to put an impossible element in the used ring (a device bug). */
export class InvalidUsedElementError extends VirtqueueError {
  readonly kind = "InvalidUsedElement";
  readonly fatal = true;
  constructor(
    readonly id: number,
    readonly len: number,
    readonly size: number,
  ) {
    super(`used element id ${id} len ${len} is invalid for queue size ${size}`);
  }
}

// ---- one chain (not fatal: fail the request) ----

/** A `next` field points outside the (direct or indirect) descriptor table. */
export class InvalidDescriptorIndexError extends VirtqueueError {
  readonly kind = "InvalidDescriptorIndex";
  readonly fatal = false;
  constructor(
    readonly index: number,
    readonly tableSize: number,
    head?: number,
  ) {
    super(`descriptor index ${index} is outside the table (size ${tableSize})`, head);
  }
}

/** The chain has more descriptors than its table (a loop, or a chain longer than the queue). */
export class ChainTooLongError extends VirtqueueError {
  readonly kind = "ChainTooLong";
  readonly fatal = false;
  constructor(
    readonly limit: number,
    head?: number,
  ) {
    super(`descriptor chain is longer than ${limit} descriptors (loop?)`, head);
  }
}

/** A buffer does not lie entirely in guest RAM (or its address does not fit in 53 bits). */
export class InvalidDescriptorAddressError extends VirtqueueError {
  readonly kind = "InvalidDescriptorAddress";
  readonly fatal = false;
  constructor(
    readonly address: number,
    readonly length: number,
    head?: number,
  ) {
    super(`buffer ${hex(address)}+${length} is not in guest memory`, head);
  }
}

/** The buffers add up to more than 2^32-1 bytes (§2.7.5.2). */
export class DescriptorChainOverflowError extends VirtqueueError {
  readonly kind = "DescriptorChainOverflow";
  readonly fatal = false;
  constructor(head?: number) {
    super("descriptor chain is longer than 2^32-1 bytes", head);
  }
}

/** A device-readable descriptor after a device-writable one (§2.7.4.2). */
export class ReadableAfterWritableError extends VirtqueueError {
  readonly kind = "ReadableAfterWritable";
  readonly fatal = false;
  constructor(
    readonly index: number,
    head?: number,
  ) {
    super(`readable descriptor ${index} follows a writable one`, head);
  }
}

/** VIRTQ_DESC_F_INDIRECT inside an indirect table (§2.7.5.3.1). */
export class NestedIndirectDescriptorError extends VirtqueueError {
  readonly kind = "NestedIndirectDescriptor";
  readonly fatal = false;
  constructor(
    readonly index: number,
    head?: number,
  ) {
    super(`indirect descriptor ${index} inside an indirect table`, head);
  }
}

/** VIRTQ_DESC_F_INDIRECT together with VIRTQ_DESC_F_NEXT (§2.7.5.3.1). */
export class IndirectWithNextError extends VirtqueueError {
  readonly kind = "IndirectWithNext";
  readonly fatal = false;
  constructor(
    readonly index: number,
    head?: number,
  ) {
    super(`descriptor ${index} has both INDIRECT and NEXT`, head);
  }
}

/** An indirect table that is empty, not a multiple of 16 bytes, too large, or not in RAM. */
export class InvalidIndirectDescriptorTableError extends VirtqueueError {
  readonly kind = "InvalidIndirectDescriptorTable";
  readonly fatal = false;
  constructor(
    readonly address: number,
    readonly length: number,
    readonly reason: string,
    head?: number,
  ) {
    super(`indirect table ${hex(address)}+${length}: ${reason}`, head);
  }
}

// ---- what a device expects of a chain (not fatal) ----

/** The chain has buffers in a direction the device does not accept for this queue. */
export class UnexpectedDescriptorDirectionError extends VirtqueueError {
  readonly kind = "UnexpectedDescriptorDirection";
  readonly fatal = false;
  constructor(
    readonly expected: "readable" | "writable",
    head?: number,
  ) {
    super(
      `chain has ${expected === "readable" ? "writable" : "readable"} buffers; only ${expected} expected`,
      head,
    );
  }
}

/** A read or write past the end of the chain's readable or writable part. */
export class BufferTooShortError extends VirtqueueError {
  readonly kind = "BufferTooShort";
  readonly fatal = false;
  constructor(
    readonly direction: "readable" | "writable",
    readonly needed: number,
    readonly available: number,
    head?: number,
  ) {
    super(`needed ${needed} ${direction} bytes, chain has ${available} left`, head);
  }
}

/** `splitAt` beyond the end of a reader or writer. */
export class SplitOutOfBoundsError extends VirtqueueError {
  readonly kind = "SplitOutOfBounds";
  readonly fatal = false;
  constructor(
    readonly offset: number,
    readonly available: number,
    head?: number,
  ) {
    super(`split at ${offset} is beyond ${available} bytes`, head);
  }
}
