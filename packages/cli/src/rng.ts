// `--rng` (kvmtool's flag): a virtio-rng PCI device (/dev/hwrng in the guest),
// served by @tskvm/virtio-worker — on the given shared thread for slow devices,
// or on a worker of its own.
import type { MachinePciDeviceFactory } from "@tskvm/machine-x86";
import { RNG_DEVICE_MODULE, type RngModuleData } from "@tskvm/virtio-rng";
import { type SharedDeviceWorker, workerPciDevice } from "@tskvm/virtio-worker";

export function rngPciDevice(
  options: { thread?: SharedDeviceWorker; data?: RngModuleData } = {},
): MachinePciDeviceFactory {
  return workerPciDevice({
    module: RNG_DEVICE_MODULE,
    data: options.data ?? {},
    name: "rng",
    ...(options.thread ? { thread: options.thread } : {}),
  });
}
