import { DescriptorChain } from "./chain.js";
import {
  MAX_QUEUE_SIZE,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from "./constants.js";
import {
  ChainTooLongError,
  DescriptorChainOverflowError,
  IndirectWithNextError,
  InvalidAvailRingIndexError,
  InvalidDescriptorAddressError,
  InvalidDescriptorIndexError,
  InvalidHeadIndexError,
  InvalidIndirectDescriptorTableError,
  InvalidQueueSizeError,
  InvalidRingAddressError,
  InvalidRingAlignmentError,
  InvalidUsedElementError,
  NestedIndirectDescriptorError,
  ReadableAfterWritableError,
  type VirtqueueError,
} from "./errors.js";
import type { GuestMemoryAccess } from "./memory.js";
import { GuestRange } from "./ring.js";

/**
 * Everything needed to rebuild a queue, as plain data: post it to a worker and
 * call {@link Queue.fromState} there over that worker's own view of the memory.
 */
export interface QueueState {
  /** Queue size negotiated with the driver (a power of two). */
  size: number;
  /** Guest-physical addresses of the descriptor table, available ring and used ring. */
  descTable: number;
  availRing: number;
  usedRing: number;
  /** Device position in the available ring (free-running 16-bit). */
  nextAvail: number;
  /** Device position in the used ring (free-running 16-bit). */
  nextUsed: number;
  /** VIRTIO_F_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** Largest size the device accepts (defaults to 32768). */
  maxSize?: number;
}

/** What {@link Queue} needs from a transport: addresses and size; positions default to 0. */
export type QueueConfig = Omit<QueueState, "nextAvail" | "nextUsed" | "eventIdx"> &
  Partial<Pick<QueueState, "nextAvail" | "nextUsed" | "eventIdx">>;

/** Byte sizes of the split-ring parts for `size` entries (§2.7). */
export function splitRingSizes(size: number): { descTable: number; availRing: number; usedRing: number } {
  return { descTable: 16 * size, availRing: 6 + 2 * size, usedRing: 6 + 8 * size };
}

/**
 * Checks a queue configuration against the spec and the memory; returns the
 * first problem as a typed error, or undefined when the queue is usable.
 */
export function validateQueueConfig(memory: GuestMemoryAccess, c: QueueConfig): VirtqueueError | undefined {
  const max = c.maxSize ?? MAX_QUEUE_SIZE;
  const size = c.size;
  if (!Number.isInteger(size) || size < 1 || size > max || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0)
    return new InvalidQueueSizeError(size, Math.min(max, MAX_QUEUE_SIZE));
  const sizes = splitRingSizes(size);
  const rings = [
    ["descriptor table", c.descTable, sizes.descTable, 16],
    ["available ring", c.availRing, sizes.availRing, 2],
    ["used ring", c.usedRing, sizes.usedRing, 4],
  ] as const;
  for (const [ring, address, length, align] of rings) {
    if (!memory.isValidRange(address, length)) return new InvalidRingAddressError(ring, address, length);
    if (address % align !== 0) return new InvalidRingAlignmentError(ring, address, align);
  }
  return undefined;
}

const MAX_INDIRECT_DESCRIPTORS = 0xffff;
const TWO_32 = 0x1_0000_0000;
/** High address word at or above this makes the address exceed 2^53. */
const SAFE_HIGH_LIMIT = 0x20_0000;

/**
 * The device side of a split virtqueue (§2.7) over guest memory, modelled on
 * rust-vmm's `virtio_queue::Queue`. Every guest mistake becomes a typed
 * {@link VirtqueueError}; nothing here reads or writes outside guest RAM, and
 * every loop is bounded by the queue (or indirect table) size.
 */
export class Queue {
  readonly memory: GuestMemoryAccess;
  readonly size: number;
  readonly maxSize: number;
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  readonly eventIdx: boolean;
  readonly #desc: GuestRange;
  readonly #avail: GuestRange;
  readonly #used: GuestRange;
  readonly #mask: number;
  #nextAvail: number;
  #nextUsed: number;
  #numAdded = 0;
  #notifications = true;
  /**
   * Notifications are on and were published behind a full fence with the ring
   * then found empty: until the next pop, a chain the driver adds is either
   * seen by {@link pending} or followed by a notification, so "empty" needs no
   * further fence.
   */
  #armed = false;
  #broken: VirtqueueError | undefined;

  /** Validates the configuration; throws the {@link VirtqueueError} of {@link validateQueueConfig}. */
  constructor(memory: GuestMemoryAccess, config: QueueConfig) {
    const err = validateQueueConfig(memory, config);
    if (err) throw err;
    this.memory = memory;
    this.size = config.size;
    this.maxSize = config.maxSize ?? MAX_QUEUE_SIZE;
    this.descTable = config.descTable;
    this.availRing = config.availRing;
    this.usedRing = config.usedRing;
    this.eventIdx = config.eventIdx ?? false;
    this.#nextAvail = (config.nextAvail ?? 0) & 0xffff;
    this.#nextUsed = (config.nextUsed ?? 0) & 0xffff;
    this.#mask = this.size - 1;
    const sizes = splitRingSizes(this.size);
    this.#desc = new GuestRange(memory, this.descTable, sizes.descTable);
    this.#avail = new GuestRange(memory, this.availRing, sizes.availRing);
    this.#used = new GuestRange(memory, this.usedRing, sizes.usedRing);
  }

  /** Rebuilds a queue from {@link Queue#state | state()} (e.g. in a worker, over that worker's memory view). */
  static fromState(state: QueueState, memory: GuestMemoryAccess): Queue {
    return new Queue(memory, state);
  }

  /** The queue as plain, cloneable data. */
  state(): QueueState {
    return {
      size: this.size,
      descTable: this.descTable,
      availRing: this.availRing,
      usedRing: this.usedRing,
      nextAvail: this.#nextAvail,
      nextUsed: this.#nextUsed,
      eventIdx: this.eventIdx,
      maxSize: this.maxSize,
    };
  }

  get nextAvail(): number {
    return this.#nextAvail;
  }
  set nextAvail(v: number) {
    this.#nextAvail = v & 0xffff;
    this.#armed = false;
  }
  get nextUsed(): number {
    return this.#nextUsed;
  }
  set nextUsed(v: number) {
    this.#nextUsed = v & 0xffff;
  }

  /** The fatal error that stopped this queue, if any. */
  get broken(): VirtqueueError | undefined {
    return this.#broken;
  }

  #fail(e: VirtqueueError): never {
    this.#broken = e;
    throw e;
  }

  /** The driver's `avail.idx` (read from guest memory every call). */
  availIdx(): number {
    return this.#avail.u16(2);
  }

  availFlags(): number {
    return this.#avail.u16(0);
  }

  /** `used_event` (meaningful with VIRTIO_F_EVENT_IDX). */
  usedEvent(): number {
    return this.#avail.u16(4 + 2 * this.size);
  }

  /** The device's `used.idx` as stored in guest memory. */
  usedIdx(): number {
    return this.#used.u16(2);
  }

  /** `avail_event` as stored in guest memory. */
  availEvent(): number {
    return this.#used.u16(4 + 8 * this.size);
  }

  usedFlags(): number {
    return this.#used.u16(0);
  }

  /**
   * How many chains the driver has made available and the device not yet
   * popped. Throws (fatal) {@link InvalidAvailRingIndexError} if the driver's
   * index is more than the queue size ahead.
   */
  pending(): number {
    if (this.#broken) throw this.#broken;
    const idx = this.#avail.u16(2);
    const n = (idx - this.#nextAvail) & 0xffff;
    if (n > this.size) this.#fail(new InvalidAvailRingIndexError(idx, this.#nextAvail, this.size));
    return n;
  }

  /**
   * The next available chain, validated, or null when there is none.
   * Throws a {@link VirtqueueError}: if `fatal`, the queue is now broken (every
   * later call throws it again); if not, the chain (`err.head`) was consumed and
   * should be returned with `addUsed(err.head, 0)`.
   */
  pop(): DescriptorChain | null {
    if (this.pending() === 0) return null;
    return this.#take();
  }

  /**
   * The usual way for a device to drain a queue (Firecracker's
   * `pop_or_enable_notification`): the next available chain, with
   * available-buffer notifications suppressed while chains keep coming; or,
   * when the ring is empty, null with notifications enabled again — after
   * re-checking the ring behind a full fence (see {@link enableNotification}),
   * so a chain the driver added just before it saw notifications back on is
   * returned here rather than left waiting for a kick that never comes.
   *
   * ```ts
   * for (let c = q.popOrEnableNotification(); c; c = q.popOrEnableNotification()) serve(c);
   * if (q.needsNotification()) signal();
   * ```
   *
   * A device that stops early (a budget) calls {@link enableNotification} and
   * comes back if it returns true. Errors are those of {@link pop}.
   */
  popOrEnableNotification(): DescriptorChain | null {
    if (this.pending() === 0) {
      if (this.#armed || !this.enableNotification()) return null;
      // The driver added a chain while notifications were being re-enabled: serve it, silenced.
    }
    if (this.#notifications) this.disableNotification();
    return this.#take();
  }

  /** Consumes the chain at `nextAvail` (the caller saw it pending). */
  #take(): DescriptorChain {
    const slot = this.#nextAvail & this.#mask;
    const head = this.#avail.u16(4 + 2 * slot);
    if (head >= this.size) this.#fail(new InvalidHeadIndexError(head, this.size));
    this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
    this.#armed = false;
    if (this.eventIdx && this.#notifications) this.#used.setU16(4 + 8 * this.size, this.#nextAvail);
    return this.#walk(head);
  }

  /** Undoes the last {@link pop} (the chain will be popped again). */
  undoPop(): void {
    this.#nextAvail = (this.#nextAvail - 1) & 0xffff;
    this.#armed = false;
  }

  #walk(head: number): DescriptorChain {
    const memory = this.memory;
    const addresses: number[] = [];
    const lengths: number[] = [];
    let writableStart = -1;
    let readable = 0;
    let writable = 0;
    let table = this.#desc;
    let tableSize = this.size;
    let index = head;
    let count = 0;
    let indirect = false;
    for (;;) {
      if (index >= tableSize) throw new InvalidDescriptorIndexError(index, tableSize, head);
      // A loop is cut at the size of its table; and no chain, direct or indirect, may have more
      // buffers than the queue has entries (§2.7.5.3.1: the driver MUST NOT), which bounds what
      // one chain costs to walk and to hold.
      if (count === tableSize) throw new ChainTooLongError(tableSize, head);
      if (addresses.length === this.size) throw new ChainTooLongError(this.size, head);
      count++;
      const o = index * 16;
      const lo = table.u32(o);
      const hi = table.u32(o + 4);
      const len = table.u32(o + 8);
      const flags = table.u16(o + 12);
      const next = table.u16(o + 14);
      const address = hi * TWO_32 + lo;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (indirect) throw new NestedIndirectDescriptorError(index, head);
        if (flags & VIRTQ_DESC_F_NEXT) throw new IndirectWithNextError(index, head);
        if (len === 0 || len % 16 !== 0)
          throw new InvalidIndirectDescriptorTableError(
            address,
            len,
            "length is not a non-zero multiple of 16",
            head,
          );
        if (len / 16 > MAX_INDIRECT_DESCRIPTORS)
          throw new InvalidIndirectDescriptorTableError(address, len, "more than 65535 descriptors", head);
        if (hi >= SAFE_HIGH_LIMIT || !memory.isValidRange(address, len))
          throw new InvalidIndirectDescriptorTableError(address, len, "not in guest memory", head);
        // The WRITE flag of the descriptor pointing at the table is ignored (§2.7.5.3.2).
        table = new GuestRange(memory, address, len);
        tableSize = len / 16;
        index = 0;
        count = 0;
        indirect = true;
        continue;
      }
      // Zero-length buffers too: every address a chain hands out is RAM (a device may pass it to
      // memory.view / segments as is).
      if (hi >= SAFE_HIGH_LIMIT || !memory.isValidRange(address, len))
        throw new InvalidDescriptorAddressError(address, len, head);
      if (flags & VIRTQ_DESC_F_WRITE) {
        if (writableStart < 0) writableStart = addresses.length;
        writable += len;
      } else {
        if (writableStart >= 0) throw new ReadableAfterWritableError(index, head);
        readable += len;
      }
      if (readable + writable >= TWO_32) throw new DescriptorChainOverflowError(head);
      addresses.push(address);
      lengths.push(len);
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      index = next;
    }
    if (writableStart < 0) writableStart = addresses.length;
    return new DescriptorChain(memory, head, addresses, lengths, writableStart, readable, writable, indirect);
  }

  /**
   * Puts `(head, len)` in the used ring and publishes the new `used.idx`.
   * `len` is the number of bytes the device wrote into the chain.
   */
  addUsed(head: number, len: number): void {
    if (
      !Number.isInteger(head) ||
      head < 0 ||
      head >= this.size ||
      !Number.isInteger(len) ||
      len < 0 ||
      len >= TWO_32
    )
      throw new InvalidUsedElementError(head, len, this.size);
    const o = 4 + 8 * (this.#nextUsed & this.#mask);
    this.#used.setU32(o, head);
    this.#used.setU32(o + 4, len);
    this.#nextUsed = (this.#nextUsed + 1) & 0xffff;
    this.#used.setU16(2, this.#nextUsed);
    this.#numAdded++;
  }

  /**
   * Whether the driver wants a used-buffer notification for the entries added
   * since the last call (§2.7.10): without EVENT_IDX, unless the driver set
   * VIRTQ_AVAIL_F_NO_INTERRUPT; with it, when `used_event` lies in the range
   * just added (`vring_need_event`). Resets the count of added entries.
   *
   * A full fence comes first, so the new `used.idx` is visible to the driver
   * before `used_event` / the flags are read: a driver that updated them after
   * this read sees the used entries itself. Callers need no fence of their own.
   */
  needsNotification(): boolean {
    const added = this.#numAdded;
    this.#numAdded = 0;
    if (added === 0) return false;
    fullFence();
    if (this.eventIdx) {
      const newIdx = this.#nextUsed;
      const oldIdx = (newIdx - added) & 0xffff;
      return needEvent(this.usedEvent(), newIdx, oldIdx);
    }
    return (this.#avail.u16(0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Whether available-buffer notifications are currently asked for (see {@link enableNotification}). */
  get notificationsEnabled(): boolean {
    return this.#notifications;
  }

  /**
   * Asks the driver for available-buffer notifications again (clears
   * VIRTQ_USED_F_NO_NOTIFY, or with EVENT_IDX sets `avail_event` to
   * `nextAvail`), then — after a full fence, so the driver sees the request
   * before the ring is read again — returns whether chains are pending. True
   * means the driver may have added them without notifying: process them (a
   * device that stops early with work left calls this and comes back when it
   * returns true). Like rust-vmm virtio-queue's `enable_notification`.
   */
  enableNotification(): boolean {
    if (this.#armed) return this.pending() > 0;
    this.#notifications = true;
    if (this.eventIdx) this.#used.setU16(4 + 8 * this.size, this.#nextAvail);
    else this.#used.setU16(0, this.#used.u16(0) & ~VIRTQ_USED_F_NO_NOTIFY);
    fullFence();
    if (this.pending() > 0) return true;
    this.#armed = true;
    return false;
  }

  /**
   * Tells the driver not to notify: VIRTQ_USED_F_NO_NOTIFY, or with EVENT_IDX
   * `avail_event` put just behind `nextAvail`, where the driver's index, which
   * only moves forward from there, does not cross it again until it wraps
   * (leaving it at `nextAvail` would still cost the next chain a kick — the
   * one a device polling the ring wants to spare). {@link popOrEnableNotification}
   * does this by itself; a driver may still notify (both are only hints).
   */
  disableNotification(): void {
    this.#notifications = false;
    this.#armed = false;
    if (this.eventIdx) this.#used.setU16(4 + 8 * this.size, (this.#nextAvail - 1) & 0xffff);
    else this.#used.setU16(0, this.#used.u16(0) | VIRTQ_USED_F_NO_NOTIFY);
  }
}

const FENCE_WORD = new Int32Array(new SharedArrayBuffer(4));

/**
 * A full memory barrier between a ring write and a ring read that must not
 * pass it (virtio_mb()): an atomic read-modify-write on a SharedArrayBuffer,
 * a locked instruction on x86 (an ordinary guest-memory write and read may
 * otherwise be reordered, store before load, by the CPU).
 */
function fullFence(): void {
  Atomics.add(FENCE_WORD, 0, 0);
}

/** `vring_need_event` (§2.7.10): true when `eventIdx` is in [oldIdx, newIdx) on the 16-bit circle. */
export function needEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
