// The small shared block through which the main thread and the vCPU workers coordinate.

/** Int32 slots of the control block. */
export const Ctl = {
  /** 1 while a "tx" message is on its way to the main thread (coalesces notifications). */
  TX_NOTIFY: 0,
  /** 1 while the main thread holds input the receive FIFO had no room for. */
  INPUT_WAITING: 1,
  /** 1 once the machine is ending: workers stop waiting for the console to drain. */
  ENDING: 2,
  /** Halt-probe answers, one slot per vCPU from here. */
  HALT_BASE: 16,
} as const;

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
  return new Int32Array(new SharedArrayBuffer((Ctl.HALT_BASE + cpus) * 4));
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

/** Messages workers post to the main thread. */
export type WorkerMessage =
  | { type: "tx" }
  | { type: "rx" }
  | { type: "unhandled"; space: "pio" | "mmio"; direction: "in" | "out"; address: number; size: number };
