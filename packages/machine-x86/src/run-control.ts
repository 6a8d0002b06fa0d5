// The run-time control contract: what a running machine and its devices let a
// controller (the CLI's control socket, a Node program) see and change. Plain JSON
// data only, so every report can cross a socket as it is.

/** A token bucket (as Firecracker's rate limiter): `rate` tokens a second, at most `burst` saved. */
export interface RateLimit {
  /** Tokens per second: requests for an IOPS limit, bytes for a bandwidth limit. > 0. */
  rate: number;
  /** Bucket size: how much may pass at once after an idle spell. Default: a tenth of `rate` (100 ms worth). */
  burst?: number;
}

/** An I/O scheduling class for `ioprio_set` (Linux `ioprio(7)`). */
export interface IoPriority {
  class: "rt" | "be" | "idle";
  /** 0 (highest) to 7; not used by `idle`. Default 4. */
  level?: number;
}

/**
 * How a device's I/O thread is limited and scheduled. In {@link MachineDeviceControl.tune},
 * a field left out is unchanged and `null` removes the limit (back to the default).
 */
export interface DeviceTuning {
  /** Requests per second (every request, whatever its size). */
  iops?: RateLimit | null;
  /** Bytes per second (reads and writes). */
  bandwidth?: RateLimit | null;
  /** The thread's I/O priority (`ioprio_set` on its thread id). */
  ioPriority?: IoPriority | null;
  /** The thread's nice value, -20 to 19 (`setpriority` on its thread id). */
  nice?: number | null;
}

/** Counters every device thread keeps, whatever the device. */
export interface DeviceThreadStats {
  /** The Linux thread id serving the device (shared with other devices on a shared worker). */
  tid: number;
  /** Times the thread woke up (notifications, completions, commands). */
  wakeups: number;
  /** CPU time of the thread so far, ms. */
  cpuMs: number;
  /** Time requests waited for a rate limit so far, ms. */
  throttledMs: number;
  /** True while the device holds (machine paused). */
  held: boolean;
  /** The tuning in force. */
  tuning: DeviceTuning;
  /**
   * Adaptive polling of the device's rings after it answers (absent where the runtime does not
   * poll): the longest window and the one in force now, µs; `maxUs` 0 is off.
   */
  poll?: { maxUs: number; windowUs: number };
}

/** One device's report: its thread's counters and the device's own (plain JSON). */
export interface DeviceStatsReport<DeviceStats = Record<string, unknown>> {
  id: string;
  kind: string;
  thread: DeviceThreadStats;
  device: DeviceStats;
  /**
   * Set when the device could not report (its `stats()` failed): the message, with
   * `thread` zeroed and `device` empty. One device failing does not fail the machine's report.
   */
  error?: string;
}

/** What a machine device offers a controller; `MachinePciDevice.control`. */
export interface MachineDeviceControl {
  /** Unique in the machine, e.g. "disk0". */
  readonly id: string;
  /** What the device is, e.g. "virtio-blk". */
  readonly kind: string;
  /** A short description for listings, e.g. the image path. */
  readonly description: string;
  /** Current counters. Never blocks the calling thread on the device's thread. */
  stats(): Promise<DeviceStatsReport>;
  /** Finish the requests in flight, then take no new ones until {@link resume}. */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Change limits and priorities at run time; resolves with the tuning now in force. */
  tune(tuning: DeviceTuning): Promise<DeviceTuning>;
}

export type MachineState = "created" | "starting" | "running" | "paused" | "stopping" | "exited";

/** One vCPU's counters. */
export interface VcpuStats {
  id: number;
  /** Exits to the VMM by reason (KVM_EXIT_* names in lower case: "io", "mmio", "hlt", ...). */
  exits: Record<string, number>;
  /**
   * KVM's own counters for the vCPU (its binary stats, `KVM_GET_STATS_FD`, Linux ≥ 5.14):
   * e.g. "exits", "halt_exits", "halt_wait_ns", "io_exits". Absent where the kernel lacks them.
   */
  kvm?: Record<string, number>;
  /** Time the vCPU spent halted (waiting for an interrupt), ms; from KVM's halt_wait_ns. */
  haltedMs?: number;
}

/** A machine's whole report. */
export interface MachineStats {
  state: MachineState;
  /** ms since the machine started running (wall clock; includes paused time). */
  uptimeMs: number;
  /** Total ms spent paused. */
  pausedMs: number;
  vcpus: VcpuStats[];
  devices: DeviceStatsReport[];
}
