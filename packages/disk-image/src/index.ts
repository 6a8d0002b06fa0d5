export type {
  AsyncEngineKind,
  AsyncQueueOptions,
  DiskAsyncQueue,
  IoUringSupport,
} from "./async-queue.js";
export { ioUringSupport } from "./async-queue.js";
export type { DiskImage, DiskImageFormat, DiskIoBatch, WriteZeroesOptions } from "./disk-image.js";
export { checkRange, DiskImageBase } from "./disk-image.js";
export type { DiskImageErrorCode, DiskImageErrorDetails } from "./errors.js";
export { DiskImageError, isDiskImageError } from "./errors.js";
export type { ImageInfo, ImageInfoOptions, Qcow2Details } from "./info.js";
export { createQcow2, imageInfo } from "./info.js";
export type { OpenDiskImageOptions } from "./open.js";
export { MAX_BACKING_DEPTH, openDiskImage, openQcow2, probeFormat } from "./open.js";
export { PROBE_BYTES, probeHead } from "./probe.js";
export type { CreateQcow2Options } from "./qcow2/create.js";
export type { FeatureName, HeaderExtension, Qcow2Header } from "./qcow2/format.js";
export type { Qcow2CacheOptions } from "./qcow2/image.js";
export { Qcow2DiskImage } from "./qcow2/image.js";
export type { Qcow2OpenOptions } from "./qcow2/open.js";
export type { RawOpenOptions } from "./raw.js";
export { openRaw, RawDiskImage } from "./raw.js";
