// `--console serial|virtio` (kvmtool's flag) and the terminal size the virtio console
// reports. The device and its link are @tskvm/virtio-console's `VirtioConsolePci`.
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
