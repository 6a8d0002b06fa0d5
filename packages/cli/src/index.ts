export { groupHelp, main } from "./cli.js";
export {
  type Command,
  type CommandGroup,
  type CommandNode,
  type Io,
  type OptionSpecs,
  type ParsedCommandArgs,
  parseCommandArgs,
  UsageError,
} from "./command.js";
export { rootCommand } from "./commands/index.js";
export { blkPciDevice, checkDisks, type DiskSpec, parseDiskSpec } from "./disk.js";
export { ExitCode } from "./exit-codes.js";
export { rngPciDevice } from "./rng.js";
