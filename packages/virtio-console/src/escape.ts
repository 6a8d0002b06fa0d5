/** Ctrl-A: the escape key; `Ctrl-A x` quits, `Ctrl-A Ctrl-A` sends one Ctrl-A (as in QEMU and kvmtool). */
export const ESCAPE_KEY = 0x01;
export const QUIT_KEY = 0x78; // 'x'

/**
 * Filters a terminal's keyboard bytes on their way to the guest: takes the escape sequence
 * out and says when the user asked to quit. Keeps state across calls (Ctrl-A may end a read).
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
