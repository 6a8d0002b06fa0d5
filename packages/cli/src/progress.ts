// Progress of the long steps (the default guest's download, unpack and pack) on one line of
// a terminal, redrawn in place; on anything else nothing is drawn at all.
import { buildGuestKit, type GuestKit, type GuestKitOptions, type GuestKitProgress } from "@tskvm/guest-kit";
import type { Io } from "./command.js";
import { formatRate, formatSize } from "./size.js";

const VERB: Record<GuestKitProgress["step"], string> = {
  download: "downloading",
  unpack: "unpacking",
  pack: "packing",
};

/** The line for one report: `tskvm: downloading NAME  12.3 MiB / 67.3 MiB  5.1 MiB/s`. */
export function progressText(p: GuestKitProgress): string {
  const of = p.total !== undefined ? ` / ${formatSize(p.total)}` : "";
  const rate = formatRate(p.bytes, p.elapsedMs);
  return `tskvm: ${VERB[p.step]} ${p.name}  ${formatSize(p.bytes)}${of}${rate ? `  ${rate}` : ""}`;
}

/** A progress line on a terminal (`io.stderrTerminal`); every method does nothing elsewhere. */
export class ProgressLine {
  readonly #io: Io;
  #drawn = false;

  constructor(io: Io) {
    this.#io = io;
  }

  /** Redraws the line with `p`; a step's last report (`done`) clears it. */
  update(p: GuestKitProgress): void {
    const terminal = this.#io.stderrTerminal;
    if (!terminal) return;
    if (p.done) {
      this.clear();
      return;
    }
    // One column short of the width: a full line would wrap, and `\r` would then redraw below it.
    this.#io.stderr(`\r\x1b[K${progressText(p).slice(0, Math.max(terminal.columns - 1, 20))}`);
    this.#drawn = true;
  }

  /** Takes the line away, so that a message can be written. */
  clear(): void {
    if (!this.#drawn) return;
    this.#io.stderr("\r\x1b[K");
    this.#drawn = false;
  }

  /** Writes a whole line of its own (`tskvm: ...`) where the progress line was. */
  log(line: string): void {
    this.clear();
    this.#io.stderr(`tskvm: ${line}\n`);
  }
}

/** `buildGuestKit` with its messages on stderr (`tskvm: ...`) and, on a terminal, its progress. */
export async function buildGuestKitWithProgress(
  io: Io,
  options: Omit<GuestKitOptions, "log" | "progress"> = {},
): Promise<GuestKit> {
  const line = new ProgressLine(io);
  try {
    return await buildGuestKit({
      ...options,
      log: (l) => line.log(l),
      ...(io.stderrTerminal ? { progress: (p: GuestKitProgress) => line.update(p) } : {}),
    });
  } finally {
    line.clear();
  }
}
