// virtioBlkPciDevice without KVM: a stand-in machine context (the VM's memory, no-op
// ioeventfd / irqfd registration, a GSI counter) and a driver on this thread over the
// device's register channel (its doorbell writes trap to the worker). What the machine's
// controller sees: the disk's id, kind, description, tuning and its virtio-blk counters.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DeviceChannel, GuestMemory, GuestRegion, type Vm } from "@tskvm/kvm-core";
import type { GsiRouter, MachineDeviceContext } from "@tskvm/machine-x86";
import { PciDriverTransport, VirtioDriverSimulator } from "@tskvm/virtio/testing";
import { afterAll, describe, expect, it } from "vitest";
import {
  BLK_DEFAULT_POLL_US,
  type BlkDeviceStats,
  ChannelPciFunction,
  virtioBlkPciDevice,
} from "../dist/index.js";
import { BlkTestDriver, header, pattern, sameBytes } from "./driver.js";

const dir = mkdtempSync(join(tmpdir(), "virtio-blk-pci-"));
const region = GuestRegion.allocate(0, 16 << 20);
const memory = new GuestMemory([region]);
afterAll(() => {
  region.release();
  rmSync(dir, { recursive: true, force: true });
});

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

describe("virtioBlkPciDevice", () => {
  it("hands its id, kind, description, queues and tuning to the machine; control.stats() reports the disk's counters", async () => {
    const path = join(dir, "disk.img");
    const disk = pattern(1 << 20, 5);
    writeFileSync(path, disk);
    const failures: string[] = [];
    const factory = virtioBlkPciDevice({
      path,
      format: "raw",
      readOnly: true,
      queues: 2,
      id: "disk0",
      tuning: { iops: { rate: 100_000 } },
    });
    const device = await factory(fakeContext(failures));
    const control = device.control!;
    expect(control).toMatchObject({ id: "disk0", kind: "virtio-blk", description: `${path},ro,queues=2` });

    const { channel: described } = device.handler!.data as {
      channel: Parameters<typeof DeviceChannel.fromDescriptor>[0];
    };
    const transport = new PciDriverTransport(new ChannelPciFunction(DeviceChannel.fromDescriptor(described)));
    const sim = new VirtioDriverSimulator({ transport, memory, heap: { address: 1 << 20, size: 8 << 20 } });
    const negotiated = sim.init({ queueSize: 16 });
    expect(negotiated & (1n << 12n)).toBe(1n << 12n); // VIRTIO_BLK_F_MQ
    const drivers = [0, 1].map((q) => new BlkTestDriver(sim.queue(q), memory, sim.allocator));
    for (const [q, d] of drivers.entries()) {
      d.submit([{ data: header(0, q * 8) }, { length: 4096 }, { length: 1 }]);
      d.kick();
    }
    for (const [q, d] of drivers.entries()) {
      const deadline = Date.now() + 5000;
      let done = d.reap();
      while (done.length === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 5));
        done = d.reap();
      }
      expect(done).toHaveLength(1);
      expect(sameBytes(done[0]!.data, disk.subarray(q * 4096, (q + 1) * 4096))).toBe(true);
    }
    const report = await control.stats();
    expect(report).toMatchObject({ id: "disk0", kind: "virtio-blk" });
    expect(report.thread.tuning).toMatchObject({ iops: { rate: 100_000 } });
    expect(report.thread.poll?.maxUs).toBe(BLK_DEFAULT_POLL_US); // polls by default
    const stats = report.device as unknown as BlkDeviceStats;
    expect(stats).toMatchObject({
      queues: 2,
      completed: 2,
      bytesRead: 8192,
      requests: { read: 2 },
      errors: { ioerr: 0, unsupp: 0, malformed: 0 },
    });
    expect(stats.latency.count).toBe(2);
    await device.detach?.();
    expect(failures).toEqual([]);
  });

  it("a bandwidth limit holds the disk's reads to its rate: the worker counts the disk's bytes", async () => {
    const path = join(dir, "slow.img");
    writeFileSync(path, pattern(1 << 20, 6));
    const failures: string[] = [];
    // 40 KiB/s with a 4 KiB bucket: six 4 KiB reads need at least (6 - 1) × 0.1 s.
    const factory = virtioBlkPciDevice({
      path,
      format: "raw",
      readOnly: true,
      tuning: { bandwidth: { rate: 40 * 1024, burst: 4096 } },
      pollUs: 0,
    });
    const device = await factory(fakeContext(failures));
    const { channel: described } = device.handler!.data as {
      channel: Parameters<typeof DeviceChannel.fromDescriptor>[0];
    };
    const transport = new PciDriverTransport(new ChannelPciFunction(DeviceChannel.fromDescriptor(described)));
    const sim = new VirtioDriverSimulator({ transport, memory, heap: { address: 1 << 20, size: 8 << 20 } });
    sim.init({ queueSize: 16 });
    const d = new BlkTestDriver(sim.queue(0), memory, sim.allocator);
    const started = performance.now();
    let done = 0;
    for (let i = 0; i < 6; i++) {
      d.submit([{ data: header(0, i * 8) }, { length: 4096 }, { length: 1 }]);
      d.kick();
      const deadline = Date.now() + 10_000;
      while (done <= i && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 2));
        done += d.reap().length;
      }
    }
    const elapsed = performance.now() - started;
    expect(done).toBe(6);
    expect(elapsed).toBeGreaterThan(400);
    const report = await device.control!.stats();
    expect(report.device).toMatchObject({ bytesRead: 6 * 4096 });
    expect(report.thread.throttledMs).toBeGreaterThan(0);
    expect(report.thread.poll).toEqual({ maxUs: 0, windowUs: 0 }); // pollUs 0: off
    await device.detach?.();
    expect(failures).toEqual([]);
  });
});
