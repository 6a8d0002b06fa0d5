// The console's link between the host (main thread) and the device module in
// a worker: one SharedArrayBuffer (plain data: it crosses into the worker in
// the module's `data`) with two single-producer single-consumer byte rings —
// output (worker → host) and input (host → worker) — and the terminal size.
// The host waits for output with `Atomics.waitAsync` (no timer); the worker is
// woken for input and resizes through the queue's notify eventfd (`wake`,
// e.g. `(q) => handle.notify(q)` of `@tskvm/virtio-worker`'s handle).

/** Int32 slots of the link's header. */
const H = {
  OUT_HEAD: 0, // bytes the host has read (mod 2^32)
  OUT_TAIL: 1, // bytes the worker has written
  IN_HEAD: 2, // bytes the worker has taken
  IN_TAIL: 3, // bytes the host has written
  COLS: 4,
  ROWS: 5,
  RESIZE_SEQ: 6, // bumped by the host on each resize
  OUT_BLOCKED: 7, // 1: the worker stopped serving output for lack of room
  OUT_CAP: 8,
  IN_CAP: 9,
  QUIT: 10, // 1: the user typed the quit sequence (a device serving a terminal itself)
} as const;
const HEADER = 64;

type WaitAsyncResult = { async: false; value: string } | { async: true; value: Promise<string> };
/** `Atomics.waitAsync` (Node ≥ 16; not in this TypeScript lib yet). */
function waitAsync(ctl: Int32Array, index: number, value: number, timeoutMs?: number): WaitAsyncResult {
  const atomics = Atomics as unknown as {
    waitAsync(ta: Int32Array, i: number, v: number, t?: number): WaitAsyncResult;
  };
  return atomics.waitAsync(ctl, index, value, timeoutMs);
}

/** A byte ring in a SharedArrayBuffer: counters in `ctl` at `head` / `tail`, data in `data`. */
class Ring {
  constructor(
    readonly ctl: Int32Array,
    readonly data: Uint8Array,
    readonly head: number,
    readonly tail: number,
  ) {}

  get used(): number {
    return (Atomics.load(this.ctl, this.tail) - Atomics.load(this.ctl, this.head)) >>> 0;
  }

  get space(): number {
    return this.data.length - this.used;
  }

  /** Producer: copies what fits, publishes it, wakes a waiting consumer; returns the count. */
  write(bytes: Uint8Array): number {
    const cap = this.data.length;
    const tail = Atomics.load(this.ctl, this.tail) >>> 0;
    const n = Math.min(bytes.length, this.space);
    let at = 0;
    while (at < n) {
      const pos = (tail + at) % cap;
      const take = Math.min(n - at, cap - pos);
      this.data.set(bytes.subarray(at, at + take), pos);
      at += take;
    }
    if (n > 0) {
      Atomics.store(this.ctl, this.tail, (tail + n) | 0);
      Atomics.notify(this.ctl, this.tail);
    }
    return n;
  }

  /** Consumer: up to `max` bytes (a copy), removed from the ring. */
  read(max = Number.POSITIVE_INFINITY): Uint8Array {
    const cap = this.data.length;
    const head = Atomics.load(this.ctl, this.head) >>> 0;
    const n = Math.min(this.used, max);
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const pos = (head + at) % cap;
      const take = Math.min(n - at, cap - pos);
      out.set(this.data.subarray(pos, pos + take), at);
      at += take;
    }
    if (n > 0) {
      Atomics.store(this.ctl, this.head, (head + n) | 0);
      Atomics.notify(this.ctl, this.head);
    }
    return out;
  }
}

/** What the console's device module is built from (plain data). */
export interface ConsoleLinkData {
  /** The link's SharedArrayBuffer (see {@link ConsoleLink}). */
  link: SharedArrayBuffer;
}

/** The worker's side of a {@link ConsoleLink}. */
export class ConsoleLinkWorkerSide {
  readonly #ctl: Int32Array;
  readonly output: Ring;
  readonly input: Ring;
  #resizeSeq = 0;

  constructor(buffer: SharedArrayBuffer) {
    this.#ctl = new Int32Array(buffer, 0, HEADER / 4);
    const outCap = this.#ctl[H.OUT_CAP]!;
    const inCap = this.#ctl[H.IN_CAP]!;
    this.output = new Ring(this.#ctl, new Uint8Array(buffer, HEADER, outCap), H.OUT_HEAD, H.OUT_TAIL);
    this.input = new Ring(this.#ctl, new Uint8Array(buffer, HEADER + outCap, inCap), H.IN_HEAD, H.IN_TAIL);
  }

  /** The terminal size if the host resized since the last call. */
  takeResize(): { cols: number; rows: number } | undefined {
    const seq = Atomics.load(this.#ctl, H.RESIZE_SEQ);
    if (seq === this.#resizeSeq) return undefined;
    this.#resizeSeq = seq;
    return this.size();
  }

  size(): { cols: number; rows: number } {
    return { cols: Atomics.load(this.#ctl, H.COLS), rows: Atomics.load(this.#ctl, H.ROWS) };
  }

  set outputBlocked(v: boolean) {
    Atomics.store(this.#ctl, H.OUT_BLOCKED, v ? 1 : 0);
  }

  /** The user typed the quit sequence on the terminal this worker reads (see {@link ConsoleLink.onQuit}). */
  requestQuit(): void {
    Atomics.store(this.#ctl, H.QUIT, 1);
    Atomics.notify(this.#ctl, H.QUIT);
  }
}

export interface ConsoleLinkOptions {
  /** Output ring size (default 64 KiB). */
  outputCapacity?: number;
  /** Input ring size (default 64 KiB). */
  inputCapacity?: number;
  /** Initial terminal size (default 80 × 25). */
  cols?: number;
  rows?: number;
}

/**
 * The host's side of the console link. Give `data` (plus device options) to
 * the device module, set `wake` once the worker is started, then `write`,
 * `resize`, and read output with `read()` / `onOutput`.
 */
export class ConsoleLink {
  readonly buffer: SharedArrayBuffer;
  readonly #ctl: Int32Array;
  readonly #output: Ring;
  readonly #input: Ring;
  /** Wakes the worker for a queue (e.g. `(q) => handle.notify(q)`); without it input waits for the worker's next poll. */
  wake: ((queue: number) => void) | undefined;
  #reading = false;

  constructor(options: ConsoleLinkOptions = {}) {
    const outCap = options.outputCapacity ?? 64 << 10;
    const inCap = options.inputCapacity ?? 64 << 10;
    for (const [n, v] of [
      ["outputCapacity", outCap],
      ["inputCapacity", inCap],
    ] as const)
      if (!Number.isSafeInteger(v) || v < 1 || v > 1 << 30)
        throw new RangeError(`${n} must be in [1, 2^30], not ${v}`);
    this.buffer = new SharedArrayBuffer(HEADER + outCap + inCap);
    this.#ctl = new Int32Array(this.buffer, 0, HEADER / 4);
    this.#ctl[H.OUT_CAP] = outCap;
    this.#ctl[H.IN_CAP] = inCap;
    this.#ctl[H.COLS] = options.cols ?? 80;
    this.#ctl[H.ROWS] = options.rows ?? 25;
    this.#output = new Ring(this.#ctl, new Uint8Array(this.buffer, HEADER, outCap), H.OUT_HEAD, H.OUT_TAIL);
    this.#input = new Ring(
      this.#ctl,
      new Uint8Array(this.buffer, HEADER + outCap, inCap),
      H.IN_HEAD,
      H.IN_TAIL,
    );
  }

  /** The module data for this link. */
  get data(): ConsoleLinkData {
    return { link: this.buffer };
  }

  /** Output bytes waiting to be read. */
  get outputAvailable(): number {
    return this.#output.used;
  }

  /** Bytes {@link write} would accept now. */
  get inputSpace(): number {
    return this.#input.space;
  }

  /** Takes the output there is (possibly none); lets a worker blocked on a full ring go on. */
  read(): Uint8Array {
    const out = this.#output.read();
    if (out.length > 0 && Atomics.compareExchange(this.#ctl, H.OUT_BLOCKED, 1, 0) === 1) this.wake?.(1);
    return out;
  }

  /** Resolves once output is available (at once if it is). No timer: `Atomics.waitAsync`. */
  async waitOutput(): Promise<void> {
    for (;;) {
      const tail = Atomics.load(this.#ctl, H.OUT_TAIL);
      if (this.#output.used > 0) return;
      const w = waitAsync(this.#ctl, H.OUT_TAIL, tail);
      if (w.async) await w.value;
    }
  }

  /**
   * Calls `cb` with each piece of output until the returned function is
   * called. (An `Atomics.waitAsync` waiter keeps the event loop alive while
   * reading: stop it to let the process exit.)
   */
  onOutput(cb: (bytes: Uint8Array) => void): () => void {
    if (this.#reading) throw new Error("the console link is already being read");
    this.#reading = true;
    let stopped = false;
    void (async () => {
      while (!stopped) {
        const tail = Atomics.load(this.#ctl, H.OUT_TAIL);
        const out = this.read();
        if (out.length > 0) {
          cb(out);
          continue;
        }
        const w = waitAsync(this.#ctl, H.OUT_TAIL, tail, 1000);
        if (w.async) await w.value;
      }
    })();
    return () => {
      stopped = true;
      this.#reading = false;
    };
  }

  /**
   * Calls `cb` once if the worker serving a terminal itself (the module's `terminal` with
   * `escape`) sees the quit sequence; stop waiting with the returned function (a waiter
   * keeps the event loop alive).
   */
  onQuit(cb: () => void): () => void {
    let stopped = false;
    void (async () => {
      while (!stopped) {
        if (Atomics.load(this.#ctl, H.QUIT) !== 0) {
          stopped = true;
          cb();
          return;
        }
        const w = waitAsync(this.#ctl, H.QUIT, 0, 1000);
        if (w.async) await w.value;
      }
    })();
    return () => {
      stopped = true;
    };
  }

  /** Queues input for the guest: accepts what fits (returns the count) and wakes the worker. */
  write(bytes: Uint8Array): number {
    const n = this.#input.write(bytes);
    if (n > 0) this.wake?.(0);
    return n;
  }

  /** Resolves once the input ring has room for `n` bytes (capped at its size). */
  async waitInputSpace(n = 1): Promise<void> {
    const want = Math.min(n, this.#input.data.length);
    for (;;) {
      const head = Atomics.load(this.#ctl, H.IN_HEAD);
      if (this.#input.space >= want) return;
      const w = waitAsync(this.#ctl, H.IN_HEAD, head);
      if (w.async) await w.value;
    }
  }

  /** The host terminal changed size: the worker's device updates its config and interrupts the guest. */
  resize(cols: number, rows: number): void {
    for (const [n, v] of [
      ["cols", cols],
      ["rows", rows],
    ] as const)
      if (!Number.isInteger(v) || v < 0 || v > 0xffff)
        throw new RangeError(`${n} must be an integer in [0, 65535], not ${v}`);
    Atomics.store(this.#ctl, H.COLS, cols);
    Atomics.store(this.#ctl, H.ROWS, rows);
    Atomics.add(this.#ctl, H.RESIZE_SEQ, 1);
    this.wake?.(0);
  }
}
