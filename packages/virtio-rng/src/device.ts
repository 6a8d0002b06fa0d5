import { randomFillSync } from "node:crypto";
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
import { type RngRateLimit, TokenBucket } from "./rate-limit.js";

/** The request queue's index (§5.4.2: the device has one queue). */
export const RNG_REQUEST_QUEUE = 0;
/** Default (and largest accepted) size of the request queue. */
export const DEFAULT_RNG_QUEUE_SIZE = 256;
/** Default bound on the bytes one {@link VirtioRngDevice.processQueue} call writes. */
export const DEFAULT_MAX_BYTES_PER_CALL = 1 << 20;
/** Default bound on the chains one call takes from the ring. */
export const DEFAULT_MAX_CHAINS_PER_CALL = 1024;
/** The largest view handed to `fill` at once (`crypto.getRandomValues`'s limit). */
export const FILL_CHUNK = 65536;

export interface VirtioRngDeviceOptions {
  /** Size of the request queue, a power of two ≤ 32768 (default 256). */
  queueSize?: number;
  /** Offer VIRTIO_F_EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Offer VIRTIO_F_INDIRECT_DESC (default true). */
  indirect?: boolean;
  /** Limit the bytes served per second (token bucket); none by default. */
  rateLimit?: RngRateLimit;
  /**
   * Most bytes one {@link VirtioRngDevice.processQueue} call writes (default
   * 1 MiB): a guest may post a chain of up to 4 GiB, which is then filled over
   * several calls.
   */
  maxBytesPerCall?: number;
  /** Most chains one call takes from the ring (default 1024). */
  maxChainsPerCall?: number;
  /** Millisecond clock for the rate limit (default `performance.now`). */
  now?: () => number;
  /**
   * Fills a view of guest RAM (at most {@link FILL_CHUNK} bytes) with random
   * bytes, in place. Default: `crypto.randomFillSync` (Node's CSPRNG, seeded
   * from the kernel's getrandom). Tests inject a pattern here.
   */
  fill?: (view: Uint8Array) => void;
  /**
   * Called by {@link VirtioRngDevice.queueNotify} when it stopped with work
   * left (`result.retryAfterMs` is set): the host calls
   * {@link VirtioRngDevice.processQueue} again after that many ms.
   */
  onBacklog?: (index: number, result: RngProcessResult) => void;
}

/** What one {@link VirtioRngDevice.processQueue} call did, and when to call again. */
export interface RngProcessResult {
  /** Chains returned with random bytes (used length = their writable length). */
  completed: number;
  /** Chains returned with used length 0 (malformed, readable buffers, nothing writable). */
  failed: number;
  /** Bytes written into guest buffers by this call. */
  bytes: number;
  /** Whether a used-buffer interrupt was sent. */
  notified: boolean;
  /**
   * Undefined: nothing left, wait for the next queue notification. 0: the call
   * stopped at its byte or chain bound with work left, call again soon (the
   * driver will not notify for it). > 0: the rate limit is exhausted, call
   * again after this many milliseconds.
   */
  retryAfterMs?: number;
}

/** Counters since the device was created (plain data). */
export interface RngStats {
  completed: number;
  failed: number;
  bytes: number;
  /** Calls that stopped because the rate limit ran out. */
  throttled: number;
  /** Used-buffer interrupts sent. */
  interrupts: number;
}

/** A chain being filled: its buffers and where the next byte goes. */
interface InProgress {
  chain: DescriptorChain;
  index: number;
  offset: number;
  /** Bytes written so far. */
  written: number;
}

function defaultFill(view: Uint8Array): void {
  randomFillSync(view);
}

function positiveInteger(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, not ${v}`);
  return v;
}

const IDLE: Readonly<RngProcessResult> = { completed: 0, failed: 0, bytes: 0, notified: false };

/**
 * The virtio entropy device (virtio 1.2 §5.4): device id 4, one request
 * queue, no configuration space, no device-specific features. Each chain's
 * device-writable buffers are filled completely, in place, from the host's
 * CSPRNG, and returned with used length = bytes written; a chain with
 * device-readable buffers (which the device must not write, §5.4.6.1) or a
 * malformed one is returned with used length 0.
 *
 * Timer-free and synchronous: {@link processQueue} serves within a byte and
 * chain bound and the optional rate limit, and says when to come back.
 * Nothing a guest puts in the ring throws out of it; a broken ring marks the
 * device DEVICE_NEEDS_RESET through the activation context.
 */
export class VirtioRngDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceId.ENTROPY;
  readonly queueMaxSizes: readonly number[];
  readonly features: bigint;
  readonly configSize = 0;
  readonly rateLimit: TokenBucket | undefined;
  readonly maxBytesPerCall: number;
  readonly maxChainsPerCall: number;
  readonly #now: () => number;
  readonly #fill: (view: Uint8Array) => void;
  readonly #onBacklog: ((index: number, result: RngProcessResult) => void) | undefined;
  #ctx: ActivateContext | undefined;
  #queue: Queue | undefined;
  #current: InProgress | undefined;
  #broken = false;
  readonly #stats: RngStats = { completed: 0, failed: 0, bytes: 0, throttled: 0, interrupts: 0 };

  constructor(options: VirtioRngDeviceOptions = {}) {
    const size = options.queueSize ?? DEFAULT_RNG_QUEUE_SIZE;
    if (!Number.isInteger(size) || size < 1 || size > 32768 || (size & (size - 1)) !== 0)
      throw new RangeError(`queueSize must be a power of two ≤ 32768, not ${size}`);
    this.queueMaxSizes = [size];
    let features = 0n;
    if (options.eventIdx ?? true) features |= VIRTIO_F_EVENT_IDX;
    if (options.indirect ?? true) features |= VIRTIO_F_INDIRECT_DESC;
    this.features = features;
    this.rateLimit = options.rateLimit ? new TokenBucket(options.rateLimit) : undefined;
    this.maxBytesPerCall = positiveInteger(
      "maxBytesPerCall",
      options.maxBytesPerCall ?? DEFAULT_MAX_BYTES_PER_CALL,
    );
    this.maxChainsPerCall = positiveInteger(
      "maxChainsPerCall",
      options.maxChainsPerCall ?? DEFAULT_MAX_CHAINS_PER_CALL,
    );
    this.#now = options.now ?? (() => performance.now());
    this.#fill = options.fill ?? defaultFill;
    this.#onBacklog = options.onBacklog;
  }

  get activated(): boolean {
    return this.#ctx !== undefined;
  }

  /** A chain is taken from the ring and partly filled (it completes on a later call). */
  get inProgress(): boolean {
    return this.#current !== undefined;
  }

  get stats(): RngStats {
    return { ...this.#stats };
  }

  readConfig(_offset: number, _data: Uint8Array): void {
    // No configuration space (configSize 0): the transport never calls this.
  }

  writeConfig(_offset: number, _data: Uint8Array): void {}

  activate(ctx: ActivateContext): void {
    this.#ctx = ctx;
    this.#queue = ctx.queues.find((q) => q.index === RNG_REQUEST_QUEUE)?.queue;
    this.#current = undefined;
    this.#broken = false;
  }

  /**
   * Drops the queue and any partly filled chain. The rate limit's bucket is
   * kept: resetting the device does not refill it.
   */
  reset(): void {
    this.#ctx = undefined;
    this.#queue = undefined;
    this.#current = undefined;
    this.#broken = false;
  }

  queueNotify(index: number): void {
    const r = this.processQueue(index);
    if (r.retryAfterMs !== undefined) this.#onBacklog?.(index, r);
  }

  /**
   * Serves queue `index`: fills the chains the driver made available, in ring
   * order, at most {@link maxBytesPerCall} bytes and {@link maxChainsPerCall}
   * chains per call and no more than the rate limit allows, with
   * notifications suppressed while it works and re-checked once they are back
   * on; then interrupts the driver if it asked for it. A chain the call could
   * not finish stays with the device and is finished by a later call. Never
   * throws: a broken ring, or anything unexpected, marks the device
   * DEVICE_NEEDS_RESET and returns.
   */
  processQueue(index: number): RngProcessResult {
    const ctx = this.#ctx;
    const queue = this.#queue;
    if (!ctx || !queue || index !== RNG_REQUEST_QUEUE || this.#broken) return { ...IDLE };
    const result: RngProcessResult = { completed: 0, failed: 0, bytes: 0, notified: false };
    let failed = false;
    try {
      this.rateLimit?.refill(this.#now());
      const retry = this.#serve(queue, result);
      if (retry !== undefined) {
        result.retryAfterMs = retry;
        if (retry > 0) this.#stats.throttled++;
      }
    } catch (e) {
      failed = true;
      this.#fail(ctx, e);
    }
    try {
      // (needsNotification fences first: used.idx is out before used_event / the flags are read.)
      if (queue.needsNotification()) {
        this.#stats.interrupts++;
        result.notified = true;
        ctx.interrupt.signalQueue(index);
      }
    } catch (e) {
      failed = true;
      this.#fail(ctx, e);
    }
    if (failed) result.retryAfterMs = undefined;
    return result;
  }

  /**
   * Fills chains until the ring is empty (returns undefined), a bound is hit
   * (0) or the bucket is empty (> 0). Chains come from
   * `popOrEnableNotification` (notifications off while chains keep coming;
   * back on, and the ring re-checked behind a full fence, once it is empty);
   * a stop with work left turns notifications back on too, so a host that
   * does not come back does not leave the driver silenced. Throws on a broken
   * ring.
   */
  #serve(queue: Queue, result: RngProcessResult): number | undefined {
    const bucket = this.rateLimit;
    let chains = 0;
    for (;;) {
      let cur = this.#current;
      if (!cur) {
        if (chains >= this.maxChainsPerCall) return queue.enableNotification() ? 0 : undefined;
        let chain: DescriptorChain | null;
        try {
          chain = queue.popOrEnableNotification();
        } catch (e) {
          if (!(e instanceof VirtqueueError) || e.fatal || e.head === undefined) throw e;
          chains++;
          this.#complete(queue, e.head, 0, result);
          continue;
        }
        if (!chain) return undefined;
        chains++;
        // A chain with device-readable buffers: the device must not write them (§5.4.6.1), and
        // nothing is asked of it. One with no writable byte has nothing to fill.
        if (chain.writableStart !== 0 || chain.writableLength === 0) {
          this.#complete(queue, chain.head, 0, result);
          continue;
        }
        cur = { chain, index: 0, offset: 0, written: 0 };
        this.#current = cur;
      }
      const left = cur.chain.writableLength - cur.written;
      let allowed = Math.min(left, this.maxBytesPerCall - result.bytes);
      if (bucket) allowed = Math.min(allowed, bucket.available);
      if (allowed <= 0) {
        queue.enableNotification();
        if (result.bytes >= this.maxBytesPerCall || !bucket) return 0;
        return bucket.waitMs(left);
      }
      this.#write(cur, allowed);
      bucket?.take(allowed);
      result.bytes += allowed;
      this.#stats.bytes += allowed;
      if (allowed === left) {
        this.#current = undefined;
        this.#complete(queue, cur.chain.head, cur.chain.writableLength, result);
      }
    }
  }

  /** Writes the next `n` random bytes of `cur`'s chain, in place, buffer by buffer. */
  #write(cur: InProgress, n: number): void {
    const { addresses, lengths, memory } = cur.chain;
    let left = n;
    while (left > 0) {
      const len = lengths[cur.index]!;
      if (cur.offset >= len) {
        cur.index++;
        cur.offset = 0;
        continue;
      }
      const take = Math.min(left, len - cur.offset);
      for (const seg of memory.segments(addresses[cur.index]! + cur.offset, take)) {
        for (let at = 0; at < seg.length; at += FILL_CHUNK)
          this.#fill(seg.subarray(at, Math.min(seg.length, at + FILL_CHUNK)));
      }
      cur.offset += take;
      cur.written += take;
      left -= take;
    }
  }

  #complete(queue: Queue, head: number, len: number, result: RngProcessResult): void {
    queue.addUsed(head, len);
    if (len > 0) {
      result.completed++;
      this.#stats.completed++;
    } else {
      result.failed++;
      this.#stats.failed++;
    }
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
