// virtio-rng as a `@tskvm/machine-x86` device: this package's device module served by
// `@tskvm/virtio-worker` (its own worker by default), wired with `workerPciDevice`.
import type { MachinePciDeviceFactory } from "@tskvm/machine-x86";
import { type SharedDeviceWorker, workerPciDevice } from "@tskvm/virtio-worker";
import type { RngModuleData } from "./entry.js";

export interface VirtioRngPciDeviceOptions extends RngModuleData {
  /**
   * The thread that serves the device, e.g. a `SharedDeviceWorker` it shares with other
   * slow devices. Default: a worker of its own.
   */
  thread?: SharedDeviceWorker;
}

/** URL of virtio-rng's device module (for `@tskvm/virtio-worker`'s `startDeviceWorker` / `workerPciDevice`). */
export const RNG_DEVICE_MODULE: string = new URL("./entry.js", import.meta.url).href;

/**
 * A virtio-rng PCI device (`/dev/hwrng` in a guest with `virtio_rng`) for
 * `createMachine({ devices: [...] })`, filling the guest's buffers from the host's CSPRNG.
 */
export function virtioRngPciDevice(options: VirtioRngPciDeviceOptions = {}): MachinePciDeviceFactory {
  const { thread, ...data } = options;
  return workerPciDevice({
    module: RNG_DEVICE_MODULE,
    data,
    name: "rng",
    ...(thread ? { thread } : {}),
  });
}
