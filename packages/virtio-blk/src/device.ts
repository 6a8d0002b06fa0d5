import type { DiskAsyncQueue, DiskImage } from "@tskvm/disk-image";
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
import {
  BLK_CONFIG_SIZE,
  SECTOR_SIZE,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
} from "./constants.js";
import { BlockEngine, type BlockResult, type BlockStats } from "./engine.js";
import { type BlockRequest, BlockRequestError, GuestViewCache, parseBlockRequest } from "./request.js";
import { type LatencyHistogram, LatencyRecorder } from "./stats.js";

/**
 * Requests answered with a status byte, by what they asked for, whatever the answer (OK, or
 * IOERR from the disk); the driver's mistakes in their own two counters. They add up to
 * {@link BlkDeviceStats.completed}.
 */
export interface BlkRequestCounts {
  read: number;
  write: number;
  flush: number;
  getId: number;
  discard: number;
  writeZeroes: number;
  /** Answered UNSUPP: a type this device does not implement or the driver did not negotiate. */
  unsupported: number;
  /** Answered IOERR because the driver got the request wrong (out of range, bad layout, …). */
  invalid: number;
}

/** Error answers, by kind. */
export interface BlkErrorCounts {
  /** IOERR answers: the disk failed (`ioErrors`) or the request was invalid (`requests.invalid`). */
  ioerr: number;
  /** UNSUPP answers (`requests.unsupported`). */
  unsupp: number;
  /** Chains that could not be answered (no status byte, malformed ring entries): used length 0 (`failed`). */
  malformed: number;
}

/**
 * Counters of a device (plain JSON data): the engine's plus what the queue loop saw. Every
 * counter only grows (a device reset does not clear them): a controller takes two snapshots
 * and divides the difference by the time between them (IOPS, MB/s, `histogramDelta`).
 */
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
  /** Request queues the device offers. */
  queues: number;
  /** Requests taken off the rings and not answered yet (aio io_uring; 0 with sync I/O between calls). */
  inFlight: number;
  requests: BlkRequestCounts;
  errors: BlkErrorCounts;
  /** Latency of the requests answered with a status byte (`completed`), ring to used ring. */
  latency: LatencyHistogram;
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

/**
 * How reads, writes and flushes reach the disk: `sync` — one after another, each
 * batch in one native call, while the thread waits; `io_uring` — handed to the
 * kernel in one call per batch and completed as they finish, in any order (the
 * disk sees the guest's queue depth).
 */
export type BlkAio = "io_uring" | "sync";

/** Inline mode: this thread owns the disk and processes requests when notified. */
export interface InlineBlkOptions extends BlkDeviceOptions {
  image: DiskImage;
  /**
   * Default `sync` (requests complete within `queueNotify`). `auto`: `io_uring` when the
   * image supports asynchronous queues and the kernel allows io_uring, else `sync`.
   * `io_uring` where it is unavailable throws. With io_uring the caller polls
   * {@link VirtioBlkDevice.completionFd} and calls `completeRequests()` (the worker does).
   */
  aio?: BlkAio | "auto";
}

/** Worker mode: a dedicated I/O worker (see `startBlkWorker`) owns the disk and the queues. */
export interface WorkerBlkOptions {
  worker: BlkRemoteBackend;
}

export type VirtioBlkDeviceOptions = InlineBlkOptions | WorkerBlkOptions;

interface Inline {
  engine: BlockEngine;
  /** The asynchronous queue (aio io_uring): reads, writes and flushes go there. */
  aq: DiskAsyncQueue | undefined;
}

const KIND_READ = 0;
const KIND_WRITE = 1;
const KIND_FLUSH = 2;

/** Most chains one batch takes (parsed together, their disk I/O submitted together). */
export const MAX_BATCH = 256;

/**
 * Chains one synchronous batch takes: its answers are published, and the driver interrupted if
 * it asks, before the next batch is parsed, so the driver reaps and queues more while the device
 * serves the rest. One interrupt after a whole run of requests left the guest idle while the
 * device worked and the device idle while the guest reaped: in the sandbox's guest bench 4 gave
 * +30–70% IOPS at depth 32 and +20% at 1 MiB depth 8 over 256; 8 and 16 gave less, and capping
 * a batch's bytes (so each 1 MiB request is its own batch) doubled the exits per request.
 * (kvmtool checks after every request.) The io_uring path answers as the disk completes.
 */
export const COMPLETION_BATCH = 4;

/**
 * A batch stops taking chains once its IN / OUT data reaches this many bytes,
 * so the memory and time one batch holds stay bounded whatever the driver
 * queues (each request is itself at most seg_max × size_max bytes).
 */
export const MAX_BATCH_BYTES = 32 << 20;

/** How many requests one call of {@link VirtioBlkDevice.processQueue} serves at most by default. */
export const DEFAULT_BATCH_BUDGET = Number.POSITIVE_INFINITY;

/**
 * A virtio block device (virtio 1.2 §5.2): one request queue or several (VIRTIO_BLK_F_MQ,
 * `queues`: each served here, every answer on its own queue's used ring and interrupt), FLUSH, GET_ID,
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
  readonly #requests: BlkRequestCounts = {
    read: 0,
    write: 0,
    flush: 0,
    getId: 0,
    discard: 0,
    writeZeroes: 0,
    unsupported: 0,
    invalid: 0,
  };
  readonly #latency = new LatencyRecorder();

  constructor(options: VirtioBlkDeviceOptions) {
    if ("worker" in options) {
      this.#remote = options.worker;
      this.configuration = options.worker.configuration;
    } else {
      const { image, ...rest } = options;
      this.configuration = blkConfiguration(diskInfo(image), rest);
      // A tag per request in flight on any queue (the asynchronous queue's limit is 4096; a
      // queue that finds every tag taken waits for completions: #deferred).
      const depth = Math.min(4096, this.configuration.queueSize * this.configuration.queues);
      this.#inline = {
        engine: new BlockEngine(image, {
          serial: this.configuration.serial,
          mayUnmap: this.configuration.limits.writeZeroes?.mayUnmap ?? false,
        }),
        aq: openAsync(image, options.aio, depth),
      };
      if (this.#inline.aq) {
        this.#tagHead = new Int32Array(depth);
        this.#tagStart = new Float64Array(depth);
        this.#tagQueue = new Int32Array(depth);
        this.#tagLength = new Int32Array(depth);
        this.#tagKind = new Uint8Array(depth);
        this.#tagStatus = new Array(depth).fill(null);
        this.#freeTags = Int32Array.from({ length: depth }, (_, i) => depth - 1 - i);
        this.#freeCount = depth;
      }
    }
    this.features = this.configuration.features;
    this.queueMaxSizes = new Array<number>(this.configuration.queues).fill(this.configuration.queueSize);
    this.#limits = this.configuration.limits;
  }

  /** Inline mode: the engine (and its disk). Undefined in worker mode. */
  get engine(): BlockEngine | undefined {
    return this.#inline?.engine;
  }

  /** Inline mode: how reads, writes and flushes reach the disk. */
  get aio(): BlkAio | undefined {
    if (!this.#inline) return undefined;
    return this.#inline.aq ? "io_uring" : "sync";
  }

  /** Inline mode, aio io_uring: readable when requests have completed (call {@link completeRequests}). */
  get completionFd(): number | undefined {
    return this.#inline?.aq?.completionFd;
  }

  /** Requests taken off the rings and handed to the disk, not answered yet (aio io_uring). */
  get inFlight(): number {
    return this.#tagHead.length - this.#freeCount;
  }

  /** Waits for requests in flight (aio io_uring), then closes the asynchronous queue. The image stays open. */
  close(): void {
    const aq = this.#inline?.aq;
    if (!aq) return;
    this.#dropInFlight();
    aq.close();
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
    // The device must not touch guest memory once reset: requests in flight finish first.
    this.#dropInFlight();
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
    this.#batchStart = started;
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
        // Answered now, interrupt now (if the driver asks for it): the driver reaps and queues
        // more while the next batch is served, instead of waiting for the whole run.
        this.#interruptIfAsked(ctx, active);
      }
      // Drained: notifications are already on (this costs one read). Stopped early: turn them on
      // (a stopped worker must not leave the driver silenced) and say whether requests are left —
      // unless every request slot is in flight: completions bring this queue back (no busy loop).
      more = queue.enableNotification() && !this.#deferred[index];
    } catch (e) {
      // A fatal virtqueue error is the driver's; anything else is unexpected. Either way the
      // device stops here (DEVICE_NEEDS_RESET) rather than throwing into its caller.
      ctx.needsReset(e instanceof Error ? e : new Error(String(e)));
      more = false;
    }
    try {
      if (served > 0) this.#stats.batches++;
      // Answers a batch completed before an error (the loop above did not get to them).
      this.#interruptIfAsked(ctx, active);
    } catch (e) {
      ctx.needsReset(e instanceof Error ? e : new Error(String(e)));
    }
    // Until the last batch's end (read there): one clock read fewer per serve.
    this.#stats.serviceMs += this.#batchStart - started;
    return more;
  }

  /** Interrupts the driver for the used entries added to `active` if it asks for one (§2.7.10), counted. */
  #interruptIfAsked(ctx: ActivateContext, active: ActiveQueue): void {
    if (!active.queue.needsNotification()) return;
    this.#stats.interrupts++;
    ctx.interrupt.signalQueue(active.index);
  }

  /** IN / OUT data bytes taken by the current {@link processQueue} call. */
  #bytes = 0;

  // One batch, reused: the chains' heads, and per chain its parsed request
  // or the driver's mistake (both null: used length 0).
  readonly #heads: number[] = [];
  readonly #batch: (BlockRequest | null)[] = [];
  readonly #errors: (BlockRequestError | null)[] = [];
  readonly #valid: BlockRequest[] = [];
  readonly #results: BlockResult[] = [];
  /** Per chain of the batch: 1 when it went to the asynchronous queue. */
  readonly #submitted = new Uint8Array(MAX_BATCH);
  /**
   * When the current batch began (performance.now()): the previous batch's end, or the serve's
   * start. The clock is read once per batch, not per request: where the kernel has no fast
   * clock (a VM's HPET, as in the sandbox) a read is a system call, ~14 µs there.
   */
  #batchStart = 0;

  // Requests in flight on the asynchronous queue, by tag: what completing each one needs.
  #tagHead = new Int32Array(0);
  #tagQueue = new Int32Array(0);
  /** When the request was taken off the ring (performance.now()). */
  #tagStart = new Float64Array(0);
  /** IN / OUT: the request's data bytes (IN: what the chain gets on success); FLUSH: 0. */
  #tagLength = new Int32Array(0);
  #tagKind = new Uint8Array(0);
  #tagStatus: (Uint8Array | null)[] = [];
  #freeTags = new Int32Array(0);
  #freeCount = 0;
  /** Per queue: a batch found every tag in flight and left requests in the ring. */
  readonly #deferred: boolean[] = [];
  readonly #reapTags = new Uint32Array(64);
  readonly #reapResults = new Int32Array(64);
  #queued = 0;

  /** Queues `req` (IN, OUT, FLUSH) on the asynchronous queue under a free tag; false: run it synchronously. */
  #submit(aq: DiskAsyncQueue, req: BlockRequest, queueIndex: number, takenAt: number): boolean {
    const tag = this.#freeTags[this.#freeCount - 1]!;
    try {
      let queued: boolean;
      if (req.type === "in") queued = aq.readv(tag, req.sector * SECTOR_SIZE, req.buffers);
      else if (req.type === "out") queued = aq.writev(tag, req.sector * SECTOR_SIZE, req.buffers);
      else queued = aq.flush(tag);
      if (!queued) return false;
    } catch {
      return false; // e.g. the image was closed: the synchronous path answers IOERR with the reason
    }
    this.#freeCount--;
    this.#queued++;
    this.#tagHead[tag] = req.head;
    this.#tagQueue[tag] = queueIndex;
    this.#tagStart[tag] = takenAt;
    this.#tagKind[tag] = req.type === "in" ? KIND_READ : req.type === "out" ? KIND_WRITE : KIND_FLUSH;
    this.#tagLength[tag] = req.type === "in" ? req.length : req.type === "out" ? req.length : 0;
    this.#tagStatus[tag] = req.status;
    return true;
  }

  /** Hands the queued requests to the disk and completes those already done (a cache hit often is). */
  #submitQueued(aq: DiskAsyncQueue): void {
    if (this.#queued === 0) return;
    this.#queued = 0;
    aq.submit();
    this.#reap(aq, false);
  }

  /**
   * aio io_uring: completes the requests the disk has finished (status byte, used
   * entry, in any order), interrupts the driver if it asked for it, and serves a
   * queue again that had to wait for a free slot. Call when {@link completionFd}
   * is readable. Nothing here throws: a broken ring marks the device NEEDS_RESET.
   */
  completeRequests(): void {
    const aq = this.#inline?.aq;
    if (!aq) return;
    const started = performance.now();
    this.#reap(aq, true);
    this.#stats.serviceMs += performance.now() - started;
  }

  #reap(aq: DiskAsyncQueue, resume: boolean): void {
    const ctx = this.#ctx;
    const tags = this.#reapTags;
    const results = this.#reapResults;
    const st = this.#stats;
    const es = this.#inline!.engine.stats;
    const rq = this.#requests;
    const latency = this.#latency;
    let signal = 0; // bit per queue
    let queueIndex = -1;
    let tagQueue: ActiveQueue | undefined;
    try {
      for (let n = aq.reap(tags, results); n > 0; n = aq.reap(tags, results)) {
        const now = performance.now();
        for (let k = 0; k < n; k++) {
          const tag = tags[k]!;
          const result = results[k]!;
          const status = this.#tagStatus[tag]!;
          this.#tagStatus[tag] = null;
          this.#freeTags[this.#freeCount++] = tag;
          const kind = this.#tagKind[tag]!;
          const length = this.#tagLength[tag]!;
          const ok = result >= 0;
          if (kind === KIND_READ) rq.read++;
          else if (kind === KIND_WRITE) rq.write++;
          else rq.flush++;
          latency.add(now - this.#tagStart[tag]!);
          if (!ok) {
            es.ioErrors++;
            this.#inline!.engine.lastError = new Error(`disk I/O failed: errno ${-result}`);
          } else if (kind === KIND_READ) {
            es.reads++;
            es.bytesRead += length;
          } else if (kind === KIND_WRITE) {
            es.writes++;
            es.bytesWritten += length;
          } else es.flushes++;
          st.completed++;
          // Completions of one queue usually come together: look it up when the tag's queue changes.
          if (this.#tagQueue[tag] !== queueIndex) {
            queueIndex = this.#tagQueue[tag]!;
            tagQueue = ctx?.queues.find((q) => q.index === queueIndex);
          }
          if (!tagQueue || tagQueue.queue.broken) continue;
          status[0] = ok ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
          tagQueue.queue.addUsed(this.#tagHead[tag]!, (ok && kind === KIND_READ ? length : 0) + 1);
          signal |= 1 << tagQueue.index;
        }
      }
      if (!ctx) return;
      for (const active of ctx.queues) {
        if ((signal & (1 << active.index)) !== 0) this.#interruptIfAsked(ctx, active);
        if (resume && this.#deferred[active.index] && this.#freeCount > 0) {
          this.#deferred[active.index] = false;
          this.processQueue(active.index);
        }
      }
    } catch (e) {
      ctx?.needsReset(e instanceof Error ? e : new Error(String(e)));
    }
  }

  /** Waits for every request in flight and forgets them (reset, close): no guest memory is touched. */
  #dropInFlight(): void {
    const aq = this.#inline?.aq;
    if (!aq) return;
    if (this.#queued > 0) {
      this.#queued = 0;
      aq.submit();
    }
    aq.drain();
    const tags = this.#reapTags;
    for (let n = aq.reap(tags, this.#reapResults); n > 0; n = aq.reap(tags, this.#reapResults))
      for (let k = 0; k < n; k++) {
        this.#tagStatus[tags[k]!] = null;
        this.#freeTags[this.#freeCount++] = tags[k]!;
      }
    this.#deferred.length = 0;
  }

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
    const requests = this.#batch;
    const errors = this.#errors;
    const valid = this.#valid;
    const submitted = this.#submitted;
    const aq = this.#inline?.aq;
    const max = Math.min(limit, aq ? MAX_BATCH : COMPLETION_BATCH, aq ? this.#freeCount : MAX_BATCH);
    if (max === 0) {
      this.#deferred[active.index] = true;
      return 0;
    }
    this.#deferred[active.index] = false;
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
        const takenAt = this.#batchStart;
        let req: BlockRequest | null = null;
        let error: BlockRequestError | null = null;
        try {
          req = parseBlockRequest(chain, this.#limits, this.#views);
        } catch (e) {
          if (!(e instanceof BlockRequestError)) throw e;
          error = e;
        }
        if (
          aq &&
          req !== null &&
          req.type !== "get-id" &&
          req.type !== "discard" &&
          req.type !== "write-zeroes"
        ) {
          // Completed when the disk is done with it (completeRequests); nothing more here.
          if (this.#submit(aq, req, active.index, takenAt)) {
            requests[n] = null;
            errors[n] = null;
            submitted[n] = 1;
            n++;
            if (req.type === "flush") break;
            this.#bytes += req.length;
            continue;
          }
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
    if (aq) this.#submitQueued(aq);
    const results = this.#results;
    if (valid.length > 0) engine.executeAll(valid, results);
    const done = performance.now();
    const takenAt = this.#batchStart;
    this.#batchStart = done;
    const st = this.#stats;
    const rq = this.#requests;
    const latency = this.#latency;
    let j = 0;
    try {
      for (let k = 0; k < n; k++) {
        const req = requests[k]!;
        if (submitted[k]) continue;
        if (req !== null) {
          const r = results[j++]!;
          req.status[0] = r.status;
          queue.addUsed(heads[k]!, r.written + 1);
          st.completed++;
          latency.add(done - takenAt);
          switch (req.type) {
            case "in":
              rq.read++;
              break;
            case "out":
              rq.write++;
              break;
            case "flush":
              rq.flush++;
              break;
            case "get-id":
              rq.getId++;
              break;
            case "discard":
              rq.discard++;
              break;
            case "write-zeroes":
              rq.writeZeroes++;
              break;
          }
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
          latency.add(done - takenAt);
          if (e.status === VIRTIO_BLK_S_UNSUPP) rq.unsupported++;
          else rq.invalid++;
        }
      }
    } finally {
      // Keep no references to guest memory between batches.
      requests.fill(null, 0, n);
      errors.fill(null, 0, n);
      submitted.fill(0, 0, n);
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

  /** Data bytes read and written so far (what a bandwidth limit charges), without building {@link stats}. */
  get bytesServed(): number {
    const e = this.#inline?.engine.stats;
    return e ? e.bytesRead + e.bytesWritten : 0;
  }

  /** Counters (inline mode; zeros in worker mode, ask the worker handle). Builds a fresh object each time. */
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
      queues: this.configuration.queues,
      inFlight: this.inFlight,
      requests: { ...this.#requests },
      errors: {
        ioerr: (e?.ioErrors ?? 0) + this.#requests.invalid,
        unsupp: this.#requests.unsupported,
        malformed: this.#stats.failed,
      },
      latency: this.#latency.snapshot(),
    };
  }
}

/** The image's asynchronous queue for `aio` (undefined: synchronous). */
function openAsync(
  image: DiskImage,
  aio: BlkAio | "auto" | undefined,
  depth: number,
): DiskAsyncQueue | undefined {
  if (aio === undefined || aio === "sync") return undefined;
  if (!image.openAsyncQueue) {
    if (aio === "io_uring")
      throw new Error(`${image.path}: aio=io_uring is not supported for ${image.format} images here`);
    return undefined;
  }
  const aq = image.openAsyncQueue({ depth, engine: aio === "io_uring" ? "io_uring" : "auto" });
  // The fallback queue runs each request at submit, as the synchronous path does, plus an
  // eventfd round trip: no gain.
  if (aq.engine !== "io_uring") {
    aq.close();
    return undefined;
  }
  return aq;
}
