export { groupHelp, main } from "./cli.js";
export {
  type Command,
  CommandError,
  type CommandGroup,
  type CommandNode,
  errorText,
  type Io,
  type OptionSpecs,
  type ParsedCommandArgs,
  parseCommandArgs,
  UsageError,
} from "./command.js";
export {
  type QemuImageInfo,
  type QemuQcow2Specific,
  qemuBackingChain,
  qemuImageInfo,
  qemuInfoText,
} from "./commands/image.js";
export { rootCommand } from "./commands/index.js";
export { checkDisks, type DiskSpec, diskDeviceOptions, parseDiskSpec } from "./disk.js";
export { EXIT_CODES, ExitCode, type ExitCodeName, exitCodesHelp } from "./exit-codes.js";
export { formatSize, parseSize, type SizeSyntax } from "./size.js";
