import {
  BufferTooShortError,
  SplitOutOfBoundsError,
  UnexpectedDescriptorDirectionError,
  type VirtqueueError,
} from "./errors.js";
import type { GuestMemoryAccess } from "./memory.js";

/** One buffer of a chain, as the device sees it. */
export interface ChainBuffer {
  address: number;
  length: number;
  writable: boolean;
}

/**
 * A validated descriptor chain popped from a {@link Queue}: every buffer lies in
 * guest RAM, readable buffers come before writable ones, the total fits in 32
 * bits. Buffers are kept as flat arrays; {@link reader} and {@link writer} walk
 * them and hand out views that alias guest RAM.
 */
export class DescriptorChain {
  /** Head descriptor index: the id to give back with `queue.addUsed(head, len)`. */
  readonly head: number;
  readonly memory: GuestMemoryAccess;
  /** True when the buffers came from an indirect table. */
  readonly indirect: boolean;
  /** Buffer addresses and lengths in chain order; readable ones are `[0, writableStart)`. */
  readonly addresses: readonly number[];
  readonly lengths: readonly number[];
  readonly writableStart: number;
  readonly readableLength: number;
  readonly writableLength: number;

  /** @internal built by Queue.pop. */
  constructor(
    memory: GuestMemoryAccess,
    head: number,
    addresses: number[],
    lengths: number[],
    writableStart: number,
    readableLength: number,
    writableLength: number,
    indirect: boolean,
  ) {
    this.memory = memory;
    this.head = head;
    this.addresses = addresses;
    this.lengths = lengths;
    this.writableStart = writableStart;
    this.readableLength = readableLength;
    this.writableLength = writableLength;
    this.indirect = indirect;
  }

  /** Number of buffers (descriptors other than the one pointing at an indirect table). */
  get count(): number {
    return this.addresses.length;
  }

  buffer(i: number): ChainBuffer | undefined {
    const address = this.addresses[i];
    const length = this.lengths[i];
    if (address === undefined || length === undefined) return undefined;
    return { address, length, writable: i >= this.writableStart };
  }

  buffers(): ChainBuffer[] {
    return this.addresses.map((address, i) => ({
      address,
      length: this.lengths[i]!,
      writable: i >= this.writableStart,
    }));
  }

  /** The device-readable part. */
  reader(): ChainReader {
    return new ChainReader(this, 0, 0, this.readableLength);
  }

  /** The device-writable part. */
  writer(): ChainWriter {
    return new ChainWriter(this, this.writableStart, 0, this.writableLength);
  }

  /** Throws {@link UnexpectedDescriptorDirectionError} if the chain has writable buffers (e.g. a transmit queue). */
  expectReadableOnly(): void {
    if (this.writableStart !== this.count)
      throw new UnexpectedDescriptorDirectionError("readable", this.head);
  }

  /** Throws {@link UnexpectedDescriptorDirectionError} if the chain has readable buffers (e.g. a receive queue). */
  expectWritableOnly(): void {
    if (this.writableStart !== 0) throw new UnexpectedDescriptorDirectionError("writable", this.head);
  }
}

/** A position in one direction of a chain, with a byte budget. */
abstract class ChainCursor {
  protected readonly chain: DescriptorChain;
  #index: number;
  #offset: number;
  #remaining: number;
  #done = 0;
  protected abstract readonly direction: "readable" | "writable";

  constructor(chain: DescriptorChain, index: number, offset: number, remaining: number) {
    this.chain = chain;
    this.#index = index;
    this.#offset = offset;
    this.#remaining = remaining;
  }

  /** Bytes left in this part. */
  get remaining(): number {
    return this.#remaining;
  }

  /** Bytes consumed (read, written or skipped) so far. */
  protected get done(): number {
    return this.#done;
  }

  protected tooShort(n: number): VirtqueueError {
    return new BufferTooShortError(this.direction, n, this.#remaining, this.chain.head);
  }

  /** Guest address of the next byte when the next `n` bytes are in one buffer, else -1. */
  protected contiguousAt(n: number): number {
    if (n > this.#remaining) throw this.tooShort(n);
    this.#skipEmpty();
    const len = this.chain.lengths[this.#index];
    if (len === undefined || this.#offset + n > len) return -1;
    return this.chain.addresses[this.#index]! + this.#offset;
  }

  #skipEmpty(): void {
    const { lengths } = this.chain;
    while (this.#index < lengths.length && this.#offset >= lengths[this.#index]!) {
      this.#index++;
      this.#offset = 0;
    }
  }

  /** Moves `n` bytes on; returns their views (aliasing guest RAM) when `collect`. */
  protected advance(n: number, collect: boolean): Uint8Array[] {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`bad length ${n}`);
    if (n > this.#remaining) throw this.tooShort(n);
    const out: Uint8Array[] = [];
    const { addresses, lengths, memory } = this.chain;
    let left = n;
    while (left > 0) {
      this.#skipEmpty();
      const len = lengths[this.#index]!;
      const take = Math.min(left, len - this.#offset);
      if (collect) {
        for (const s of memory.segments(addresses[this.#index]! + this.#offset, take)) out.push(s);
      }
      this.#offset += take;
      left -= take;
    }
    this.#remaining -= n;
    this.#done += n;
    return out;
  }

  /** Skips `n` bytes. */
  skip(n: number): void {
    this.advance(n, false);
  }

  /**
   * Splits off everything from `offset` bytes on into a new cursor of the same
   * direction; this one keeps the first `offset` bytes.
   */
  protected splitPosition(offset: number): [number, number, number] {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > this.#remaining)
      throw new SplitOutOfBoundsError(offset, this.#remaining, this.chain.head);
    const { lengths } = this.chain;
    let index = this.#index;
    let off = this.#offset;
    let left = offset;
    while (left > 0) {
      const avail = lengths[index]! - off;
      if (left < avail) {
        off += left;
        left = 0;
      } else {
        left -= avail;
        index++;
        off = 0;
      }
    }
    const tail = this.#remaining - offset;
    this.#remaining = offset;
    return [index, off, tail];
  }
}

/** Reads the device-readable part of a chain (gather). Views alias guest RAM. */
export class ChainReader extends ChainCursor {
  protected readonly direction = "readable";

  /** Bytes read or skipped so far. */
  get bytesRead(): number {
    return this.done;
  }

  /** The next `n` bytes as views into guest memory (no copy). */
  readViews(n: number): Uint8Array[] {
    return this.advance(n, true);
  }

  /** Everything left, as views. */
  readAllViews(): Uint8Array[] {
    return this.advance(this.remaining, true);
  }

  /** The next `n` bytes, copied. */
  read(n: number): Uint8Array {
    const out = new Uint8Array(n);
    this.readInto(out);
    return out;
  }

  readInto(dest: Uint8Array): void {
    let at = 0;
    for (const v of this.advance(dest.length, true)) {
      dest.set(v, at);
      at += v.length;
    }
  }

  #scalar(n: number): DataView {
    const b = this.read(n);
    return new DataView(b.buffer);
  }

  readU8(): number {
    const a = this.contiguousAt(1);
    if (a < 0) return this.#scalar(1).getUint8(0);
    const v = this.chain.memory.readU8(a);
    this.advance(1, false);
    return v;
  }

  readU16(): number {
    const a = this.contiguousAt(2);
    if (a < 0) return this.#scalar(2).getUint16(0, true);
    const v = this.chain.memory.readU16(a);
    this.advance(2, false);
    return v;
  }

  readU32(): number {
    const a = this.contiguousAt(4);
    if (a < 0) return this.#scalar(4).getUint32(0, true);
    const v = this.chain.memory.readU32(a);
    this.advance(4, false);
    return v;
  }

  readU64(): bigint {
    const a = this.contiguousAt(8);
    if (a < 0) return this.#scalar(8).getBigUint64(0, true);
    const v = this.chain.memory.readU64(a);
    this.advance(8, false);
    return v;
  }

  /** Splits at `offset`: this reader keeps `[0, offset)`, the returned one gets the rest. */
  splitAt(offset: number): ChainReader {
    const [index, off, tail] = this.splitPosition(offset);
    return new ChainReader(this.chain, index, off, tail);
  }
}

/** Writes the device-writable part of a chain (scatter). Views alias guest RAM. */
export class ChainWriter extends ChainCursor {
  protected readonly direction = "writable";

  /** Bytes written (or handed out as views, or skipped) so far: what goes in the used element's len. */
  get bytesWritten(): number {
    return this.done;
  }

  /**
   * The next `n` bytes as views into guest memory for the device to fill (no
   * copy), e.g. the destination of a disk read. They count as written.
   */
  writeViews(n: number): Uint8Array[] {
    return this.advance(n, true);
  }

  /** Copies `data` into the chain. */
  write(data: Uint8Array): void {
    let at = 0;
    for (const v of this.advance(data.length, true)) {
      v.set(data.subarray(at, at + v.length));
      at += v.length;
    }
  }

  writeU8(v: number): void {
    const a = this.contiguousAt(1);
    if (a < 0) {
      this.write(Uint8Array.of(v));
      return;
    }
    this.chain.memory.writeU8(a, v);
    this.advance(1, false);
  }

  writeU16(v: number): void {
    const a = this.contiguousAt(2);
    if (a >= 0) {
      this.chain.memory.writeU16(a, v);
      this.advance(2, false);
      return;
    }
    const b = new DataView(new ArrayBuffer(2));
    b.setUint16(0, v, true);
    this.write(new Uint8Array(b.buffer));
  }

  writeU32(v: number): void {
    const a = this.contiguousAt(4);
    if (a >= 0) {
      this.chain.memory.writeU32(a, v);
      this.advance(4, false);
      return;
    }
    const b = new DataView(new ArrayBuffer(4));
    b.setUint32(0, v, true);
    this.write(new Uint8Array(b.buffer));
  }

  writeU64(v: bigint): void {
    const a = this.contiguousAt(8);
    if (a >= 0) {
      this.chain.memory.writeU64(a, v);
      this.advance(8, false);
      return;
    }
    const b = new DataView(new ArrayBuffer(8));
    b.setBigUint64(0, v, true);
    this.write(new Uint8Array(b.buffer));
  }

  /** Splits at `offset`: this writer keeps `[0, offset)`, the returned one gets the rest. */
  splitAt(offset: number): ChainWriter {
    const [index, off, tail] = this.splitPosition(offset);
    return new ChainWriter(this.chain, index, off, tail);
  }
}
