// A virtio console as a `@tskvm/machine-x86` device: this package's device module served by
// `@tskvm/virtio-worker` (its own worker by default), wired with `workerPciDevice`, and the
// host's side of its link (size, Ctrl-A x, output and input when no terminal is given).
import type { MachinePciDeviceFactory } from "@tskvm/machine-x86";
import { type SharedDeviceWorker, workerPciDevice } from "@tskvm/virtio-worker";
import { CONSOLE_QUEUES } from "./device.js";
import type { ConsoleTerminalData } from "./entry.js";
import { ConsoleLink } from "./link.js";

/** URL of virtio-console's device module (for `@tskvm/virtio-worker`'s `startDeviceWorker` / `workerPciDevice`). */
export const CONSOLE_DEVICE_MODULE: string = new URL("./entry.js", import.meta.url).href;

export interface VirtioConsolePciOptions {
  /**
   * Host fds the device's worker reads and writes itself (e.g. `{ inFd: 0, outFd: 1,
   * escape: true }` for this process's terminal): no hop through the main thread for a
   * keystroke or its echo. Without it, use `link` (`read()` / `onOutput`, `write()`).
   */
  terminal?: ConsoleTerminalData;
  /**
   * The thread that serves the device, e.g. a `SharedDeviceWorker` it shares with other
   * slow devices. Default: a worker of its own.
   */
  thread?: SharedDeviceWorker;
  /** The terminal size the guest sees at start (default 80 × 25); later: `link.resize`. */
  size?: { cols: number; rows: number };
}

/**
 * A virtio console PCI device (port 0: the guest's `hvc0`; add `console=hvc0` to the kernel
 * command line to make it `/dev/console`). Give `device` to `createMachine({ devices })`;
 * the host talks to the guest through `link`.
 */
export class VirtioConsolePci {
  readonly link: ConsoleLink;
  readonly device: MachinePciDeviceFactory;
  #stopQuit: (() => void) | undefined;

  constructor(options: VirtioConsolePciOptions = {}) {
    this.link = new ConsoleLink(options.size ?? { cols: 80, rows: 25 });
    this.device = workerPciDevice({
      module: CONSOLE_DEVICE_MODULE,
      data: { ...this.link.data, ...(options.terminal ? { terminal: options.terminal } : {}) },
      queues: CONSOLE_QUEUES,
      name: "console",
      ...(options.thread ? { thread: options.thread } : {}),
      // Input and resizes reach the worker at once instead of at its next poll.
      onStart: (wake) => {
        this.link.wake = wake;
      },
    });
  }

  /** Calls `onQuit` when the worker serving `terminal` sees Ctrl-A x (until {@link stop}). */
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
