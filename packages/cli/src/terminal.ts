import type { Readable, Writable } from "node:stream";

/** Ctrl-A: the escape key; `Ctrl-A x` quits, `Ctrl-A Ctrl-A` sends one Ctrl-A (as in QEMU and kvmtool). */
export const ESCAPE_KEY = 0x01;
export const QUIT_KEY = 0x78; // 'x'

/**
 * Feeds keyboard bytes to the guest, filtering the escape sequence out.
 * Returns the bytes for the guest and whether the user asked to quit.
 */
export class EscapeFilter {
  #pending = false;

  push(input: Uint8Array): { forward: Uint8Array; quit: boolean } {
    const out: number[] = [];
    for (const b of input) {
      if (this.#pending) {
        this.#pending = false;
        if (b === QUIT_KEY || b === 0x58) return { forward: Uint8Array.from(out), quit: true };
        if (b === ESCAPE_KEY) out.push(ESCAPE_KEY);
        // Any other key after Ctrl-A is dropped, like QEMU's unknown escapes.
        continue;
      }
      if (b === ESCAPE_KEY) this.#pending = true;
      else out.push(b);
    }
    return { forward: Uint8Array.from(out), quit: false };
  }
}

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

  /**
   * Starts forwarding input to `guestInput`; `onQuit` runs on the escape sequence.
   * With `backpressure`, input that is not a terminal (a pipe, a file) is paused while
   * `guestInput` is full and resumed on its 'drain' (a terminal is always read, so
   * Ctrl-A x keeps working).
   */
  attach(guestInput: Writable, onQuit: () => void, options: { backpressure?: boolean } = {}): void {
    if (this.isTty && this.#stdin.setRawMode) {
      this.#stdin.setRawMode(true);
      this.#raw = true;
    }
    const hold = options.backpressure === true && !this.isTty;
    const onData = (chunk: Buffer) => {
      const { forward, quit } = this.isTty ? this.#filter.push(chunk) : { forward: chunk, quit: false };
      if (forward.length && !guestInput.write(forward) && hold) {
        this.#stdin.pause();
        guestInput.once("drain", () => {
          if (this.#onData === onData) this.#stdin.resume();
        });
      }
      if (quit) onQuit();
    };
    this.#onData = onData;
    this.#stdin.on("data", this.#onData);
    this.#stdin.resume();
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
