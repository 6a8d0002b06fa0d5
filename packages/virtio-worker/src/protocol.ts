// The messages between the main thread (a device worker handle) and the device
// worker. Plain, structured-cloneable data only.
import type { MessagePort } from "node:worker_threads";
import type { DeviceChannelDescriptor, GuestMemoryDescriptor } from "@tskvm/kvm-core";
import type { DeviceThreadStats, DeviceTuning } from "@tskvm/machine-x86";
import type {
  PciBarInfo,
  PciFunctionDescription,
  PlainGuestMemoryDescriptor,
  QueueState,
  VirtioPciLayout,
  VirtioPciOptions,
} from "@tskvm/virtio";
import type { StateBoardLayout } from "./board.js";

/** Options of the virtio-pci transport built in the worker (see `VirtioPciOptions`; `msixVectors` defaults to the irqfds given). */
export type DevicePciOptions = Pick<
  VirtioPciOptions,
  | "bar64"
  | "prefetchable"
  | "msixBar"
  | "msixVectors"
  | "notifyOffMultiplier"
  | "subsystemVendorId"
  | "subsystemId"
  | "barAddresses"
  | "command"
>;

/** Where the virtio transport lives: in the worker ("pci" / "mmio"), or in the caller's thread ("none"). */
export type DeviceTransportKind = "pci" | "mmio" | "none";

/** One device served by a worker. */
export interface DeviceSlotData {
  /** URL of the device's entry module (default export: a `DeviceModule`). */
  module: string;
  /** The module's `create` data. */
  device: unknown;
  /** The device's name in messages. */
  name: string;
  memory: GuestMemoryDescriptor | PlainGuestMemoryDescriptor;
  transport: DeviceTransportKind;
  pci: DevicePciOptions | undefined;
  mmioBase: number | undefined;
  channel: DeviceChannelDescriptor | undefined;
  /** One per queue: the ioeventfd the guest's doorbell writes signal. */
  notifyFds: number[];
  /** One per MSI-X vector: the irqfd to write to raise it. */
  irqfds: number[];
  /** INTx / virtio-mmio line irqfd, and its resample eventfd. */
  intxFd: number | undefined;
  resampleFd: number | undefined;
  control: { shared: SharedArrayBuffer; fd: number; port: MessagePort };
  /** Where this device's events go (its handle). */
  events: MessagePort;
  /** The latest MSI-X routes, BAR addresses and live doorbells (see `StateBoard`). */
  board: StateBoardLayout;
  /** Requests served per queue before the worker looks at its other fds again. */
  budget: number;
  /** Data bytes served per queue before the worker looks at its other fds again. */
  byteBudget: number;
  /** Limits and priorities from the start (a failure fails the start). */
  tuning: DeviceTuning | undefined;
}

/** `workerData` of a device worker: the devices it serves first, more may be added later. */
export interface DeviceWorkerData {
  devices: DeviceSlotData[];
  /** Where `add` messages arrive (a shared worker), with an eventfd that wakes the loop. */
  inbox: { port: MessagePort; fd: number } | undefined;
  pollTimeoutMs: number;
  spinUs: number;
}

/** Int32 slots of a device's control block. */
export const Ctl = {
  /** Non-zero: stop after the request in progress. */
  STOP: 0,
  /** Sequence number of the last command posted on the port. */
  COMMAND: 1,
  /** Sequence number of the last command answered. */
  ACK: 2,
  /** Requests completed (for tests and monitoring). */
  COMPLETED: 3,
} as const;
export const CONTROL_BYTES = 16;

/** The virtio-pci function the worker built: what a PCI bus needs to place it, and a config-space snapshot. */
export interface DevicePciReady {
  /** What a PCI bus needs to place it: ids, class, interrupt pin, BARs with kinds, capability pointer. */
  function: PciFunctionDescription;
  bars: PciBarInfo[];
  layout: VirtioPciLayout;
  config: Uint8Array;
}

/** What the worker reports once the device is built: the module's info, and for PCI the function. */
export type DeviceWorkerReady<Info> = Info & { pci?: DevicePciReady };

/** What the worker reports when a device ends. */
export interface DeviceWorkerExit<Stats> {
  /** Queue states at the end (for a restart, or to check them). */
  queues: { index: number; state: QueueState }[];
  /** The device's counters; undefined when it was never built. */
  stats: Stats | undefined;
  /** Set when the device failed (e.g. its `create` threw). */
  error?: { message: string; code?: string };
}

export type WorkerEvent =
  | { type: "ready"; ready: DeviceWorkerReady<unknown> }
  /** The state board changed (MSI-X routes, BAR addresses, live doorbells): read it. At most one is outstanding. */
  | { type: "changed" }
  | { type: "needs-reset"; reason: string }
  | { type: "config-interrupt" }
  | { type: "exit"; exit: DeviceWorkerExit<unknown> }
  | { type: "error"; message: string; code?: string }
  /** The answer to a {@link WorkerRequest}. */
  | { type: "reply"; id: number; ok: true; value?: unknown }
  | { type: "reply"; id: number; ok: false; error: string; code?: string };

/**
 * Asynchronous requests (on the control port beside the commands, answered with a "reply"
 * event): the main thread never waits for a busy worker on them.
 */
export type WorkerRequest =
  /** Finish the requests in flight, then serve no queue until "resume"; answered once drained. */
  | { id: number; type: "pause" }
  | { id: number; type: "resume" }
  /** Answered with the tuning now in force. */
  | { id: number; type: "tune"; tuning: DeviceTuning }
  /** Answered with {@link DeviceWorkerStats}. */
  | { id: number; type: "stats" };

/** A device's counters with its thread's (the answer to a "stats" request). */
export interface DeviceWorkerStats<Stats> {
  thread: DeviceThreadStats;
  device: Stats;
}

/** Synchronous commands (transport "none": the transport lives in the main thread). */
export type WorkerCommand =
  | {
      seq: number;
      type: "activate";
      driverFeatures: bigint;
      queues: { index: number; state: QueueState; vector: number }[];
      interruptStatus: SharedArrayBuffer;
    }
  | { seq: number; type: "reset" }
  | { seq: number; type: "stats" };

export type WorkerReply =
  | { seq: number; ok: true; states?: { index: number; state: QueueState }[]; stats?: unknown }
  | { seq: number; ok: false; error: string };
