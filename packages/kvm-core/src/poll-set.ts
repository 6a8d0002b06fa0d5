import { constants } from "node:os";
import { describeSysError, usageError } from "./errors.js";
import { POLLIN } from "./ioctls.js";
import { native } from "./native.js";

/**
 * poll(2) for readability over a set of descriptors that changes rarely — a device loop's
 * wait: the buffers are kept between waits, so a wait allocates nothing (where a wake-up is
 * costly, as in an emulated machine, every object a round allocates costs too).
 */
export class PollSet {
  #fds = new Int32Array(0);
  #events = new Int16Array(0);
  #revents = new Int16Array(0);

  constructor(fds: readonly number[] = []) {
    this.setFds(fds);
  }

  /** How many descriptors are polled. */
  get length(): number {
    return this.#fds.length;
  }

  /** The descriptor at `index`. */
  fd(index: number): number {
    if (index < 0 || index >= this.#fds.length) throw usageError("poll", `no descriptor at index ${index}`);
    return this.#fds[index]!;
  }

  /** Whether the set polls exactly `fds`, in this order. */
  matches(fds: readonly number[]): boolean {
    if (fds.length !== this.#fds.length) return false;
    for (let i = 0; i < fds.length; i++) if (this.#fds[i] !== fds[i]) return false;
    return true;
  }

  /** Polls `fds` from now on (readability cleared); new buffers only when the count changes. */
  setFds(fds: readonly number[]): void {
    for (const fd of fds)
      if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff)
        throw usageError("poll", `bad descriptor ${fd}`);
    if (fds.length !== this.#fds.length) {
      this.#fds = new Int32Array(fds.length);
      this.#events = new Int16Array(fds.length).fill(POLLIN);
      this.#revents = new Int16Array(fds.length);
    }
    this.#fds.set(fds);
    this.#revents.fill(0);
  }

  /**
   * Waits up to `timeoutMs` (0: look only; -1: forever) for one of the descriptors to be
   * readable (or hung up); returns how many are. A signal that interrupts the wait (EINTR: a
   * profiler, a kick meant for another thread) counts as nothing readable yet.
   */
  wait(timeoutMs: number): number {
    try {
      return native().poll(this.#fds, this.#events, this.#revents, timeoutMs);
    } catch (e) {
      if ((e as { errno?: unknown }).errno === constants.errno.EINTR) {
        this.#revents.fill(0);
        return 0;
      }
      throw describeSysError("poll", e, undefined);
    }
  }

  /** Whether descriptor `index` was readable (or hung up) at the last {@link wait}. */
  readable(index: number): boolean {
    return index >= 0 && index < this.#fds.length && this.#revents[index] !== 0;
  }
}
