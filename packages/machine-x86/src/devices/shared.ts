// Shared-memory building blocks for device state that several vCPU threads (and the
// main thread) touch: a futex mutex and a byte ring, both over SharedArrayBuffers.

/**
 * A mutex in one Int32 slot (0 free, 1 held, 2 held with waiters), the classic
 * futex design on Atomics.wait/notify. Node allows Atomics.wait on the main thread,
 * so the main thread may take it too; hold it only for a register access.
 */
export class SharedMutex {
  readonly #cell: Int32Array;
  readonly #index: number;

  constructor(cell: Int32Array, index: number) {
    this.#cell = cell;
    this.#index = index;
  }

  lock(): void {
    const a = this.#cell;
    const i = this.#index;
    let c = Atomics.compareExchange(a, i, 0, 1);
    if (c === 0) return;
    if (c !== 2) c = Atomics.exchange(a, i, 2);
    while (c !== 0) {
      Atomics.wait(a, i, 2);
      c = Atomics.exchange(a, i, 2);
    }
  }

  /** Takes the lock only if it is free (for the main thread, which must never wait on a vCPU). */
  tryLock(): boolean {
    return Atomics.compareExchange(this.#cell, this.#index, 0, 1) === 0;
  }

  unlock(): void {
    const a = this.#cell;
    const i = this.#index;
    if (Atomics.sub(a, i, 1) !== 1) {
      Atomics.store(a, i, 0);
      Atomics.notify(a, i, 1);
    }
  }

  with<T>(fn: () => T): T {
    this.lock();
    try {
      return fn();
    } finally {
      this.unlock();
    }
  }
}

const HEAD = 0;
const TAIL = 1;
const RING_HEADER = 8;

/**
 * A single-consumer byte ring in a SharedArrayBuffer. Producers must be serialised
 * (they hold the owning device's lock); the consumer needs no lock. Head and tail
 * count bytes forever (wrapping at 2^32) so full and empty differ.
 */
export class ByteRing {
  readonly buffer: SharedArrayBuffer;
  readonly capacity: number;
  readonly #idx: Int32Array;
  readonly #data: Uint8Array;

  constructor(buffer: SharedArrayBuffer) {
    const capacity = buffer.byteLength - RING_HEADER;
    if (capacity <= 0 || (capacity & (capacity - 1)) !== 0)
      throw new RangeError("ring capacity must be a power of two");
    this.buffer = buffer;
    this.capacity = capacity;
    this.#idx = new Int32Array(buffer, 0, 2);
    this.#data = new Uint8Array(buffer, RING_HEADER);
  }

  static create(capacity: number): ByteRing {
    return new ByteRing(new SharedArrayBuffer(RING_HEADER + capacity));
  }

  get length(): number {
    return (Atomics.load(this.#idx, TAIL) - Atomics.load(this.#idx, HEAD)) >>> 0;
  }

  get free(): number {
    return this.capacity - this.length;
  }

  /** Appends what fits of `bytes`; returns how many were taken. */
  push(bytes: Uint8Array | readonly number[]): number {
    const tail = Atomics.load(this.#idx, TAIL);
    const n = Math.min(bytes.length, this.capacity - ((tail - Atomics.load(this.#idx, HEAD)) >>> 0));
    const mask = this.capacity - 1;
    for (let i = 0; i < n; i++) this.#data[(tail + i) & mask] = bytes[i]!;
    Atomics.store(this.#idx, TAIL, (tail + n) | 0);
    return n;
  }

  pushByte(b: number): boolean {
    return this.push([b]) === 1;
  }

  /** Removes and returns up to `max` bytes. */
  pop(max = this.capacity): Uint8Array {
    const head = Atomics.load(this.#idx, HEAD);
    const n = Math.min(max, (Atomics.load(this.#idx, TAIL) - head) >>> 0);
    const out = new Uint8Array(n);
    const mask = this.capacity - 1;
    for (let i = 0; i < n; i++) out[i] = this.#data[(head + i) & mask]!;
    if (n > 0) {
      Atomics.store(this.#idx, HEAD, (head + n) | 0);
      Atomics.notify(this.#idx, HEAD);
    }
    return out;
  }

  popByte(): number | undefined {
    const b = this.pop(1);
    return b.length ? b[0] : undefined;
  }

  /** Waits (blocking this thread) until the consumer frees space or `timeoutMs` passes. */
  waitForSpace(timeoutMs: number): void {
    const head = Atomics.load(this.#idx, HEAD);
    if (this.free > 0) return;
    Atomics.wait(this.#idx, HEAD, head, timeoutMs);
  }

  clear(): void {
    Atomics.store(this.#idx, HEAD, Atomics.load(this.#idx, TAIL));
  }
}
