// A virtio-blk disk as a `@tskvm/machine-x86` device: this package's device module served
// by `@tskvm/virtio-worker` (its own worker by default), wired with `workerPciDevice`.
import type { DeviceTuning, MachinePciDeviceFactory } from "@tskvm/machine-x86";
import { type SharedDeviceWorker, workerPciDevice } from "@tskvm/virtio-worker";
import type { BlkDeviceOptions } from "./config.js";
import { BLK_DEFAULT_POLL_US, BLK_MAX_QUEUES } from "./constants.js";
import type { BlkImageSpec, BlkModuleData } from "./entry.js";
import { BLK_DEVICE_MODULE } from "./host.js";

export interface VirtioBlkPciDeviceOptions extends BlkImageSpec {
  /** What the guest reads as the disk's id (`/sys/block/vdX/serial`): ASCII, at most 20 bytes. */
  serial?: string;
  /**
   * Request queues (VIRTIO_BLK_F_MQ when more than 1), 1 to 16, e.g. one per vCPU so guest
   * CPUs do not share a ring (`-d …,queues=N`). One worker serves them all. Default 1.
   */
  queues?: number;
  /** Other device tunables (queue size, limits, features); every field has a default. */
  device?: Omit<BlkDeviceOptions, "serial" | "queues">;
  /**
   * The thread that serves the disk, e.g. a `SharedDeviceWorker` it shares with slow
   * devices (console, rng). Default: a worker of its own.
   */
  thread?: SharedDeviceWorker;
  /**
   * Adaptive polling: after serving requests, the disk's worker keeps looking at the ring, with
   * the driver's notifications off, for up to this many µs before it sleeps (QEMU's
   * poll-max-ns; the window grows and shrinks with the gaps between requests). A guest that
   * keeps the disk busy then costs no VM exit and no wake-up per request, an idle one nothing.
   * Default {@link BLK_DEFAULT_POLL_US}; 0 turns it off. Its own worker only.
   */
  pollUs?: number;
  /**
   * The disk's id in the machine's controls (`machine.devices`, `tskvm stat`), unique in the
   * machine, e.g. "disk0". Default: "disk PATH".
   */
  id?: string;
  /**
   * Limits and priorities of the disk's worker from the start (IOPS and bandwidth token
   * buckets, ioprio, nice); changed at run time through the device's `control.tune`.
   */
  tuning?: DeviceTuning;
}

/** How listings describe a disk: its path and the options that change what the guest sees. */
function describeDisk(image: BlkImageSpec, queues: number): string {
  const flags = [
    image.readOnly ? "ro" : "",
    image.snapshot ? "snapshot" : "",
    image.direct ? "direct" : "",
    queues > 1 ? `queues=${queues}` : "",
  ].filter((f) => f !== "");
  return [image.path, ...flags].join(",");
}

/**
 * A virtio-blk PCI disk for `createMachine({ devices: [...] })`: the image is opened (and
 * locked) by the device's worker when the machine starts, which serves the guest's queue
 * from an ioeventfd and interrupts through an irqfd — the main thread and the vCPUs are
 * not on the request path. A disk that cannot be opened fails `machine.start()` with an
 * error that names it (`disk PATH: ...`).
 */
export function virtioBlkPciDevice(options: VirtioBlkPciDeviceOptions): MachinePciDeviceFactory {
  const { serial, queues = 1, device, thread, pollUs, id, tuning, ...image } = options;
  if (!Number.isInteger(queues) || queues < 1 || queues > BLK_MAX_QUEUES)
    throw new RangeError(`disk ${image.path}: queues must be 1-${BLK_MAX_QUEUES}, not ${queues}`);
  if (pollUs !== undefined && (!Number.isFinite(pollUs) || pollUs < 0 || pollUs > 1_000_000))
    throw new RangeError(`disk ${image.path}: pollUs must be 0-1000000, not ${pollUs}`);
  const data: BlkModuleData = {
    image,
    device: { ...device, queues, ...(serial !== undefined ? { serial } : {}) },
  };
  return workerPciDevice({
    module: BLK_DEVICE_MODULE,
    data,
    queues,
    name: `disk ${image.path}`,
    kind: "virtio-blk",
    description: describeDisk(image, queues),
    ...(id !== undefined ? { id } : {}),
    ...(tuning !== undefined ? { tuning } : {}),
    ...(thread ? { thread } : {}),
    spinUs: pollUs ?? BLK_DEFAULT_POLL_US,
    // disk-image's messages already begin with the path: name it once.
    startError: (m) => (m.startsWith(`${image.path}: `) ? `disk ${m}` : `disk ${image.path}: ${m}`),
  });
}
