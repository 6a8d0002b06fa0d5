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
