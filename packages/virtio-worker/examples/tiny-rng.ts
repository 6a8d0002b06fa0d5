// A virtio entropy device (virtio 1.2 §5.4) as a package of its own would
// have it — device class, device module, and a program that serves it from a
// worker thread and reads 64 random bytes through a driver — in one file.
import { randomFillSync } from "node:crypto";
import { isMainThread } from "node:worker_threads";
import { DeviceChannel, GuestMemory, GuestRegion } from "@tskvm/kvm-core";
import { type ActivateContext, type VirtioDevice, VirtioDeviceId } from "@tskvm/virtio";
import { PciDriverTransport, VirtioDriverSimulator } from "@tskvm/virtio/testing";
import {
  ChannelPciFunction,
  defineDeviceModule,
  type ServeBudget,
  startDeviceWorker,
} from "@tskvm/virtio-worker";

// ---- 1. The device: what the guest sees; no threads, no KVM ----
export class TinyRngDevice implements VirtioDevice {
  readonly deviceType = VirtioDeviceId.ENTROPY;
  readonly queueMaxSizes = [256];
  readonly features = 0n;
  readonly configSize = 0; // virtio-rng has no configuration space
  served = 0;
  #ctx: ActivateContext | undefined;

  readConfig(): void {}
  writeConfig(): void {}
  activate(ctx: ActivateContext): void {
    this.#ctx = ctx;
  }
  reset(): void {
    this.#ctx = undefined;
  }

  /** Fills each chain's writable buffers; returns true when it stopped at the budget with chains left. */
  serve(index: number, budget: ServeBudget): boolean {
    const ctx = this.#ctx;
    const queue = ctx?.queues.find((q) => q.index === index)?.queue;
    if (!ctx || !queue) return false;
    let taken = 0;
    try {
      for (let chain = queue.popOrEnableNotification(); chain; chain = queue.popOrEnableNotification()) {
        // A chain with device-readable buffers asks nothing of an rng (§5.4.6.1): used length 0.
        const ok = chain.writableStart === 0;
        for (let i = 0; ok && i < chain.addresses.length; i++)
          for (const view of chain.memory.segments(chain.addresses[i]!, chain.lengths[i]!))
            for (let at = 0; at < view.length; at += 65536) randomFillSync(view.subarray(at, at + 65536));
        queue.addUsed(chain.head, ok ? chain.writableLength : 0);
        this.served++;
        if (++taken >= budget.requests || budget.shouldStop()) break;
      }
      const more = queue.enableNotification(); // stopped early: notifications back on, chains left?
      if (queue.needsNotification()) ctx.interrupt.signalQueue(index);
      return more;
    } catch (e) {
      ctx.needsReset(e as Error); // a broken ring: the driver must reset the device
      return false;
    }
  }
}

// ---- 2. The device module: what the worker loads (this file's default export) ----
export default defineDeviceModule({
  create(_data: Record<string, never>) {
    const device = new TinyRngDevice();
    return {
      device,
      serveQueue: (index, budget) => device.serve(index, budget),
      get served() {
        return device.served;
      },
      info: () => ({}),
      stats: () => ({ served: device.served }),
      close: () => {},
    };
  },
});

// ---- 3. A program: the device in a worker of its own, a driver on this thread ----
if (isMainThread) {
  const region = GuestRegion.allocate(0, 4 << 20); // 4 MiB of "guest RAM" (no KVM needed)
  const memory = new GuestMemory([region]);
  const channel = DeviceChannel.create(); // what vCPU threads forward register accesses through
  const rng = startDeviceWorker<Record<string, never>, { served: number }>({
    module: import.meta.url,
    data: {},
    name: "tiny-rng",
    memory: memory.describe(),
    transport: "pci",
    channel: channel.describe(),
  });
  const { pci } = await rng.ready;
  console.log(`PCI function ${pci?.function.vendorId.toString(16)}:${pci?.function.deviceId.toString(16)}`);

  const transport = new PciDriverTransport(new ChannelPciFunction(channel));
  transport.notify = (queue) => rng.notifyEventFds[queue]?.write(1); // what KVM's ioeventfd does
  const sim = new VirtioDriverSimulator({ transport, memory, heap: { address: 0x10000, size: 1 << 20 } });
  sim.init();
  const queue = sim.queue(0);
  queue.submit({ writable: [64] });
  queue.kick();
  const [used] = await queue.waitUsed(1);
  console.log(`${used?.len} random bytes: ${Buffer.from(used?.written ?? []).toString("hex")}`);

  const exit = await rng.stop();
  console.log(`served ${exit.stats?.served}`);
  channel.close();
  region.release();
}
