// A device worker: serves one device (its own worker) or several (a shared
// worker for slow devices). Per device it owns the device built by the
// device's entry module, its queues and — for transport "pci" / "mmio" — the
// whole virtio transport. It blocks in poll(2) on every device's queue notify
// eventfds (KVM ioeventfds), control eventfd and DeviceChannel doorbell;
// serves each notified queue within a budget straight in guest RAM; raises
// irqfds. The main thread's event loop is never on that path.
import { readFileSync, writeSync } from "node:fs";
import { type MessagePort, receiveMessageOnPort, workerData } from "node:worker_threads";
import {
  currentThreadId,
  DeviceChannel,
  EventFd,
  GuestMemory,
  type GuestMemoryDescriptor,
  getThreadNice,
  PollSet,
  setCurrentThreadName,
  setThreadIoPriority,
  setThreadNice,
} from "@tskvm/kvm-core";
import type { DeviceThreadStats, DeviceTuning, IoPriority } from "@tskvm/machine-x86";
import {
  type ActivateContext,
  type ActiveQueue,
  DeviceStatus,
  type GuestMemoryAccess,
  INTERRUPT_QUEUE,
  type IntxLine,
  NO_VECTOR,
  PlainGuestMemory,
  type PlainGuestMemoryDescriptor,
  Queue,
  type QueueNotifyRegion,
  type QueueState,
  VirtioMmioTransport,
  VirtioPciTransport,
} from "@tskvm/virtio";
import { StateBoard } from "./board.js";
import { MMIO_SPACE, PCI_CONFIG_SPACE } from "./channel.js";
import type { DeviceModule, ServedDevice } from "./module.js";
import { PollWindow } from "./poll-window.js";
import {
  Ctl,
  type DeviceSlotData,
  type DeviceWorkerData,
  type DeviceWorkerExit,
  type DeviceWorkerStats,
  type WorkerCommand,
  type WorkerEvent,
  type WorkerReply,
  type WorkerRequest,
} from "./protocol.js";
import { checkRateLimit, DeviceRateLimiter, defaultBurst } from "./rate-limit.js";

const data = workerData as DeviceWorkerData;

function describeError(e: unknown): { message: string; code?: string } {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return typeof code === "string" ? { message: e.message, code } : { message: e.message };
  }
  return { message: String(e) };
}

/** This thread's CPU time in ms (Linux schedstat: time on a CPU, not time waiting for one), if known. */
function threadCpuMs(): number | undefined {
  try {
    const ns = Number(readFileSync("/proc/thread-self/schedstat", "utf8").split(" ")[0]);
    return Number.isFinite(ns) ? ns / 1e6 : undefined;
  } catch {
    return undefined;
  }
}

/** The device's counters, with this thread's CPU time when they are an object. */
function withCpu(stats: unknown): unknown {
  const cpuMs = threadCpuMs();
  return cpuMs === undefined || typeof stats !== "object" || stats === null ? stats : { ...stats, cpuMs };
}

/**
 * This thread: its id, wake-ups, and the scheduling asked of it. The I/O priority and nice
 * value belong to the thread, so on a shared worker they are every device's.
 */
const thread = {
  tid: currentThreadId(),
  wakeups: 0,
  ioPriority: undefined as IoPriority | undefined,
  nice: undefined as number | undefined,
  /** The nice value the thread started with: what `nice: null` goes back to. */
  startNice: undefined as number | undefined,
};

const describePriority = (p: IoPriority): string =>
  p.class === "idle" ? "idle" : `${p.class}:${p.level ?? 4}`;

/** Applies the thread part of `t` (I/O priority, nice) to this thread; all or nothing. */
function tuneThread(name: string, t: DeviceTuning): void {
  const before = thread.ioPriority;
  if (t.ioPriority !== undefined) {
    const p = t.ioPriority;
    try {
      setThreadIoPriority(thread.tid, p ?? { class: "none" });
    } catch (e) {
      throw new Error(
        `${name}: cannot set the I/O priority ${p ? describePriority(p) : "default"} of its thread ${thread.tid}: ${(e as Error).message}`,
        { cause: e },
      );
    }
    thread.ioPriority = p
      ? p.class === "idle"
        ? { class: "idle" }
        : { class: p.class, level: p.level ?? 4 }
      : undefined;
  }
  if (t.nice !== undefined) {
    try {
      thread.startNice ??= getThreadNice(thread.tid);
      setThreadNice(thread.tid, t.nice ?? thread.startNice);
    } catch (e) {
      // The I/O priority set above is taken back: a refused tune changes nothing.
      if (t.ioPriority !== undefined) {
        try {
          setThreadIoPriority(thread.tid, before ?? { class: "none" });
          thread.ioPriority = before;
        } catch {
          // keep what is in force
        }
      }
      throw new Error(
        `${name}: cannot set the nice value ${t.nice} of its thread ${thread.tid}: ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
    thread.nice = t.nice ?? undefined;
  }
}

function openMemory(d: GuestMemoryDescriptor | PlainGuestMemoryDescriptor): GuestMemoryAccess {
  return "windowSize" in d ? PlainGuestMemory.fromDescriptor(d) : GuestMemory.fromDescriptor(d);
}

/** " (at file:line)" from the error's first stack frame, if any. */
function where(e: Error): string {
  const frame = e.stack?.split("\n")[1]?.trim();
  return frame?.startsWith("at ") ? ` (${frame})` : "";
}

/**
 * The loop's clock (performance.now() ms), read once per round of the loop and once after each
 * serve that answered requests, not at every use: where the kernel has no fast clock (no usable
 * TSC: a VM's HPET, as in the sandbox) a read is a system call and a device access, ~14 µs there.
 */
let clock = performance.now();
function readClock(): number {
  clock = performance.now();
  return clock;
}

const NO_FDS: readonly number[] = [];

/** One device served by this worker. */
class Slot {
  readonly data: DeviceSlotData;
  readonly served: ServedDevice;
  readonly #ctl: Int32Array;
  readonly #port: MessagePort;
  readonly #events: MessagePort;
  readonly #control: EventFd;
  readonly #notify: EventFd[];
  readonly #irqfds: EventFd[];
  readonly #intx: EventFd | undefined;
  readonly #resample: EventFd | undefined;
  readonly #channel: DeviceChannel | undefined;
  readonly #memory: GuestMemoryAccess;
  readonly #pci: VirtioPciTransport | undefined;
  readonly #mmio: VirtioMmioTransport | undefined;
  /** Queues to serve without waiting for a notification (left over from a round, or notified by a trapped doorbell write). */
  readonly pending: boolean[];
  /** Per queue: when a queue that asked to be called again is due (performance.now() ms), or 0. */
  readonly #retryAt: number[];
  /** Per queue: when a queue held back by the rate limit is due again, or 0. */
  readonly #limitAt: number[];
  readonly #limiter = new DeviceRateLimiter();
  /** The device's own limits (the thread's priorities are in {@link thread}). */
  readonly #limits: Pick<DeviceTuning, "iops" | "bandwidth"> = {};
  #throttledMs = 0;
  /** When the current wait for the rate limit began, or 0. */
  #throttledSince = 0;
  /** Paused: no queue is served until resumed (notifications are remembered in {@link pending}). */
  #held = false;
  /** Pause requests answered once nothing is in flight. */
  #pauseWaiters: number[] = [];
  /** This slot's own fds, in poll order: control, channel?, resample?, notify per queue. */
  readonly #fds: number[];
  /** The device's host fds as last polled (after {@link #fds}). */
  #polledHost: readonly number[] = [];
  #remoteQueues: ActiveQueue[] = [];
  #remoteBroken = false;
  #guardReported = false;
  /** When the device last answered a request (performance.now()). */
  lastWork = Number.NEGATIVE_INFINITY;
  /** How long after answering the loop keeps looking at the rings (adaptive polling). */
  readonly #pollWindow: PollWindow;
  /**
   * Per queue: the queue the loop silenced (notifications off) while it polls the ring, until the
   * window closes. Kept as the object so a queue reset meanwhile is never written to.
   */
  readonly #silenced: (Queue | undefined)[];

  constructor(d: DeviceSlotData, served: ServedDevice, memory: GuestMemoryAccess) {
    this.data = d;
    this.served = served;
    this.#memory = memory;
    this.#ctl = new Int32Array(d.control.shared);
    this.#port = d.control.port;
    this.#events = d.events;
    this.#control = EventFd.fromFd(d.control.fd, true);
    this.#notify = d.notifyFds.map((fd) => EventFd.fromFd(fd, true));
    this.pending = this.#notify.map(() => false);
    this.#retryAt = this.#notify.map(() => 0);
    this.#limitAt = this.#notify.map(() => 0);
    this.#silenced = this.#notify.map(() => undefined);
    // Only a device that can say whether its rings hold requests is polled.
    this.#pollWindow = new PollWindow(served.pendingRequests ? data.spinUs / 1000 : 0);
    this.#irqfds = d.irqfds.map((fd) => EventFd.fromFd(fd, true));
    this.#intx = d.intxFd !== undefined ? EventFd.fromFd(d.intxFd, true) : undefined;
    this.#resample = d.resampleFd !== undefined ? EventFd.fromFd(d.resampleFd, true) : undefined;
    this.#channel = d.channel ? DeviceChannel.fromDescriptor(d.channel) : undefined;
    const device = served.device;
    // A doorbell write that trapped (no ioeventfd yet) reaches the device through the channel: mark
    // the queue and let the loop serve it within its budgets, not inline with the register access.
    device.queueNotify = (index) => {
      if (index >= 0 && index < this.pending.length) this.pending[index] = true;
    };
    // Routing changes go through the board: the latest state per vector / BAR / doorbell, one message.
    const board = new StateBoard(d.board);
    const tell = (changed: boolean): void => {
      if (changed) this.post({ type: "changed" });
    };
    const hooks = {
      queueNotifyEnabled: (region: QueueNotifyRegion) => tell(board.setDoorbell(region.queue, region)),
      queueNotifyDisabled: (region: QueueNotifyRegion) => tell(board.setDoorbell(region.queue, undefined)),
    };
    const intx = this.#intx;
    const line: IntxLine = {
      // An irqfd with a resample eventfd is level-triggered: KVM drops the line at EOI and
      // signals the resample fd, where the transport raises it again if the ISR is still set.
      raise: () => intx?.write(1),
      lower: () => {},
    };
    if (d.transport === "pci") {
      const irqfds = this.#irqfds;
      this.#pci = new VirtioPciTransport({
        device,
        memory,
        msix: { signalVector: (v) => irqfds[v]?.write(1) },
        intx: line,
        hooks: {
          ...hooks,
          msixVectorChanged: (vector, message) => tell(board.setMsix(vector, message)),
          barChanged: (index, address) => tell(board.setBar(index, address)),
        },
        ...d.pci,
        msixVectors: d.pci?.msixVectors ?? irqfds.length,
      });
    } else if (d.transport === "mmio") {
      this.#mmio = new VirtioMmioTransport({ device, memory, base: d.mmioBase ?? 0, irq: line, hooks });
    }
    this.#fds = [this.#control.fd];
    if (this.#channel) this.#fds.push(this.#channel.doorbell.fd);
    if (this.#resample) this.#fds.push(this.#resample.fd);
    for (const n of this.#notify) this.#fds.push(n.fd);
    if (d.tuning) this.#tune(d.tuning);
  }

  /**
   * Appends the fds to poll this round to `out` — the slot's own, then the device's host fds
   * (taken once per round) — and returns how many.
   */
  addPollFds(out: number[]): number {
    for (const fd of this.#fds) out.push(fd);
    // A held device reads its host fds only to complete what is in flight (no new input while paused).
    if (!this.served.hostFds || (this.#held && this.#inFlight() === 0)) {
      this.#polledHost = NO_FDS;
      return this.#fds.length;
    }
    let host: readonly number[] = NO_FDS;
    this.#guard(() => {
      host = this.served.hostFds?.() ?? NO_FDS;
    });
    for (const fd of host) out.push(fd);
    this.#polledHost = host;
    return this.#fds.length + host.length;
  }

  post(e: WorkerEvent): void {
    this.#events.postMessage(e);
  }

  get #core() {
    return this.#pci?.core ?? this.#mmio?.core;
  }

  get stopping(): boolean {
    return Atomics.load(this.#ctl, Ctl.STOP) !== 0;
  }

  readonly #stopRequested = (): boolean =>
    Atomics.load(this.#ctl, Ctl.STOP) !== 0 ||
    Atomics.load(this.#ctl, Ctl.COMMAND) !== Atomics.load(this.#ctl, Ctl.ACK);

  ready(): void {
    const pci = this.#pci;
    let fn = {};
    if (pci) {
      const config = new Uint8Array(256);
      pci.readConfig(0, config);
      fn = { pci: { function: pci.describeFunction(), bars: pci.bars(), layout: pci.layout, config } };
    }
    const info = this.served.info();
    this.post({ type: "ready", ready: { ...(typeof info === "object" ? info : {}), ...fn } });
  }

  /**
   * Poll timeout this slot allows: 0 with work pending or while polling the rings, until the next
   * throttled queue, or `idle`. A slot about to sleep first asks for notifications again.
   */
  timeout(idle: number, now: number): number {
    // Held: the queues wait for the resume (a command), completions wake the poll themselves.
    if (this.#held) return idle;
    for (const p of this.pending) if (p) return 0;
    if (this.#pollWindow.open(now, this.lastWork)) return 0;
    if (this.#unsilence()) return 0;
    let t = idle;
    for (const at of this.#retryAt) if (at > 0) t = Math.min(t, Math.max(0, Math.ceil(at - now)));
    for (const at of this.#limitAt) if (at > 0) t = Math.min(t, Math.max(0, Math.ceil(at - now)));
    return t;
  }

  #inFlight(): number {
    let n = 0;
    this.#guard(() => {
      n = this.served.inFlight ?? 0;
    });
    return n;
  }

  /**
   * Notifications back on for the queues silenced while polling (the window closed, a pause, a
   * stop); true when one already holds requests (serve it now: no kick will come for them).
   */
  #unsilence(): boolean {
    let found = false;
    for (let i = 0; i < this.#silenced.length; i++) {
      const queue = this.#silenced[i];
      if (!queue) continue;
      this.#silenced[i] = undefined;
      // Reset since (or replaced): that ring is no longer the device's to write.
      if (!this.#activeQueues().some((q) => q.queue === queue) || queue.broken) continue;
      try {
        if (queue.enableNotification()) this.pending[i] = found = true;
      } catch {
        this.pending[i] = found = true; // a broken ring: the device meets the error and reports it
      }
    }
    return found;
  }

  /**
   * Whether the device says queue `i` holds requests (while polling). A device whose answer
   * throws (a ring the driver broke) is served, so it meets the error and reports it itself.
   */
  #hasRequests(i: number): boolean {
    try {
      return (this.served.pendingRequests?.(i) ?? 0) > 0;
    } catch {
      return true;
    }
  }

  /**
   * Queue `i` was drained while the window is open: silence it, the loop looks at its ring.
   * Again after every serve — the device turns notifications back on when it drains the ring.
   */
  #silence(i: number): void {
    const active = this.#activeQueues().find((q) => q.index === i);
    if (!active || active.queue.broken) return;
    if (active.queue.notificationsEnabled) active.queue.disableNotification();
    this.#silenced[i] = active.queue;
  }

  /**
   * One round after poll: this slot's fds (its {@link addPollFds}) are `polled`'s from index `at`;
   * `timedOut`: the whole poll found nothing.
   */
  round(polled: PollSet, at: number, timedOut: boolean): void {
    if (polled.readable(at++)) {
      this.#control.consume();
      this.#serveCommands();
    }
    if (this.#channel && polled.readable(at++)) this.#serveChannel(this.#channel);
    if (this.#resample && polled.readable(at++)) {
      this.#resample.consume();
      this.#guard(() => {
        this.#pci?.resampleIntx();
        this.#mmio?.resampleIrq();
      });
    }
    const now = clock;
    const polling = !this.#held && this.#pollWindow.open(now, this.lastWork);
    for (let i = 0; i < this.#notify.length; i++) {
      // A poll that timed out: look at every queue anyway (a safety net for a lost notification).
      if (timedOut) this.pending[i] = true;
      const kicked = polled.readable(at + i);
      if (kicked) this.#notify[i]!.consume();
      if (kicked || (polling && this.#hasRequests(i))) {
        // A request arrived: how long after the last answer tells the window how to adapt.
        if (!this.pending[i]) this.#pollWindow.observe(now - this.lastWork);
        this.pending[i] = true;
      }
      if (this.#retryAt[i]! > 0 && now >= this.#retryAt[i]!) {
        this.#retryAt[i] = 0;
        this.pending[i] = true;
      }
      if (this.#limitAt[i]! > 0 && now >= this.#limitAt[i]!) {
        this.#limitAt[i] = 0;
        this.pending[i] = true;
      }
    }
    // The device's host fds (after the notify fds): it reads them and marks the queues to serve.
    for (let k = 0; k < this.#polledHost.length; k++)
      if (polled.readable(at + this.#notify.length + k)) {
        const fd = this.#polledHost[k]!;
        const before = this.served.served;
        const bytes = this.served.bytesServed ?? 0;
        this.#guard(() => this.served.hostFdReadable?.(fd));
        // A device may complete requests here (e.g. a disk's asynchronous completions).
        this.#countServed(before, bytes);
      }
    // Held: the queues keep their marks (notifications are remembered) until the resume, and
    // are not left silenced (a paused device does not write guest memory).
    if (this.#held) {
      this.#unsilence();
      this.#settlePause();
      return;
    }
    for (let i = 0; i < this.#notify.length; i++) {
      if (!this.pending[i]) continue;
      this.pending[i] = false;
      if (this.#broken() || !this.#activeQueues().some((q) => q.index === i)) continue;
      // A throttled queue waits for its time even when notified again.
      if (this.#retryAt[i]! > 0 || this.#limitAt[i]! > 0) continue;
      let requests = this.data.budget;
      let bytes = this.data.byteBudget;
      if (this.#limiter.limited) {
        const t = performance.now();
        const wait = this.#limiter.waitMs(t);
        if (wait > 0) {
          // Not served now, not dropped: the queue is looked at again once the tokens are back.
          this.#limitAt[i] = t + wait;
          if (this.#throttledSince === 0) this.#throttledSince = t;
          continue;
        }
        ({ requests, bytes } = this.#limiter.budget(requests, bytes, t));
      }
      this.#endThrottle();
      const before = this.served.served;
      const beforeBytes = this.served.bytesServed ?? 0;
      // The guard written out (no closure per serve).
      try {
        const left = this.served.serveQueue(i, { requests, bytes, shouldStop: this.#stopRequested });
        if (left === true) this.pending[i] = true;
        else if (typeof left === "number" && left > 0) this.#retryAt[i] = clock + left;
      } catch (e) {
        this.#deviceFailed(e);
      }
      this.#countServed(before, beforeBytes);
      // Drained (notifications back on) with the window open: the loop looks at the ring itself
      // until the window closes, so the driver need not kick — a VM exit and a wake-up spared.
      if (!this.pending[i] && this.#retryAt[i] === 0 && this.#pollWindow.open(clock, this.lastWork))
        this.#guard(() => this.#silence(i));
    }
  }

  /** Counts (and charges to the rate limit) what the device answered since `before` / `beforeBytes`. */
  #countServed(before: number, beforeBytes: number): void {
    const n = this.served.served - before;
    const bytes = (this.served.bytesServed ?? 0) - beforeBytes;
    this.#limiter.charge(n, bytes);
    if (n > 0) {
      Atomics.add(this.#ctl, Ctl.COMPLETED, n);
      this.lastWork = readClock();
    }
  }

  /** A wait for the rate limit is over (served, reset, limit lifted, held): count it. */
  #endThrottle(): void {
    if (this.#throttledSince === 0) return;
    this.#throttledMs += performance.now() - this.#throttledSince;
    this.#throttledSince = 0;
  }

  /** Answers the pause requests once nothing is in flight. */
  #settlePause(): void {
    if (this.#pauseWaiters.length === 0 || this.#inFlight() > 0) return;
    for (const id of this.#pauseWaiters.splice(0)) this.post({ type: "reply", id, ok: true });
  }

  /** Applies a tuning (validated first: a refused one changes nothing); returns the tuning in force. */
  #tune(t: DeviceTuning): DeviceTuning {
    if (t.iops) checkRateLimit(`${this.data.name}: iops`, t.iops);
    if (t.bandwidth) checkRateLimit(`${this.data.name}: bandwidth`, t.bandwidth);
    tuneThread(this.data.name, t);
    const now = performance.now();
    this.#limiter.set(t, now);
    for (const k of ["iops", "bandwidth"] as const) {
      const l = t[k];
      if (l === null) delete this.#limits[k];
      else if (l) this.#limits[k] = { rate: l.rate, burst: l.burst ?? defaultBurst(l.rate) };
    }
    if (t.iops !== undefined || t.bandwidth !== undefined) {
      // Queues waiting for the old limit are looked at again under the new one.
      for (let i = 0; i < this.#limitAt.length; i++)
        if (this.#limitAt[i]! > 0) {
          this.#limitAt[i] = 0;
          this.pending[i] = true;
        }
      if (!this.#limiter.limited) this.#endThrottle();
    }
    return this.tuning();
  }

  tuning(): DeviceTuning {
    return {
      ...this.#limits,
      ...(thread.ioPriority ? { ioPriority: thread.ioPriority } : {}),
      ...(thread.nice !== undefined ? { nice: thread.nice } : {}),
    };
  }

  threadStats(): DeviceThreadStats {
    const throttling = this.#throttledSince > 0 ? performance.now() - this.#throttledSince : 0;
    return {
      tid: thread.tid,
      wakeups: thread.wakeups,
      cpuMs: threadCpuMs() ?? 0,
      throttledMs: this.#throttledMs + throttling,
      held: this.#held,
      tuning: this.tuning(),
      poll: { maxUs: this.#pollWindow.maxMs * 1000, windowUs: this.#pollWindow.ms * 1000 },
    };
  }

  #broken(): boolean {
    const core = this.#core;
    if (core) return (core.status & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED)) !== 0;
    return this.#remoteBroken;
  }

  #activeQueues(): readonly ActiveQueue[] {
    return this.#core?.activeQueues ?? this.#remoteQueues;
  }

  #queueStates(): { index: number; state: QueueState }[] {
    return this.#activeQueues().map((q) => ({ index: q.index, state: q.queue.state() }));
  }

  // ---- transport "none": queues handed over by the main thread's device ----

  #activateRemote(cmd: Extract<WorkerCommand, { type: "activate" }>): void {
    const isr = new Int32Array(cmd.interruptStatus);
    const queues = cmd.queues.map((q) => ({
      index: q.index,
      vector: q.vector,
      queue: Queue.fromState(q.state, this.#memory),
    }));
    const ctx: ActivateContext = {
      memory: this.#memory,
      driverFeatures: cmd.driverFeatures,
      queues,
      interruptStatus: isr,
      interrupt: {
        signalQueue: (index) => {
          const q = queues.find((a) => a.index === index);
          if (!q) return;
          if (q.vector !== NO_VECTOR) this.#irqfds[q.vector]?.write(1);
          else {
            Atomics.or(isr, 0, INTERRUPT_QUEUE);
            this.#intx?.write(1);
          }
        },
        signalConfig: () => this.post({ type: "config-interrupt" }),
      },
      needsReset: (reason) => {
        this.#remoteBroken = true;
        this.post({ type: "needs-reset", reason: reason.message });
      },
    };
    this.#remoteBroken = false;
    this.served.device.activate(ctx);
    this.#remoteQueues = queues;
  }

  #runCommand(cmd: WorkerCommand): WorkerReply {
    try {
      switch (cmd.type) {
        case "activate":
          if (this.#core)
            throw new Error("the transport lives in this worker: activation comes from the driver");
          this.#activateRemote(cmd);
          return { seq: cmd.seq, ok: true };
        case "reset": {
          const states = this.#queueStates();
          this.served.device.reset();
          this.#remoteQueues = [];
          this.#silenced.fill(undefined); // those rings are no longer the device's to write
          this.pending.fill(false);
          this.#retryAt.fill(0);
          this.#limitAt.fill(0);
          this.#endThrottle();
          return { seq: cmd.seq, ok: true, states };
        }
        case "stats":
          return { seq: cmd.seq, ok: true, stats: withCpu(this.served.stats()) };
      }
    } catch (e) {
      return { seq: cmd.seq, ok: false, error: describeError(e).message };
    }
  }

  #serveCommands(): void {
    for (;;) {
      const m = receiveMessageOnPort(this.#port);
      if (!m) return;
      const msg = m.message as WorkerCommand | WorkerRequest;
      if ("id" in msg) {
        this.#runRequest(msg);
        continue;
      }
      const cmd = msg;
      this.#port.postMessage(this.#runCommand(cmd));
      Atomics.store(this.#ctl, Ctl.ACK, cmd.seq);
      Atomics.notify(this.#ctl, Ctl.ACK);
    }
  }

  /** An asynchronous request: answered with a "reply" event (a pause, once drained). */
  #runRequest(r: WorkerRequest): void {
    try {
      switch (r.type) {
        case "pause":
          this.#held = true;
          this.#endThrottle();
          this.#pauseWaiters.push(r.id);
          // Answered at the end of this round (or once the requests in flight are done).
          return;
        case "resume":
          this.#held = false;
          // A pause still waiting for its drain is over too.
          for (const id of this.#pauseWaiters.splice(0)) this.post({ type: "reply", id, ok: true });
          // Served in the next round: what was notified meanwhile, and a look at every queue.
          this.pending.fill(true);
          this.post({ type: "reply", id: r.id, ok: true });
          return;
        case "tune":
          this.post({ type: "reply", id: r.id, ok: true, value: this.#tune(r.tuning) });
          return;
        case "stats": {
          const value: DeviceWorkerStats<unknown> = {
            thread: this.threadStats(),
            device: this.served.stats(),
          };
          this.post({ type: "reply", id: r.id, ok: true, value });
          return;
        }
      }
    } catch (e) {
      const { message, code } = describeError(e);
      this.post({
        type: "reply",
        id: r.id,
        ok: false,
        error: message,
        ...(code !== undefined ? { code } : {}),
      });
    }
  }

  #serveChannel(ch: DeviceChannel): void {
    const pci = this.#pci;
    const mmio = this.#mmio;
    while (
      ch.serve((a) => {
        // The access is always answered: an exception here would fail the vCPU's access (and
        // with it the VMM), so it breaks the device instead and the read returns zeros.
        this.#guard(
          () => {
            if (pci) {
              if (a.space === PCI_CONFIG_SPACE) {
                if (a.write) pci.writeConfig(a.offset, a.data);
                else pci.readConfig(a.offset, a.data);
              } else if (a.write) pci.writeBar(a.space, a.offset, a.data);
              else pci.readBar(a.space, a.offset, a.data);
            } else if (mmio && a.space === MMIO_SPACE) {
              if (a.write) mmio.write(a.offset, a.data);
              else mmio.read(a.offset, a.data);
            } else throw new Error(`no register space ${a.space}`);
          },
          () => (a.write ? undefined : a.data.fill(0)),
        );
      })
    );
  }

  // ---- the last-resort guard ----
  // Nothing the guest does may end this worker (and with it the VM): an exception out of the
  // device or its transport marks the device DEVICE_NEEDS_RESET — the driver sees a broken device
  // and may reset it, as Firecracker's "device broken" — and is said on stderr once. Devices
  // already turn what they meet into NEEDS_RESET; this is the backstop.
  #deviceFailed(e: unknown): void {
    const error = e instanceof Error ? e : new Error(String(e));
    if (!this.#guardReported) {
      this.#guardReported = true;
      try {
        writeSync(
          2,
          `tskvm: ${this.data.name}: device error, marked DEVICE_NEEDS_RESET (the VM goes on; later ones are not reported): ${error.name}: ${error.message}${where(error)}\n`,
        );
      } catch {
        // no stderr
      }
    }
    try {
      const core = this.#core;
      if (core) core.needsReset(error);
      else if (!this.#remoteBroken) {
        this.#remoteBroken = true;
        this.post({ type: "needs-reset", reason: error.message });
      }
    } catch {
      // marking it broken failed too: the loop still goes on
    }
  }

  #guard(work: () => void, onError?: () => void): void {
    try {
      work();
    } catch (e) {
      this.#deviceFailed(e);
      onError?.();
    }
  }

  /** Stops serving: reports the final queue states and counters, closes the device (flushing it). */
  finish(failure?: { message: string; code?: string }): void {
    this.#unsilence();
    const queues = this.#queueStates();
    let error = failure;
    try {
      this.served.close();
    } catch (e) {
      error ??= describeError(e);
    }
    // Counted after the close: what it flushed is in them.
    const exit: DeviceWorkerExit<unknown> = { queues, stats: withCpu(this.served.stats()) };
    if (error) exit.error = error;
    this.post({ type: "exit", exit });
    this.#port.close();
    this.#events.close();
    this.#control.close();
    this.#channel?.close();
  }
}

/** Builds a slot's device; on failure reports it (error, then exit) and returns undefined. */
async function open(d: DeviceSlotData): Promise<Slot | undefined> {
  let served: ServedDevice | undefined;
  try {
    const memory = openMemory(d.memory);
    const module = ((await import(d.module)) as { default: DeviceModule }).default;
    if (typeof module?.create !== "function")
      throw new Error(`${d.module}: the default export is not a device module (no create())`);
    served = await module.create(d.device, { memory, name: d.name });
    const slot = new Slot(d, served, memory);
    slot.ready();
    return slot;
  } catch (e) {
    // Built, then refused (e.g. its tuning): release what it holds (an image and its lock).
    try {
      served?.close();
    } catch {
      // the start's error is the one to report
    }
    const error = describeError(e);
    d.events.postMessage({ type: "error", ...error } satisfies WorkerEvent);
    d.events.postMessage({
      type: "exit",
      exit: { queues: [], stats: undefined, error },
    } satisfies WorkerEvent);
    d.events.close();
    d.control.port.close();
    return undefined;
  }
}

async function main(): Promise<void> {
  // Named after its device ("disk", "console", …), or "virtio-shared": Node names every thread "node".
  setCurrentThreadName(data.inbox ? "virtio-shared" : (data.devices[0]?.name.split(" ")[0] ?? "virtio"));
  const slots: Slot[] = [];
  for (const d of data.devices) {
    const s = await open(d);
    if (s) slots.push(s);
  }
  const inbox = data.inbox ? { port: data.inbox.port, efd: EventFd.fromFd(data.inbox.fd, true) } : undefined;
  let closing = false;
  // What is polled: the inbox's eventfd, then each slot's fds, in slot order. The arrays are
  // reused and the poll set changes only when the fds do: a round allocates nothing.
  const polled = new PollSet();
  const polledSlots: Slot[] = [];
  const slotFdCounts: number[] = [];
  const fds: number[] = [];
  for (;;) {
    // A shared worker lives until its owner closes it; a worker of its own, until its device stops.
    if (inbox ? closing && slots.length === 0 : slots.length === 0) break;
    // The slots as polled (one added from the inbox below joins the next round).
    polledSlots.length = 0;
    slotFdCounts.length = 0;
    fds.length = 0;
    if (inbox) fds.push(inbox.efd.fd);
    for (const s of slots) {
      polledSlots.push(s);
      slotFdCounts.push(s.addPollFds(fds));
    }
    if (!polled.matches(fds)) polled.setFds(fds);
    let timeout = data.pollTimeoutMs;
    for (const s of slots) timeout = Math.min(timeout, s.timeout(data.pollTimeoutMs, clock));
    const ready = polled.wait(timeout);
    // Slept: time moved on. Otherwise the clock read at the end of the last round is close enough.
    if (timeout !== 0) readClock();
    const roundStart = clock;
    if (timeout > 0 || ready > 0) thread.wakeups++;
    const timedOut = timeout === data.pollTimeoutMs && ready === 0;
    let at = 0;
    if (inbox && polled.readable(at++)) {
      inbox.efd.consume();
      for (let m = receiveMessageOnPort(inbox.port); m; m = receiveMessageOnPort(inbox.port)) {
        const msg = m.message as { type: "add"; device: DeviceSlotData } | { type: "close" };
        if (msg.type === "close") closing = true;
        else {
          const s = await open(msg.device);
          if (s) slots.push(s);
        }
      }
    }
    for (let k = 0; k < polledSlots.length; k++) {
      const s = polledSlots[k]!;
      const first = at;
      at += slotFdCounts[k]!;
      if (s.stopping) {
        s.finish();
        slots.splice(slots.indexOf(s), 1);
        continue;
      }
      try {
        s.round(polled, first, timedOut);
      } catch (e) {
        // Outside the guard (the runtime's own failure): this device ends, the others go on.
        const failure = describeError(e);
        s.post({ type: "error", ...failure });
        s.finish(failure);
        slots.splice(slots.indexOf(s), 1);
      }
    }
    // No serve answered anything (so none read the clock): read it for the next round's timeouts.
    if (clock === roundStart) readClock();
  }
  inbox?.port.close();
}

await main();
