// The messages between the main thread (the blk worker handle) and the blk
// I/O worker. Plain, structured-cloneable data only.
import type { MessagePort } from "node:worker_threads";
import type { DeviceChannelDescriptor, GuestMemoryDescriptor } from "@tskvm/kvm-core";
import type { PciBarInfo, PlainGuestMemoryDescriptor, QueueState, VirtioPciLayout } from "@tskvm/virtio";
import type { StateBoardLayout } from "./board.js";
import type { BlkConfiguration, BlkDeviceOptions, BlkDiskInfo } from "./config.js";
import type { BlkDeviceStats } from "./device.js";

/** How the worker opens the disk (it is the only place that does: the image lock lives there). */
export interface BlkImageSpec {
  path: string;
  readOnly?: boolean;
  /** Skip probing. Pass "raw" for a raw image a guest may write (see disk-image's README). */
  format?: "raw" | "qcow2";
  /** O_DIRECT (raw only). */
  direct?: boolean;
  /** Take the image lock (default true). */
  lock?: boolean;
  /** Writes go to a throwaway overlay. */
  snapshot?: boolean;
}

/** Options of the virtio-pci transport built in the worker (see `VirtioPciOptions`). */
export interface BlkPciOptions {
  bar64?: boolean;
  prefetchable?: boolean;
  msixBar?: number;
  /** MSI-X table size (default 2: config + one queue). */
  msixVectors?: number;
  notifyOffMultiplier?: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  /** BAR addresses placed by the VMM (firmware-less, like kvmtool). */
  barAddresses?: Record<number, number>;
  /** Initial command register (e.g. memory decoding on when the VMM places BARs). */
  command?: number;
}

export type BlkTransportKind = "pci" | "mmio" | "none";

/** `workerData` of the blk I/O worker. */
export interface BlkWorkerData {
  image: BlkImageSpec;
  device: BlkDeviceOptions;
  memory: GuestMemoryDescriptor | PlainGuestMemoryDescriptor;
  transport: BlkTransportKind;
  pci: BlkPciOptions | undefined;
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
  /** The latest MSI-X routes, BAR addresses and live doorbells (see `StateBoard`). */
  board: StateBoardLayout;
  pollTimeoutMs: number;
  budget: number;
  /** IN / OUT data bytes served per queue before the worker looks at its other fds again. */
  byteBudget: number;
  spinUs: number;
}

/** Int32 slots of the control block. */
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

/** What the worker reports once the disk is open and the device built. */
export interface BlkWorkerReady {
  disk: BlkDiskInfo;
  configuration: BlkConfiguration;
  /** PCI transport: its BARs and layout, and a snapshot of its configuration space. */
  pci?: { bars: PciBarInfo[]; layout: VirtioPciLayout; config: Uint8Array };
}

/** What the worker reports when it ends. */
export interface BlkWorkerExit {
  /** Queue states at the end (for a restart, or to check them). */
  queues: { index: number; state: QueueState }[];
  stats: BlkDeviceStats;
  /** Set when the worker failed (e.g. the image would not open). */
  error?: { message: string; code?: string };
}

export type WorkerEvent =
  | { type: "ready"; ready: BlkWorkerReady }
  /** The state board changed (MSI-X routes, BAR addresses, live doorbells): read it. At most one is outstanding. */
  | { type: "changed" }
  | { type: "needs-reset"; reason: string }
  | { type: "config-interrupt" }
  | { type: "exit"; exit: BlkWorkerExit }
  | { type: "error"; message: string; code?: string };

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
  | { seq: number; ok: true; states?: { index: number; state: QueueState }[]; stats?: BlkDeviceStats }
  | { seq: number; ok: false; error: string };
