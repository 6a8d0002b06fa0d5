import { fdatasyncSync } from "node:fs";
import { constants } from "node:os";
import { checkRange } from "./disk-image.js";
import { DiskImageError, errnoCodeOf } from "./errors.js";
import { type NativeBinding, type NativeIoUring, native } from "./native.js";

export type AsyncEngineKind = "io_uring" | "sync";

export interface AsyncQueueOptions {
  /** Most requests in flight at once (submitted, not yet reaped). 1..4096. */
  depth: number;
  /** "auto" (default): io_uring when the kernel allows it, else "sync". "io_uring": fail with DiskImageError UNSUPPORTED if not available. */
  engine?: "auto" | AsyncEngineKind;
}

/**
 * Requests on one open DiskImage, submitted in batches and completed as they finish, in
 * any order. Each request carries a caller tag (uint32). Buffers must stay valid and
 * untouched until the request is reaped (they are guest RAM in tskvm: mmap'd, external).
 * The array that lists them is copied: it may be reused as soon as the call returns.
 */
export interface DiskAsyncQueue {
  readonly engine: AsyncEngineKind;
  /** With engine "auto" and "sync" chosen: why io_uring was not used (e.g. "io_uring_setup: EPERM"). */
  readonly fallbackReason?: string | undefined;
  /** Readable (poll POLLIN) when completions wait to be reaped: an eventfd; read it with `reap`. */
  readonly completionFd: number;
  /** Queued or submitted, and not yet reaped. */
  readonly inFlight: number;
  /**
   * Queue a read of `buffers` (filled in order) from byte `offset`; false (nothing queued) when depth is reached.
   * Throws (nothing queued) as `DiskImage.readv` does: `RANGE` for a bad or out-of-disk range (also for a
   * request longer than 2^31 - 1 bytes: results are int32), `INVALID` for bad buffers or a tag that is not
   * a uint32, `CLOSED` after the queue's or the image's close.
   */
  readv(tag: number, offset: number, buffers: readonly Uint8Array[]): boolean;
  /**
   * Queue a write; false when depth is reached. READ_ONLY DiskImageError on a read-only image (thrown).
   * On a probed raw image, a write to the first sector waits for everything in flight, then goes
   * through `DiskImage.writev` and its probe guard at once (a refused write completes with -EPERM).
   */
  writev(tag: number, offset: number, buffers: readonly Uint8Array[]): boolean;
  /** Queue a flush: runs after every request submitted before it has completed (a barrier), then makes them durable as DiskImage.flush does. */
  flush(tag: number): boolean;
  /** Hands every queued request to the kernel (io_uring: one io_uring_enter; sync: runs them now). */
  submit(): void;
  /**
   * Non-blocking: moves up to tags.length completed requests out, tags[i] and results[i]
   * (bytes transferred — always the request's whole length on success: short transfers
   * are continued, a read past the end of the file is zero-filled — or -errno). Returns
   * the count. Clears the completionFd's readiness when nothing is left.
   */
  reap(tags: Uint32Array, results: Int32Array): number;
  /** Blocks until every submitted request has completed (they stay to be reaped). For reset and close. Queued ones are submitted first. */
  drain(): void;
  /** drain(), then releases the ring and fds. The DiskImage stays open. */
  close(): void;
}

/**
 * What an image lends its queues (RawDiskImage.openAsyncQueue): descriptors,
 * checks and the synchronous path for writes that need the probe guard.
 */
export interface AsyncQueueHost {
  readonly path: string;
  readonly size: number;
  readonly readOnly: boolean;
  /** Throws `CLOSED`, and `READ_ONLY` when `write`, exactly as the image's own methods do. */
  checkUsable(what: string, write: boolean): void;
  /** The image's descriptor (O_DIRECT when the image is). */
  readonly fd: number;
  /** The O_DIRECT alignment; 0 when the image is not O_DIRECT. */
  readonly directAlignment: number;
  /** A buffered descriptor of the same file, for what O_DIRECT cannot take. */
  bufferedFd(): number;
  /** Counts a request that went to the buffered descriptor. */
  noteDirectFallback(): void;
  /** Whether a write of [offset, offset + length) must go through `writeGuarded`. */
  needsGuard(offset: number, length: number): boolean;
  /** The image's synchronous, guarded write (throws its DiskImageError). */
  writeGuarded(offset: number, buffers: readonly Uint8Array[]): void;
  /** The queue closed. */
  detach(queue: DiskAsyncQueue): void;
}

/** Whether io_uring can be set up here, and if not, why (the errno of io_uring_setup). */
export interface IoUringSupport {
  available: boolean;
  /** `EPERM` (kernel.io_uring_disabled, seccomp), `ENOSYS` (no io_uring), … when not available. */
  code?: string;
  message?: string;
}

const E = constants.errno;
/** Results are int32: a request is at most this long. */
const MAX_REQUEST = 0x7fffffff;
/** Most iovecs one READV / WRITEV takes (UIO_MAXIOV); longer lists go in chunks. */
const IOV_MAX = 1024;
/** How often an -EAGAIN / -EINTR completion is resubmitted before it is reported. */
const MAX_RETRIES = 100;

const READ = 0;
const WRITE = 1;
const FLUSH = 2;
type Kind = typeof READ | typeof WRITE | typeof FLUSH;

const FREE = 0;
/** Sync engine: waiting for submit(). */
const QUEUED = 1;
/** io_uring: has an SQE, prepared or in the kernel. */
const KERNEL = 2;
/** A flush whose CQE came while a request before it was still being continued. */
const WAITING = 3;

const NONE: readonly Uint8Array[] = [];

/** One request in flight: what it is and how far it got. */
class Slot {
  constructor(readonly id: number) {}
  state = FREE;
  kind: Kind = READ;
  tag = 0;
  seq = 0;
  offset = 0;
  buffers: readonly Uint8Array[] = NONE;
  length = 0;
  /** Bytes done; `index` / `skip` is where they end in `buffers`. */
  done = 0;
  index = 0;
  skip = 0;
  fd = -1;
  direct = false;
  retries = 0;
  /** Got an SQE after its first one (a continuation, a retry, a chunk): flushes may not have waited for it. */
  continued = false;
}

function invalid(path: string, message: string): DiskImageError {
  return new DiskImageError("INVALID", message, { path });
}

/** A per-request result for a DiskImageError or system error: -errno (-EPERM for the probe guard, else -EIO). */
function negErrno(e: unknown): number {
  if (e instanceof DiskImageError) {
    if (e.errno !== undefined && e.errno > 0) return -e.errno;
    return e.code === "PROBE_GUARD" ? -E.EPERM : -E.EIO;
  }
  const code = errnoCodeOf(e);
  const n = code === undefined ? undefined : E[code as keyof typeof E];
  return n !== undefined && n > 0 ? -n : -E.EIO;
}

function ioUringHint(code: string | undefined): string {
  switch (code) {
    case "EPERM":
      return 'io_uring is not allowed here: the sysctl kernel.io_uring_disabled is set, or a seccomp filter (a container\'s default profile) blocks it. Use engine "auto" or "sync".';
    case "ENOSYS":
      return 'this kernel has no io_uring (Linux < 5.1, or built without CONFIG_IO_URING). Use engine "auto" or "sync".';
    default:
      return 'use engine "auto" (falls back to "sync") or "sync".';
  }
}

/** Tries io_uring_setup once (a tiny ring, closed at once). */
export function ioUringSupport(): IoUringSupport {
  const Ring = native().IoUring;
  if (Ring === undefined)
    return {
      available: false,
      code: "ENOSYS",
      message: "the native addon was built without <linux/io_uring.h>",
    };
  try {
    new Ring(1).close();
    return { available: true };
  } catch (e) {
    return {
      available: false,
      code: errnoCodeOf(e) ?? "EIO",
      message: e instanceof Error ? e.message : String(e),
    };
  }
}

class AsyncQueue implements DiskAsyncQueue {
  readonly engine: AsyncEngineKind;
  readonly fallbackReason: string | undefined;
  readonly completionFd: number;
  readonly #host: AsyncQueueHost;
  readonly #native: NativeBinding;
  readonly #depth: number;
  readonly #ring: NativeIoUring | undefined;
  readonly #slots: Slot[];
  readonly #free: number[];
  #used = 0;
  #seq = 0;
  // Completed, not yet reaped: a ring buffer of at most `depth` entries.
  readonly #readyTags: Uint32Array;
  readonly #readyResults: Int32Array;
  #readyHead = 0;
  #readyCount = 0;
  /** Sync engine: slot numbers waiting for submit(), in order. */
  readonly #queued: number[] = [];
  /** io_uring: SQEs prepared that the kernel has not taken. */
  #needSubmit = false;
  /** Slots with `continued` set, and flushes in WAITING. */
  #continuing = 0;
  #waitingFlushes = 0;
  /** completionFd was made readable by this code and not cleared since. */
  #signaled = false;
  #closed = false;
  readonly #cqUser: Uint32Array;
  readonly #cqRes: Int32Array;
  // Sync engine batch arrays, grown as needed.
  #bOffsets = new Float64Array(16);
  #bCounts = new Int32Array(16);
  #bResults = new Float64Array(16);
  readonly #bBuffers: Uint8Array[] = [];
  readonly #bSlots: number[] = [];

  constructor(host: AsyncQueueHost, options: AsyncQueueOptions) {
    const path = host.path;
    if (typeof options !== "object" || options === null)
      throw invalid(path, "openAsyncQueue: options must be an object with a depth");
    const { depth, engine = "auto" } = options;
    if (!Number.isInteger(depth) || depth < 1 || depth > 4096)
      throw invalid(path, `openAsyncQueue: depth ${String(depth)} is not an integer in 1..4096`);
    if (engine !== "auto" && engine !== "io_uring" && engine !== "sync")
      throw invalid(path, `openAsyncQueue: engine ${String(engine)} is not "auto", "io_uring" or "sync"`);
    this.#host = host;
    this.#native = native();
    this.#depth = depth;
    const efd = this.#native.eventfd();
    let ring: NativeIoUring | undefined;
    let reason: string | undefined;
    if (engine !== "sync") {
      const Ring = this.#native.IoUring;
      try {
        if (Ring === undefined)
          throw Object.assign(new Error("the native addon was built without <linux/io_uring.h>"), {
            errno: E.ENOSYS,
            syscall: "io_uring_setup",
          });
        ring = new Ring(depth);
        ring.registerEventfd(efd);
      } catch (e) {
        ring?.close();
        ring = undefined;
        const code = errnoCodeOf(e);
        const syscall = (e as { syscall?: unknown }).syscall;
        reason = `${typeof syscall === "string" ? syscall : "io_uring"}: ${code ?? String(e)}`;
        if (engine === "io_uring") {
          native().closeFd(efd);
          throw new DiskImageError("UNSUPPORTED", `io_uring is not available (${reason})`, {
            path,
            hint: ioUringHint(code),
            cause: e,
          });
        }
      }
    }
    this.#ring = ring;
    this.engine = ring ? "io_uring" : "sync";
    this.fallbackReason = reason;
    this.completionFd = efd;
    this.#slots = Array.from({ length: depth }, (_, i) => new Slot(i));
    this.#free = Array.from({ length: depth }, (_, i) => depth - 1 - i);
    this.#readyTags = new Uint32Array(depth);
    this.#readyResults = new Int32Array(depth);
    const cq = ring ? ring.cqEntries : 1;
    this.#cqUser = new Uint32Array(cq);
    this.#cqRes = new Int32Array(cq);
  }

  get inFlight(): number {
    return this.#used + this.#readyCount;
  }

  readv(tag: number, offset: number, buffers: readonly Uint8Array[]): boolean {
    return this.#rw(READ, tag, offset, buffers);
  }

  writev(tag: number, offset: number, buffers: readonly Uint8Array[]): boolean {
    return this.#rw(WRITE, tag, offset, buffers);
  }

  flush(tag: number): boolean {
    this.#check("flush", false, tag);
    if (this.inFlight >= this.#depth) return false;
    const s = this.#take(FLUSH, tag);
    s.fd = this.#host.fd;
    this.#start(s);
    return true;
  }

  submit(): void {
    if (this.#closed) throw this.#closedError("submit");
    this.#host.checkUsable("submit", false);
    if (this.#ring) {
      if (this.#needSubmit) this.#enter(0);
    } else this.#runQueued();
  }

  reap(tags: Uint32Array, results: Int32Array): number {
    if (!(tags instanceof Uint32Array) || !(results instanceof Int32Array))
      throw invalid(this.#host.path, "reap: tags must be a Uint32Array and results an Int32Array");
    if (this.#closed) throw this.#closedError("reap");
    if (this.#ring) this.#pump();
    const n = Math.min(tags.length, results.length, this.#readyCount);
    const depth = this.#depth;
    for (let i = 0; i < n; i++) {
      tags[i] = this.#readyTags[this.#readyHead]!;
      results[i] = this.#readyResults[this.#readyHead]!;
      this.#readyHead = this.#readyHead + 1 === depth ? 0 : this.#readyHead + 1;
    }
    this.#readyCount -= n;
    if (this.#readyCount === 0) {
      if (this.#ring && this.#needSubmit) {
        // The kernel refused SQEs for now (EAGAIN): stay readable so the caller comes back.
        this.#signal();
      } else {
        this.#native.eventfdRead(this.completionFd);
        this.#signaled = false;
        // A CQE posted between the pump and the clear would otherwise go unnoticed.
        if (this.#ring && this.#ring.cqReady() > 0) this.#signal();
      }
    }
    return n;
  }

  drain(): void {
    if (this.#closed) return;
    const ring = this.#ring;
    if (!ring) {
      this.#runQueued();
      return;
    }
    this.#pump();
    while (this.#used > 0) {
      // Every WAITING flush waits for a request that has an SQE; without one it would never finish.
      if (!this.#slots.some((s) => s.state === KERNEL)) break;
      this.#enter(1);
      this.#pump();
    }
  }

  close(): void {
    if (this.#closed) return;
    try {
      this.drain();
    } finally {
      this.#closed = true;
      try {
        this.#ring?.close();
      } finally {
        native().closeFd(this.completionFd);
        for (const s of this.#slots) s.buffers = NONE;
        this.#host.detach(this);
      }
    }
  }

  #closedError(what: string): DiskImageError {
    return new DiskImageError("CLOSED", `${what} after the queue's close()`, { path: this.#host.path });
  }

  #check(what: string, write: boolean, tag: number): void {
    if (this.#closed) throw this.#closedError(what);
    this.#host.checkUsable(what, write);
    if (tag >>> 0 !== tag) throw invalid(this.#host.path, `${what}: tag ${String(tag)} is not a uint32`);
  }

  #rw(
    kind: typeof READ | typeof WRITE,
    tag: number,
    offset: number,
    buffers: readonly Uint8Array[],
  ): boolean {
    const host = this.#host;
    const write = kind === WRITE;
    const what = write ? "writev" : "readv";
    this.#check(what, write, tag);
    if (!Array.isArray(buffers)) throw invalid(host.path, `${what}: buffers must be an array of Uint8Array`);
    let length = 0;
    for (const b of buffers) {
      if (!(b instanceof Uint8Array)) throw invalid(host.path, `${what}: every buffer must be a Uint8Array`);
      length += b.byteLength;
    }
    checkRange(host.size, offset, length, host.path, what);
    if (length > MAX_REQUEST)
      throw new DiskImageError("RANGE", `${what}: ${length} bytes in one request is more than 2^31 - 1`, {
        path: host.path,
      });
    if (this.inFlight >= this.#depth) return false;
    if (write && length > 0 && host.needsGuard(offset, length)) {
      this.#guardedWrite(tag, offset, buffers, length);
      return true;
    }
    let fd = host.fd;
    let direct = false;
    if (host.directAlignment > 0 && length > 0) {
      if (aligned(offset, buffers, host.directAlignment)) direct = true;
      else {
        fd = host.bufferedFd();
        host.noteDirectFallback();
      }
    }
    const s = this.#take(kind, tag);
    s.offset = offset;
    s.buffers = buffers.slice();
    s.length = length;
    s.fd = fd;
    s.direct = direct;
    advance(s, 0); // past leading empty buffers: a chunk then never moves 0 bytes unless at the end of the file
    this.#start(s);
    return true;
  }

  /**
   * A write the probe guard must see: everything before it completes first
   * (no other write to the first sector may be in flight while the guard
   * reads it), then the image's own synchronous writev.
   */
  #guardedWrite(tag: number, offset: number, buffers: readonly Uint8Array[], length: number): void {
    this.drain();
    let result = length;
    try {
      this.#host.writeGuarded(offset, buffers);
    } catch (e) {
      result = negErrno(e);
    }
    this.#complete(this.#take(WRITE, tag), result);
    this.#signal();
  }

  #take(kind: Kind, tag: number): Slot {
    const id = this.#free.pop()!;
    const s = this.#slots[id]!;
    s.kind = kind;
    s.tag = tag;
    s.seq = this.#seq++;
    s.done = 0;
    s.index = 0;
    s.skip = 0;
    s.retries = 0;
    s.continued = false;
    s.direct = false;
    s.length = 0;
    s.buffers = NONE;
    this.#used++;
    return s;
  }

  #start(s: Slot): void {
    if (this.#ring) this.#prep(s);
    else {
      s.state = QUEUED;
      this.#queued.push(s.id);
    }
  }

  /** Gives the request its next SQE (first, continuation or retry). */
  #prep(s: Slot, id = s.id): void {
    const ring = this.#ring!;
    let ok: boolean;
    try {
      if (s.kind === FLUSH) {
        // A read-only image has nothing to sync (DiskImage.flush does nothing): a NOP keeps the barrier.
        ok = this.#host.readOnly ? ring.prepNop(id, true) : ring.prepFsync(s.fd, true, id, true);
      } else if (s.done >= s.length) {
        ok = ring.prepNop(id, false);
      } else {
        const count = Math.min(IOV_MAX, s.buffers.length - s.index);
        ok = ring.prepRw(
          s.kind === WRITE,
          s.fd,
          s.offset + s.done,
          s.buffers,
          s.index,
          count,
          s.skip,
          id,
          false,
        );
      }
    } catch {
      // The native side refused the buffers (one shrank: detached while in flight): fail this request only.
      this.#complete(s, -E.EINVAL, id);
      this.#signal();
      return;
    }
    // The SQ has at least `depth` entries and a request never has two SQEs.
    if (!ok) throw new Error("disk-image async queue: the submission queue is full (a bug)");
    s.state = KERNEL;
    this.#needSubmit = true;
  }

  #continue(s: Slot, id: number): void {
    if (!s.continued) {
      s.continued = true;
      this.#continuing++;
    }
    this.#prep(s, id);
  }

  #enter(waitFor: number): void {
    const left = this.#ring!.submit(waitFor);
    this.#needSubmit = left !== 0;
  }

  /** Moves every waiting CQE into the ready list (or into a continuation), then submits what that prepared. */
  #pump(): void {
    const ring = this.#ring!;
    const user = this.#cqUser;
    const res = this.#cqRes;
    for (;;) {
      const n = ring.reap(user, res);
      for (let i = 0; i < n; i++) this.#handle(user[i]!, res[i]!);
      if (n < user.length) break;
    }
    if (this.#needSubmit) this.#enter(0);
  }

  /** One CQE: a completion, or the next step of a request that is not done. */
  #handle(id: number, res: number): void {
    const s = this.#slots[id];
    if (s === undefined || s.state !== KERNEL) return;
    if (s.kind === FLUSH) {
      if ((res === -E.EINTR || res === -E.EAGAIN) && s.retries++ < MAX_RETRIES) {
        this.#prep(s, id);
        return;
      }
      // IOSQE_IO_DRAIN only waited for SQEs before it: a request continued after it must finish first.
      if (this.#continuing > 0 && this.#earlierActive(s.seq)) {
        s.state = WAITING;
        this.#waitingFlushes++;
        return;
      }
      this.#complete(s, res, id);
      return;
    }
    if (res < 0) {
      if (res === -E.EINVAL && s.direct) {
        // O_DIRECT refused the memory (unaligned buffer addresses): the buffered descriptor takes it, as in raw.ts.
        this.#toBuffered(s, id);
        return;
      }
      if ((res === -E.EAGAIN || res === -E.EINTR) && s.retries++ < MAX_RETRIES) {
        this.#continue(s, id);
        return;
      }
      this.#complete(s, res, id);
      return;
    }
    if (res === 0 && s.done < s.length) {
      if (s.kind === WRITE) {
        this.#complete(s, -E.EIO, id); // a write that moves nothing would never finish
        return;
      }
      // The end of the file (it shrank under us): the rest reads as zeros.
      zeroFrom(s.buffers, s.index, s.skip);
      this.#complete(s, s.length, id);
      return;
    }
    s.done += res;
    if (s.done >= s.length) {
      this.#complete(s, s.length, id);
      return;
    }
    advance(s, res);
    if (s.direct && s.done % this.#host.directAlignment !== 0) this.#toBuffered(s, id);
    else this.#continue(s, id);
  }

  #toBuffered(s: Slot, id: number): void {
    let fd: number;
    try {
      fd = this.#host.bufferedFd();
    } catch (e) {
      this.#complete(s, negErrno(e), id);
      return;
    }
    this.#host.noteDirectFallback();
    s.fd = fd;
    s.direct = false;
    this.#continue(s, id);
  }

  /** A read or write queued before `seq` is not finished yet. */
  #earlierActive(seq: number): boolean {
    for (const o of this.#slots)
      if ((o.state === KERNEL || o.state === QUEUED) && o.kind !== FLUSH && o.seq < seq) return true;
    return false;
  }

  /** Flushes that waited for continued requests run (again) once those are done. */
  #releaseFlushes(): void {
    for (let id = 0; id < this.#slots.length; id++) {
      const s = this.#slots[id]!;
      if (s.state !== WAITING || this.#earlierActive(s.seq)) continue;
      this.#waitingFlushes--;
      s.retries = 0;
      this.#prep(s, id);
    }
  }

  #complete(s: Slot, result: number, id = s.id): void {
    if (s.continued) this.#continuing--;
    const kind = s.kind;
    let at = this.#readyHead + this.#readyCount;
    if (at >= this.#depth) at -= this.#depth;
    this.#readyTags[at] = s.tag;
    this.#readyResults[at] = result;
    this.#readyCount++;
    s.state = FREE;
    s.buffers = NONE;
    s.continued = false;
    this.#free.push(id);
    this.#used--;
    if (this.#waitingFlushes > 0 && kind !== FLUSH) this.#releaseFlushes();
  }

  #signal(): void {
    if (this.#signaled) return;
    this.#native.eventfdWrite(this.completionFd);
    this.#signaled = true;
  }

  // --- the synchronous engine ---

  /** Runs the queued requests in order: runs of reads or writes on one descriptor as one rwBatch. */
  #runQueued(): void {
    const queued = this.#queued;
    if (queued.length === 0) return;
    let batchWrite = false;
    let batchFd = -1;
    for (const id of queued) {
      const s = this.#slots[id]!;
      if (s.kind === FLUSH) {
        this.#runBatch(batchFd, batchWrite);
        this.#complete(s, this.#fdatasync(), id);
        continue;
      }
      const write = s.kind === WRITE;
      if (this.#bSlots.length > 0 && (write !== batchWrite || s.fd !== batchFd))
        this.#runBatch(batchFd, batchWrite);
      batchWrite = write;
      batchFd = s.fd;
      this.#bSlots.push(id);
    }
    this.#runBatch(batchFd, batchWrite);
    queued.length = 0;
    if (this.#readyCount > 0) this.#signal();
  }

  #runBatch(fd: number, write: boolean): void {
    const ids = this.#bSlots;
    const count = ids.length;
    if (count === 0) return;
    if (this.#bOffsets.length < count) {
      const n = Math.max(count, this.#bOffsets.length * 2);
      this.#bOffsets = new Float64Array(n);
      this.#bCounts = new Int32Array(n);
      this.#bResults = new Float64Array(n);
    }
    const buffers = this.#bBuffers;
    for (let i = 0; i < count; i++) {
      const s = this.#slots[ids[i]!]!;
      this.#bOffsets[i] = s.offset;
      this.#bCounts[i] = s.buffers.length;
      for (const b of s.buffers) buffers.push(b);
    }
    try {
      this.#native.rwBatch(fd, write, count, this.#bOffsets, this.#bCounts, buffers, this.#bResults);
    } catch {
      // Refused arguments (a buffer detached since it was queued): every request of the batch fails.
      this.#bResults.fill(-E.EINVAL, 0, count);
    }
    buffers.length = 0;
    for (let i = 0; i < count; i++) {
      const id = ids[i]!;
      const s = this.#slots[id]!;
      let r = this.#bResults[i]!;
      if (r === -E.EINVAL && s.direct) r = this.#retryBuffered(s, write);
      this.#complete(s, r, id);
    }
    ids.length = 0;
  }

  /** One request O_DIRECT refused (EINVAL), again on the buffered descriptor. */
  #retryBuffered(s: Slot, write: boolean): number {
    let fd: number;
    try {
      fd = this.#host.bufferedFd();
    } catch (e) {
      return negErrno(e);
    }
    this.#host.noteDirectFallback();
    const offsets = new Float64Array([s.offset]);
    const counts = new Int32Array([s.buffers.length]);
    const results = new Float64Array(1);
    try {
      this.#native.rwBatch(fd, write, 1, offsets, counts, s.buffers, results);
    } catch {
      return -E.EINVAL;
    }
    return results[0]!;
  }

  #fdatasync(): number {
    if (this.#host.readOnly) return 0;
    try {
      fdatasyncSync(this.#host.fd);
      return 0;
    } catch (e) {
      return negErrno(e);
    }
  }
}

function aligned(offset: number, buffers: readonly Uint8Array[], a: number): boolean {
  if (offset % a !== 0) return false;
  // Buffer addresses cannot be seen from JS: a misaligned one gets EINVAL and goes buffered.
  for (const b of buffers) if (b.byteLength % a !== 0) return false;
  return true;
}

/** Moves a slot's (index, skip) position `n` bytes on. */
function advance(s: Slot, n: number): void {
  const buffers = s.buffers;
  let i = s.index;
  let skip = s.skip;
  while (i < buffers.length) {
    const avail = buffers[i]!.byteLength - skip;
    if (n < avail) {
      skip += n;
      break;
    }
    n -= avail;
    i++;
    skip = 0;
  }
  s.index = i;
  s.skip = skip;
}

function zeroFrom(buffers: readonly Uint8Array[], index: number, skip: number): void {
  for (let i = index; i < buffers.length; i++) buffers[i]!.fill(0, i === index ? skip : 0);
}

/** A queue on `host` (see {@link DiskAsyncQueue}). Used by the images' `openAsyncQueue`. */
export function openAsyncQueue(host: AsyncQueueHost, options: AsyncQueueOptions): DiskAsyncQueue {
  return new AsyncQueue(host, options);
}
