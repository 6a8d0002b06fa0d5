// The small shared block through which the main thread and the vCPU workers coordinate.

/** Int32 slots of the control block. */
export const Ctl = {
  /** 1 while a "tx" message is on its way to the main thread (coalesces notifications). */
  TX_NOTIFY: 0,
  /** 1 while the main thread holds input the receive FIFO had no room for. */
  INPUT_WAITING: 1,
  /** 1 once the machine is ending: workers stop waiting for the console to drain. */
  ENDING: 2,
  /** Halt-probe answers from here, {@link PROBE_STRIDE} slots per vCPU (see {@link ProbeSlot}). */
  HALT_BASE: 16,
} as const;

/** Per-vCPU probe slots: this round's answer, and the last state and rip seen (for diagnostics). */
export const ProbeSlot = { STATUS: 0, LAST_STATUS: 1, RIP_LO: 2, RIP_HI: 3 } as const;
export const PROBE_STRIDE = 4;

export function probeSlot(vcpuId: number, slot: number): number {
  return Ctl.HALT_BASE + vcpuId * PROBE_STRIDE + slot;
}

/** What a vCPU reports when kicked by the halt probe. */
export const HaltStatus = {
  UNKNOWN: 0,
  RUNNING: 1,
  HALTED_IF1: 2,
  /** Halted with interrupts disabled: only an NMI or INIT would wake it. */
  HALTED_IF0: 3,
  /** An AP not started yet (waiting for INIT/SIPI). */
  WAITING_SIPI: 4,
} as const;

export function controlBlock(cpus: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer((Ctl.HALT_BASE + cpus * PROBE_STRIDE) * 4));
}

/**
 * Whether the guest has stopped for good: every vCPU halted with interrupts off, or
 * not started. Linux's `poweroff` without ACPI ends exactly so (machine_halt →
 * stop_this_cpu: cli; hlt on every CPU).
 */
export function allHalted(statuses: readonly number[]): boolean {
  return (
    statuses.some((s) => s === HaltStatus.HALTED_IF0) &&
    statuses.every((s) => s === HaltStatus.HALTED_IF0 || s === HaltStatus.WAITING_SIPI)
  );
}

const STATUS_NAMES: Record<number, string> = {
  [HaltStatus.RUNNING]: "running",
  [HaltStatus.HALTED_IF1]: "halted",
  [HaltStatus.HALTED_IF0]: "halted with interrupts off",
  [HaltStatus.WAITING_SIPI]: "waiting for INIT/SIPI",
};

export function haltStatusName(status: number): string | undefined {
  return STATUS_NAMES[status];
}

/** Messages workers post to the main thread. */
export type WorkerMessage =
  | { type: "tx" }
  | { type: "rx" }
  | { type: "unhandled"; space: "pio" | "mmio"; direction: "in" | "out"; address: number; size: number };
