import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** Path of the `/init` shell script shipped with this package (`init/init.sh`). */
export const INIT_SCRIPT_PATH = fileURLToPath(new URL("../init/init.sh", import.meta.url));

/** The text of the guest's `/init` (busybox sh). */
export function initScript(): string {
  return readFileSync(INIT_SCRIPT_PATH, "utf8");
}

/** Kernel command-line parameter holding the command the guest runs (`tskvm.cmd="..."`). */
export const GUEST_CMD_PARAM = "tskvm.cmd";
/** Same, base64-encoded; for commands with double quotes or other awkward bytes. */
export const GUEST_CMD64_PARAM = "tskvm.cmd64";
/** Line the init prints on the console before the command's output. */
export const GUEST_BEGIN_MARKER = "tskvm: command begin";
/** The init prints this followed by the exit status, on its own line, after the output. */
export const GUEST_STATUS_MARKER = "tskvm: command exited with status ";

/**
 * The kernel command-line parameter that makes the default guest run `command`:
 * `tskvm.cmd="COMMAND"` when the kernel can carry it verbatim (printable ASCII without
 * double quotes), otherwise `tskvm.cmd64=BASE64`. Append it to e.g. `console=ttyS0`.
 * Mind the kernel's command-line limit (2048 bytes on x86).
 */
export function guestCommandParam(command: string): string {
  if (/^[\x20-\x7e]*$/.test(command) && !command.includes('"')) return `${GUEST_CMD_PARAM}="${command}"`;
  return `${GUEST_CMD64_PARAM}=${Buffer.from(command, "utf8").toString("base64")}`;
}

/** What {@link parseGuestCommandOutput} found on a guest console. */
export interface GuestCommandResult {
  /** Everything the command wrote to stdout and stderr (line ends normalised to `\n`). */
  output: string;
  /** Its exit status (128+N when killed by signal N). */
  status: number;
}

/**
 * Finds the command output and exit status in the console text of a default guest
 * (serial `\r\n` line ends are fine). Returns `undefined` until the end marker has appeared.
 */
export function parseGuestCommandOutput(consoleText: string): GuestCommandResult | undefined {
  const text = consoleText.replace(/\r+\n/g, "\n");
  const endRe = new RegExp(`\\n${GUEST_STATUS_MARKER}(\\d+)[ \\t\\r]*(?:\\n|$)`, "g");
  let end: RegExpExecArray | undefined;
  for (let m = endRe.exec(text); m; m = endRe.exec(text)) end = m;
  if (!end) return undefined;
  const begin = `${GUEST_BEGIN_MARKER}\n`;
  let from = -1;
  if (text.startsWith(begin)) from = 0;
  else {
    const i = text.indexOf(`\n${begin}`);
    if (i >= 0) from = i + 1;
  }
  if (from < 0 || from + begin.length > end.index + 1) return undefined;
  // The init prints one newline of its own before the status marker; it is not output.
  const output = text.slice(from + begin.length, end.index);
  return { output, status: Number(end[1]) };
}
