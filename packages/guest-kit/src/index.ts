export { type CpioEntry, type CpioMember, readCpioNewc, writeCpioNewc, writeInitramfs } from "./cpio.js";
export {
  type DebianPackage,
  DebianFetchError,
  defaultCacheDir,
  fetchDebianPackage,
  hasApt,
  resolveDebianPackage,
} from "./debian.js";
