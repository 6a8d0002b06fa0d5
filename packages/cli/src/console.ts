// `--console virtio` (kvmtool's flag): a virtio console PCI device (hvc0 in the
// guest), served by @tskvm/virtio-worker on the shared slow-devices thread, and
// its host side: the device's worker serves the terminal (or pipes) itself; this
// thread forwards the terminal's size (at start and on SIGWINCH) and Ctrl-A x.
import type { MachinePciDeviceFactory } from "@tskvm/machine-x86";
import {
  CONSOLE_DEVICE_MODULE,
  CONSOLE_QUEUES,
  ConsoleLink,
  type ConsoleTerminalData,
} from "@tskvm/virtio-console";
import { type SharedDeviceWorker, workerPciDevice } from "@tskvm/virtio-worker";
import { UsageError } from "./command.js";

export type ConsoleKind = "serial" | "virtio";

export function parseConsoleKind(v: string | undefined): ConsoleKind {
  if (v === undefined || v === "serial" || v === "virtio") return v ?? "serial";
  throw new UsageError(`--console must be serial or virtio, not '${v}'`);
}

interface SizedOutput {
  isTTY?: boolean;
  columns?: number;
  rows?: number;
}

/** The terminal's size as the console reports it (80x25 when stdout is no terminal). */
export function terminalSize(out: SizedOutput): { cols: number; rows: number } {
  const ok = (v: number | undefined): v is number => Number.isInteger(v) && v! > 0 && v! <= 0xffff;
  return out.isTTY && ok(out.columns) && ok(out.rows)
    ? { cols: out.columns, rows: out.rows }
    : { cols: 80, rows: 25 };
}

/** A virtio console: the machine device and the host side of its link. */
export class VirtioConsole {
  readonly link: ConsoleLink;
  readonly device: MachinePciDeviceFactory;
  #stopQuit: (() => void) | undefined;

  /** The device's worker reads and writes `terminal`'s fds itself: no hop through this thread for a keystroke or its echo. */
  constructor(options: {
    terminal: ConsoleTerminalData;
    thread?: SharedDeviceWorker;
    size?: { cols: number; rows: number };
  }) {
    this.link = new ConsoleLink(options.size ?? { cols: 80, rows: 25 });
    this.device = workerPciDevice({
      module: CONSOLE_DEVICE_MODULE,
      data: { ...this.link.data, terminal: options.terminal },
      queues: CONSOLE_QUEUES,
      name: "console",
      ...(options.thread ? { thread: options.thread } : {}),
      onStart: (wake) => {
        this.link.wake = wake;
      },
    });
  }

  /** Calls `onQuit` when the worker serving the terminal sees Ctrl-A x (until {@link stop}). */
  watchQuit(onQuit: () => void): void {
    this.#stopQuit ??= this.link.onQuit(onQuit);
  }

  /** Stops watching for Ctrl-A x (its waiter keeps the event loop alive) and waking the worker. */
  stop(): void {
    this.#stopQuit?.();
    this.#stopQuit = undefined;
    this.link.wake = undefined;
  }
}
