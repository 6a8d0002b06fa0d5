import {
  type ActivateContext,
  type DescriptorChain,
  type Queue,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  type VirtioDevice,
  VirtioDeviceId,
  VirtqueueError,
} from "@tskvm/virtio";

/** §5.3.3: the console's size is in the configuration space (cols, rows). */
export const VIRTIO_CONSOLE_F_SIZE = 1n << 0n;
/** §5.3.3: multiple ports and a control queue (not offered by this device). */
export const VIRTIO_CONSOLE_F_MULTIPORT = 1n << 1n;
/** §5.3.3: the emergency write register (not offered by this device). */
export const VIRTIO_CONSOLE_F_EMERG_WRITE = 1n << 2n;

/** receiveq0: port 0's host → guest queue. */
export const CONSOLE_RECEIVEQ = 0;
/** transmitq0: port 0's guest → host queue. */
export const CONSOLE_TRANSMITQ = 1;
/** Number of queues without MULTIPORT (what a device worker needs notify eventfds for). */
export const CONSOLE_QUEUES = 2;
/** Configuration space size: cols (u16), rows (u16), max_nr_ports (u32), emerg_wr (u32) (§5.3.4). */
export const CONSOLE_CONFIG_SIZE = 12;
export const DEFAULT_CONSOLE_QUEUE_SIZE = 256;
/** Default capacity of the host → guest input buffer. */
export const DEFAULT_INPUT_CAPACITY = 64 << 10;
/** Default largest chunk handed to `onOutput` at once. */
export const DEFAULT_OUTPUT_CHUNK = 64 << 10;
/** Default bound on the bytes one {@link VirtioConsoleDevice.serveQueue} call moves. */
export const DEFAULT_MAX_BYTES_PER_CALL = 1 << 20;
/** Default bound on the chains one call takes from a ring. */
export const DEFAULT_MAX_CHAINS_PER_CALL = 1024;

export interface VirtioConsoleDeviceOptions {
  /** Size of each queue, a power of two ≤ 32768 (default 256). */
  queueSize?: number;
  /** Initial console size (default 80 × 25); offered with VIRTIO_CONSOLE_F_SIZE. */
  cols?: number;
  rows?: number;
  /** Offer VIRTIO_CONSOLE_F_SIZE (default true). */
  size?: boolean;
  /** Offer VIRTIO_F_EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Offer VIRTIO_F_INDIRECT_DESC (default true). */
  indirect?: boolean;
  /**
   * Receives the guest's output (transmitq0), in order, in chunks of at most
   * {@link outputChunk} bytes. Each chunk is a copy the callee may keep.
   */
  onOutput?: (bytes: Uint8Array) => void;
  /** Bytes the input buffer holds before {@link VirtioConsoleDevice.write} refuses more (default 64 KiB). */
  inputCapacity?: number;
  /** Largest chunk given to `onOutput` (default 64 KiB). */
  outputChunk?: number;
  /** Most bytes one serve call moves (default 1 MiB); a bigger transmit chain continues on the next call. */
  maxBytesPerCall?: number;
  /** Most chains one serve call takes (default 1024). */
  maxChainsPerCall?: number;
  /** Called by `queueNotify` when a call stopped at its bound with work left: call `serveQueue(index)` again soon. */
  onBacklog?: (index: number) => void;
}

/** A per-call budget (e.g. the runtime's `ServeBudget`; any field may be left out). */
export interface ConsoleServeBudget {
  requests?: number;
  bytes?: number;
  shouldStop?(): boolean;
}

/** What one {@link VirtioConsoleDevice.serveQueue} call did. */
export interface ConsoleServeResult {
  /** Chains returned with data (transmit: all bytes taken; receive: bytes delivered). */
  completed: number;
  /** Chains returned with used length 0 (malformed, wrong direction, nothing in them). */
  failed: number;
  /** Bytes moved (to `onOutput` or into guest buffers). */
  bytes: number;
  /** A used-buffer interrupt was sent. */
  notified: boolean;
  /** Stopped at a bound with work left: call again soon (the driver will not notify for it). */
  more: boolean;
}

export interface ConsoleStats {
  /** Transmit chains answered with their length / with 0. */
  txChains: number;
  txFailed: number;
  /** Bytes given to `onOutput`. */
  outputBytes: number;
  /** Receive chains filled / refused with 0. */
  rxChains: number;
  rxFailed: number;
  /** Bytes delivered into the guest's receive buffers. */
  inputBytes: number;
  /** Bytes `write` refused (buffer full). */
  inputDropped: number;
  interrupts: number;
  configChanges: number;
}

interface InProgress {
  chain: DescriptorChain;
  index: number;
  offset: number;
  done: number;
}

function positiveInteger(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, not ${v}`);
  return v;
}

function u16(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff)
    throw new RangeError(`${name} must be an integer in [0, 65535], not ${v}`);
  return v;
}

/**
 * The virtio console device (virtio 1.2 §5.3), port 0 only: device id 3,
 * receiveq0 (queue 0, host → guest) and transmitq0 (queue 1, guest → host),
 * VIRTIO_CONSOLE_F_SIZE with cols / rows in the configuration space.
 *
 * Timer-free and synchronous: output goes to `onOutput` as the transmit queue
 * is served; input is buffered by {@link write} (bounded) and delivered by
 * serving the receive queue. Nothing a guest does throws out of it.
 */
export class VirtioConsoleDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceId.CONSOLE;
  readonly queueMaxSizes: readonly number[];
  readonly features: bigint;
  readonly configSize = CONSOLE_CONFIG_SIZE;
  readonly inputCapacity: number;
  readonly outputChunk: number;
  readonly maxBytesPerCall: number;
  readonly maxChainsPerCall: number;
  /** Where output goes; may be set after construction. */
  onOutput: ((bytes: Uint8Array) => void) | undefined;
  readonly #onBacklog: ((index: number) => void) | undefined;
  #cols: number;
  #rows: number;
  #ctx: ActivateContext | undefined;
  #rx: Queue | undefined;
  #tx: Queue | undefined;
  #current: InProgress | undefined;
  #broken = false;
  // The input buffer: a ring of inputCapacity bytes.
  readonly #in: Uint8Array;
  #inHead = 0;
  #inLen = 0;
  readonly #stats: ConsoleStats = {
    txChains: 0,
    txFailed: 0,
    outputBytes: 0,
    rxChains: 0,
    rxFailed: 0,
    inputBytes: 0,
    inputDropped: 0,
    interrupts: 0,
    configChanges: 0,
  };

  constructor(options: VirtioConsoleDeviceOptions = {}) {
    const size = options.queueSize ?? DEFAULT_CONSOLE_QUEUE_SIZE;
    if (!Number.isInteger(size) || size < 1 || size > 32768 || (size & (size - 1)) !== 0)
      throw new RangeError(`queueSize must be a power of two ≤ 32768, not ${size}`);
    this.queueMaxSizes = [size, size];
    let features = 0n;
    if (options.size ?? true) features |= VIRTIO_CONSOLE_F_SIZE;
    if (options.eventIdx ?? true) features |= VIRTIO_F_EVENT_IDX;
    if (options.indirect ?? true) features |= VIRTIO_F_INDIRECT_DESC;
    this.features = features;
    this.#cols = u16("cols", options.cols ?? 80);
    this.#rows = u16("rows", options.rows ?? 25);
    this.inputCapacity = positiveInteger("inputCapacity", options.inputCapacity ?? DEFAULT_INPUT_CAPACITY);
    this.outputChunk = positiveInteger("outputChunk", options.outputChunk ?? DEFAULT_OUTPUT_CHUNK);
    this.maxBytesPerCall = positiveInteger(
      "maxBytesPerCall",
      options.maxBytesPerCall ?? DEFAULT_MAX_BYTES_PER_CALL,
    );
    this.maxChainsPerCall = positiveInteger(
      "maxChainsPerCall",
      options.maxChainsPerCall ?? DEFAULT_MAX_CHAINS_PER_CALL,
    );
    this.#in = new Uint8Array(this.inputCapacity);
    this.onOutput = options.onOutput;
    this.#onBacklog = options.onBacklog;
  }

  get activated(): boolean {
    return this.#ctx !== undefined;
  }

  get cols(): number {
    return this.#cols;
  }

  get rows(): number {
    return this.#rows;
  }

  /** Input bytes waiting for receive buffers. */
  get inputBuffered(): number {
    return this.#inLen;
  }

  /** Bytes {@link write} would accept now. */
  get inputSpace(): number {
    return this.inputCapacity - this.#inLen;
  }

  /** A transmit chain is partly streamed to `onOutput` (it completes on a later call). */
  get inProgress(): boolean {
    return this.#current !== undefined;
  }

  get stats(): ConsoleStats {
    return { ...this.#stats };
  }

  /**
   * Queues host → guest bytes: accepts as many as fit in the input buffer and
   * returns that count (the rest is the caller's to retry: backpressure). The
   * bytes reach the guest when the receive queue is served
   * (`serveQueue(CONSOLE_RECEIVEQ)`). Input is kept across a device reset.
   */
  write(bytes: Uint8Array): number {
    const n = Math.min(bytes.length, this.inputCapacity - this.#inLen);
    const cap = this.inputCapacity;
    let tail = (this.#inHead + this.#inLen) % cap;
    let at = 0;
    while (at < n) {
      const take = Math.min(n - at, cap - tail);
      this.#in.set(bytes.subarray(at, at + take), tail);
      at += take;
      tail = (tail + take) % cap;
    }
    this.#inLen += n;
    this.#stats.inputDropped += bytes.length - n;
    return n;
  }

  /** Drops buffered input. */
  clearInput(): void {
    this.#inHead = 0;
    this.#inLen = 0;
  }

  /**
   * Sets the console size: updates cols / rows in the configuration space
   * and, when the driver is active and took VIRTIO_CONSOLE_F_SIZE, sends a
   * configuration-change interrupt (the transport bumps config_generation).
   */
  resize(cols: number, rows: number): void {
    u16("cols", cols);
    u16("rows", rows);
    if (cols === this.#cols && rows === this.#rows) return;
    this.#cols = cols;
    this.#rows = rows;
    const ctx = this.#ctx;
    if (!ctx || (ctx.driverFeatures & VIRTIO_CONSOLE_F_SIZE) === 0n || this.#broken) return;
    try {
      ctx.interrupt.signalConfig();
      this.#stats.configChanges++;
    } catch (e) {
      this.#fail(ctx, e);
    }
  }

  readConfig(offset: number, data: Uint8Array): void {
    const cfg = new Uint8Array(CONSOLE_CONFIG_SIZE);
    const dv = new DataView(cfg.buffer);
    dv.setUint16(0, this.#cols, true);
    dv.setUint16(2, this.#rows, true);
    dv.setUint32(4, 1, true); // max_nr_ports: only meaningful with MULTIPORT
    // emerg_wr (8..12) reads 0.
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      data[i] = at >= 0 && at < CONSOLE_CONFIG_SIZE ? cfg[at]! : 0;
    }
  }

  writeConfig(_offset: number, _data: Uint8Array): void {
    // cols, rows, max_nr_ports are read-only; emerg_wr is not offered.
  }

  activate(ctx: ActivateContext): void {
    this.#ctx = ctx;
    this.#rx = ctx.queues.find((q) => q.index === CONSOLE_RECEIVEQ)?.queue;
    this.#tx = ctx.queues.find((q) => q.index === CONSOLE_TRANSMITQ)?.queue;
    this.#current = undefined;
    this.#broken = false;
  }

  /** Drops the queues and a partly streamed transmit chain; buffered input stays. */
  reset(): void {
    this.#ctx = undefined;
    this.#rx = undefined;
    this.#tx = undefined;
    this.#current = undefined;
    this.#broken = false;
  }

  queueNotify(index: number): void {
    if (this.serveQueue(index).more) this.#onBacklog?.(index);
  }

  /**
   * Serves queue `index` within the per-call bounds and `budget`: transmitq0
   * streams the guest's bytes to `onOutput`; receiveq0 fills the guest's
   * buffers from the input buffer (it takes no chain while there is no
   * input). Interrupts the driver if it asked for it. Never throws: a broken
   * ring, or an `onOutput` that throws, marks the device DEVICE_NEEDS_RESET.
   */
  serveQueue(index: number, budget: ConsoleServeBudget = {}): ConsoleServeResult {
    const result: ConsoleServeResult = { completed: 0, failed: 0, bytes: 0, notified: false, more: false };
    const ctx = this.#ctx;
    const queue = index === CONSOLE_RECEIVEQ ? this.#rx : index === CONSOLE_TRANSMITQ ? this.#tx : undefined;
    if (!ctx || !queue || this.#broken) return result;
    // (A budget of NaN or below 1 still allows one chain / byte: a call always makes progress.)
    const maxChains = Math.max(
      1,
      Math.min(this.maxChainsPerCall, budget.requests ?? Number.POSITIVE_INFINITY) || 1,
    );
    const maxBytes = Math.max(
      1,
      Math.min(this.maxBytesPerCall, budget.bytes ?? Number.POSITIVE_INFINITY) || 1,
    );
    let failed = false;
    try {
      result.more =
        index === CONSOLE_TRANSMITQ
          ? this.#transmit(queue, result, maxChains, maxBytes, budget)
          : this.#receive(queue, result, maxChains, maxBytes, budget);
    } catch (e) {
      failed = true;
      this.#fail(ctx, e);
    }
    try {
      if (!this.#broken && queue.needsNotification()) {
        this.#stats.interrupts++;
        result.notified = true;
        ctx.interrupt.signalQueue(index);
      }
    } catch (e) {
      failed = true;
      this.#fail(ctx, e);
    }
    if (failed) result.more = false;
    return result;
  }

  /** Pops the next chain; a malformed one is answered with 0 here. Null: the ring is empty. */
  #pop(queue: Queue, result: ConsoleServeResult, tx: boolean): DescriptorChain | null | "failed" {
    try {
      return queue.popOrEnableNotification();
    } catch (e) {
      if (!(e instanceof VirtqueueError) || e.fatal || e.head === undefined) throw e;
      this.#complete(queue, e.head, 0, result, tx);
      return "failed";
    }
  }

  #transmit(
    queue: Queue,
    result: ConsoleServeResult,
    maxChains: number,
    maxBytes: number,
    budget: ConsoleServeBudget,
  ): boolean {
    let chains = 0;
    for (;;) {
      let cur = this.#current;
      if (!cur) {
        if (chains >= maxChains || (chains > 0 && budget.shouldStop?.())) return queue.enableNotification();
        const chain = this.#pop(queue, result, true);
        if (chain === null) return false;
        chains++;
        if (chain === "failed") continue;
        // §5.3.6.1 / §2.7.4: transmit buffers are device-readable; a chain with writable ones is refused.
        if (chain.writableLength > 0 || chain.writableStart !== chain.count || chain.readableLength === 0) {
          this.#complete(queue, chain.head, 0, result, true);
          continue;
        }
        cur = { chain, index: 0, offset: 0, done: 0 };
        this.#current = cur;
      }
      const left = cur.chain.readableLength - cur.done;
      const allowed = Math.min(left, maxBytes - result.bytes);
      if (allowed <= 0) {
        queue.enableNotification();
        return true;
      }
      this.#emit(cur, allowed);
      result.bytes += allowed;
      if (allowed === left) {
        this.#current = undefined;
        // Used length for a device-readable chain: nothing was written (§2.7.8.2 allows 0 or the length).
        this.#complete(queue, cur.chain.head, 0, result, true, true);
      }
    }
  }

  /**
   * Copies the next `n` bytes of `cur`'s chain to onOutput in chunks of at
   * most outputChunk bytes (a chunk may span buffers).
   */
  #emit(cur: InProgress, n: number): void {
    const { addresses, lengths, memory } = cur.chain;
    let left = n;
    while (left > 0) {
      const chunk = new Uint8Array(Math.min(left, this.outputChunk));
      let at = 0;
      while (at < chunk.length) {
        const len = lengths[cur.index]!;
        if (cur.offset >= len) {
          cur.index++;
          cur.offset = 0;
          continue;
        }
        const take = Math.min(chunk.length - at, len - cur.offset);
        memory.readInto(addresses[cur.index]! + cur.offset, chunk.subarray(at, at + take));
        cur.offset += take;
        at += take;
      }
      cur.done += chunk.length;
      left -= chunk.length;
      this.#stats.outputBytes += chunk.length;
      this.onOutput?.(chunk);
    }
  }

  #receive(
    queue: Queue,
    result: ConsoleServeResult,
    maxChains: number,
    maxBytes: number,
    budget: ConsoleServeBudget,
  ): boolean {
    let chains = 0;
    while (this.#inLen > 0) {
      if (chains >= maxChains || result.bytes >= maxBytes || (chains > 0 && budget.shouldStop?.()))
        return queue.enableNotification();
      const chain = this.#pop(queue, result, false);
      if (chain === null) return false;
      chains++;
      if (chain === "failed") continue;
      // Receive buffers are device-writable; a chain with readable ones is refused.
      if (chain.writableStart !== 0 || chain.writableLength === 0) {
        this.#complete(queue, chain.head, 0, result, false);
        continue;
      }
      const n = this.#deliver(chain, Math.min(this.#inLen, chain.writableLength, maxBytes - result.bytes));
      result.bytes += n;
      this.#complete(queue, chain.head, n, result, false);
    }
    // No input left: chains stay in the ring until there is some. Notifications back on (the
    // loop may have left them off), so a driver that posts buffers still kicks.
    if (chains > 0) queue.enableNotification();
    return false;
  }

  /** Writes `n` buffered input bytes into the chain's writable buffers, in order. */
  #deliver(chain: DescriptorChain, n: number): number {
    const { addresses, lengths, memory } = chain;
    const cap = this.inputCapacity;
    let left = n;
    for (let i = 0; i < addresses.length && left > 0; i++) {
      const len = Math.min(lengths[i]!, left);
      if (len === 0) continue;
      for (const seg of memory.segments(addresses[i]!, len)) {
        let at = 0;
        while (at < seg.length) {
          const take = Math.min(seg.length - at, cap - this.#inHead);
          seg.set(this.#in.subarray(this.#inHead, this.#inHead + take), at);
          at += take;
          this.#inHead = (this.#inHead + take) % cap;
          this.#inLen -= take;
        }
      }
      left -= len;
    }
    if (this.#inLen === 0) this.#inHead = 0;
    this.#stats.inputBytes += n;
    return n;
  }

  #complete(
    queue: Queue,
    head: number,
    len: number,
    result: ConsoleServeResult,
    tx: boolean,
    ok = len > 0,
  ): void {
    queue.addUsed(head, len);
    if (ok) result.completed++;
    else result.failed++;
    if (tx) {
      if (ok) this.#stats.txChains++;
      else this.#stats.txFailed++;
    } else if (ok) this.#stats.rxChains++;
    else this.#stats.rxFailed++;
  }

  #fail(ctx: ActivateContext, e: unknown): void {
    this.#broken = true;
    this.#current = undefined;
    try {
      ctx.needsReset(e instanceof Error ? e : new Error(String(e)));
    } catch {
      // The transport's own problem; the device stays stopped until reset.
    }
  }
}
