// The blk I/O worker: @tskvm/virtio-worker serving this package's device
// module (./entry.js) in a thread of its own.
import {
  DeviceWorkerHandle,
  type DeviceWorkerHooks,
  type IoeventfdEvent,
  type MsixEvent,
  type StartDeviceWorkerOptions,
} from "@tskvm/virtio-worker";
import type { BlkConfiguration, BlkDeviceOptions } from "./config.js";
import type { BlkDeviceStats, BlkRemoteBackend } from "./device.js";
import type { BlkImageSpec, BlkModuleData, BlkModuleInfo } from "./entry.js";

/** URL of virtio-blk's device module (for `startDeviceWorker` / `workerPciDevice`). */
export const BLK_DEVICE_MODULE: string = new URL("./entry.js", import.meta.url).href;

export type BlkIoeventfdEvent = IoeventfdEvent;
export type BlkMsixEvent = MsixEvent;
export type BlkWorkerHooks = DeviceWorkerHooks;

export interface StartBlkWorkerOptions
  extends Omit<StartDeviceWorkerOptions<BlkModuleData>, "module" | "data" | "queues"> {
  /** The disk; the worker opens it (and takes its lock) — nothing else may. */
  image: BlkImageSpec;
  device?: BlkDeviceOptions;
}

/** The main thread's handle on a blk I/O worker (see `DeviceWorkerHandle` for the wiring). */
export class BlkWorkerHandle
  extends DeviceWorkerHandle<BlkModuleInfo, BlkDeviceStats>
  implements BlkRemoteBackend
{
  /** The device configuration (after `ready`). */
  get configuration(): BlkConfiguration {
    return this.info.configuration;
  }
}

/**
 * Starts a blk I/O worker: it opens the image, builds the device (and, for
 * "pci" / "mmio", the transport), then serves the queue from its notify
 * eventfd until {@link BlkWorkerHandle.stop}.
 */
export function startBlkWorker(options: StartBlkWorkerOptions): BlkWorkerHandle {
  const { image, device, ...rest } = options;
  const data: BlkModuleData = { image, device: device ?? {} };
  return new BlkWorkerHandle({
    name: `virtio-blk ${image.path}`,
    ...rest,
    module: BLK_DEVICE_MODULE,
    data,
    // One notify eventfd per request queue; MSI-X by default: config + one vector per queue.
    queues: device?.queues ?? 1,
  });
}
