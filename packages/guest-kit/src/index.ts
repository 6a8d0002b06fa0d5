export {
  buildGuestKit,
  busyboxApplets,
  DEFAULT_GUEST_MODULES,
  GUEST_BUSYBOX_PACKAGE,
  GUEST_KERNEL_PACKAGE,
  GUEST_KIT_BUILDER_VERSION,
  type GuestKit,
  type GuestKitOptions,
  initramfsEntries,
} from "./build.js";
export { type CpioEntry, type CpioMember, readCpioNewc, writeCpioNewc, writeInitramfs } from "./cpio.js";
export {
  DebianFetchError,
  type DebianPackage,
  defaultCacheDir,
  downloadDebianPackage,
  downloadDebianPackageAsync,
  fetchDebianPackage,
  formatBytes,
  type GuestKitProgress,
  hasApt,
  PROGRESS_INTERVAL_MS,
  resolveDebianPackage,
  unpackDebianPackage,
  unpackDebianPackageAsync,
} from "./debian.js";
export {
  GUEST_BEGIN_MARKER,
  GUEST_CMD_PARAM,
  GUEST_CMD64_PARAM,
  GUEST_STATUS_MARKER,
  type GuestCommandResult,
  guestCommandParam,
  INIT_SCRIPT_PATH,
  initScript,
  parseGuestCommandOutput,
} from "./init.js";
export {
  formatModulesDep,
  KernelModuleTree,
  type ModuleInfo,
  modinfoOfImage,
  moduleName,
  parseModinfo,
  parseModulesDep,
  readModinfo,
  readModuleImage,
  resolveModuleOrder,
} from "./modules.js";
export {
  appendInitrd,
  buildToolsArchive,
  GUEST_PATH_DIRS,
  TOOL_SEARCH_DIRS,
  type ToolsArchiveFile,
  type ToolsArchiveOptions,
  toolsArchiveEntries,
} from "./tools.js";
