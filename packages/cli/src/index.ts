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
export { ControlClient, type ControlClientOptions, listVms, withVm } from "./control/client.js";
export {
  checkControlDir,
  checkVmName,
  controlDir,
  ensureControlDir,
  generateVmName,
  socketPath,
  VM_NAME,
} from "./control/paths.js";
export {
  CONTROL_COMMANDS,
  CONTROL_ERROR_CODES,
  type ControlCommand,
  ControlError,
  type ControlErrorCode,
  type ControlRequest,
  type ControlResponse,
  type ControlResults,
  checkTuning,
  DEFAULT_STOP_TIMEOUT_MS,
  IDLE_TIMEOUT_MS,
  MAX_CONNECTIONS,
  MAX_LINE_BYTES,
  parseRequest,
  type RequestId,
  type StopResult,
  type VmDeviceInfo,
  type VmDiskInfo,
  type VmInfo,
} from "./control/protocol.js";
export { ControlServer, type ControlServerOptions, type ControlTarget } from "./control/server.js";
export {
  type DiskRates,
  formatStat,
  type StatRates,
  statRates,
  type ThreadRates,
  type VcpuRates,
} from "./control/stat-view.js";
export {
  checkDisks,
  type DiskSpec,
  diskDeviceOptions,
  diskId,
  MAX_DISK_QUEUES,
  parseDiskSpec,
} from "./disk.js";
export { EXIT_CODES, ExitCode, type ExitCodeName, exitCodesHelp } from "./exit-codes.js";
export { formatSize, parseSize, type SizeSyntax } from "./size.js";
export { formatTuning, parseTuningOption, TUNING_KEYS, type TuningKey } from "./tuning.js";
