// A virtio-blk disk as a `@tskvm/machine-x86` device: this package's device module served
// by `@tskvm/virtio-worker` (its own worker by default), wired with `workerPciDevice`.
import type { MachinePciDeviceFactory } from "@tskvm/machine-x86";
import { type SharedDeviceWorker, workerPciDevice } from "@tskvm/virtio-worker";
import type { BlkDeviceOptions } from "./config.js";
import type { BlkImageSpec, BlkModuleData } from "./entry.js";
import { BLK_DEVICE_MODULE } from "./host.js";

export interface VirtioBlkPciDeviceOptions extends BlkImageSpec {
  /** What the guest reads as the disk's id (`/sys/block/vdX/serial`): ASCII, at most 20 bytes. */
  serial?: string;
  /** Other device tunables (queue size, limits, features); every field has a default. */
  device?: Omit<BlkDeviceOptions, "serial">;
  /**
   * The thread that serves the disk, e.g. a `SharedDeviceWorker` it shares with slow
   * devices (console, rng). Default: a worker of its own.
   */
  thread?: SharedDeviceWorker;
  /**
   * Adaptive polling: after serving requests, the disk's worker keeps looking at the ring for
   * this many µs before it sleeps (QEMU's poll-max-ns); a guest that keeps the disk busy then
   * costs no wake-up per request, an idle one nothing. Default 0 (off). Its own worker only.
   */
  pollUs?: number;
}

/**
 * A virtio-blk PCI disk for `createMachine({ devices: [...] })`: the image is opened (and
 * locked) by the device's worker when the machine starts, which serves the guest's queue
 * from an ioeventfd and interrupts through an irqfd — the main thread and the vCPUs are
 * not on the request path. A disk that cannot be opened fails `machine.start()` with an
 * error that names it (`disk PATH: ...`).
 */
export function virtioBlkPciDevice(options: VirtioBlkPciDeviceOptions): MachinePciDeviceFactory {
  const { serial, device, thread, pollUs, ...image } = options;
  if (pollUs !== undefined && (!Number.isFinite(pollUs) || pollUs < 0 || pollUs > 1_000_000))
    throw new RangeError(`disk ${image.path}: pollUs must be 0-1000000, not ${pollUs}`);
  const data: BlkModuleData = {
    image,
    device: { ...device, ...(serial !== undefined ? { serial } : {}) },
  };
  return workerPciDevice({
    module: BLK_DEVICE_MODULE,
    data,
    name: `disk ${image.path}`,
    ...(thread ? { thread } : {}),
    ...(pollUs ? { spinUs: pollUs } : {}),
    // disk-image's messages already begin with the path: name it once.
    startError: (m) => (m.startsWith(`${image.path}: `) ? `disk ${m}` : `disk ${image.path}: ${m}`),
  });
}
