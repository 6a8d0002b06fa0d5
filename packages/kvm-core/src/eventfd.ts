import { describeSysError, sys, usageError } from "./errors.js";
import { EFD_NONBLOCK, POLLIN } from "./ioctls.js";
import { native } from "./native.js";

/**
 * A Linux eventfd: a 64-bit counter the kernel (ioeventfd, irqfd) or any thread can
 * signal. The descriptor is process-wide, so any worker can use it through
 * {@link EventFd.fromFd}; a blocking read parks only the calling thread.
 */
export class EventFd {
  #fd: number;
  readonly nonBlocking: boolean;
  readonly #owned: boolean;

  private constructor(fd: number, nonBlocking: boolean, owned: boolean) {
    this.#fd = fd;
    this.nonBlocking = nonBlocking;
    this.#owned = owned;
  }

  static create(options: { nonBlocking?: boolean; initial?: number } = {}): EventFd {
    const nb = options.nonBlocking ?? false;
    const fd = sys("eventfd", () => native().eventfd(options.initial ?? 0, nb ? EFD_NONBLOCK : 0));
    return new EventFd(fd, nb, true);
  }

  /** Wraps a descriptor created elsewhere in this process (e.g. passed to a worker); does not own it. */
  static fromFd(fd: number, nonBlocking = false): EventFd {
    if (!Number.isInteger(fd) || fd < 0) throw usageError("eventfd", `bad descriptor ${fd}`);
    return new EventFd(fd, nonBlocking, false);
  }

  get fd(): number {
    if (this.#fd < 0) throw usageError("eventfd", "used after close()");
    return this.#fd;
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  /** Adds `value` to the counter, waking readers. */
  write(value: number | bigint = 1): void {
    // No closure per call: an irqfd is written once per interrupt.
    try {
      native().eventfdWrite(this.fd, value);
    } catch (e) {
      throw describeSysError("eventfd write", e, undefined);
    }
  }

  /**
   * Reads and resets the counter without allocating (a device loop's wake-up): true when it
   * was non-zero. On a non-blocking eventfd false when it was zero; a blocking one waits.
   */
  consume(): boolean {
    try {
      return native().eventfdConsume(this.fd);
    } catch (e) {
      throw describeSysError("eventfd read", e, undefined);
    }
  }

  /**
   * Reads and resets the counter. Blocks on a blocking eventfd until it is non-zero;
   * on a non-blocking one returns null when it is zero.
   */
  read(): bigint | null {
    try {
      return native().eventfdRead(this.fd);
    } catch (e) {
      if ((e as { errno?: number }).errno === 11 /* EAGAIN */) return null;
      return sys("eventfd read", () => {
        throw e;
      });
    }
  }

  /** Waits up to `timeoutMs` (-1: forever) for the counter to be non-zero, without reading it. */
  waitReadable(timeoutMs: number): boolean {
    return pollReadable([this.fd], timeoutMs)[0] === true;
  }

  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    if (this.#owned) sys("close", () => native().close(fd));
  }
}

/** poll(2) for readability on several descriptors; returns which are readable (or hung up). */
export function pollReadable(fds: readonly number[], timeoutMs: number): boolean[] {
  const f = Int32Array.from(fds);
  const ev = new Int16Array(fds.length).fill(POLLIN);
  const rev = new Int16Array(fds.length);
  sys("poll", () => native().poll(f, ev, rev, timeoutMs));
  return Array.from(rev, (r) => r !== 0);
}
