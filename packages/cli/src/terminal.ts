import type { Readable, Writable } from "node:stream";

// The escape sequence (Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A) is the virtio console's
// too, whose worker filters a terminal it reads itself: one implementation, there.
import { EscapeFilter } from "@tskvm/virtio-console";

export { ESCAPE_KEY, EscapeFilter, QUIT_KEY } from "@tskvm/virtio-console";

interface TtyInput extends Readable {
  isTTY?: boolean;
  isRaw?: boolean;
  setRawMode?(mode: boolean): unknown;
}

/**
 * Connects the host terminal to the guest console: raw mode while the guest runs
 * (so Ctrl-C, arrows and tab reach the guest shell), restored on every way out.
 * `restore()` is idempotent and synchronous, so it is safe from 'exit' handlers.
 */
export class ConsoleTerminal {
  readonly #stdin: TtyInput;
  readonly #filter = new EscapeFilter();
  #raw = false;
  #onData: ((chunk: Buffer) => void) | undefined;

  constructor(stdin: Readable) {
    this.#stdin = stdin as TtyInput;
  }

  get isTty(): boolean {
    return this.#stdin.isTTY === true;
  }

  /** Starts forwarding input to `guestInput` (raw mode on a terminal); `onQuit` runs on the escape sequence. */
  attach(guestInput: Writable, onQuit: () => void): void {
    this.rawOnly();
    const onData = (chunk: Buffer) => {
      const { forward, quit } = this.isTty ? this.#filter.push(chunk) : { forward: chunk, quit: false };
      if (forward.length) guestInput.write(forward);
      if (quit) onQuit();
    };
    this.#onData = onData;
    this.#stdin.on("data", this.#onData);
    this.#stdin.resume();
  }

  /**
   * Raw mode only, for a console device that reads the terminal itself (the virtio console's
   * worker, which also takes the escape sequence out).
   */
  rawOnly(): void {
    if (this.isTty && this.#stdin.setRawMode) {
      this.#stdin.setRawMode(true);
      this.#raw = true;
    }
  }

  /** Leaves raw mode and stops reading the terminal. */
  restore(): void {
    if (this.#onData) {
      this.#stdin.off("data", this.#onData);
      this.#onData = undefined;
    }
    if (this.#raw) {
      this.#raw = false;
      try {
        this.#stdin.setRawMode?.(false);
      } catch {
        // The terminal is gone (hang-up): nothing to restore.
      }
    }
    this.#stdin.pause();
    if (this.isTty) this.#stdin.destroy();
  }
}
