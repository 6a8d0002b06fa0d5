import { type ParseArgsConfig, parseArgs } from "node:util";
import { ExitCode } from "./exit-codes.js";

/** Where a command writes; the real process streams in `main.ts`, buffers in tests. */
export interface Io {
  stdout(text: string): void;
  stderr(text: string): void;
}

/** A runnable command, e.g. `guest build`. */
export interface Command {
  kind: "command";
  /** One line, shown in the parent's command list. */
  summary: string;
  /** Full `--help` text; the first line should be `Usage: tskvm ...`. */
  help: string;
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

/** Option specs as `node:util` parseArgs takes them. */
export type OptionSpecs = NonNullable<ParseArgsConfig["options"]>;

/** What {@link parseCommandArgs} returns: typed `values` and the `positionals`. */
export type ParsedCommandArgs<O extends OptionSpecs> = ReturnType<
  typeof parseArgs<{ args: string[]; options: O; strict: true; allowPositionals: true }>
>;

/**
 * `node:util` parseArgs in strict mode, with its errors turned into {@link UsageError}s.
 * `maxPositionals` limits how many positional arguments are accepted (default none).
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
    if (err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && quoted)
      throw new UsageError(`unknown option '${quoted}'`);
    throw new UsageError(err.message);
  }
  if (parsed.positionals.length > maxPositionals) {
    throw new UsageError(`unexpected argument '${parsed.positionals[maxPositionals]}'`);
  }
  return parsed;
}

export { ExitCode };
