import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from "node:worker_threads";
import { type DeviceChannelDescriptor, EventFd, type GuestMemoryDescriptor } from "@tskvm/kvm-core";
import type {
  ActivateContext,
  MsiMessage,
  PlainGuestMemoryDescriptor,
  QueueNotifyRegion,
  QueueState,
} from "@tskvm/virtio";
import { StateBoard } from "./board.js";
import type { BlkConfiguration, BlkDeviceOptions } from "./config.js";
import type { BlkDeviceStats, BlkRemoteBackend } from "./device.js";
import {
  type BlkImageSpec,
  type BlkPciOptions,
  type BlkTransportKind,
  type BlkWorkerData,
  type BlkWorkerExit,
  type BlkWorkerReady,
  CONTROL_BYTES,
  Ctl,
  type WorkerCommand,
  type WorkerEvent,
  type WorkerReply,
} from "./protocol.js";

/** A doorbell became live or dead: register / unregister `eventFd` as an ioeventfd at `region`. */
export interface BlkIoeventfdEvent {
  action: "register" | "unregister";
  queue: number;
  /** Shaped like kvm-core's IoeventfdOptions (`space`, `address`, `length`, `datamatch`). */
  region: QueueNotifyRegion;
  /** The queue's notify eventfd, which the worker polls. */
  eventFd: EventFd;
}

/** The guest (re)programmed MSI-X vector `vector`: route `irqfd`'s GSI to `message`, or tear it down (null). */
export interface BlkMsixEvent {
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
export interface BlkWorkerHooks {
  /** `vm.registerIoeventfd(e.eventFd, e.region)` / `vm.unregisterIoeventfd(...)`. */
  ioeventfd?(e: BlkIoeventfdEvent): void;
  /** Point the vector's irqfd GSI at the message (`vm.setGsiRouting`), or remove the route. */
  msix?(e: BlkMsixEvent): void;
  /** The guest moved a BAR (PCI transport in the worker). */
  barMoved?(index: number, address: number): void;
  /** The device marked itself DEVICE_NEEDS_RESET (transport "none": the handle already told the transport). */
  needsReset?(reason: string): void;
  /** The worker failed (e.g. the image would not open, or an internal error). */
  error?(message: string, code: string | undefined): void;
}

export interface StartBlkWorkerOptions {
  /** The disk; the worker opens it (and takes its lock) — nothing else may. */
  image: BlkImageSpec;
  device?: BlkDeviceOptions;
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
   * - "none": in the calling thread — wrap the handle in
   *   `new VirtioBlkDevice({ worker: handle })` and give that to a transport.
   */
  transport: BlkTransportKind;
  pci?: BlkPciOptions;
  /** virtio-mmio: guest-physical base of the register window. */
  mmioBase?: number;
  /** Register accesses forwarded from vCPU threads (pci / mmio). */
  channel?: DeviceChannelDescriptor;
  /** One notify eventfd per queue (default: created here, see `notifyEventFds`). */
  notifyFds?: number[];
  /** One irqfd per MSI-X vector (default: created here, 2 of them: config + queue 0). */
  irqfds?: number[];
  /** INTx / mmio line irqfd (level-triggered: register it with KVM with `resampleFd`). */
  intxFd?: number;
  resampleFd?: number;
  hooks?: BlkWorkerHooks;
  /** Idle poll timeout of the worker (ms); bounds how long an unstopped worker delays exit. Default 500. */
  pollTimeoutMs?: number;
  /** Requests served per queue before the worker looks at its control / channel fds again. Default 64. */
  budget?: number;
  /**
   * IN / OUT data bytes served per queue before the worker looks at its control / channel fds
   * again (at least one request is served). Default 64 MiB: a guest's huge requests do not keep
   * register accesses from other vCPUs waiting for long.
   */
  byteBudget?: number;
  /**
   * After serving requests, the worker keeps looking at the rings for this long (µs) before it
   * sleeps in poll (adaptive polling, like QEMU's poll-max-ns), so a busy driver's next requests
   * cost no wake-up. Default 0 (off): it made no difference in the bench on a shared 2-core host.
   */
  spinUs?: number;
  /** Timeout of synchronous commands (activate, reset, stats) in ms. Default 10000. */
  commandTimeoutMs?: number;
}

/**
 * The main thread's handle on a blk I/O worker. Wiring for a VMM:
 * 1. `await handle.ready` (disk size, features, PCI BARs);
 * 2. `hooks.ioeventfd`: register `e.eventFd` at `e.region` (and unregister);
 * 3. `hooks.msix`: route vector `e.vector`'s irqfd (`e.irqfd`, registered
 *    with `vm.registerIrqfd(efd, gsi)`) to `e.message`, or drop the route;
 * 4. vCPU threads forward BAR / config accesses through the DeviceChannel
 *    (`ChannelPciFunction`, or `pci-handler.js` for machine-x86);
 * 5. at shutdown `await handle.stop()`.
 */
export class BlkWorkerHandle implements BlkRemoteBackend {
  readonly worker: Worker;
  /** Resolves when the disk is open and the device built; rejects if the worker failed first. */
  readonly ready: Promise<BlkWorkerReady>;
  /** Resolves when the worker has ended (after `stop()`, or on its own after a failure). */
  readonly exited: Promise<BlkWorkerExit>;
  /** One per queue: register them as ioeventfds (the worker polls them). */
  readonly notifyEventFds: readonly EventFd[];
  /** One per MSI-X vector: register them as irqfds (the worker writes them). */
  readonly irqEventFds: readonly EventFd[];
  readonly #ownedFds: EventFd[] = [];
  readonly #ctl: Int32Array;
  readonly #control: EventFd;
  readonly #port: MessagePort;
  readonly #hooks: BlkWorkerHooks;
  readonly #timeout: number;
  readonly #board: StateBoard;
  /** What the hooks were last told, per MSI-X vector / BAR / queue (see {@link #applyBoard}). */
  readonly #appliedMsix = new Map<number, MsiMessage>();
  readonly #appliedBars = new Map<number, number>();
  readonly #appliedDoorbells = new Map<number, QueueNotifyRegion>();
  #seq = 0;
  #ready: BlkWorkerReady | undefined;
  #exit: BlkWorkerExit | undefined;
  #ended = false;
  #ctx: ActivateContext | undefined;

  /** Use {@link startBlkWorker}. */
  constructor(options: StartBlkWorkerOptions) {
    this.#hooks = options.hooks ?? {};
    this.#timeout = options.commandTimeoutMs ?? 10_000;
    const own = (): EventFd => {
      const e = EventFd.create({ nonBlocking: true });
      this.#ownedFds.push(e);
      return e;
    };
    this.notifyEventFds = options.notifyFds
      ? options.notifyFds.map((fd) => EventFd.fromFd(fd, true))
      : [own()];
    const vectors = options.pci?.msixVectors ?? 2;
    this.irqEventFds = options.irqfds
      ? options.irqfds.map((fd) => EventFd.fromFd(fd, true))
      : options.transport === "mmio"
        ? []
        : Array.from({ length: vectors }, own);
    this.#control = own();
    const shared = new SharedArrayBuffer(CONTROL_BYTES);
    this.#ctl = new Int32Array(shared);
    const { port1, port2 } = new MessageChannel();
    this.#port = port1;
    this.#board = StateBoard.create(
      options.transport === "pci" ? (options.pci?.msixVectors ?? this.irqEventFds.length) : 0,
      this.notifyEventFds.length,
    );
    const data: BlkWorkerData = {
      image: options.image,
      device: options.device ?? {},
      memory: options.memory,
      transport: options.transport,
      pci: options.pci,
      mmioBase: options.mmioBase,
      channel: options.channel,
      notifyFds: this.notifyEventFds.map((e) => e.fd),
      irqfds: this.irqEventFds.map((e) => e.fd),
      intxFd: options.intxFd,
      resampleFd: options.resampleFd,
      control: { shared, fd: this.#control.fd, port: port2 },
      board: this.#board.layout,
      pollTimeoutMs: options.pollTimeoutMs ?? 500,
      budget: options.budget ?? 64,
      byteBudget: options.byteBudget ?? 64 << 20,
      spinUs: options.spinUs ?? 0,
    };
    this.worker = new Worker(new URL("./worker.js", import.meta.url), {
      workerData: data,
      transferList: [port2],
      name: "virtio-blk-io",
    });
    let readyResolve: (r: BlkWorkerReady) => void = () => {};
    let readyReject: (e: Error) => void = () => {};
    this.ready = new Promise((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    // A failed start is reported through `ready`; do not let it count as unhandled if nobody waits.
    this.ready.catch(() => {});
    let lastError: { message: string; code?: string } | undefined;
    this.worker.on("message", (m: WorkerEvent) => {
      switch (m.type) {
        case "ready":
          this.#ready = m.ready;
          readyResolve(m.ready);
          break;
        case "changed":
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
          this.#exit = m.exit;
          break;
      }
    });
    this.exited = new Promise((resolve) => {
      const done = (err?: Error): void => {
        this.#ended = true;
        for (const e of this.#ownedFds) e.close();
        this.#port.close();
        const exit = this.#exit ?? {
          queues: [],
          stats: {
            reads: 0,
            writes: 0,
            flushes: 0,
            discards: 0,
            writeZeroes: 0,
            getIds: 0,
            bytesRead: 0,
            bytesWritten: 0,
            ioErrors: 0,
            completed: 0,
            rejected: 0,
            failed: 0,
            batches: 0,
            interrupts: 0,
            serviceMs: 0,
          },
        };
        const e = exit.error ?? lastError ?? (err ? { message: err.message } : undefined);
        if (e && !exit.error) exit.error = e;
        readyReject(Object.assign(new Error(e?.message ?? "the blk worker exited before it was ready"), e));
        resolve(exit);
      };
      this.worker.once("error", (err) => done(err));
      this.worker.once("exit", () => done());
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

  #hookFailed = false;

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
        process.stderr.write(`tskvm: virtio-blk: the VMM's ${name} hook failed: ${why}\n`);
      }
      return false;
    }
  }

  /** The device configuration (after `ready`). */
  get configuration(): BlkConfiguration {
    if (!this.#ready) throw new Error("the blk worker is not ready yet: await handle.ready");
    return this.#ready.configuration;
  }

  /** Requests completed so far (read from shared memory: no round trip). */
  get completed(): number {
    return Atomics.load(this.#ctl, Ctl.COMPLETED);
  }

  /**
   * Stops the worker: it finishes the request in progress, publishes its used
   * entries, closes the image (flushing it) and exits. Resolves with the final
   * queue states and counters.
   */
  stop(): Promise<BlkWorkerExit> {
    if (!this.#ended) {
      Atomics.store(this.#ctl, Ctl.STOP, 1);
      try {
        this.#control.write(1);
      } catch {
        // already closed: the worker is gone
      }
    }
    return this.exited;
  }

  /** Counters of the device in the worker (synchronous round trip). */
  stats(): BlkDeviceStats {
    const r = this.#call({ type: "stats" });
    if (!r.stats) throw new Error("no stats in the reply");
    return r.stats;
  }

  // ---- BlkRemoteBackend (transport "none") ----

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
    if (this.#ended) throw new Error("the blk worker has exited");
    const seq = ++this.#seq;
    this.#port.postMessage({ ...cmd, seq });
    Atomics.store(this.#ctl, Ctl.COMMAND, seq);
    this.#control.write(1);
    const deadline = Date.now() + this.#timeout;
    for (;;) {
      const ack = Atomics.load(this.#ctl, Ctl.ACK);
      if (ack === seq) break;
      if (Date.now() > deadline) throw new Error(`the blk worker did not answer "${cmd.type}"`);
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

/**
 * Starts a blk I/O worker: it opens the image, builds the device (and, for
 * "pci" / "mmio", the transport), then serves the queues from their notify
 * eventfds until {@link BlkWorkerHandle.stop}. See {@link BlkWorkerHandle} for
 * what the VMM must wire.
 */
export function startBlkWorker(options: StartBlkWorkerOptions): BlkWorkerHandle {
  return new BlkWorkerHandle(options);
}
