/** Exit codes of every `tskvm` command. */
export const ExitCode = {
  /** Success. */
  ok: 0,
  /** The command failed (guest kit could not be built, VM error, ...). */
  error: 1,
  /** Bad command line: unknown command or option, missing or extra argument. */
  usage: 2,
} as const;

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];
