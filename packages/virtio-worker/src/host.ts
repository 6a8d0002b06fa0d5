import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from "node:worker_threads";
import { type DeviceChannelDescriptor, EventFd, type GuestMemoryDescriptor } from "@tskvm/kvm-core";
import type { DeviceTuning } from "@tskvm/machine-x86";
import type {
  ActivateContext,
  MsiMessage,
  PlainGuestMemoryDescriptor,
  QueueNotifyRegion,
  QueueState,
} from "@tskvm/virtio";
import { StateBoard } from "./board.js";
import {
  CONTROL_BYTES,
  Ctl,
  type DevicePciOptions,
  type DeviceSlotData,
  type DeviceTransportKind,
  type DeviceWorkerData,
  type DeviceWorkerExit,
  type DeviceWorkerReady,
  type DeviceWorkerStats,
  type WorkerCommand,
  type WorkerEvent,
  type WorkerReply,
  type WorkerRequest,
} from "./protocol.js";

const WORKER_URL = new URL("./worker.js", import.meta.url);

/** A doorbell became live or dead: register / unregister `eventFd` as an ioeventfd at `region`. */
export interface IoeventfdEvent {
  action: "register" | "unregister";
  queue: number;
  /** Shaped like kvm-core's IoeventfdOptions (`space`, `address`, `length`, `datamatch`). */
  region: QueueNotifyRegion;
  /** The queue's notify eventfd, which the worker polls. */
  eventFd: EventFd;
}

/** The guest (re)programmed MSI-X vector `vector`: route `irqfd`'s GSI to `message`, or tear it down (null). */
export interface MsixEvent {
  vector: number;
  message: MsiMessage | null;
  /** The vector's irqfd, which the worker writes to raise it. */
  irqfd: EventFd | undefined;
}

/**
 * What the VMM does for the worker (the main thread owns the Vm and does the
 * ioctls). Called on the main thread's event loop; none of them is on the
 * request path. `ioeventfd`, `msix` and `barMoved` bring the VMM to the
 * worker's latest state: changes the guest made faster than the main thread
 * applies them are coalesced (only the latest state per doorbell, vector and
 * BAR is applied). A hook that throws is said on stderr (once) and does not
 * stop the others.
 */
export interface DeviceWorkerHooks {
  /** `vm.registerIoeventfd(e.eventFd, e.region)` / `vm.unregisterIoeventfd(...)`. */
  ioeventfd?(e: IoeventfdEvent): void;
  /** Point the vector's irqfd GSI at the message (`vm.setGsiRouting`), or remove the route. */
  msix?(e: MsixEvent): void;
  /** The guest moved a BAR (PCI transport in the worker). */
  barMoved?(index: number, address: number): void;
  /** The device marked itself DEVICE_NEEDS_RESET (transport "none": the handle already told the transport). */
  needsReset?(reason: string): void;
  /** The worker failed (e.g. the device could not be built, or an internal error). */
  error?(message: string, code: string | undefined): void;
}

export interface StartDeviceWorkerOptions<Data> {
  /** URL of the device's entry module (its default export: `defineDeviceModule({...})`). */
  module: string | URL;
  /** Plain data for the module's `create` (structured-cloned into the worker). */
  data: Data;
  /** The device's name in messages and the thread's name (default: the module's file name). */
  name?: string;
  /**
   * Guest RAM as the worker sees it: kvm-core `GuestMemory.describe()` (a VM's
   * memory, or regions from `GuestRegion.allocate`), or a shared
   * `PlainGuestMemory.describe()`.
   */
  memory: GuestMemoryDescriptor | PlainGuestMemoryDescriptor;
  /**
   * Where the virtio transport lives:
   * - "pci" / "mmio": in the worker, with the device (register accesses come
   *   through `channel`; give one for a VM with several vCPUs);
   * - "none": in the calling thread — the handle is the remote half of a
   *   device whose transport you build here (see virtio-blk's worker mode).
   */
  transport: DeviceTransportKind;
  pci?: DevicePciOptions;
  /** virtio-mmio: guest-physical base of the register window. */
  mmioBase?: number;
  /** Register accesses forwarded from vCPU threads (pci / mmio). */
  channel?: DeviceChannelDescriptor;
  /** Number of virtqueues (default 1): one notify eventfd each. */
  queues?: number;
  /** One notify eventfd per queue (default: created here, see `notifyEventFds`). */
  notifyFds?: number[];
  /** One irqfd per MSI-X vector (default: created here, `pci.msixVectors` or 1 + queues). */
  irqfds?: number[];
  /** INTx / mmio line irqfd (level-triggered: register it with KVM with `resampleFd`). */
  intxFd?: number;
  resampleFd?: number;
  hooks?: DeviceWorkerHooks;
  /** Idle poll timeout of the worker (ms); bounds how long an unstopped worker delays exit. Default 500. */
  pollTimeoutMs?: number;
  /** Requests served per queue before the worker looks at its control / channel fds again. Default 64. */
  budget?: number;
  /** Data bytes served per queue before the worker looks at its other fds again. Default 64 MiB. */
  byteBudget?: number;
  /**
   * After serving requests, the worker keeps looking at the rings for this long (µs) before it
   * sleeps in poll (adaptive polling, like QEMU's poll-max-ns). Default 0 (off).
   */
  spinUs?: number;
  /** Timeout of synchronous commands (activate, reset, stats) in ms. Default 10000. */
  commandTimeoutMs?: number;
  /**
   * Limits and priorities from the start (see {@link DeviceWorkerHandle.tune}); one the
   * worker cannot apply (e.g. `ioPriority` rt without the privilege) fails the start.
   */
  tuning?: DeviceTuning;
  /**
   * The thread that serves the device: a worker of its own (default; the
   * right place for a device whose work is heavy, like a disk), or a
   * {@link SharedDeviceWorker} shared with other slow devices (an rng, a
   * console). `pollTimeoutMs` and `spinUs` are then the shared worker's.
   */
  thread?: SharedDeviceWorker;
}

/** Where a handle's device runs: how its slot reaches a thread, and what to do once the device ended. */
type Launch = (slot: DeviceSlotData, transfer: MessagePort[]) => { worker: Worker; release(): void };

/**
 * The main thread's handle on a device served by a worker. Wiring for a VMM:
 * 1. `await handle.ready` (the module's info, PCI BARs);
 * 2. `hooks.ioeventfd`: register `e.eventFd` at `e.region` (and unregister);
 * 3. `hooks.msix`: route vector `e.vector`'s irqfd (`e.irqfd`, registered
 *    with `vm.registerIrqfd(efd, gsi)`) to `e.message`, or drop the route;
 * 4. vCPU threads forward BAR / config accesses through the DeviceChannel
 *    (`ChannelPciFunction`, or {@link DEVICE_PCI_HANDLER_MODULE} for machine-x86);
 * 5. at shutdown `await handle.stop()`.
 * Or let {@link workerPciDevice} do all of it for `@tskvm/machine-x86`.
 */
export class DeviceWorkerHandle<Info = unknown, Stats = unknown> {
  /** The thread serving the device (shared with other devices on a shared worker). */
  readonly worker: Worker;
  readonly name: string;
  /** Resolves when the device is built; rejects if it failed first. */
  readonly ready: Promise<DeviceWorkerReady<Info>>;
  /** Resolves when the device has ended (after `stop()`, or on its own after a failure). */
  readonly exited: Promise<DeviceWorkerExit<Stats>>;
  /** One per queue: register them as ioeventfds (the worker polls them). */
  readonly notifyEventFds: readonly EventFd[];
  /** One per MSI-X vector: register them as irqfds (the worker writes them). */
  readonly irqEventFds: readonly EventFd[];
  readonly #ownedFds: EventFd[] = [];
  readonly #ctl: Int32Array;
  readonly #control: EventFd;
  readonly #port: MessagePort;
  readonly #events: MessagePort;
  readonly #hooks: DeviceWorkerHooks;
  readonly #timeout: number;
  readonly #board: StateBoard;
  /** What the hooks were last told, per MSI-X vector / BAR / queue (see {@link #applyBoard}). */
  readonly #appliedMsix = new Map<number, MsiMessage>();
  readonly #appliedBars = new Map<number, number>();
  readonly #appliedDoorbells = new Map<number, QueueNotifyRegion>();
  #seq = 0;
  #ready: DeviceWorkerReady<Info> | undefined;
  #exit: DeviceWorkerExit<Stats> | undefined;
  #ended = false;
  #ctx: ActivateContext | undefined;
  #hookFailed = false;
  #routingUpdates = 0;
  /** Asynchronous requests waiting for the worker's reply, by id. */
  readonly #requests = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  #requestId = 0;

  /** Starts the device; {@link startDeviceWorker} says the same. */
  constructor(options: StartDeviceWorkerOptions<unknown>) {
    const launch = options.thread ? options.thread.launch : ownWorker(options);
    this.#hooks = options.hooks ?? {};
    this.#timeout = options.commandTimeoutMs ?? 10_000;
    const module = String(options.module);
    this.name = options.name ?? module.slice(module.lastIndexOf("/") + 1);
    const own = (): EventFd => {
      const e = EventFd.create({ nonBlocking: true });
      this.#ownedFds.push(e);
      return e;
    };
    const queues = options.queues ?? options.notifyFds?.length ?? 1;
    this.notifyEventFds = options.notifyFds
      ? options.notifyFds.map((fd) => EventFd.fromFd(fd, true))
      : Array.from({ length: queues }, own);
    const vectors = options.pci?.msixVectors ?? 1 + this.notifyEventFds.length;
    this.irqEventFds = options.irqfds
      ? options.irqfds.map((fd) => EventFd.fromFd(fd, true))
      : options.transport === "mmio"
        ? []
        : Array.from({ length: vectors }, own);
    this.#control = own();
    const shared = new SharedArrayBuffer(CONTROL_BYTES);
    this.#ctl = new Int32Array(shared);
    const control = new MessageChannel();
    const events = new MessageChannel();
    this.#port = control.port1;
    this.#events = events.port1;
    this.#board = StateBoard.create(
      options.transport === "pci" ? (options.pci?.msixVectors ?? this.irqEventFds.length) : 0,
      this.notifyEventFds.length,
    );
    const slot: DeviceSlotData = {
      module,
      device: options.data,
      name: this.name,
      memory: options.memory,
      transport: options.transport,
      pci: options.pci,
      mmioBase: options.mmioBase,
      channel: options.channel,
      notifyFds: this.notifyEventFds.map((e) => e.fd),
      irqfds: this.irqEventFds.map((e) => e.fd),
      intxFd: options.intxFd,
      resampleFd: options.resampleFd,
      control: { shared, fd: this.#control.fd, port: control.port2 },
      events: events.port2,
      board: this.#board.layout,
      budget: options.budget ?? 64,
      byteBudget: options.byteBudget ?? 64 << 20,
      tuning: options.tuning,
    };
    let readyResolve: (r: DeviceWorkerReady<Info>) => void = () => {};
    let readyReject: (e: Error) => void = () => {};
    this.ready = new Promise((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    // A failed start is reported through `ready`; do not let it count as unhandled if nobody waits.
    this.ready.catch(() => {});
    let lastError: { message: string; code?: string } | undefined;
    let finish: (err?: Error) => void = () => {};
    const onEvent = (m: WorkerEvent): void => {
      switch (m.type) {
        case "ready":
          this.#ready = m.ready as DeviceWorkerReady<Info>;
          readyResolve(this.#ready);
          break;
        case "changed":
          this.#routingUpdates++;
          this.#applyBoard();
          break;
        case "needs-reset":
          this.#callHook("needsReset", () => {
            this.#ctx?.needsReset(new Error(m.reason));
            this.#hooks.needsReset?.(m.reason);
          });
          break;
        case "config-interrupt":
          this.#ctx?.interrupt.signalConfig();
          break;
        case "error":
          lastError = { message: m.message, ...(m.code !== undefined ? { code: m.code } : {}) };
          this.#callHook("error", () => this.#hooks.error?.(m.message, m.code));
          break;
        case "exit":
          this.#exit = m.exit as DeviceWorkerExit<Stats>;
          finish();
          break;
        case "reply": {
          const r = this.#requests.get(m.id);
          if (!r) break;
          this.#requests.delete(m.id);
          if (m.ok) r.resolve(m.value);
          else r.reject(Object.assign(new Error(m.error), m.code !== undefined ? { code: m.code } : {}));
          break;
        }
      }
    };
    this.#events.on("message", onEvent);
    const launched = launch(slot, [control.port2, events.port2]);
    this.worker = launched.worker;
    this.exited = new Promise((resolve) => {
      finish = (err?: Error): void => {
        if (this.#ended) return;
        this.#ended = true;
        this.worker.off("error", onThreadError);
        this.worker.off("exit", onThreadExit);
        for (const e of this.#ownedFds) e.close();
        for (const r of this.#requests.values())
          r.reject(new Error(`${this.name}: the device worker has exited`));
        this.#requests.clear();
        this.#port.close();
        this.#events.close();
        launched.release();
        const exit: DeviceWorkerExit<Stats> = this.#exit ?? { queues: [], stats: undefined };
        const e = exit.error ?? lastError ?? (err ? { message: err.message } : undefined);
        if (e && !exit.error) exit.error = e;
        readyReject(
          Object.assign(new Error(e?.message ?? `${this.name}: the worker ended before it was ready`), e),
        );
        resolve(exit);
      };
      // The thread ended without the device's exit report (it crashed): take what is queued, then end.
      const onThreadExit = (): void => {
        for (
          let m = receiveMessageOnPort(this.#events);
          m && !this.#ended;
          m = receiveMessageOnPort(this.#events)
        )
          onEvent(m.message as WorkerEvent);
        finish();
      };
      const onThreadError = (err: Error): void => {
        for (
          let m = receiveMessageOnPort(this.#events);
          m && !this.#ended;
          m = receiveMessageOnPort(this.#events)
        )
          onEvent(m.message as WorkerEvent);
        finish(err);
      };
      this.worker.once("error", onThreadError);
      this.worker.once("exit", onThreadExit);
    });
  }

  /**
   * Brings the VMM's routing in line with the worker's latest state: BAR
   * moves, then doorbells (unregister the stale, register the new), then
   * MSI-X routes — each hook only for what changed since it was last called.
   */
  #applyBoard(): void {
    const b = this.#board;
    b.clearDirty();
    for (let i = 0; i < StateBoard.bars; i++) {
      const address = b.bar(i);
      if (address === undefined || address === (this.#appliedBars.get(i) ?? 0)) continue;
      this.#appliedBars.set(i, address);
      this.#callHook("barMoved", () => this.#hooks.barMoved?.(i, address));
    }
    for (let queue = 0; queue < b.layout.queues; queue++) {
      const want = b.doorbell(queue);
      if (want === undefined) continue;
      const have = this.#appliedDoorbells.get(queue);
      const eventFd = this.notifyEventFds[queue]!;
      if (have && !(want && sameRegion(have, want))) {
        this.#appliedDoorbells.delete(queue);
        this.#callHook("ioeventfd", () =>
          this.#hooks.ioeventfd?.({ action: "unregister", queue, region: have, eventFd }),
        );
      }
      if (want && !this.#appliedDoorbells.has(queue)) {
        // Counted as registered only once the hook succeeded: a refused one is tried again next time.
        if (
          this.#callHook("ioeventfd", () =>
            this.#hooks.ioeventfd?.({ action: "register", queue, region: want, eventFd }),
          )
        )
          this.#appliedDoorbells.set(queue, want);
      }
    }
    for (let vector = 0; vector < b.layout.vectors; vector++) {
      const message = b.msix(vector);
      if (message === undefined) continue;
      const have = this.#appliedMsix.get(vector);
      if (
        message === null
          ? have === undefined
          : have?.address === message.address && have.data === message.data
      )
        continue;
      if (message) this.#appliedMsix.set(vector, message);
      else this.#appliedMsix.delete(vector);
      this.#callHook("msix", () => this.#hooks.msix?.({ vector, message, irqfd: this.irqEventFds[vector] }));
    }
  }

  /**
   * Calls a VMM hook from the worker's messages: a hook that throws (e.g. KVM
   * refusing an ioeventfd at an address the guest chose) must not become an
   * uncaught exception on the main thread. The first failure is said on
   * stderr. Returns whether the hook succeeded.
   */
  #callHook(name: string, call: () => void): boolean {
    try {
      call();
      return true;
    } catch (e) {
      if (!this.#hookFailed) {
        this.#hookFailed = true;
        const why = e instanceof Error ? e.message : String(e);
        process.stderr.write(`tskvm: ${this.name}: the VMM's ${name} hook failed: ${why}\n`);
      }
      return false;
    }
  }

  /** The module's info (after `ready`). */
  get info(): DeviceWorkerReady<Info> {
    if (!this.#ready) throw new Error(`${this.name}: the device worker is not ready yet: await handle.ready`);
    return this.#ready;
  }

  /** Routing updates (MSI-X, BARs, doorbells) the worker sent so far: coalesced, at most one outstanding. */
  get routingUpdates(): number {
    return this.#routingUpdates;
  }

  /** Requests completed so far (read from shared memory: no round trip). */
  get completed(): number {
    return Atomics.load(this.#ctl, Ctl.COMPLETED);
  }

  /**
   * Stops the device: it finishes the request in progress, publishes its used
   * entries, closes the device (flushing it) and, on a worker of its own, the
   * thread exits. Resolves with the final queue states and counters.
   */
  stop(): Promise<DeviceWorkerExit<Stats>> {
    if (!this.#ended) {
      Atomics.store(this.#ctl, Ctl.STOP, 1);
      try {
        this.#control.write(1);
      } catch {
        // already closed: the device is gone
      }
    }
    return this.exited;
  }

  /**
   * Holds the device (a paused machine): the worker finishes the requests in flight — resolves
   * once they are answered — then serves no queue until {@link resume}. Notifications meanwhile
   * are remembered and served on resume; register accesses are answered as ever.
   */
  pause(): Promise<void> {
    return this.#request({ type: "pause" }).then(() => {});
  }

  /** Serves the queues again, beginning with what was notified while held. */
  resume(): Promise<void> {
    return this.#request({ type: "resume" }).then(() => {});
  }

  /**
   * Changes limits and priorities at run time; resolves with the tuning now in force. A field
   * left out is unchanged, `null` goes back to the default. `iops` / `bandwidth` are token
   * buckets of this device (a request is delayed, never dropped); `ioPriority` and `nice` are
   * the worker thread's — on a {@link SharedDeviceWorker}, every device on it. A tuning the
   * worker cannot apply (a bad value, EPERM) rejects and changes nothing; the device goes on.
   */
  tune(tuning: DeviceTuning): Promise<DeviceTuning> {
    return this.#request({ type: "tune", tuning }) as Promise<DeviceTuning>;
  }

  /**
   * The device's counters with its thread's (tid, wake-ups, CPU time, time throttled, held,
   * tuning), without blocking this thread: answered when the worker next looks at its commands.
   */
  statsAsync(): Promise<DeviceWorkerStats<Stats>> {
    return this.#request({ type: "stats" }) as Promise<DeviceWorkerStats<Stats>>;
  }

  #request(r: DistributiveOmit<WorkerRequest, "id">): Promise<unknown> {
    if (this.#ended) return Promise.reject(new Error(`${this.name}: the device worker has exited`));
    const id = ++this.#requestId;
    return new Promise((resolve, reject) => {
      this.#requests.set(id, { resolve, reject });
      this.#port.postMessage({ ...r, id });
      try {
        this.#control.write(1);
      } catch {
        // closed: the exit rejects it
      }
    });
  }

  /** Counters of the device in the worker (synchronous round trip; see {@link statsAsync}). */
  stats(): Stats {
    const r = this.#call({ type: "stats" });
    if (r.stats === undefined) throw new Error("no stats in the reply");
    return r.stats as Stats;
  }

  // ---- the remote half of a device whose transport is in this thread (transport "none") ----

  /** Hands the queues to the worker; returns once it owns them. */
  activate(ctx: ActivateContext): void {
    this.#call({
      type: "activate",
      driverFeatures: ctx.driverFeatures,
      queues: ctx.queues.map((q) => ({ index: q.index, state: q.queue.state(), vector: q.vector })),
      interruptStatus: ctx.interruptStatus.buffer as SharedArrayBuffer,
    });
    this.#ctx = ctx;
  }

  /** Takes the queues back; returns once the worker no longer touches them, with their states. */
  reset(): { index: number; state: QueueState }[] {
    this.#ctx = undefined;
    return this.#call({ type: "reset" }).states ?? [];
  }

  notify(index: number): void {
    this.notifyEventFds[index]?.write(1);
  }

  #call(cmd: DistributiveOmit<WorkerCommand, "seq">): Extract<WorkerReply, { ok: true }> {
    if (this.#ended) throw new Error(`${this.name}: the device worker has exited`);
    const seq = ++this.#seq;
    this.#port.postMessage({ ...cmd, seq });
    Atomics.store(this.#ctl, Ctl.COMMAND, seq);
    this.#control.write(1);
    const deadline = Date.now() + this.#timeout;
    for (;;) {
      const ack = Atomics.load(this.#ctl, Ctl.ACK);
      if (ack === seq) break;
      if (Date.now() > deadline)
        throw new Error(`${this.name}: the device worker did not answer "${cmd.type}"`);
      Atomics.wait(this.#ctl, Ctl.ACK, ack, 20);
    }
    const m = receiveMessageOnPort(this.#port);
    const reply = m?.message as WorkerReply | undefined;
    if (!reply || reply.seq !== seq) throw new Error(`no reply to "${cmd.type}"`);
    if (!reply.ok) throw new Error(reply.error);
    return reply;
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

function sameRegion(a: QueueNotifyRegion, b: QueueNotifyRegion): boolean {
  return (
    a.address === b.address &&
    a.length === b.length &&
    a.datamatch === b.datamatch &&
    a.bar === b.bar &&
    a.barOffset === b.barOffset
  );
}

/** A worker of its own: the device is its only one, and the thread ends with it. */
function ownWorker(options: StartDeviceWorkerOptions<unknown>): Launch {
  return (slot, transfer) => {
    const data: DeviceWorkerData = {
      devices: [slot],
      inbox: undefined,
      pollTimeoutMs: options.pollTimeoutMs ?? 500,
      spinUs: options.spinUs ?? 0,
    };
    const worker = new Worker(WORKER_URL, { workerData: data, transferList: transfer, name: slot.name });
    // The thread ends with its device.
    return { worker, release: () => {} };
  };
}

export interface SharedDeviceWorkerOptions {
  /** The thread's name (default "tskvm-devices"). */
  name?: string;
  /** Idle poll timeout (ms). Default 500. */
  pollTimeoutMs?: number;
}

/**
 * One worker thread serving several devices (kvmtool's one device thread):
 * for devices whose work is light and rare — an rng, a console — where a
 * thread each would be waste. Pass it as `thread` to
 * {@link startDeviceWorker} / `workerPciDevice`. The thread starts with its
 * first device and ends once its last device has stopped (a device started
 * after that gets a new thread). Each device keeps its own fds, transport,
 * budgets and guard: one device's failure marks only that device.
 */
export class SharedDeviceWorker {
  readonly name: string;
  readonly #pollTimeoutMs: number;
  #thread: { worker: Worker; inbox: MessagePort; wake: EventFd; devices: number } | undefined;

  constructor(options: SharedDeviceWorkerOptions = {}) {
    this.name = options.name ?? "tskvm-devices";
    this.#pollTimeoutMs = options.pollTimeoutMs ?? 500;
  }

  /** The running thread, if any device is on it. */
  get worker(): Worker | undefined {
    return this.#thread?.worker;
  }

  /** Devices on the thread now. */
  get devices(): number {
    return this.#thread?.devices ?? 0;
  }

  /** Adds a device to the thread (starting it if needed); used by {@link DeviceWorkerHandle}. */
  readonly launch: Launch = (slot, transfer) => {
    let t = this.#thread;
    if (!t) {
      const wake = EventFd.create({ nonBlocking: true });
      const { port1, port2 } = new MessageChannel();
      const data: DeviceWorkerData = {
        devices: [],
        inbox: { port: port2, fd: wake.fd },
        pollTimeoutMs: this.#pollTimeoutMs,
        spinUs: 0,
      };
      const worker = new Worker(WORKER_URL, { workerData: data, transferList: [port2], name: this.name });
      worker.once("exit", () => {
        port1.close();
        wake.close();
      });
      t = { worker, inbox: port1, wake, devices: 0 };
      this.#thread = t;
    }
    const thread = t;
    thread.devices++;
    thread.inbox.postMessage({ type: "add", device: slot }, transfer);
    thread.wake.write(1);
    let released = false;
    return {
      worker: thread.worker,
      release: () => {
        if (released) return;
        released = true;
        if (--thread.devices > 0) return;
        // The last device ended: close the thread; the next device starts a new one.
        if (this.#thread === thread) this.#thread = undefined;
        try {
          thread.inbox.postMessage({ type: "close" });
          thread.wake.write(1);
        } catch {
          // the thread is already gone
        }
      },
    };
  };
}

/**
 * Starts a device in a worker: the worker loads the device's entry module,
 * builds the device (and, for "pci" / "mmio", the transport), then serves the
 * queues from their notify eventfds until {@link DeviceWorkerHandle.stop}.
 */
export function startDeviceWorker<Info = unknown, Stats = unknown>(
  options: StartDeviceWorkerOptions<unknown>,
): DeviceWorkerHandle<Info, Stats> {
  return new DeviceWorkerHandle<Info, Stats>(options);
}
