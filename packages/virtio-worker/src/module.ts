// What a device package gives the runtime: one module whose default export
// builds the device from plain data inside the worker and serves its queues
// within a budget. Everything else — poll loop, eventfds, irqfds, transport,
// register channel, stop / stats protocol, the last-resort guard — is the
// runtime's.
import type { GuestMemoryAccess, VirtioDevice } from "@tskvm/virtio";

/** How much one {@link ServedDevice.serveQueue} call may do before the loop looks at its other fds. */
export interface ServeBudget {
  /** Requests (chains). */
  requests: number;
  /** Data bytes, if the device counts them (at least one request is served). */
  bytes: number;
  /** True once a stop or a command is pending: take no more chains, finish those taken. */
  shouldStop(): boolean;
}

/**
 * What a serve call left: `false` drained (wait for the next notification),
 * `true` stopped at the budget with work left (the loop calls again soon),
 * a number > 0: call again after that many ms (e.g. a rate limit; the loop's
 * poll timeout is the timer — devices keep no timers of their own).
 */
export type ServeResult = boolean | number;

/** What the worker hands {@link DeviceModule.create}. */
export interface DeviceModuleContext {
  /** Guest RAM as this worker sees it. */
  memory: GuestMemoryAccess;
  /** The device's name in messages (e.g. "virtio-blk disk.img"). */
  name: string;
}

/** A device built in the worker, as the runtime drives it. */
export interface ServedDevice<Info = unknown, Stats = unknown> {
  readonly device: VirtioDevice;
  /** Serves queue `index` within `budget`. Should not throw (the runtime's guard is the backstop). */
  serveQueue(index: number, budget: ServeBudget): ServeResult;
  /** Chains available and not yet taken on queue `index` (for adaptive polling; optional). */
  pendingRequests?(index: number): number;
  /**
   * Host fds the device reads itself (e.g. the terminal a console serves), polled by the loop
   * beside the queue notifications. Asked again each round: leave an fd out while the device
   * cannot take its data (no busy loop on an fd that stays readable) or once it hit end of file.
   */
  hostFds?(): readonly number[];
  /**
   * `fd`, one of {@link hostFds}, is readable: read it. To have a queue served this round,
   * call `device.queueNotify(index)`. Requests completed here count as served (e.g. a disk's
   * asynchronous completions). Should not throw (the runtime's guard is the backstop).
   */
  hostFdReadable?(fd: number): void;
  /** Requests answered so far (the handle's `completed` counter; an IOPS limit charges these). */
  readonly served: number;
  /**
   * Data bytes of the requests answered so far (e.g. a disk's reads and writes). A bandwidth
   * limit charges these; a device without it is limited in requests only.
   */
  readonly bytesServed?: number;
  /**
   * Requests taken from the queues and not yet answered (a device completing asynchronously,
   * through {@link hostFdReadable}). A pause waits until it is 0; without it, nothing is in flight
   * between two serve calls.
   */
  readonly inFlight?: number;
  /** Plain data for the ready message (e.g. the disk's size and the configuration). */
  info(): Info;
  /** Plain-data counters (the handle's `stats()` and the exit report). */
  stats(): Stats;
  /** At stop: flush and release what the device holds (e.g. close the image). */
  close(): void;
}

/** The default export of a device entry module. */
export interface DeviceModule<Data = unknown, Info = unknown, Stats = unknown> {
  /**
   * Builds the device from `data` (structured-cloned from the caller). A
   * throw ends the worker before it is ready: `ready` rejects with the
   * error's message and `code` (e.g. "ENOENT").
   */
  create(
    data: Data,
    ctx: DeviceModuleContext,
  ): ServedDevice<Info, Stats> | Promise<ServedDevice<Info, Stats>>;
}

/** Types a device entry module's default export (identity at run time). */
export function defineDeviceModule<Data, Info, Stats>(
  module: DeviceModule<Data, Info, Stats>,
): DeviceModule<Data, Info, Stats> {
  return module;
}
