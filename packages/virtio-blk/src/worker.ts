// The blk I/O worker: owns the disk image (and its lock), the device, its
// queues and — for transport "pci" / "mmio" — the whole virtio transport. It
// blocks in poll(2) on the queue notify eventfds (KVM ioeventfds), its control
// eventfd and the DeviceChannel doorbell; serves every available request per
// wake-up straight between the disk and guest RAM; raises irqfds. The main
// thread's event loop is never on that path.
import { readFileSync, writeSync } from "node:fs";
import { type MessagePort, parentPort, receiveMessageOnPort, workerData } from "node:worker_threads";
import { type DiskImage, openDiskImage } from "@tskvm/disk-image";
import {
  DeviceChannel,
  EventFd,
  GuestMemory,
  type GuestMemoryDescriptor,
  pollReadable,
} from "@tskvm/kvm-core";
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
import { diskInfo } from "./config.js";
import { type BlkDeviceStats, VirtioBlkDevice } from "./device.js";
import { emptyStats } from "./engine.js";
import {
  type BlkWorkerData,
  type BlkWorkerExit,
  Ctl,
  type WorkerCommand,
  type WorkerEvent,
  type WorkerReply,
} from "./protocol.js";

const data = workerData as BlkWorkerData;
const post = (e: WorkerEvent): void => parentPort?.postMessage(e);
const ctl = new Int32Array(data.control.shared);
const port: MessagePort = data.control.port;
const control = EventFd.fromFd(data.control.fd, true);

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

function withCpu(stats: BlkDeviceStats): BlkDeviceStats {
  const cpuMs = threadCpuMs();
  return cpuMs === undefined ? stats : { ...stats, cpuMs };
}

function openMemory(d: GuestMemoryDescriptor | PlainGuestMemoryDescriptor): GuestMemoryAccess {
  return "windowSize" in d ? PlainGuestMemory.fromDescriptor(d) : GuestMemory.fromDescriptor(d);
}

function openImage(): DiskImage | undefined {
  const s = data.image;
  try {
    return openDiskImage(s.path, {
      ...(s.format !== undefined ? { format: s.format } : {}),
      readOnly: s.readOnly ?? false,
      direct: s.direct ?? false,
      lock: s.lock ?? true,
      snapshot: s.snapshot ?? false,
    });
  } catch (e) {
    const error = describeError(e);
    post({ type: "error", ...error });
    const stats = {
      ...emptyStats(),
      completed: 0,
      rejected: 0,
      failed: 0,
      batches: 0,
      interrupts: 0,
      serviceMs: 0,
    };
    post({ type: "exit", exit: { queues: [], stats, error } });
    port.close();
    control.close();
    return undefined;
  }
}

const opened = openImage();
if (opened) run(opened);

function run(image: DiskImage): void {
  const memory = openMemory(data.memory);
  const device = new VirtioBlkDevice({ image, ...data.device });
  const notify = data.notifyFds.map((fd) => EventFd.fromFd(fd, true));
  /** Queues to serve without waiting for a notification (left over from a round, or notified by a trapped doorbell write). */
  const pending: boolean[] = notify.map(() => false);
  // A doorbell write that trapped (no ioeventfd yet) reaches the device through the channel: mark
  // the queue and let the loop serve it within its budgets, not inline with the register access.
  device.queueNotify = (index) => {
    if (index >= 0 && index < pending.length) pending[index] = true;
  };
  const irqfds = data.irqfds.map((fd) => EventFd.fromFd(fd, true));
  const intx = data.intxFd !== undefined ? EventFd.fromFd(data.intxFd, true) : undefined;
  const resample = data.resampleFd !== undefined ? EventFd.fromFd(data.resampleFd, true) : undefined;
  const channel = data.channel ? DeviceChannel.fromDescriptor(data.channel) : undefined;
  // Routing changes go through the board: the latest state per vector / BAR / doorbell, one message.
  const board = new StateBoard(data.board);
  const tell = (changed: boolean): void => {
    if (changed) post({ type: "changed" });
  };
  const hooks = {
    queueNotifyEnabled: (region: QueueNotifyRegion) => tell(board.setDoorbell(region.queue, region)),
    queueNotifyDisabled: (region: QueueNotifyRegion) => tell(board.setDoorbell(region.queue, undefined)),
  };
  const line: IntxLine = {
    // An irqfd with a resample eventfd is level-triggered: KVM drops the line at EOI and
    // signals the resample fd, where the transport raises it again if the ISR is still set.
    raise: () => intx?.write(1),
    lower: () => {},
  };

  let pci: VirtioPciTransport | undefined;
  let mmio: VirtioMmioTransport | undefined;
  if (data.transport === "pci") {
    const o = data.pci ?? {};
    pci = new VirtioPciTransport({
      device,
      memory,
      msix: { signalVector: (v) => irqfds[v]?.write(1) },
      intx: line,
      hooks: {
        ...hooks,
        msixVectorChanged: (vector, message) => tell(board.setMsix(vector, message)),
        barChanged: (index, address) => tell(board.setBar(index, address)),
      },
      msixVectors: o.msixVectors ?? irqfds.length,
      ...(o.bar64 !== undefined ? { bar64: o.bar64 } : {}),
      ...(o.prefetchable !== undefined ? { prefetchable: o.prefetchable } : {}),
      ...(o.msixBar !== undefined ? { msixBar: o.msixBar } : {}),
      ...(o.notifyOffMultiplier !== undefined ? { notifyOffMultiplier: o.notifyOffMultiplier } : {}),
      ...(o.subsystemVendorId !== undefined ? { subsystemVendorId: o.subsystemVendorId } : {}),
      ...(o.subsystemId !== undefined ? { subsystemId: o.subsystemId } : {}),
      ...(o.barAddresses !== undefined ? { barAddresses: o.barAddresses } : {}),
      ...(o.command !== undefined ? { command: o.command } : {}),
    });
  } else if (data.transport === "mmio") {
    mmio = new VirtioMmioTransport({
      device,
      memory,
      base: data.mmioBase ?? 0,
      irq: line,
      hooks,
    });
  }
  const core = pci?.core ?? mmio?.core;

  // ---- transport "none": queues handed over by the main thread's device ----
  let remoteQueues: ActiveQueue[] = [];

  function activateRemote(cmd: Extract<WorkerCommand, { type: "activate" }>): void {
    const isr = new Int32Array(cmd.interruptStatus);
    const queues = cmd.queues.map((q) => ({
      index: q.index,
      vector: q.vector,
      queue: Queue.fromState(q.state, memory),
    }));
    const ctx: ActivateContext = {
      memory,
      driverFeatures: cmd.driverFeatures,
      queues,
      interruptStatus: isr,
      interrupt: {
        signalQueue: (index) => {
          const q = queues.find((a) => a.index === index);
          if (!q) return;
          if (q.vector !== NO_VECTOR) irqfds[q.vector]?.write(1);
          else {
            Atomics.or(isr, 0, INTERRUPT_QUEUE);
            intx?.write(1);
          }
        },
        signalConfig: () => post({ type: "config-interrupt" }),
      },
      needsReset: (reason) => {
        remoteBroken = true;
        post({ type: "needs-reset", reason: reason.message });
      },
    };
    remoteBroken = false;
    device.activate(ctx);
    remoteQueues = queues;
  }
  let remoteBroken = false;

  function activeQueues(): readonly ActiveQueue[] {
    return core ? core.activeQueues : remoteQueues;
  }

  function queueStates(): { index: number; state: QueueState }[] {
    return activeQueues().map((q) => ({ index: q.index, state: q.queue.state() }));
  }

  function runCommand(cmd: WorkerCommand): WorkerReply {
    try {
      switch (cmd.type) {
        case "activate":
          if (core) throw new Error("the transport lives in this worker: activation comes from the driver");
          activateRemote(cmd);
          return { seq: cmd.seq, ok: true };
        case "reset": {
          const states = queueStates();
          device.reset();
          remoteQueues = [];
          pending.fill(false);
          return { seq: cmd.seq, ok: true, states };
        }
        case "stats":
          return { seq: cmd.seq, ok: true, stats: withCpu(device.stats) };
      }
    } catch (e) {
      return { seq: cmd.seq, ok: false, error: describeError(e).message };
    }
  }

  function serveCommands(): void {
    for (;;) {
      const m = receiveMessageOnPort(port);
      if (!m) return;
      const cmd = m.message as WorkerCommand;
      const reply = runCommand(cmd);
      port.postMessage(reply);
      Atomics.store(ctl, Ctl.ACK, cmd.seq);
      Atomics.notify(ctl, Ctl.ACK);
    }
  }

  function serveChannel(ch: DeviceChannel): void {
    while (
      ch.serve((a) => {
        // The access is always answered: an exception here would fail the vCPU's access (and
        // with it the VMM), so it breaks the device instead and the read returns zeros.
        guard(
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
  // Nothing the guest does may end this worker (and with it the disk and the VM): an exception
  // out of the device or its transport marks the device DEVICE_NEEDS_RESET — the driver sees a
  // broken device and may reset it, as Firecracker's "device broken" — and is said on stderr
  // once. The device itself already turns what it meets into NEEDS_RESET; this is the backstop.
  let guardReported = false;
  function deviceFailed(e: unknown): void {
    const error = e instanceof Error ? e : new Error(String(e));
    if (!guardReported) {
      guardReported = true;
      try {
        writeSync(
          2,
          `tskvm: virtio-blk ${data.image.path}: device error, marked DEVICE_NEEDS_RESET (the VM goes on; later ones are not reported): ${error.name}: ${error.message}${where(error)}\n`,
        );
      } catch {
        // no stderr
      }
    }
    try {
      if (core) core.needsReset(error);
      else if (!remoteBroken) {
        remoteBroken = true;
        post({ type: "needs-reset", reason: error.message });
      }
    } catch {
      // marking it broken failed too: the loop still goes on
    }
  }
  /** " (at file:line)" from the error's first stack frame, if any. */
  function where(e: Error): string {
    const frame = e.stack?.split("\n")[1]?.trim();
    return frame?.startsWith("at ") ? ` (${frame})` : "";
  }
  function guard(work: () => void, onError?: () => void): void {
    try {
      work();
    } catch (e) {
      deviceFailed(e);
      onError?.();
    }
  }

  /** poll(2), with a signal (EINTR: a profiler, a kick meant for another thread) counting as "nothing yet". */
  function poll(fds: readonly number[], timeoutMs: number): boolean[] {
    try {
      return pollReadable(fds, timeoutMs);
    } catch (e) {
      if ((e as { code?: unknown }).code === "EINTR") return fds.map(() => false);
      throw e;
    }
  }

  const stopRequested = (): boolean =>
    Atomics.load(ctl, Ctl.STOP) !== 0 || Atomics.load(ctl, Ctl.COMMAND) !== Atomics.load(ctl, Ctl.ACK);

  function broken(): boolean {
    if (core) return (core.status & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED)) !== 0;
    return remoteBroken;
  }

  const fds: number[] = [control.fd];
  const channelAt = channel ? fds.push(channel.doorbell.fd) - 1 : -1;
  const resampleAt = resample ? fds.push(resample.fd) - 1 : -1;
  const notifyAt = fds.length;
  for (const n of notify) fds.push(n.fd);

  const ready = {
    disk: diskInfo(image),
    configuration: device.configuration,
    ...(pci
      ? (() => {
          const config = new Uint8Array(256);
          pci.readConfig(0, config);
          return { pci: { bars: pci.bars(), layout: pci.layout, config } };
        })()
      : {}),
  };
  post({ type: "ready", ready });

  let failure: { message: string; code?: string } | undefined;
  try {
    // After serving requests, look at the rings for a little while before sleeping (adaptive
    // polling, like QEMU's iothread poll-max-ns): a driver that keeps requests coming then costs
    // no sleep / wake-up on either side.
    const spinMs = data.spinUs / 1000;
    let lastWork = Number.NEGATIVE_INFINITY;
    for (;;) {
      const busy = pending.some((p) => p);
      const spinning = !busy && spinMs > 0 && performance.now() - lastWork < spinMs;
      const readable = poll(fds, busy || spinning ? 0 : data.pollTimeoutMs);
      if (Atomics.load(ctl, Ctl.STOP) !== 0) break;
      if (readable[0]) {
        control.read();
        serveCommands();
      }
      if (channel && readable[channelAt]) serveChannel(channel);
      if (resample && readable[resampleAt]) {
        resample.read();
        guard(() => {
          pci?.resampleIntx();
          mmio?.resampleIrq();
        });
      }
      // A poll that timed out: look at every queue anyway (a safety net for a lost notification).
      const idle = !busy && !spinning && !readable.some((r) => r);
      for (let i = 0; i < notify.length; i++) {
        if (idle || (spinning && device.pendingRequests(i) > 0)) pending[i] = true;
        if (readable[notifyAt + i]) {
          notify[i]!.read();
          pending[i] = true;
        }
      }
      for (let i = 0; i < notify.length; i++) {
        if (!pending[i]) continue;
        if (broken() || !activeQueues().some((q) => q.index === i)) {
          pending[i] = false;
          continue;
        }
        const before = device.served;
        guard(
          () => {
            pending[i] = device.processQueue(i, data.budget, stopRequested, data.byteBudget);
          },
          () => {
            pending[i] = false;
          },
        );
        const served = device.served - before;
        if (served > 0) {
          Atomics.add(ctl, Ctl.COMPLETED, served);
          lastWork = performance.now();
        }
      }
    }
  } catch (e) {
    failure = describeError(e);
    post({ type: "error", ...failure });
  }

  const exit: BlkWorkerExit = { queues: queueStates(), stats: withCpu(device.stats) };
  if (failure) exit.error = failure;
  try {
    image.close();
  } catch (e) {
    exit.error ??= describeError(e);
  }
  post({ type: "exit", exit });
  port.close();
  control.close();
  channel?.close();
}
