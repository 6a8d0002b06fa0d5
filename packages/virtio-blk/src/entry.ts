// virtio-blk's device module for @tskvm/virtio-worker: the worker opens the
// image (it is the only place that does: the image lock lives there), builds
// the device over it and serves the request queue in batches.
import { openDiskImage } from "@tskvm/disk-image";
import { defineDeviceModule } from "@tskvm/virtio-worker";
import { type BlkConfiguration, type BlkDeviceOptions, type BlkDiskInfo, diskInfo } from "./config.js";
import { type BlkAio, type BlkDeviceStats, VirtioBlkDevice } from "./device.js";

/** How the worker opens the disk. */
export interface BlkImageSpec {
  path: string;
  readOnly?: boolean;
  /** Skip probing. Pass "raw" for a raw image a guest may write (see disk-image's README). */
  format?: "raw" | "qcow2";
  /** O_DIRECT (raw only). */
  direct?: boolean;
  /** Take the image lock (default true). */
  lock?: boolean;
  /** Writes go to a throwaway overlay. */
  snapshot?: boolean;
  /** How reads, writes and flushes reach the disk (see `BlkAio`). Default: io_uring (where the kernel allows it) for `direct` disks, else sync. */
  aio?: BlkAio;
}

/** What the blk module is built from (structured-cloned into the worker). */
export interface BlkModuleData {
  image: BlkImageSpec;
  device?: BlkDeviceOptions;
}

/** What the worker reports once the disk is open. */
export interface BlkModuleInfo {
  disk: BlkDiskInfo;
  configuration: BlkConfiguration;
}

export default defineDeviceModule<BlkModuleData, BlkModuleInfo, BlkDeviceStats>({
  create({ image: s, device: options }) {
    const image = openDiskImage(s.path, {
      ...(s.format !== undefined ? { format: s.format } : {}),
      readOnly: s.readOnly ?? false,
      direct: s.direct ?? false,
      lock: s.lock ?? true,
      snapshot: s.snapshot ?? false,
    });
    let device: VirtioBlkDevice;
    try {
      // Default: io_uring for O_DIRECT disks, where the disk's own latency is worth keeping
      // many requests in flight; through the page cache the synchronous path costs fewer
      // system calls per request (measured: README, "Guest bench").
      device = new VirtioBlkDevice({ image, ...options, aio: s.aio ?? (s.direct ? "auto" : "sync") });
    } catch (e) {
      image.close();
      throw e;
    }
    // With aio io_uring the worker polls the completions beside the queue notifications.
    const completionFd = device.completionFd;
    const hostFds: readonly number[] = completionFd === undefined ? [] : [completionFd];
    return {
      device,
      serveQueue: (index, budget) =>
        device.processQueue(index, budget.requests, budget.shouldStop, budget.bytes),
      pendingRequests: (index) => device.pendingRequests(index),
      ...(completionFd === undefined
        ? {}
        : { hostFds: () => hostFds, hostFdReadable: () => device.completeRequests() }),
      get served() {
        return device.served;
      },
      // A bandwidth limit charges these; a pause waits for the requests in flight (io_uring).
      get bytesServed() {
        return device.bytesServed;
      },
      get inFlight() {
        return device.inFlight;
      },
      info: () => ({ disk: diskInfo(image), configuration: device.configuration }),
      stats: () => device.stats,
      close: () => {
        try {
          device.close();
        } finally {
          image.close();
        }
      },
    };
  },
});
