// Adaptive polling, after QEMU's poll-max-ns / poll-grow / poll-shrink: once a device has
// answered requests, its worker keeps looking at the rings for a while instead of sleeping,
// so a driver that queues again soon is served without a notification (a VM exit), a
// wake-up of the worker, or a system call to sleep. The window follows the gaps the device
// meets between answering and the next request: a gap longer than the window but within the
// maximum doubles it, a gap beyond the maximum halves it (to 0 below the first step), so a
// guest that keeps the disk busy is polled and an idle or sporadic one costs nothing.

/** The first window when growing from 0 (ms): QEMU's starting step, 4 µs. */
const FIRST_STEP_MS = 0.004;

export class PollWindow {
  #ms = 0;

  /** `maxMs` 0 never polls. */
  constructor(readonly maxMs: number) {}

  /** How long (ms) to keep looking after the last answer: 0 … {@link maxMs}. */
  get ms(): number {
    return this.#ms;
  }

  /** Whether `now` lies within the window after the device's last answer at `lastWork`. */
  open(now: number, lastWork: number): boolean {
    return this.#ms > 0 && now - lastWork < this.#ms;
  }

  /** A request arrived `gapMs` after the device last answered one: adapt the window. */
  observe(gapMs: number): void {
    if (!(gapMs > this.#ms) || this.maxMs <= 0) return; // caught while polling (or no gap)
    if (gapMs > this.maxMs) this.#ms = this.#ms / 2 < FIRST_STEP_MS ? 0 : this.#ms / 2;
    else this.#ms = Math.min(this.maxMs, Math.max(this.#ms * 2, FIRST_STEP_MS));
  }
}
