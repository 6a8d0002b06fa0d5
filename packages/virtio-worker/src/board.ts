// The latest routing state a device worker reports to the main thread —
// per MSI-X vector its message (or none), per BAR its address, per queue its
// live doorbell — kept in a SharedArrayBuffer rather than sent change by
// change. The worker overwrites a slot and posts one "changed" message only
// when none is outstanding; the main thread clears the flag, reads every slot
// and applies what differs from what it applied last. However fast a guest
// toggles a vector's mask, a BAR or memory decoding, at most one message is
// queued and only the latest state is applied (issue #12, item 6).
import type { MsiMessage, QueueNotifyRegion } from "@tskvm/virtio";

/** Slot kinds and their sizes in Int32 values (after the slot's sequence word). */
const MSIX_VALUES = 4; // present, address lo, address hi, data
const BAR_VALUES = 2; // address lo, hi
const DOORBELL_VALUES = 7; // live, address lo, hi, length, datamatch, bar, barOffset (-1: none)
const BARS = 6;
const DIRTY = 0;
const TWO_32 = 0x1_0000_0000;

export interface StateBoardLayout {
  shared: SharedArrayBuffer;
  vectors: number;
  queues: number;
}

/** Bytes of a board for `vectors` MSI-X vectors and `queues` queues. */
export function stateBoardBytes(vectors: number, queues: number): number {
  return 4 * (1 + vectors * (1 + MSIX_VALUES) + BARS * (1 + BAR_VALUES) + queues * (1 + DOORBELL_VALUES));
}

export class StateBoard {
  readonly layout: StateBoardLayout;
  readonly #i32: Int32Array;
  readonly #barBase: number;
  readonly #doorbellBase: number;

  constructor(layout: StateBoardLayout) {
    this.layout = layout;
    this.#i32 = new Int32Array(layout.shared);
    this.#barBase = 1 + layout.vectors * (1 + MSIX_VALUES);
    this.#doorbellBase = this.#barBase + BARS * (1 + BAR_VALUES);
  }

  static create(vectors: number, queues: number): StateBoard {
    return new StateBoard({
      shared: new SharedArrayBuffer(stateBoardBytes(vectors, queues)),
      vectors,
      queues,
    });
  }

  // ---- writer (the worker) ----

  /** Overwrites one slot (a seqlock: odd while it is being written). Returns true when the reader must be told. */
  #write(at: number, values: readonly number[]): boolean {
    const i = this.#i32;
    const seq = Atomics.load(i, at);
    Atomics.store(i, at, seq + 1);
    for (let k = 0; k < values.length; k++) Atomics.store(i, at + 1 + k, values[k]! | 0);
    Atomics.store(i, at, seq + 2);
    return Atomics.exchange(i, DIRTY, 1) === 0;
  }

  setMsix(vector: number, message: MsiMessage | null): boolean {
    if (vector < 0 || vector >= this.layout.vectors) return false;
    const m = message;
    const values = m
      ? [1, Number(m.address & 0xffff_ffffn), Number((m.address >> 32n) & 0xffff_ffffn), m.data]
      : [0, 0, 0, 0];
    return this.#write(1 + vector * (1 + MSIX_VALUES), values);
  }

  setBar(index: number, address: number): boolean {
    if (index < 0 || index >= BARS) return false;
    return this.#write(this.#barBase + index * (1 + BAR_VALUES), [
      address % TWO_32,
      Math.floor(address / TWO_32),
    ]);
  }

  setDoorbell(queue: number, region: QueueNotifyRegion | undefined): boolean {
    if (queue < 0 || queue >= this.layout.queues) return false;
    const r = region;
    const values = r
      ? [
          1,
          r.address % TWO_32,
          Math.floor(r.address / TWO_32),
          r.length,
          r.datamatch ?? -1,
          r.bar ?? -1,
          r.barOffset ?? -1,
        ]
      : [0, 0, 0, 0, -1, -1, -1];
    return this.#write(this.#doorbellBase + queue * (1 + DOORBELL_VALUES), values);
  }

  // ---- reader (the main thread) ----

  /** Call first when told: a write after this is told again. */
  clearDirty(): void {
    Atomics.store(this.#i32, DIRTY, 0);
  }

  /** One slot's values, or undefined while it is being written (a later message brings it). */
  #read(at: number, n: number): number[] | undefined {
    const i = this.#i32;
    const seq = Atomics.load(i, at);
    if (seq & 1) return undefined;
    const out: number[] = [];
    for (let k = 0; k < n; k++) out.push(Atomics.load(i, at + 1 + k));
    return Atomics.load(i, at) === seq ? out : undefined;
  }

  /** Vector `vector`'s message: a message, null (not deliverable), or undefined (being written). */
  msix(vector: number): MsiMessage | null | undefined {
    const v = this.#read(1 + vector * (1 + MSIX_VALUES), MSIX_VALUES);
    if (!v) return undefined;
    if (v[0] === 0) return null;
    return { address: (BigInt(v[2]! >>> 0) << 32n) | BigInt(v[1]! >>> 0), data: v[3]! >>> 0 };
  }

  /** BAR `index`'s address, or undefined while it is being written. */
  bar(index: number): number | undefined {
    const v = this.#read(this.#barBase + index * (1 + BAR_VALUES), BAR_VALUES);
    return v && (v[1]! >>> 0) * TWO_32 + (v[0]! >>> 0);
  }

  /** Queue `queue`'s live doorbell: a region, null (none), or undefined (being written). */
  doorbell(queue: number): QueueNotifyRegion | null | undefined {
    const v = this.#read(this.#doorbellBase + queue * (1 + DOORBELL_VALUES), DOORBELL_VALUES);
    if (!v) return undefined;
    if (v[0] === 0) return null;
    const r: QueueNotifyRegion = {
      queue,
      space: "mmio",
      address: (v[2]! >>> 0) * TWO_32 + (v[1]! >>> 0),
      length: v[3] as QueueNotifyRegion["length"],
    };
    if (v[4] !== -1) r.datamatch = v[4]! >>> 0;
    if (v[5] !== -1) r.bar = v[5]!;
    if (v[6] !== -1) r.barOffset = v[6]!;
    return r;
  }

  static get bars(): number {
    return BARS;
  }
}
