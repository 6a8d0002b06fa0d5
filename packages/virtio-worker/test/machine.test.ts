// workerPciDevice without KVM: a stand-in machine context (the VM's memory, no-op
// ioeventfd/irqfd registration, a GSI counter) and a driver on this thread over the
// device's register channel. `onStart` hands the caller `wake(queue)`, which writes
// the queue's notify eventfd as a doorbell would.
import { DeviceChannel, GuestMemory, GuestRegion, type Vm } from "@tskvm/kvm-core";
import type { GsiRouter, MachineDeviceContext } from "@tskvm/machine-x86";
import { PciDriverTransport, VirtioDriverSimulator } from "@tskvm/virtio/testing";
import { afterAll, describe, expect, it } from "vitest";
import { ChannelPciFunction, workerPciDevice } from "../dist/index.js";

const FILL_DEVICE = new URL("./fixtures/fill-device.mjs", import.meta.url).href;

const region = GuestRegion.allocate(0, 16 << 20);
const memory = new GuestMemory([region]);
afterAll(() => region.release());

function fakeContext(failures: string[]): MachineDeviceContext {
  let next = 24;
  const vm = {
    memory,
    registerIoeventfd: () => {},
    unregisterIoeventfd: () => {},
    registerIrqfd: () => {},
  } as unknown as Vm;
  const irq = { allocate: () => next++, release: () => {}, setMsi: () => {} } as unknown as GsiRouter;
  return { vm, irq, fail: (d) => failures.push(d) };
}

describe("workerPciDevice", () => {
  it("onStart gives the caller wake(queue): the worker serves the queue when woken", async () => {
    const failures: string[] = [];
    let wake: ((queue: number) => void) | undefined;
    const factory = workerPciDevice({
      module: FILL_DEVICE,
      data: { byte: 0x3c },
      name: "fill",
      onStart: (w) => {
        wake = w;
      },
    });
    const device = await factory(fakeContext(failures));
    expect(wake).toBeTypeOf("function");
    const { channel: described } = device.handler!.data as {
      channel: Parameters<typeof DeviceChannel.fromDescriptor>[0];
    };
    const channel = DeviceChannel.fromDescriptor(described);
    const transport = new PciDriverTransport(new ChannelPciFunction(channel));
    // The driver's doorbell is the caller's wake: no ioeventfd in this test.
    transport.notify = (queue: number) => wake?.(queue);
    const sim = new VirtioDriverSimulator({ transport, memory, heap: { address: 1 << 20, size: 1 << 20 } });
    sim.init({ queueSize: 16 });
    const q = sim.queue(0);
    q.submit({ writable: [32] });
    q.kick();
    const deadline = Date.now() + 5000;
    let used = q.pollUsed();
    while (used.length === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 5));
      used = q.pollUsed();
    }
    expect(used).toHaveLength(1);
    expect(used[0]?.len).toBe(32);
    expect(Buffer.from(used[0]?.written ?? []).every((b) => b === 0x3c)).toBe(true);
    await device.detach?.();
    // After the detach, wake is a no-op (the eventfds are closed), not a throw.
    expect(() => wake?.(0)).not.toThrow();
    expect(failures).toEqual([]);
  });
});
