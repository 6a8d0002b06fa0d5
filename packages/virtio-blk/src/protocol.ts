import type {
  DevicePciOptions,
  DeviceTransportKind,
  DeviceWorkerExit,
  DeviceWorkerReady,
} from "@tskvm/virtio-worker";
import type { BlkDeviceStats } from "./device.js";
import type { BlkModuleInfo } from "./entry.js";

export type { BlkImageSpec } from "./entry.js";

/** Options of the virtio-pci transport built in the worker (see `VirtioPciOptions`). */
export type BlkPciOptions = DevicePciOptions;
export type BlkTransportKind = DeviceTransportKind;
/** What the worker reports once the disk is open and the device built. */
export type BlkWorkerReady = DeviceWorkerReady<BlkModuleInfo>;
/** What the worker reports when it ends. */
export type BlkWorkerExit = DeviceWorkerExit<BlkDeviceStats>;
