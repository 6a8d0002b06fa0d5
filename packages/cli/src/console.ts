// `--console virtio` (kvmtool's flag): a virtio console PCI device (hvc0 in the
// guest), served by @tskvm/virtio-worker on the shared slow-devices thread, and
// its host side: the ConsoleLink's output to stdout, input from the terminal
// (or a pipe) with backpressure, the terminal's size at start and on SIGWINCH.
import { Writable } from "node:stream";
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
  #stopOutput: (() => void) | undefined;
  #stopped = false;
  #wakeInput: (() => void) | undefined;
  #stopQuit: (() => void) | undefined;

  /**
   * `terminal`: the device's worker reads and writes these fds itself (no hop through this
   * thread for a keystroke or its echo); else input goes through {@link input} and output
   * through {@link pipeOutput}.
   */
  constructor(
    options: {
      thread?: SharedDeviceWorker;
      size?: { cols: number; rows: number };
      terminal?: ConsoleTerminalData;
    } = {},
  ) {
    this.link = new ConsoleLink(options.size ?? { cols: 80, rows: 25 });
    this.device = workerPciDevice({
      module: CONSOLE_DEVICE_MODULE,
      data: { ...this.link.data, ...(options.terminal ? { terminal: options.terminal } : {}) },
      queues: CONSOLE_QUEUES,
      name: "console",
      ...(options.thread ? { thread: options.thread } : {}),
      onStart: (wake) => {
        this.link.wake = wake;
      },
    });
  }

  /** Sends the guest's output to `write` until {@link stop}. */
  pipeOutput(write: (bytes: Uint8Array) => void): void {
    this.#stopOutput ??= this.link.onOutput(write);
  }

  /**
   * A stream for the terminal's input: each chunk goes into the link's input ring,
   * the write completing once all of it is in (so a full ring holds the writer back).
   */
  input(): Writable {
    return new Writable({
      highWaterMark: 16 << 10,
      write: (chunk: Buffer, _enc, done) => {
        this.#feed(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)).then(
          () => done(),
          (e: Error) => done(e),
        );
      },
    });
  }

  async #feed(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (!this.#stopped && off < bytes.length) {
      off += this.link.write(bytes.subarray(off));
      if (off >= bytes.length) break;
      await Promise.race([
        this.link.waitInputSpace(1),
        new Promise<void>((resolve) => {
          this.#wakeInput = resolve;
        }),
      ]);
    }
  }

  /** Calls `onQuit` when the worker serving the terminal sees Ctrl-A x (until {@link stop}). */
  watchQuit(onQuit: () => void): void {
    this.#stopQuit ??= this.link.onQuit(onQuit);
  }

  /** Stops reading output and drops input still waiting for room. */
  stop(): void {
    this.#stopped = true;
    this.#stopQuit?.();
    this.#stopQuit = undefined;
    this.#stopOutput?.();
    this.#stopOutput = undefined;
    this.#wakeInput?.();
    this.link.wake = undefined;
  }
}
