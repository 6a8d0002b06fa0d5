// Watches the guest console for the kernel's last words, to explain how it ended.

const PANIC = "Kernel panic - not syncing";
const REBOOT_PREFIX = "reboot: ";

/** Keeps the last panic line and the last "reboot: ..." line of the console text. */
export class ConsoleWatch {
  #partial = "";
  panicLine: string | undefined;
  rebootLine: string | undefined;

  feed(bytes: Uint8Array): void {
    const text = this.#partial + Buffer.from(bytes).toString("latin1");
    const lines = text.split(/\r?\n/);
    this.#partial = (lines.pop() ?? "").slice(-512);
    for (const raw of lines) this.#line(raw);
  }

  /** Consider the unterminated last line too (at the end of the run). */
  flush(): void {
    if (this.#partial) this.#line(this.#partial);
    this.#partial = "";
  }

  #line(raw: string): void {
    const line = raw.replace(/\r/g, "").trim();
    const p = line.indexOf(PANIC);
    if (p >= 0) this.panicLine = line.slice(p);
    const r = line.indexOf(REBOOT_PREFIX);
    if (r >= 0) this.rebootLine = line.slice(r);
  }
}
