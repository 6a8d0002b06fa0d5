import { KvmError } from "./errors.js";
import { EventFd } from "./eventfd.js";

/** Plain data to rebuild a channel end in another thread. */
export interface DeviceChannelDescriptor {
  shared: SharedArrayBuffer;
  doorbellFd: number;
}

/** One register access forwarded to the thread that owns a device. */
export interface DeviceAccess {
  write: boolean;
  /** Which address space of the device, as the two ends agree (e.g. a BAR index, or 255 for PCI config). */
  space: number;
  offset: number;
  /** 1–8 bytes: the value written, or to be filled for a read. */
  data: Uint8Array;
}

// Int32 slots of the shared block.
const LOCK = 0;
const STATE = 1;
const WRITE = 2;
const SPACE = 3;
const OFFSET = 4;
const LENGTH = 5;
const FAILED = 6;
const SEQ = 7;
const DATA_BYTE = 32;
const BYTES = 48;
const IDLE = 0;
const REQUEST = 1;
const RESPONSE = 2;

/**
 * A synchronous call channel from any number of threads (vCPU workers trapping
 * a device's registers) to the one thread that owns the device (e.g. its I/O
 * worker), so device state never has two owners. The caller blocks on Atomics;
 * the owner is woken through an eventfd it can poll beside its queue
 * notifications. For slow-path accesses only (configuration, setup): queue
 * notifications and interrupts go through ioeventfd and irqfd, not here.
 */
export class DeviceChannel {
  readonly #i32: Int32Array;
  readonly #bytes: Uint8Array;
  readonly doorbell: EventFd;
  readonly #shared: SharedArrayBuffer;

  private constructor(shared: SharedArrayBuffer, doorbell: EventFd) {
    this.#shared = shared;
    this.#i32 = new Int32Array(shared, 0, DATA_BYTE / 4);
    this.#bytes = new Uint8Array(shared, DATA_BYTE, 8);
    this.doorbell = doorbell;
  }

  static create(): DeviceChannel {
    return new DeviceChannel(new SharedArrayBuffer(BYTES), EventFd.create({ nonBlocking: true }));
  }

  static fromDescriptor(d: DeviceChannelDescriptor): DeviceChannel {
    return new DeviceChannel(d.shared, EventFd.fromFd(d.doorbellFd, true));
  }

  describe(): DeviceChannelDescriptor {
    return { shared: this.#shared, doorbellFd: this.doorbell.fd };
  }

  /**
   * Client side: forwards one access and blocks until the owner served it. A read
   * fills `access.data`. Throws a KvmError if the owner does not answer within
   * `timeoutMs` (it died or is stuck) or its handler threw.
   */
  call(access: DeviceAccess, timeoutMs = 5000): void {
    const n = access.data.length;
    if (n < 1 || n > 8) throw new KvmError("device channel", 0, `access of ${n} bytes (1-8 allowed)`);
    const i = this.#i32;
    const deadline = Date.now() + timeoutMs;
    while (Atomics.compareExchange(i, LOCK, 0, 1) !== 0) {
      Atomics.wait(i, LOCK, 1, 10);
      if (Date.now() > deadline)
        throw new KvmError("device channel", 0, "the device owner did not answer (channel busy)");
    }
    try {
      i[WRITE] = access.write ? 1 : 0;
      i[SPACE] = access.space;
      i[OFFSET] = access.offset;
      i[LENGTH] = n;
      i[FAILED] = 0;
      Atomics.add(i, SEQ, 1);
      if (access.write) this.#bytes.set(access.data);
      Atomics.store(i, STATE, REQUEST);
      this.doorbell.write(1);
      while (Atomics.load(i, STATE) === REQUEST) {
        const left = deadline - Date.now();
        if (left <= 0) {
          // Take the request back if it was not picked up; otherwise wait for it below.
          if (Atomics.compareExchange(i, STATE, REQUEST, IDLE) === REQUEST)
            throw new KvmError("device channel", 0, "the device owner did not answer");
        } else Atomics.wait(i, STATE, REQUEST, left);
      }
      if (!access.write) access.data.set(this.#bytes.subarray(0, n));
      const failed = i[FAILED] !== 0;
      Atomics.store(i, STATE, IDLE);
      if (failed) throw new KvmError("device channel", 0, "the device owner failed the access");
    } finally {
      Atomics.store(i, LOCK, 0);
      Atomics.notify(i, LOCK, 1);
    }
  }

  /**
   * Owner side: serves the pending access, if any (call it when the doorbell is
   * readable, or periodically). Returns whether one was served. A handler that
   * throws fails that access (the caller gets an error), not the owner.
   */
  serve(handler: (access: DeviceAccess) => void): boolean {
    this.doorbell.read();
    const i = this.#i32;
    if (Atomics.load(i, STATE) !== REQUEST) return false;
    const seq = Atomics.load(i, SEQ);
    const n = i[LENGTH]!;
    const data = new Uint8Array(n);
    const write = i[WRITE] === 1;
    if (write) data.set(this.#bytes.subarray(0, n));
    try {
      handler({ write, space: i[SPACE]!, offset: i[OFFSET]!, data });
      if (!write) this.#bytes.set(data.subarray(0, n));
    } catch {
      i[FAILED] = 1;
    }
    // Answer only the request we picked up (its caller may have given up meanwhile).
    if (Atomics.load(i, SEQ) === seq && Atomics.compareExchange(i, STATE, REQUEST, RESPONSE) === REQUEST)
      Atomics.notify(i, STATE);
    return true;
  }

  close(): void {
    this.doorbell.close();
  }
}
