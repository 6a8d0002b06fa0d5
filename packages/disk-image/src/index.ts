export type { DiskImage, DiskImageFormat, WriteZeroesOptions } from "./disk-image.js";
export { checkRange, DiskImageBase } from "./disk-image.js";
export type { DiskImageErrorCode, DiskImageErrorDetails } from "./errors.js";
export { DiskImageError, isDiskImageError } from "./errors.js";
export type { OpenDiskImageOptions } from "./open.js";
export { openDiskImage, probeFormat } from "./open.js";
export type { RawOpenOptions } from "./raw.js";
export { openRaw, RawDiskImage } from "./raw.js";
