// virtio-console's device module for @tskvm/virtio-worker: the device built
// from plain options and a ConsoleLink's SharedArrayBuffer. Two ways to reach
// the host:
// - the link's rings (default): output goes into the output ring (served only
//   as far as the ring has room); input is taken from the input ring when the
//   receive queue is served; the host wakes the worker through a queue's
//   notify eventfd (ConsoleLink.wake).
// - `terminal`: the worker reads and writes the host's terminal fds itself
//   (its input fd polled beside the queues), so a keystroke and its echo never
//   wait for the main thread; the quit sequence is flagged on the link.
// Either way a resize is picked up from the link on any serve.
import { readSync, writeSync } from "node:fs";
import { defineDeviceModule } from "@tskvm/virtio-worker";
import {
  CONSOLE_RECEIVEQ,
  CONSOLE_TRANSMITQ,
  type ConsoleStats,
  VirtioConsoleDevice,
  type VirtioConsoleDeviceOptions,
} from "./device.js";
import { EscapeFilter } from "./escape.js";
import { type ConsoleLinkData, ConsoleLinkWorkerSide } from "./link.js";

/** A host terminal the worker serves itself (fds are process-wide, so a worker can use them). */
export interface ConsoleTerminalData {
  /** Where the guest's input comes from (e.g. 0); read when the worker's poll says it is readable. */
  inFd?: number;
  /** Where the guest's output goes (e.g. 1). */
  outFd?: number;
  /** Take Ctrl-A x (quit: ConsoleLink.onQuit) and Ctrl-A Ctrl-A out of the input (for a terminal). */
  escape?: boolean;
}

/** What the console module is built from (plain data). */
export type ConsoleModuleData = ConsoleLinkData & { terminal?: ConsoleTerminalData } & Pick<
    VirtioConsoleDeviceOptions,
    "queueSize" | "eventIdx" | "indirect" | "size" | "maxChainsPerCall" | "inputCapacity"
  >;

/** Output the terminal has not taken yet, at most (then the transmit queue waits). */
const TERMINAL_BACKLOG = 64 << 10;
/** How soon a transmit queue held back by a full terminal looks again (ms). */
const TERMINAL_RETRY_MS = 2;

const errno = (e: unknown): string | undefined => (e as { code?: string }).code;

/** The worker's side of a host terminal: non-blocking reads and writes with a bounded backlog. */
class TerminalIo {
  #inFd: number | undefined;
  #outFd: number | undefined;
  readonly #filter: EscapeFilter | undefined;
  readonly #backlog: Uint8Array[] = [];
  backlogBytes = 0;
  readonly #buf = new Uint8Array(4096);

  constructor(t: ConsoleTerminalData) {
    this.#inFd = t.inFd;
    this.#outFd = t.outFd;
    this.#filter = t.escape ? new EscapeFilter() : undefined;
  }

  get inFd(): number | undefined {
    return this.#inFd;
  }

  /** Reads at most `max` bytes there are; end of file or an error stops reading. */
  read(max: number): { bytes: Uint8Array; quit: boolean } {
    const none = { bytes: new Uint8Array(0), quit: false };
    if (this.#inFd === undefined || max <= 0) return none;
    let n: number;
    try {
      n = readSync(this.#inFd, this.#buf, 0, Math.min(max, this.#buf.length), null);
    } catch (e) {
      if (errno(e) === "EAGAIN" || errno(e) === "EINTR") return none;
      n = 0;
    }
    if (n === 0) {
      this.#inFd = undefined;
      return none;
    }
    const bytes = this.#buf.slice(0, n);
    if (!this.#filter) return { bytes, quit: false };
    const { forward, quit } = this.#filter.push(bytes);
    return { bytes: forward, quit };
  }

  /** Writes what the terminal takes now and keeps the rest (output is dropped once the fd fails). */
  write(bytes: Uint8Array): void {
    // Behind a backlog nothing is written out of order.
    const n = this.backlogBytes === 0 ? this.#put(bytes) : 0;
    if (n === bytes.length) return;
    const rest = bytes.slice(n);
    this.#backlog.push(rest);
    this.backlogBytes += rest.length;
  }

  /** Writes the backlog on; true once it is empty. */
  flush(): boolean {
    while (this.#backlog.length > 0) {
      const first = this.#backlog[0]!;
      const n = this.#put(first);
      this.backlogBytes -= n;
      if (n < first.length) {
        this.#backlog[0] = first.subarray(n);
        return false;
      }
      this.#backlog.shift();
    }
    return true;
  }

  /** Writes `bytes`; returns how many the terminal took (all of them once it has failed: dropped). */
  #put(bytes: Uint8Array): number {
    let at = 0;
    while (at < bytes.length && this.#outFd !== undefined) {
      try {
        at += writeSync(this.#outFd, bytes, at, bytes.length - at);
      } catch (e) {
        if (errno(e) === "EINTR") continue;
        if (errno(e) === "EAGAIN") break;
        this.#outFd = undefined; // the terminal went away: output is dropped from now on
      }
    }
    return this.#outFd === undefined ? bytes.length : at;
  }
}

export default defineDeviceModule<ConsoleModuleData, Record<string, never>, ConsoleStats>({
  create(data) {
    const link = new ConsoleLinkWorkerSide(data.link);
    const { link: _, terminal, ...options } = data;
    const term = terminal ? new TerminalIo(terminal) : undefined;
    const device = new VirtioConsoleDevice({
      ...options,
      ...link.size(),
      onOutput: term ? (b) => term.write(b) : (b) => link.output.write(b),
    });
    // Out of room: flag it for the host's next read, which wakes the transmit queue (ConsoleLink.wake →
    // its notify eventfd), then look again — the host may have read everything just before the flag
    // went up. Returning false (not a retry time) leaves the queue open to that wake-up: the runtime
    // ignores notifications of a queue waiting for its retry time. Without a wake, the worker's poll
    // timeout looks at the queue again.
    const blocked = (): boolean => {
      link.outputBlocked = true;
      if (link.output.space === 0) return false;
      link.outputBlocked = false;
      return true;
    };
    const pull = (): void => {
      const size = link.takeResize();
      if (size) device.resize(size.cols, size.rows);
      if (link.input.used > 0 && device.inputSpace > 0) device.write(link.input.read(device.inputSpace));
    };
    const transmitToTerminal = (t: TerminalIo, budget: { bytes: number }): boolean | number => {
      if (!t.flush()) return TERMINAL_RETRY_MS;
      const room = TERMINAL_BACKLOG - t.backlogBytes;
      const r = device.serveQueue(CONSOLE_TRANSMITQ, { ...budget, bytes: Math.min(budget.bytes, room) });
      // Whatever the terminal did not take yet: look again shortly (the guest may not kick again).
      return t.backlogBytes > 0 ? TERMINAL_RETRY_MS : r.more;
    };
    return {
      device,
      serveQueue(index, budget) {
        pull();
        if (index === CONSOLE_TRANSMITQ) {
          if (term) return transmitToTerminal(term, budget);
          const room = link.output.space;
          if (room === 0) return blocked();
          const r = device.serveQueue(index, { ...budget, bytes: Math.min(budget.bytes, room) });
          if (r.more && link.output.space === 0) return blocked();
          return r.more;
        }
        if (index !== CONSOLE_RECEIVEQ) return false;
        let more = false;
        // Deliver, refill from the ring, deliver again, while the guest has buffers and the budget allows.
        for (let round = 0; round < 4; round++) {
          const r = device.serveQueue(index, budget);
          more = r.more;
          if (r.more || device.inputBuffered > 0 || link.input.used === 0) break;
          pull();
        }
        return more;
      },
      // The terminal is read only while the device has room for input: a guest that reads
      // nothing holds the terminal back (and the loop does not spin on a readable fd).
      hostFds: () => (term?.inFd !== undefined && device.inputSpace > 0 ? [term.inFd] : []),
      hostFdReadable() {
        if (!term) return;
        const { bytes, quit } = term.read(device.inputSpace);
        if (bytes.length > 0) {
          device.write(bytes);
          device.queueNotify(CONSOLE_RECEIVEQ);
        }
        if (quit) link.requestQuit();
      },
      get served() {
        const s = device.stats;
        return s.txChains + s.txFailed + s.rxChains + s.rxFailed;
      },
      info: () => ({}),
      stats: () => device.stats,
      close: () => {
        term?.flush();
      },
    };
  },
});
