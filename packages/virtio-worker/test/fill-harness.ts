// What the runtime's tests share: the fill test device (fixtures/fill-device.mjs) started
// on 64 MiB of guest RAM with no KVM, the driver worker (fixtures/driver.mjs) that drives
// it from another thread, and a driver on the test's own thread.
import { Worker } from "node:worker_threads";
import { type DeviceChannel, GuestMemory, GuestRegion } from "@tskvm/kvm-core";
import { PciDriverTransport, VirtioDriverSimulator } from "@tskvm/virtio/testing";
import { afterAll } from "vitest";
import {
  ChannelPciFunction,
  type DeviceWorkerHandle,
  type StartDeviceWorkerOptions,
  startDeviceWorker,
} from "../dist/index.js";

const FILL_DEVICE = new URL("./fixtures/fill-device.mjs", import.meta.url).href;
const DRIVER = new URL("./fixtures/driver.mjs", import.meta.url);

const region = GuestRegion.allocate(0, 64 << 20);
export const memory = new GuestMemory([region]);
afterAll(() => region.release());

/** The fill device (`data` for its create()) on `channel`; `more`: the other start options. */
export function startFill<Stats>(
  data: { byte: number },
  channel: DeviceChannel,
  more: Omit<
    Partial<StartDeviceWorkerOptions<unknown>>,
    "module" | "data" | "memory" | "transport" | "channel"
  > = {},
): DeviceWorkerHandle<{ byte: number }, Stats> {
  return startDeviceWorker<{ byte: number }, Stats>({
    module: FILL_DEVICE,
    data,
    name: `fill ${data.byte}`,
    ...more,
    memory: memory.describe(),
    transport: "pci",
    channel: channel.describe(),
  });
}

/** Starts the driver worker on heap `heap`; its result words are [done, completed, bad]. */
export function driveFill(
  handle: DeviceWorkerHandle,
  channel: DeviceChannel,
  o: { count: number; depth: number; length: number; byte: number; heap: number; timeoutMs?: number },
): { worker: Worker; result: Int32Array } {
  const result = new Int32Array(new SharedArrayBuffer(12));
  const worker = new Worker(DRIVER, {
    workerData: {
      ...o,
      memory: memory.describe(),
      channel: channel.describe(),
      notifyFd: handle.notifyEventFds[0]!.fd,
      result: result.buffer,
    },
  });
  return { worker, result };
}

/** A driver on this thread (every register access a synchronous channel call); memory at `heap`. */
export function mainThreadDriver(
  handle: DeviceWorkerHandle,
  channel: DeviceChannel,
  heap: number,
): VirtioDriverSimulator {
  const transport = new PciDriverTransport(new ChannelPciFunction(channel));
  transport.notify = () => handle.notifyEventFds[0]!.write(1);
  const sim = new VirtioDriverSimulator({ transport, memory, heap: { address: heap, size: 1 << 20 } });
  sim.init({ queueSize: 16 });
  return sim;
}
