/** Exit codes of every `tskvm` command. */
export const ExitCode = {
  /** Success. */
  ok: 0,
  /** The command failed: a VMM error (no usable KVM, unreadable kernel, guest kit could not be built, ...). */
  error: 1,
  /** Bad command line: unknown command or option, missing or extra argument. */
  usage: 2,
  /** `tskvm run`: the guest crashed (kernel panic, triple fault). */
  guestCrash: 3,
  /** `tskvm run`: stopped by SIGINT / SIGTERM / SIGHUP (128 + signal number). */
  sigint: 130,
  sigterm: 143,
  sighup: 129,
} as const;

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];
export type ExitCodeName = keyof typeof ExitCode;

/**
 * What each exit code means, in order. `tskvm --help`, `tskvm run --help` and the table in
 * the cli README say exactly this (a test compares them).
 */
export const EXIT_CODES: ReadonlyArray<{ code: number; name: ExitCodeName; meaning: string }> = [
  {
    code: 0,
    name: "ok",
    meaning: "success (run: the guest powered off or rebooted, or tskvm stop ended it), and --help",
  },
  {
    code: 1,
    name: "error",
    meaning:
      "the command failed, e.g. no usable KVM, a bad kernel, a disk it cannot use, no apt to build the default guest (the message says why, often with a hint)",
  },
  {
    code: 2,
    name: "usage",
    meaning: "bad command line: unknown command or option, bad value, missing or extra argument",
  },
  { code: 3, name: "guestCrash", meaning: "run: the guest crashed (kernel panic, triple fault)" },
  { code: 129, name: "sighup", meaning: "run: stopped by SIGHUP" },
  { code: 130, name: "sigint", meaning: "run: stopped by SIGINT or Ctrl-A x" },
  { code: 143, name: "sigterm", meaning: "run: stopped by SIGTERM" },
];

/** Words of `text` in lines of at most `width` columns. */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/)) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === "" ? word : `${line} ${word}`;
  }
  if (line !== "") lines.push(line);
  return lines;
}

/** The `Exit codes:` section of a `--help` text: every code, or those named. */
export function exitCodesHelp(names?: readonly ExitCodeName[]): string {
  const rows = EXIT_CODES.filter((c) => names === undefined || names.includes(c.name));
  const indent = " ".repeat(7);
  return `Exit codes:\n${rows
    .map((c) =>
      wrap(c.meaning, 80 - indent.length)
        .map((l, i) => (i === 0 ? `  ${String(c.code).padEnd(5)}${l}` : `${indent}${l}`))
        .join("\n"),
    )
    .join("\n")}\n`;
}
