import { readFileSync } from "node:fs";
import {
  type Command,
  CommandError,
  type CommandGroup,
  type CommandNode,
  ExitCode,
  errorText,
  type Io,
  UsageError,
} from "./command.js";
import { rootCommand } from "./commands/index.js";
import { exitCodesHelp } from "./exit-codes.js";

const PROGRAM = "tskvm";

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
      version?: string;
    };
    return pkg.version ?? "unknown";
  } catch {
    return "unknown";
  }
}

/** The help text of a command group: usage and its commands with their summaries. */
export function groupHelp(path: readonly string[], group: CommandGroup): string {
  const name = [PROGRAM, ...path].join(" ");
  const entries = Object.entries(group.commands);
  const width = Math.max(...entries.map(([n]) => n.length));
  const lines = entries.map(([n, c]) => `  ${n.padEnd(width)}  ${c.summary}`);
  const options = [["-h, --help", "show this help"]];
  if (path.length === 0) options.push(["-V, --version", "print the version"]);
  const optWidth = Math.max(...options.map(([o]) => o!.length));
  return (
    `Usage: ${name} COMMAND [OPTIONS]\n\n` +
    `${path.length === 0 ? `${PROGRAM}: ` : ""}${group.summary}\n\n` +
    `Commands:\n${lines.join("\n")}\n\n` +
    `Options:\n${options.map(([o, d]) => `  ${o!.padEnd(optWidth)}  ${d}\n`).join("")}\n` +
    `Run '${name} COMMAND --help' for the options of a command.\n` +
    (path.length === 0 ? `\n${exitCodesHelp()}` : "")
  );
}

function wantsHelp(args: readonly string[]): boolean {
  const end = args.indexOf("--");
  return (end < 0 ? args : args.slice(0, end)).some((a) => a === "--help" || a === "-h");
}

/**
 * Runs the `tskvm` command line `argv` (without `node` and the script) and returns the
 * exit code: {@link ExitCode.ok}, {@link ExitCode.usage} for a bad command line,
 * {@link ExitCode.error} when the command fails. Every error is printed here, in one form:
 * `tskvm CMD: error: MESSAGE` (then `  hint: ...` if there is one, or for a bad command
 * line `Run 'tskvm CMD --help' for usage.`).
 */
export async function main(
  argv: readonly string[],
  io: Io,
  root: CommandGroup = rootCommand,
): Promise<number> {
  let args = [...argv];
  // `tskvm help guest build` is `tskvm guest build --help`.
  if (args[0] === "help") args = [...args.slice(1), "--help"];
  const path: string[] = [];
  const name = () => [PROGRAM, ...path].join(" ");
  const usage = (message: string): number => {
    io.stderr(`${errorText(name(), new UsageError(message))}Run '${name()} --help' for usage.\n`);
    return ExitCode.usage;
  };
  let node: CommandNode = root;
  while (node.kind === "group") {
    const next = args[0];
    if (next === undefined) {
      io.stderr(groupHelp(path, node));
      return ExitCode.usage;
    }
    if (next === "--help" || next === "-h") {
      io.stdout(groupHelp(path, node));
      return ExitCode.ok;
    }
    if (path.length === 0 && (next === "--version" || next === "-V")) {
      io.stdout(`${PROGRAM} ${version()}\n`);
      return ExitCode.ok;
    }
    const child: CommandNode | undefined = Object.hasOwn(node.commands, next)
      ? node.commands[next]
      : undefined;
    if (!child) return usage(next.startsWith("-") ? `unknown option '${next}'` : `unknown command '${next}'`);
    path.push(next);
    args = args.slice(1);
    node = child;
  }
  const command: Command = node;
  if (wantsHelp(args)) {
    io.stdout(command.help);
    return ExitCode.ok;
  }
  try {
    return await command.run(args, io);
  } catch (e) {
    if (e instanceof UsageError) return usage(e.message);
    io.stderr(errorText(name(), e));
    return e instanceof CommandError ? e.exitCode : ExitCode.error;
  }
}
