import type { DiskImage } from "@tskvm/disk-image";
import {
  type ActivateContext,
  type ActiveQueue,
  type DescriptorChain,
  type VirtioDevice,
  VirtioDeviceId,
  VirtqueueError,
} from "@tskvm/virtio";
import {
  type BlkConfiguration,
  type BlkDeviceOptions,
  type BlkLimits,
  blkConfiguration,
  diskInfo,
  limitsFor,
} from "./config.js";
import { BLK_CONFIG_SIZE } from "./constants.js";
import { BlockEngine, type BlockResult, type BlockStats } from "./engine.js";
import { type BlockRequest, BlockRequestError, GuestViewCache, parseBlockRequest } from "./request.js";

/** Counters of a device (plain data): the engine's plus what the queue loop saw. */
export interface BlkDeviceStats extends BlockStats {
  /** Requests completed with a status byte (any status). */
  completed: number;
  /** Requests the driver got wrong that were answered with IOERR / UNSUPP. */
  rejected: number;
  /** Chains without a status byte, or malformed at the virtqueue level: used length 0. */
  failed: number;
  /** Wake-ups that found work (batches). */
  batches: number;
  /** Used-buffer interrupts sent. */
  interrupts: number;
  /**
   * Wall time spent serving queues, in ms: every `processQueue` call from
   * start to end — popping, parsing, the disk I/O, the used ring and the
   * interrupt — but not the waits for a notification in between.
   */
  serviceMs: number;
  /** The I/O worker thread's CPU time so far, in ms (worker stats on Linux only). */
  cpuMs?: number;
}

/**
 * The I/O side of a device running in a worker, as the main-thread device
 * sees it (implemented by the `startBlkWorker` handle). All calls are
 * synchronous: `activate` returns once the worker owns the queues, `reset`
 * once it has stopped touching them.
 */
export interface BlkRemoteBackend {
  /** The configuration the worker computed from the disk it opened. */
  readonly configuration: BlkConfiguration;
  activate(ctx: ActivateContext): void;
  reset(): void;
  /** A queue notification that did not come through the ioeventfd (e.g. a trapped doorbell write). */
  notify(index: number): void;
}

/** Inline mode: this thread owns the disk and processes requests when notified. */
export interface InlineBlkOptions extends BlkDeviceOptions {
  image: DiskImage;
}

/** Worker mode: a dedicated I/O worker (see `startBlkWorker`) owns the disk and the queues. */
export interface WorkerBlkOptions {
  worker: BlkRemoteBackend;
}

export type VirtioBlkDeviceOptions = InlineBlkOptions | WorkerBlkOptions;

interface Inline {
  engine: BlockEngine;
}

/** Most chains one batch takes (parsed together, their disk I/O submitted together). */
export const MAX_BATCH = 256;

/**
 * A batch stops taking chains once its IN / OUT data reaches this many bytes,
 * so the memory and time one batch holds stay bounded whatever the driver
 * queues (each request is itself at most seg_max × size_max bytes).
 */
export const MAX_BATCH_BYTES = 32 << 20;

/** How many requests one call of {@link VirtioBlkDevice.processQueue} serves at most by default. */
export const DEFAULT_BATCH_BUDGET = Number.POSITIVE_INFINITY;

/**
 * A virtio block device (virtio 1.2 §5.2): one request queue, FLUSH, GET_ID,
 * DISCARD and WRITE_ZEROES when the disk can, RO for read-only disks,
 * EVENT_IDX and indirect descriptors.
 *
 * - Inline mode (`{ image }`): `queueNotify` processes the queue on the
 *   calling thread — what the I/O worker itself runs, and what tests and
 *   simple embeddings use.
 * - Worker mode (`{ worker }`): activation hands the queues to the I/O worker
 *   (which waits on their ioeventfds and raises irqfds), reset takes them back;
 *   nothing of the request path runs on the calling thread.
 */
export class VirtioBlkDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceId.BLOCK;
  readonly queueMaxSizes: readonly number[];
  readonly features: bigint;
  readonly configSize = BLK_CONFIG_SIZE;
  readonly configuration: BlkConfiguration;
  readonly #inline: Inline | undefined;
  readonly #remote: BlkRemoteBackend | undefined;
  #ctx: ActivateContext | undefined;
  #views: GuestViewCache | undefined;
  #limits: BlkLimits;
  readonly #stats = { completed: 0, rejected: 0, failed: 0, batches: 0, interrupts: 0, serviceMs: 0 };

  constructor(options: VirtioBlkDeviceOptions) {
    if ("worker" in options) {
      this.#remote = options.worker;
      this.configuration = options.worker.configuration;
    } else {
      const { image, ...rest } = options;
      this.configuration = blkConfiguration(diskInfo(image), rest);
      this.#inline = {
        engine: new BlockEngine(image, {
          serial: this.configuration.serial,
          mayUnmap: this.configuration.limits.writeZeroes?.mayUnmap ?? false,
        }),
      };
    }
    this.features = this.configuration.features;
    this.queueMaxSizes = [this.configuration.queueSize];
    this.#limits = this.configuration.limits;
  }

  /** Inline mode: the engine (and its disk). Undefined in worker mode. */
  get engine(): BlockEngine | undefined {
    return this.#inline?.engine;
  }

  get activated(): boolean {
    return this.#ctx !== undefined;
  }

  /** The limits requests are checked against (narrowed to the negotiated features once active). */
  get limits(): BlkLimits {
    return this.#limits;
  }

  readConfig(offset: number, data: Uint8Array): void {
    data.set(this.configuration.configSpace.subarray(offset, offset + data.length));
  }

  writeConfig(_offset: number, _data: Uint8Array): void {
    // Every field is read-only (writeback would need VIRTIO_BLK_F_CONFIG_WCE).
  }

  activate(ctx: ActivateContext): void {
    this.#limits = limitsFor(this.configuration.limits, ctx.driverFeatures);
    if (this.#remote) this.#remote.activate(ctx);
    this.#views = this.#inline ? new GuestViewCache(ctx.memory) : undefined;
    this.#ctx = ctx;
  }

  reset(): void {
    const was = this.#ctx;
    this.#ctx = undefined;
    this.#views = undefined;
    this.#limits = this.configuration.limits;
    if (this.#remote && was) this.#remote.reset();
  }

  queueNotify(index: number): void {
    if (this.#remote) {
      this.#remote.notify(index);
      return;
    }
    this.processQueue(index);
  }

  /** Requests made available on queue `index` and not yet taken (0 when inactive or broken). */
  pendingRequests(index: number): number {
    const active = this.#ctx?.queues.find((q) => q.index === index);
    if (!active || active.queue.broken) return 0;
    try {
      return active.queue.pending();
    } catch {
      return 1; // let processQueue meet the error and report it
    }
  }

  /**
   * Inline mode: serves the available requests of queue `index` — every one,
   * or at most `budget` requests and about `byteBudget` bytes of IN / OUT
   * data — with notifications suppressed while it works and re-checked after
   * they are re-enabled (so a request made available just then is not
   * missed), then interrupts the driver if it asked for it. `shouldStop` is
   * asked between requests (a stop or reset is pending). Returns true when it
   * stopped early with requests left (call again without waiting for a
   * notification: the driver may not send one).
   *
   * Nothing the driver does makes this throw: a broken ring, or anything
   * unexpected on the way (a device bug), marks the device
   * DEVICE_NEEDS_RESET through its activation context and returns false.
   */
  processQueue(
    index: number,
    budget = DEFAULT_BATCH_BUDGET,
    shouldStop?: () => boolean,
    byteBudget = Number.POSITIVE_INFINITY,
  ): boolean {
    const ctx = this.#ctx;
    const engine = this.#inline?.engine;
    const active = ctx?.queues.find((q) => q.index === index);
    if (!ctx || !engine || !active) return false;
    const started = performance.now();
    const queue = active.queue;
    let served = 0;
    let more = false;
    this.#bytes = 0;
    try {
      // Batches take chains with popOrEnableNotification: notifications stay off while requests
      // keep coming, and the batch that finds the ring empty has turned them back on and looked
      // again (behind a full fence), so nothing the driver added meanwhile is missed.
      while (served < budget && this.#bytes < byteBudget && !shouldStop?.()) {
        const n = this.#serveBatch(engine, active, budget - served, byteBudget, shouldStop);
        if (n === 0) break;
        served += n;
      }
      // Drained: notifications are already on (this costs one read). Stopped early: turn them on
      // (a stopped worker must not leave the driver silenced) and say whether requests are left.
      more = queue.enableNotification();
    } catch (e) {
      // A fatal virtqueue error is the driver's; anything else is unexpected. Either way the
      // device stops here (DEVICE_NEEDS_RESET) rather than throwing into its caller.
      ctx.needsReset(e instanceof Error ? e : new Error(String(e)));
      more = false;
    }
    try {
      if (served > 0) this.#stats.batches++;
      if (queue.needsNotification()) {
        this.#stats.interrupts++;
        ctx.interrupt.signalQueue(index);
      }
    } catch (e) {
      ctx.needsReset(e instanceof Error ? e : new Error(String(e)));
    }
    this.#stats.serviceMs += performance.now() - started;
    return more;
  }

  /** IN / OUT data bytes taken by the current {@link processQueue} call. */
  #bytes = 0;

  // One batch, reused: the chains' heads, and per chain its parsed request
  // or the driver's mistake (both null: used length 0).
  readonly #heads: number[] = [];
  readonly #requests: (BlockRequest | null)[] = [];
  readonly #errors: (BlockRequestError | null)[] = [];
  readonly #valid: BlockRequest[] = [];
  readonly #results: BlockResult[] = [];

  /**
   * Pops and parses up to `limit` chains (at most {@link MAX_BATCH}; the
   * batch ends after a FLUSH, once its data reaches {@link MAX_BATCH_BYTES} or
   * the call's `byteBudget`, and when `shouldStop` says so), runs the valid
   * requests' disk I/O in ring order with runs of reads or writes batched
   * ({@link BlockEngine.executeAll}), then completes every chain in ring
   * order: status byte, used entry. Returns how many chains it took. An
   * unexpected error (a broken queue) still completes the chains taken
   * before it, then propagates.
   */
  #serveBatch(
    engine: BlockEngine,
    active: ActiveQueue,
    limit: number,
    byteBudget: number,
    shouldStop: (() => boolean) | undefined,
  ): number {
    const queue = active.queue;
    const heads = this.#heads;
    const requests = this.#requests;
    const errors = this.#errors;
    const valid = this.#valid;
    const max = Math.min(limit, MAX_BATCH);
    const maxBytes = Math.min(byteBudget, this.#bytes + MAX_BATCH_BYTES);
    let n = 0;
    let thrown: unknown;
    let threw = false;
    try {
      while (n < max && (n === 0 || (this.#bytes < maxBytes && !shouldStop?.()))) {
        let chain: DescriptorChain | null;
        try {
          chain = queue.popOrEnableNotification();
        } catch (e) {
          if (!(e instanceof VirtqueueError) || e.fatal || e.head === undefined) throw e;
          heads[n] = e.head;
          requests[n] = null;
          errors[n] = null;
          n++;
          continue;
        }
        if (!chain) break;
        heads[n] = chain.head;
        let req: BlockRequest | null = null;
        let error: BlockRequestError | null = null;
        try {
          req = parseBlockRequest(chain, this.#limits, this.#views);
        } catch (e) {
          if (!(e instanceof BlockRequestError)) throw e;
          error = e;
        }
        requests[n] = req;
        errors[n] = error;
        n++;
        if (req !== null) {
          valid.push(req);
          if (req.type === "in" || req.type === "out") this.#bytes += req.length;
          // Nothing after a FLUSH joins its batch: it runs once the writes before it are done.
          else if (req.type === "flush") break;
        }
      }
    } catch (e) {
      thrown = e;
      threw = true;
    }
    const results = this.#results;
    if (valid.length > 0) engine.executeAll(valid, results);
    const st = this.#stats;
    let j = 0;
    try {
      for (let k = 0; k < n; k++) {
        const req = requests[k]!;
        if (req !== null) {
          const r = results[j++]!;
          req.status[0] = r.status;
          queue.addUsed(heads[k]!, r.written + 1);
          st.completed++;
          continue;
        }
        const e = errors[k];
        if (!e || e.status === undefined || !e.statusByte) {
          queue.addUsed(heads[k]!, 0);
          st.failed++;
        } else {
          e.statusByte[0] = e.status;
          queue.addUsed(heads[k]!, 1);
          st.rejected++;
          st.completed++;
        }
      }
    } finally {
      // Keep no references to guest memory between batches.
      requests.fill(null, 0, n);
      errors.fill(null, 0, n);
      valid.length = 0;
      results.length = 0;
    }
    if (threw) throw thrown;
    return n;
  }

  /** Requests answered so far (completed + failed), without building {@link stats}. */
  get served(): number {
    return this.#stats.completed + this.#stats.failed;
  }

  /** Counters (inline mode; zeros in worker mode, ask the worker handle). */
  get stats(): BlkDeviceStats {
    const e = this.#inline?.engine.stats;
    return {
      reads: e?.reads ?? 0,
      writes: e?.writes ?? 0,
      flushes: e?.flushes ?? 0,
      discards: e?.discards ?? 0,
      writeZeroes: e?.writeZeroes ?? 0,
      getIds: e?.getIds ?? 0,
      bytesRead: e?.bytesRead ?? 0,
      bytesWritten: e?.bytesWritten ?? 0,
      ioErrors: e?.ioErrors ?? 0,
      ...this.#stats,
    };
  }
}
