import { describe, expect, it } from "vitest";
import {
  DeviceStatus,
  INTERRUPT_CONFIG,
  INTERRUPT_QUEUE,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
} from "../src/index.js";
import { ECHO_DEVICE_TYPE, ECHO_F_REVERSE } from "./echo-device.js";
import { mmioRig, pciRig, str, text } from "./rigs.js";

const rigs = {
  "pci + MSI-X": () => pciRig(),
  "pci + INTx": () => pciRig({ useMsix: false }),
  mmio: () => mmioRig(),
};

describe.each(Object.entries(rigs))("echo device end to end over %s", (_name, make) => {
  it("initialises, echoes direct and indirect chains, interrupts, reads config", () => {
    const { sim, device, irq, transport } = make();
    expect(sim.transport.deviceType()).toBe(ECHO_DEVICE_TYPE);
    const f = sim.init();
    expect(f & VIRTIO_F_VERSION_1).toBe(VIRTIO_F_VERSION_1);
    expect(f & ECHO_F_REVERSE).toBe(ECHO_F_REVERSE);
    expect(device.activations).toBe(1);
    expect(device.ctx?.queues.map((q) => [q.index, q.queue.size])).toEqual([
      [0, 256],
      [1, 64],
    ]);
    expect(transport.status).toBe(
      DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK,
    );

    const q0 = sim.queue(0);
    const a = q0.submit({ readable: [text("hello, "), text("world")], writable: [5, 20] });
    const b = q0.submit({ readable: [text("indirect!")], writable: [9], indirect: true });
    q0.kick();
    const used = q0.pollUsed();
    expect(used.map((u) => [u.id, u.len, str(u.written)])).toEqual([
      [a, 12, "hello, world"],
      [b, 9, "indirect!"],
    ]);
    expect(q0.freeDescriptors).toBe(256);

    const q1 = sim.queue(1);
    q1.submit({ readable: [text("abc")], writable: [3] });
    q1.kick();
    expect(str(q1.pollUsed()[0]!.written)).toBe("cba");

    // Interrupts: one per kick on the queue's vector (MSI-X) or the shared line (INTx / mmio).
    if (sim.transport.msixVectors > 0) {
      expect(irq.count(q0.vector)).toBe(1);
      expect(irq.count(q1.vector)).toBe(1);
      expect(q0.vector).not.toBe(q1.vector);
    } else {
      expect(irq.level).toBe(true);
      expect(sim.takeInterruptStatus() & INTERRUPT_QUEUE).toBe(INTERRUPT_QUEUE);
      expect(irq.level).toBe(false);
    }

    // Device config: generation-consistent read, a driver write, a device-side change.
    const cfg = new DataView(sim.readConfig(0, 8).buffer);
    expect(cfg.getUint32(0, true)).toBe(3);
    sim.writeConfig(4, Uint8Array.of(1, 2, 3, 4));
    sim.writeConfig(0, Uint8Array.of(9)); // read-only word: ignored by the device
    const cfg2 = new DataView(sim.readConfig(0, 8).buffer);
    expect(cfg2.getUint32(0, true)).toBe(3);
    expect(cfg2.getUint32(4, true)).toBe(0x04030201);
    const gen = sim.transport.configGeneration();
    irq.clear();
    device.setScratch(77);
    expect(sim.transport.configGeneration()).toBe(
      (gen + 1) & (sim.transport.kind === "pci" ? 0xff : 0xffffffff),
    );
    expect(new DataView(sim.readConfig(4, 4).buffer).getUint32(0, true)).toBe(77);
    if (sim.transport.msixVectors > 0) expect(irq.count(0)).toBe(1);
    // The config bit is in the ISR with MSI-X too (§4.1.4.5.1); reading acknowledges it.
    expect(sim.takeInterruptStatus() & INTERRUPT_CONFIG).toBe(INTERRUPT_CONFIG);
  });

  it("runs thousands of requests through the 16-bit wrap, with EVENT_IDX", () => {
    const { sim, device } = make();
    sim.init({ queueSize: 16 });
    expect(sim.eventIdx).toBe(true);
    const q = sim.queue(0);
    let kicks = 0;
    for (let i = 0; i < 70_000 / 7; i++) {
      const batch = [];
      for (let j = 0; j < 7; j++) {
        const n = (i * 7 + j) % 251;
        batch.push({
          n,
          head: q.submit({ readable: [new Uint8Array(3).fill(n)], writable: [3], indirect: j % 2 === 0 }),
        });
      }
      if (q.kickIfNeeded()) kicks++;
      const used = q.pollUsed();
      expect(used.map((u) => u.id)).toEqual(batch.map((b) => b.head));
      for (const [k, u] of used.entries()) expect(u.written[2]).toBe(batch[k]!.n);
      q.setUsedEvent(q.lastUsed);
    }
    expect(device.completed).toBe(70_000);
    expect(kicks).toBe(10_000);
    expect(q.lastUsed).toBe(70_000 & 0xffff);
  });

  it("without EVENT_IDX, suppresses interrupts on VIRTQ_AVAIL_F_NO_INTERRUPT", () => {
    const { sim, irq } = make();
    sim.init({ features: VIRTIO_F_VERSION_1 });
    expect(sim.eventIdx).toBe(false);
    const q = sim.queue(0);
    q.setAvailFlags(1);
    q.submit({ readable: [text("x")], writable: [1] });
    q.kick();
    expect(q.pollUsed()).toHaveLength(1);
    expect(irq.vectors.size).toBe(0);
    expect(irq.raises).toBe(0);
  });

  it("resets and comes back", () => {
    const { sim, device, hooks } = make();
    sim.init();
    expect(hooks.live.size).toBe(2);
    sim.reset();
    expect(device.resets).toBeGreaterThanOrEqual(2); // the first negotiate resets too
    expect(device.ctx).toBeUndefined();
    expect(hooks.live.size).toBe(0);
    sim.init({ features: VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX });
    const q = sim.queue(0);
    q.submit({ readable: [text("again")], writable: [5] });
    q.kick();
    expect(str(q.pollUsed()[0]!.written)).toBe("again");
  });

  it("a hostile avail index marks the device DEVICE_NEEDS_RESET and notifies the driver", () => {
    const { sim, device, irq } = make();
    sim.init();
    const q = sim.queue(1);
    q.setAvailIdx(1000);
    irq.clear();
    q.kick();
    expect(device.fatal?.kind).toBe("InvalidAvailRingIndex");
    expect(sim.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(DeviceStatus.DEVICE_NEEDS_RESET);
    if (sim.transport.msixVectors > 0) expect(irq.count(0)).toBe(1);
    else expect(sim.takeInterruptStatus() & INTERRUPT_CONFIG).toBe(INTERRUPT_CONFIG);
    // Further kicks are ignored; a reset brings the device back.
    const before = device.completed;
    sim.queue(0).submit({ readable: [text("x")] });
    sim.queue(0).kick();
    expect(device.completed).toBe(before);
    sim.init();
    expect(sim.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
  });

  it("fails malformed chains with length 0 and keeps serving", () => {
    const { sim, device } = make();
    sim.init();
    const q = sim.queue(0);
    q.writeDescriptor(200, { address: 0x1000, length: 4, flags: 1, next: 200 }); // self-loop
    q.publish(200);
    const ok = q.submit({ readable: [text("fine")], writable: [4] });
    q.kick();
    const used = q.pollUsed();
    expect(used.map((u) => [u.id, u.len])).toEqual([
      [200, 0],
      [ok, 4],
    ]);
    expect(device.failed.map((e) => e.kind)).toEqual(["ChainTooLong"]);
    expect(sim.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
  });
});
