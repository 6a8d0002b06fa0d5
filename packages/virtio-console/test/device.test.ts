import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VirtioDeviceId,
} from "@tskvm/virtio";
import { describe, expect, it } from "vitest";
import {
  CONSOLE_RECEIVEQ,
  CONSOLE_TRANSMITQ,
  VIRTIO_CONSOLE_F_MULTIPORT,
  VIRTIO_CONSOLE_F_SIZE,
  VirtioConsoleDevice,
} from "../src/index.js";
import { bytes, consoleRig, text } from "./rig.js";

function pattern(n: number, seed = 0): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (Math.imul(i + seed, 0x9e3779b1) >>> 24) & 0xff;
  return out;
}

describe("virtio-console device", () => {
  it("is device 3 with two queues, F_SIZE offered, MULTIPORT not", () => {
    const d = new VirtioConsoleDevice();
    expect(d.deviceType).toBe(VirtioDeviceId.CONSOLE);
    expect(d.queueMaxSizes).toEqual([256, 256]);
    expect(d.features & VIRTIO_CONSOLE_F_SIZE).toBe(VIRTIO_CONSOLE_F_SIZE);
    expect(d.features & VIRTIO_CONSOLE_F_MULTIPORT).toBe(0n);
    expect(new VirtioConsoleDevice({ size: false }).features & VIRTIO_CONSOLE_F_SIZE).toBe(0n);
    expect(() => new VirtioConsoleDevice({ queueSize: 3 })).toThrow(RangeError);
    expect(() => new VirtioConsoleDevice({ cols: 70000 })).toThrow(RangeError);
    const rig = consoleRig();
    expect(rig.sim.features & VIRTIO_CONSOLE_F_MULTIPORT).toBe(0n);
    expect(rig.sim.features & VIRTIO_CONSOLE_F_SIZE).toBe(VIRTIO_CONSOLE_F_SIZE);
    expect(rig.device.activated).toBe(true);
  });

  for (const transport of ["pci", "mmio"] as const)
    for (const eventIdx of [true, false])
      for (const indirect of [false, true])
        it(`output in order over many chains and buffers (${transport}, event idx ${eventIdx}, indirect ${indirect})`, () => {
          const features =
            VIRTIO_F_VERSION_1 |
            VIRTIO_CONSOLE_F_SIZE |
            VIRTIO_F_INDIRECT_DESC |
            (eventIdx ? VIRTIO_F_EVENT_IDX : 0n);
          const rig = consoleRig({ transport, features });
          const tx = rig.sim.queue(CONSOLE_TRANSMITQ);
          const all = pattern(40_000, 7);
          let at = 0;
          let round = 0;
          const expected: number[] = [];
          while (at < all.length) {
            // Several chains per kick, 1..4 buffers each, of varied lengths.
            for (let c = 0; c < 1 + (round % 5) && at < all.length; c++) {
              const bufs: Uint8Array[] = [];
              for (let b = 0; b < 1 + ((round + c) % 4) && at < all.length; b++) {
                const len = Math.min(all.length - at, 1 + ((round * 131 + c * 17 + b * 7) % 700));
                bufs.push(all.subarray(at, at + len));
                at += len;
              }
              expected.push(tx.submit({ readable: bufs, indirect }));
            }
            tx.kick();
            round++;
          }
          const used = tx.pollUsed();
          expect(used.map((u) => u.id)).toEqual(expected);
          for (const u of used) expect(u.len).toBe(0);
          expect(rig.output()).toEqual(all);
          expect(rig.device.stats.txChains).toBe(expected.length);
          expect(rig.device.stats.outputBytes).toBe(all.length);
          expect(rig.needsReset()).toBe(false);
        });

  it("input is delivered exactly into the guest's buffers, split across buffers and chains", () => {
    const rig = consoleRig();
    const rx = rig.sim.queue(CONSOLE_RECEIVEQ);
    // Posted before there is any input: they wait.
    const a = rx.submit({ writable: [3, 4] });
    const b = rx.submit({ writable: [5] });
    rx.kick();
    expect(rx.pollUsed()).toEqual([]);
    expect(rig.device.write(bytes("hello, console"))).toBe(14);
    expect(rig.device.serveQueue(CONSOLE_RECEIVEQ).bytes).toBe(12);
    const used = rx.pollUsed();
    expect(used.map((u) => [u.id, u.len, text(u.written)])).toEqual([
      [a, 7, "hello, "],
      [b, 5, "conso"],
    ]);
    expect(rig.device.inputBuffered).toBe(2);
    // A chain bigger than what is left gets exactly the rest.
    const c = rx.submit({ writable: [64] });
    rx.kick(); // the doorbell serves it
    expect(rx.pollUsed().map((u) => [u.id, u.len, text(u.written)])).toEqual([[c, 2, "le"]]);
    expect(rig.device.inputBuffered).toBe(0);
    expect(rig.device.stats.inputBytes).toBe(14);
  });

  it("input leaves guest memory around the buffers untouched", () => {
    const rig = consoleRig();
    const rx = rig.sim.queue(CONSOLE_RECEIVEQ);
    const mem = rig.memory;
    // A hand-built chain: two writable buffers with guard bytes around each.
    const buf1 = 0x700000;
    const buf2 = 0x700100;
    mem.fill(buf1 - 16, 0x300, 0x5a);
    const head = 0;
    rx.writeDescriptor(0, {
      address: buf1,
      length: 5,
      flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
      next: 1,
    });
    rx.writeDescriptor(1, { address: buf2, length: 5, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    rx.publish(head);
    rig.device.write(bytes("0123456789abc"));
    rig.device.serveQueue(CONSOLE_RECEIVEQ);
    const [u] = rx.pollUsed();
    expect(u?.len).toBe(10);
    expect(text(mem.read(buf1, 5))).toBe("01234");
    expect(text(mem.read(buf2, 5))).toBe("56789");
    for (const [from, to] of [
      [buf1 - 16, buf1],
      [buf1 + 5, buf2],
      [buf2 + 5, buf2 + 0x100],
    ] as const)
      expect(mem.read(from, to - from).every((x) => x === 0x5a)).toBe(true);
    expect(rig.device.inputBuffered).toBe(3);
  });

  it("write applies backpressure: a bounded buffer, the count accepted, room again once delivered", () => {
    const rig = consoleRig({ inputCapacity: 1000 });
    const d = rig.device;
    const big = pattern(2500, 3);
    expect(d.write(big)).toBe(1000);
    expect(d.write(big)).toBe(0);
    expect(d.inputSpace).toBe(0);
    expect(d.stats.inputDropped).toBe(4000);
    const rx = rig.sim.queue(CONSOLE_RECEIVEQ);
    const received: Uint8Array[] = [];
    let sent = 1000;
    // The caller retries what was refused; the ring wraps many times.
    for (let round = 0; received.reduce((n, r) => n + r.length, 0) < big.length && round < 100; round++) {
      rx.submit({ writable: [333] });
      rx.submit({ writable: [100, 77] });
      rx.kick();
      d.serveQueue(CONSOLE_RECEIVEQ);
      for (const u of rx.pollUsed()) received.push(u.written.slice(0, u.len));
      if (sent < big.length) sent += d.write(big.subarray(sent));
    }
    const all = new Uint8Array(received.reduce((n, r) => n + r.length, 0));
    let at = 0;
    for (const r of received) {
      all.set(r, at);
      at += r.length;
    }
    expect(all).toEqual(big);
  });

  it("serve bounds: requests and bytes per call, the rest on the next call", () => {
    const rig = consoleRig({ maxChainsPerCall: 3, maxBytesPerCall: 1000 });
    const rx = rig.sim.queue(CONSOLE_RECEIVEQ);
    for (let i = 0; i < 10; i++) rx.submit({ writable: [100] });
    rig.device.write(pattern(1000));
    const r1 = rig.device.serveQueue(CONSOLE_RECEIVEQ);
    expect(r1).toMatchObject({ completed: 3, bytes: 300, more: true });
    const r2 = rig.device.serveQueue(CONSOLE_RECEIVEQ, { requests: 2 });
    expect(r2).toMatchObject({ completed: 2, bytes: 200, more: true });
    // A nonsensical budget still bounds the call (one chain).
    expect(rig.device.serveQueue(CONSOLE_RECEIVEQ, { requests: Number.NaN })).toMatchObject({
      completed: 1,
      more: true,
    });
    expect(rig.device.serveQueue(CONSOLE_RECEIVEQ, { requests: 0 })).toMatchObject({
      completed: 1,
      more: true,
    });
    // A transmit chain of 2500 bytes: 1000 per call, streamed in order.
    const tx = rig.sim.queue(CONSOLE_TRANSMITQ);
    const out = pattern(2500, 9);
    tx.submit({ readable: [out.subarray(0, 1200), out.subarray(1200)] });
    const t1 = rig.device.serveQueue(CONSOLE_TRANSMITQ);
    expect(t1).toMatchObject({ bytes: 1000, more: true, completed: 0 });
    expect(rig.device.inProgress).toBe(true);
    rig.device.serveQueue(CONSOLE_TRANSMITQ);
    const t3 = rig.device.serveQueue(CONSOLE_TRANSMITQ);
    expect(t3).toMatchObject({ bytes: 500, completed: 1 });
    expect(rig.output().subarray(0, 2500)).toEqual(out);
  });

  it("a huge transmit chain is streamed in bounded chunks, never allocated whole", () => {
    // 64 buffers of 64 MiB all pointing at the same 64 MiB of RAM: a 4 GiB - 64 MiB chain.
    const rig = consoleRig({ memorySize: 80 << 20, maxBytesPerCall: 64 << 20, queueSize: 64 });
    const tx = rig.sim.queue(CONSOLE_TRANSMITQ);
    let largest = 0;
    let total = 0;
    rig.device.onOutput = (b) => {
      largest = Math.max(largest, b.length);
      total += b.length;
    };
    const n = 63;
    const len = 64 << 20;
    for (let i = 0; i < n; i++)
      tx.writeDescriptor(i, {
        address: 0x1000000,
        length: len,
        flags: i < n - 1 ? VIRTQ_DESC_F_NEXT : 0,
        next: i + 1,
      });
    tx.publish(0);
    let calls = 0;
    while (rig.device.serveQueue(CONSOLE_TRANSMITQ).more) calls++;
    expect(total).toBe(n * len);
    expect(largest).toBe(64 << 10);
    expect(calls).toBe(n - 1);
    expect(tx.pollUsed().length).toBe(1);
  }, 120_000);

  it("refuses transmit chains with writable buffers and receive chains with readable ones", () => {
    const rig = consoleRig();
    const tx = rig.sim.queue(CONSOLE_TRANSMITQ);
    const rx = rig.sim.queue(CONSOLE_RECEIVEQ);
    const t1 = tx.submit({ readable: [bytes("ab")], writable: [4] });
    const t2 = tx.submit({ writable: [4] });
    const t3 = tx.submit({ readable: [new Uint8Array(0)] });
    const t4 = tx.submit({ readable: [bytes("ok")] });
    tx.kick();
    expect(tx.pollUsed().map((u) => [u.id, u.len])).toEqual([
      [t1, 0],
      [t2, 0],
      [t3, 0],
      [t4, 0],
    ]);
    expect(text(rig.output())).toBe("ok");
    expect(rig.device.stats).toMatchObject({ txChains: 1, txFailed: 3 });
    rig.device.write(bytes("xyz"));
    const r1 = rx.submit({ readable: [bytes("no")], writable: [8] });
    const r2 = rx.submit({ writable: [0] });
    const r3 = rx.submit({ writable: [8] });
    rx.kick();
    expect(rx.pollUsed().map((u) => [u.id, u.len, text(u.written)])).toEqual([
      [r1, 0, ""],
      [r2, 0, ""],
      [r3, 3, "xyz"],
    ]);
  });

  it("F_SIZE: cols/rows in config space; resize raises a config interrupt and bumps the generation", () => {
    const rig = consoleRig({ cols: 132, rows: 43 });
    const cfg = rig.sim.readConfig(0, 12);
    const dv = new DataView(cfg.buffer, cfg.byteOffset);
    expect([
      dv.getUint16(0, true),
      dv.getUint16(2, true),
      dv.getUint32(4, true),
      dv.getUint32(8, true),
    ]).toEqual([132, 43, 1, 0]);
    const gen = rig.sim.transport.configGeneration();
    const before = rig.irq.count(0);
    rig.device.resize(200, 60);
    expect(rig.irq.count(0)).toBe(before + 1);
    expect(rig.sim.transport.configGeneration()).not.toBe(gen);
    const c2 = rig.sim.readConfig(0, 4);
    expect([c2[0]! | (c2[1]! << 8), c2[2]! | (c2[3]! << 8)]).toEqual([200, 60]);
    // Same size: nothing to say.
    rig.device.resize(200, 60);
    expect(rig.irq.count(0)).toBe(before + 1);
    // Writes to the config space are ignored.
    rig.sim.writeConfig(0, new Uint8Array([1, 2, 3, 4]));
    expect(rig.device.cols).toBe(200);
    expect(() => rig.device.resize(-1, 5)).toThrow(RangeError);
    // Over mmio (INTx-style): the config-change bit in InterruptStatus.
    const m = consoleRig({ transport: "mmio" });
    m.sim.takeInterruptStatus();
    m.device.resize(90, 30);
    expect(m.sim.takeInterruptStatus() & 2).toBe(2);
  });

  it("resize without F_SIZE negotiated or before activation updates config only", () => {
    const rig = consoleRig({ features: VIRTIO_F_VERSION_1 });
    const before = rig.irq.count(0);
    rig.device.resize(100, 50);
    expect(rig.irq.count(0)).toBe(before);
    expect(rig.device.stats.configChanges).toBe(0);
    const d = new VirtioConsoleDevice();
    d.resize(10, 10);
    expect([d.cols, d.rows]).toEqual([10, 10]);
  });

  it("interrupts only when the driver wants them (EVENT_IDX used_event, NO_INTERRUPT)", () => {
    const rig = consoleRig();
    const tx = rig.sim.queue(CONSOLE_TRANSMITQ);
    tx.setUsedEvent(5);
    const base = rig.irq.count(tx.vector);
    for (let i = 0; i < 5; i++) {
      tx.submit({ readable: [bytes("x")] });
      tx.kick();
    }
    expect(rig.irq.count(tx.vector)).toBe(base);
    tx.submit({ readable: [bytes("y")] });
    tx.kick(); // used idx goes 5 → 6: crosses used_event 5
    expect(rig.irq.count(tx.vector)).toBe(base + 1);
    const m = consoleRig({ features: VIRTIO_F_VERSION_1 });
    const mtx = m.sim.queue(CONSOLE_TRANSMITQ);
    mtx.setAvailFlags(1);
    const b2 = m.irq.count(mtx.vector);
    mtx.submit({ readable: [bytes("z")] });
    mtx.kick();
    expect(m.irq.count(mtx.vector)).toBe(b2);
    expect(text(m.output())).toBe("z");
  });

  it("reset drops the partial chain and queues; re-activation works; input is kept", () => {
    const rig = consoleRig({ maxBytesPerCall: 4 });
    const tx = rig.sim.queue(CONSOLE_TRANSMITQ);
    tx.submit({ readable: [bytes("abcdefgh")] });
    tx.kick();
    expect(rig.device.inProgress).toBe(true);
    rig.device.write(bytes("kept"));
    rig.sim.reset();
    expect(rig.device.activated).toBe(false);
    expect(rig.device.inProgress).toBe(false);
    expect(rig.device.serveQueue(CONSOLE_TRANSMITQ)).toMatchObject({ bytes: 0, completed: 0 });
    rig.sim.init();
    expect(rig.device.activated).toBe(true);
    const tx2 = rig.sim.queue(CONSOLE_TRANSMITQ);
    tx2.submit({ readable: [bytes("1234")] });
    tx2.kick();
    expect(text(rig.output())).toBe("abcd1234");
    const rx = rig.sim.queue(CONSOLE_RECEIVEQ);
    rx.submit({ writable: [10] });
    rx.kick();
    expect(text(rx.pollUsed()[0]!.written)).toBe("kept");
  });

  it("a broken ring marks the device NEEDS_RESET; a driver reset brings it back", () => {
    const rig = consoleRig();
    const tx = rig.sim.queue(CONSOLE_TRANSMITQ);
    tx.setAvailIdx(1000); // more than the queue size ahead
    tx.kick();
    expect(rig.needsReset()).toBe(true);
    expect(rig.device.serveQueue(CONSOLE_TRANSMITQ).bytes).toBe(0);
    rig.sim.reset();
    rig.sim.init();
    const tx2 = rig.sim.queue(CONSOLE_TRANSMITQ);
    tx2.submit({ readable: [bytes("back")] });
    tx2.kick();
    expect(text(rig.output())).toBe("back");
    expect(rig.needsReset()).toBe(false);
  });

  it("an onOutput that throws marks NEEDS_RESET, nothing escapes", () => {
    const rig = consoleRig();
    rig.device.onOutput = () => {
      throw new Error("host sink failed");
    };
    const tx = rig.sim.queue(CONSOLE_TRANSMITQ);
    tx.submit({ readable: [bytes("x")] });
    expect(() => tx.kick()).not.toThrow();
    expect(rig.needsReset()).toBe(true);
  });

  it("queueNotify reports a backlog", () => {
    const seen: number[] = [];
    const rig = consoleRig({ maxChainsPerCall: 1, onBacklog: (i) => seen.push(i) });
    const tx = rig.sim.queue(CONSOLE_TRANSMITQ);
    tx.submit({ readable: [bytes("a")] });
    tx.submit({ readable: [bytes("b")] });
    tx.kick();
    expect(seen).toEqual([CONSOLE_TRANSMITQ]);
    rig.device.serveQueue(CONSOLE_TRANSMITQ);
    expect(text(rig.output())).toBe("ab");
  });
});
