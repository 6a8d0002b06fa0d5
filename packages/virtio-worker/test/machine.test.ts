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

  it("control: id, kind and description, stats without blocking, pause / resume, tune, a start tuning", async () => {
    const failures: string[] = [];
    let wake: ((queue: number) => void) | undefined;
    const device = await workerPciDevice({
      module: FILL_DEVICE,
      data: { byte: 0x4d },
      name: "fill",
      id: "fill0",
      kind: "fill",
      description: "a test device",
      tuning: { iops: { rate: 1000 } },
      onStart: (w) => {
        wake = w;
      },
    })(fakeContext(failures));
    const control = device.control!;
    expect([control.id, control.kind, control.description]).toEqual(["fill0", "fill", "a test device"]);
    const report = await control.stats();
    expect(report).toMatchObject({
      id: "fill0",
      kind: "fill",
      thread: { held: false, tuning: { iops: { rate: 1000, burst: 100 } } },
      device: { served: 0, closed: false },
    });
    expect(report.thread.tid).toBeGreaterThan(0);
    // Plain JSON: it crosses a socket as it is.
    expect(JSON.parse(JSON.stringify(report))).toEqual(report);
    expect(await control.tune({ iops: null, nice: 2 })).toEqual({ nice: 2 });
    await control.pause();
    expect((await control.stats()).thread.held).toBe(true);
    const { channel: described } = device.handler!.data as {
      channel: Parameters<typeof DeviceChannel.fromDescriptor>[0];
    };
    const transport = new PciDriverTransport(new ChannelPciFunction(DeviceChannel.fromDescriptor(described)));
    transport.notify = (queue: number) => wake?.(queue);
    const sim = new VirtioDriverSimulator({ transport, memory, heap: { address: 4 << 20, size: 1 << 20 } });
    sim.init({ queueSize: 16 });
    const q = sim.queue(0);
    q.submit({ writable: [8] });
    q.kick();
    await new Promise((r) => setTimeout(r, 100));
    expect(q.pollUsed()).toHaveLength(0); // held
    await control.resume();
    expect(await q.waitUsed(1, 3000)).toHaveLength(1);
    expect((await control.stats()).device).toMatchObject({ served: 1 });
    await device.detach?.();
    await expect(control.stats()).rejects.toThrow(/has exited/);
    expect(failures).toEqual([]);
  });

  it("a default id is the name, and the kind 'virtio'", async () => {
    const device = await workerPciDevice({ module: FILL_DEVICE, data: { byte: 1 }, name: "plain" })(
      fakeContext([]),
    );
    expect([device.control?.id, device.control?.kind, device.control?.description]).toEqual([
      "plain",
      "virtio",
      "plain",
    ]);
    await device.detach?.();
  });
});
