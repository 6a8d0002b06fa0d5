import { type ParseArgsConfig, parseArgs } from "node:util";
import { ExitCode } from "./exit-codes.js";

/** Where a command writes; the real process streams in `main.ts`, buffers in tests. */
export interface Io {
  stdout(text: string): void;
  stderr(text: string): void;
  /**
   * Set when stderr is a terminal: progress lines are drawn there, redrawn in place on one
   * line. Absent for pipes, files and tests: no progress at all then.
   */
  stderrTerminal?: { readonly columns: number };
  /** Set when stdout is a terminal: `tskvm stat --watch` redraws the screen there, like top. */
  stdoutTerminal?: { readonly columns: number; readonly rows: number };
}

/** A runnable command, e.g. `guest build`. */
export interface Command {
  kind: "command";
  /** One line, shown in the parent's command list. */
  summary: string;
  /** Full `--help` text; the first line should be `Usage: tskvm ...`. It lists every option. */
  help: string;
  /** The options `run` accepts (as `node:util` parseArgs takes them); a test checks `help` names each. */
  options: OptionSpecs;
  /** Runs with the arguments after the command's name; returns an {@link ExitCode}. */
  run(args: string[], io: Io): Promise<number>;
}

/** A command with subcommands, e.g. `guest` (→ `guest build`). */
export interface CommandGroup {
  kind: "group";
  summary: string;
  commands: Record<string, CommandNode>;
}

export type CommandNode = Command | CommandGroup;

/** Thrown by commands for a bad command line; the dispatcher exits with {@link ExitCode.usage}. */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * A failure the dispatcher reports as `tskvm CMD: error: MESSAGE` and, with a hint,
 * `  hint: HINT` on the next line; the command exits with `exitCode` (default {@link ExitCode.error}).
 */
export class CommandError extends Error {
  override name = "CommandError";
  readonly hint: string | undefined;
  readonly exitCode: number;

  constructor(message: string, options: { hint?: string; exitCode?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.hint = options.hint;
    this.exitCode = options.exitCode ?? ExitCode.error;
  }
}

/**
 * The one form of every error a command reports: `tskvm CMD: error: MESSAGE\n`, then the
 * hint (`  hint: ...`) if the error has one and its message does not carry it already
 * (disk-image's and guest-kit's errors do). `TSKVM_DEBUG=1` shows the stack instead.
 */
export function errorText(command: string, e: unknown): string {
  if (!(e instanceof Error)) return `${command}: error: ${String(e)}\n`;
  const message = process.env.TSKVM_DEBUG ? (e.stack ?? e.message) : e.message;
  const hint = (e as { hint?: unknown }).hint;
  const withHint =
    typeof hint === "string" && hint !== "" && !message.includes("\n  hint: ")
      ? `${message}\n  hint: ${hint}`
      : message;
  return `${command}: error: ${withHint}\n`;
}

/** Option specs as `node:util` parseArgs takes them. */
export type OptionSpecs = NonNullable<ParseArgsConfig["options"]>;

/** What {@link parseCommandArgs} returns: typed `values` and the `positionals`. */
export type ParsedCommandArgs<O extends OptionSpecs> = ReturnType<
  typeof parseArgs<{ args: string[]; options: O; strict: true; allowPositionals: true }>
>;

/** `-m, --mem` for the option spelled `--mem` (its short form too, if it has one). */
function optionName(options: OptionSpecs, long: string): string {
  const short = options[long]?.short;
  return short ? `-${short}/--${long}` : `--${long}`;
}

/**
 * `node:util` parseArgs in strict mode, with its errors turned into {@link UsageError}s
 * in this CLI's words. `maxPositionals` limits how many positional arguments are accepted
 * (default none).
 */
export function parseCommandArgs<O extends OptionSpecs>(
  args: string[],
  options: O,
  maxPositionals = 0,
): ParsedCommandArgs<O> {
  let parsed: ParsedCommandArgs<O>;
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (e) {
    const err = e as Error & { code?: string };
    const quoted = /'([^']+)'/.exec(err.message)?.[1];
    const long = /--([\w-]+)/.exec(err.message)?.[1];
    if (err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && quoted)
      throw new UsageError(`unknown option '${quoted}'`);
    if (err.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" && long !== undefined) {
      if (/argument missing/.test(err.message))
        throw new UsageError(`${optionName(options, long)} needs a value`);
      if (/does not take an argument/.test(err.message))
        throw new UsageError(`${optionName(options, long)} takes no value`);
    }
    throw new UsageError(err.message);
  }
  if (parsed.positionals.length > maxPositionals) {
    throw new UsageError(`unexpected argument '${parsed.positionals[maxPositionals]}'`);
  }
  return parsed;
}

export { ExitCode };
