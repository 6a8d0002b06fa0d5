// The blk I/O worker without KVM: guest RAM from GuestRegion.allocate (native
// memory every thread maps), a driver in another worker that brings the device
// up through the DeviceChannel, notifies through the notify eventfd and waits on
// the irqfd. The main thread stays blocked while thousands of requests complete.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { DeviceChannel, EventFd, GuestMemory, GuestRegion, pollReadable } from "@tskvm/kvm-core";
import { DeviceStatus, INTERRUPT_QUEUE, VIRTIO_PCI_VENDOR_ID, VirtioPciTransport } from "@tskvm/virtio";
import {
  InterruptRecorder,
  MmioDriverTransport,
  PciDriverTransport,
  VirtioDriverSimulator,
} from "@tskvm/virtio/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BLK_PCI_HANDLER_MODULE,
  type BlkIoeventfdEvent,
  type BlkMsixEvent,
  ChannelMmioWindow,
  ChannelPciFunction,
  startBlkWorker,
  VirtioBlkDevice,
} from "../dist/index.js";
import { BlkTestDriver, type Completion, header, pattern, sameBytes } from "./driver.js";

const DISK_SEED = 11;
const DISK_SIZE = 8 << 20;
let dir = "";
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "virtio-blk-worker-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let disks = 0;
const freshDisk = (): string => {
  const path = join(dir, `disk-${disks++}.img`);
  writeFileSync(path, pattern(DISK_SIZE, DISK_SEED));
  return path;
};

const R = { DONE: 0, COMPLETED: 1, BAD: 2, TIMEOUTS: 3, STOP: 4 } as const;
const driverUrl = new URL("./fixtures/driver-worker.mjs", import.meta.url);

interface DriverReport {
  completed: number;
  bad: number;
  badDetails: string[];
  timeouts: number;
  features: string;
  capacity: number;
}

function startDriver(data: Record<string, unknown>): {
  worker: Worker;
  result: Int32Array;
  report: Promise<DriverReport>;
} {
  const shared = new SharedArrayBuffer(32);
  const worker = new Worker(driverUrl, { workerData: { ...data, result: shared } });
  const report = new Promise<DriverReport>((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", reject);
  });
  return { worker, result: new Int32Array(shared), report };
}

describe("the blk I/O worker, transport in the worker (pci over a DeviceChannel)", () => {
  it.each(["sync", "io_uring"] as const)(
    "serves thousands of requests from a driver worker while the main thread is blocked (aio=%s)",
    async (aio) => {
      const region = GuestRegion.allocate(0, 48 << 20);
      const memory = new GuestMemory([region]);
      const channel = DeviceChannel.create();
      const ioeventfds: (BlkIoeventfdEvent & { at: number })[] = [];
      const routes: (BlkMsixEvent & { at: number })[] = [];
      const bars: { index: number; address: number }[] = [];
      const handle = startBlkWorker({
        image: { path: freshDisk(), format: "raw", aio },
        memory: memory.describe(),
        transport: "pci",
        channel: channel.describe(),
        device: { serial: "worker-disk", queueSize: 128 },
        hooks: {
          ioeventfd: (e) => ioeventfds.push({ ...e, at: Date.now() }),
          msix: (e) => routes.push({ ...e, at: Date.now() }),
          barMoved: (index, address) => bars.push({ index, address }),
        },
      });
      const ready = await handle.ready;
      expect(ready.disk.size).toBe(DISK_SIZE);
      expect(ready.pci?.bars[0]?.size).toBeGreaterThan(0);
      expect(handle.configuration.limits.capacity).toBe(DISK_SIZE / 512);

      // The main thread is a channel client too (the worker serves it), through the handler module
      // machine-x86's vCPU workers load: Linux's first config read.
      const { createPciDevice } = (await import(
        BLK_PCI_HANDLER_MODULE
      )) as typeof import("@tskvm/virtio-worker/pci-handler");
      const fn = createPciDevice({ data: { channel: channel.describe() } });
      const id = new Uint8Array(4);
      fn.readConfig(0, id);
      expect(new DataView(id.buffer).getUint16(0, true)).toBe(VIRTIO_PCI_VENDOR_ID);
      expect(new DataView(id.buffer).getUint16(2, true)).toBe(0x1042);

      const count = 3000;
      const driver = startDriver({
        mode: "mixed",
        memory: memory.describe(),
        channel: channel.describe(),
        notifyFd: handle.notifyEventFds[0]!.fd,
        irqfd: handle.irqEventFds[1]!.fd,
        heap: { address: 0x10_0000, size: 40 << 20 },
        queueSize: 128,
        count,
        depth: 16,
        seed: 42,
        diskSeed: DISK_SEED,
      });
      // Block this thread synchronously until the driver is done: no event loop, no timers,
      // no message handling here while the requests go driver → eventfd → blk worker → irqfd.
      const t0 = Date.now();
      while (Atomics.load(driver.result, R.DONE) === 0 && Date.now() - t0 < 50_000)
        Atomics.wait(driver.result, R.DONE, 0, 500);
      const unblocked = Date.now();
      expect(Atomics.load(driver.result, R.DONE)).toBe(1);
      expect(Atomics.load(driver.result, R.COMPLETED)).toBe(count);
      expect(Atomics.load(driver.result, R.BAD)).toBe(0);
      // The worker adds a batch to its shared counter once the batch is over (the driver may see
      // the last completions a moment before).
      for (let i = 0; i < 100 && handle.completed < count; i++) Atomics.wait(driver.result, R.DONE, 1, 10);
      expect(handle.completed).toBe(count);

      const report = await driver.report;
      expect(report.badDetails).toEqual([]);
      expect(BigInt(`0x${report.features}`) & (1n << 29n)).toBe(1n << 29n); // EVENT_IDX negotiated
      // The VMM-side hooks (register the ioeventfd, route the MSI-X vectors) only ran once the
      // main thread was free again: they are not on the request path. Their messages come on the
      // worker's own port, which the event loop may serve after the driver's report: wait for them.
      for (let i = 0; i < 200 && (ioeventfds.length === 0 || routes.length < 2); i++)
        await new Promise((r) => setTimeout(r, 10));
      expect(ioeventfds.length).toBeGreaterThan(0);
      expect(ioeventfds[0]).toMatchObject({ action: "register", queue: 0, region: { space: "mmio" } });
      // The driver placed BAR 0 (as firmware or Linux would); the doorbell is at BAR 0 + 0x3000.
      const bar0 = bars.filter((b) => b.index === 0).pop()?.address ?? 0;
      expect(bar0).toBe(0xe000_0000);
      expect(ioeventfds[0]!.region.address).toBe(bar0 + 0x3000);
      expect(ioeventfds[0]!.eventFd).toBe(handle.notifyEventFds[0]);
      expect(routes.map((r) => r.vector).sort()).toEqual([0, 1]);
      expect(routes.every((r) => r.message !== null && r.irqfd !== undefined)).toBe(true);
      for (const e of [...ioeventfds, ...routes]) expect(e.at).toBeGreaterThanOrEqual(unblocked);

      const stats = handle.stats();
      expect(stats.completed).toBe(count);
      expect(stats.reads + stats.writes).toBe(count);
      expect(stats.batches).toBeLessThan(count);
      const exit = await handle.stop();
      expect(exit.error).toBeUndefined();
      expect(exit.queues[0]?.state).toMatchObject({
        nextAvail: count,
        nextUsed: count,
        size: 128,
        eventIdx: true,
      });
      await driver.worker.terminate();
      channel.close();
      region.release();
    },
  );

  it("stop() during heavy I/O returns promptly, and the process exits by itself", () => {
    const child = spawnSync(
      process.execPath,
      [new URL("./fixtures/stop-child.mjs", import.meta.url).pathname, freshDisk()],
      {
        encoding: "utf8",
        timeout: 30_000,
      },
    );
    expect(child.stderr).toBe("");
    expect(child.status).toBe(0);
    const out = JSON.parse(child.stdout.trim().split("\n").pop() ?? "{}") as {
      completedBeforeStop: number;
      stopMs: number;
      exitMs: number;
    };
    expect(out.completedBeforeStop).toBeGreaterThan(100);
    expect(out.stopMs).toBeLessThan(1000);
    expect(out.exitMs).toBeLessThan(5000);
  });

  it("a disk that cannot be opened fails ready with the disk error", async () => {
    const region = GuestRegion.allocate(0, 1 << 20);
    const handle = startBlkWorker({
      image: { path: join(dir, "missing.img") },
      memory: new GuestMemory([region]).describe(),
      transport: "pci",
    });
    await expect(handle.ready).rejects.toMatchObject({ code: "ENOENT" });
    const exit = await handle.exited;
    expect(exit.error?.code).toBe("ENOENT");
    region.release();
  });
});

describe("worker mode: the transport in the main thread, the queues in the I/O worker", () => {
  it("activate hands the queues over, reset takes them back, MSI-X and INTx interrupts come from the worker", async () => {
    const region = GuestRegion.allocate(0, 32 << 20);
    const memory = new GuestMemory([region]);
    const intx = EventFd.create({ nonBlocking: true });
    const handle = startBlkWorker({
      image: { path: freshDisk(), format: "raw" },
      memory: memory.describe(),
      transport: "none",
      intxFd: intx.fd,
    });
    await handle.ready;
    const device = new VirtioBlkDevice({ worker: handle });
    expect(device.configuration.limits.capacity).toBe(DISK_SIZE / 512);
    const irq = new InterruptRecorder();
    const pci = new VirtioPciTransport({ device, memory, msix: irq, intx: irq });
    const disk = pattern(DISK_SIZE, DISK_SEED);
    const header = (type: number, sector: number): Uint8Array => {
      const b = new Uint8Array(16);
      new DataView(b.buffer).setUint32(0, type, true);
      new DataView(b.buffer).setBigUint64(8, BigInt(sector), true);
      return b;
    };

    for (const useMsix of [true, false]) {
      const sim = new VirtioDriverSimulator({
        transport: new PciDriverTransport(pci, { useMsix }),
        memory,
        heap: { address: 0x10_0000, size: 16 << 20 },
      });
      sim.init({ queueSize: 64 });
      const q = sim.queue(0);
      for (let round = 0; round < 20; round++) {
        const sector = round * 8;
        const data = pattern(4096, round + (useMsix ? 100 : 200));
        disk.set(data, sector * 512);
        const irqfd = handle.irqEventFds[1]!;
        const fd = useMsix ? irqfd.fd : intx.fd;
        const complete = () => {
          let used = q.pollUsed();
          while (used.length < 1) {
            expect(pollReadable([fd], 5000)[0]).toBe(true);
            (useMsix ? irqfd : intx).read();
            used = q.pollUsed();
          }
          return used;
        };
        // Requests in flight together may complete in any order (§5.2): the read goes once the write is done.
        q.submit({ readable: [header(1, sector), data], writable: [1] });
        q.kick(); // the doorbell write: transport → device.queueNotify → the notify eventfd
        expect(complete().map((u) => u.len)).toEqual([1]);
        q.submit({ readable: [header(0, sector)], writable: [4096, 1] });
        q.kick();
        const used = complete();
        expect(used.map((u) => u.len)).toEqual([4097]);
        expect(sameBytes(used[0]!.written.subarray(0, 4096), data)).toBe(true);
        if (!useMsix) expect(sim.takeInterruptStatus() & INTERRUPT_QUEUE).toBe(INTERRUPT_QUEUE);
      }
      // Reset: the worker gives the queues back before reset() returns.
      sim.reset();
      expect(device.activated).toBe(false);
      expect(pci.status).toBe(0);
    }
    const stats = handle.stats();
    expect(stats.completed).toBe(80);
    expect(stats.ioErrors).toBe(0);
    // A queue the worker finds broken marks the main thread's transport NEEDS_RESET.
    const sim = new VirtioDriverSimulator({
      transport: new PciDriverTransport(pci),
      memory,
      heap: { address: 0x10_0000, size: 16 << 20 },
    });
    sim.init({ queueSize: 64 });
    sim.queue(0).setAvailIdx(1000); // avail.idx runs away: fatal for the queue
    sim.queue(0).kick();
    const deadline = Date.now() + 5000;
    while (!(pci.status & DeviceStatus.DEVICE_NEEDS_RESET) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 5));
    expect(pci.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(DeviceStatus.DEVICE_NEEDS_RESET);
    const exit = await handle.stop();
    expect(exit.error).toBeUndefined();
    intx.close();
    region.release();
  });
});

describe("the blk I/O worker with 2 request queues (VIRTIO_BLK_F_MQ)", () => {
  it.each(["sync", "io_uring"] as const)(
    "serves both queues, each answer on its own used ring and irqfd; stats count both (aio=%s)",
    async (aio) => {
      const region = GuestRegion.allocate(0, 32 << 20);
      const memory = new GuestMemory([region]);
      const handle = startBlkWorker({
        image: { path: freshDisk(), format: "raw", aio },
        memory: memory.describe(),
        transport: "none",
        device: { queues: 2 },
      });
      await handle.ready;
      expect(handle.notifyEventFds).toHaveLength(2);
      expect(handle.irqEventFds).toHaveLength(3); // config + one vector per queue
      const device = new VirtioBlkDevice({ worker: handle });
      expect(device.queueMaxSizes).toHaveLength(2);
      const irq = new InterruptRecorder();
      const pci = new VirtioPciTransport({ device, memory, msix: irq, intx: irq });
      const sim = new VirtioDriverSimulator({
        transport: new PciDriverTransport(pci),
        memory,
        heap: { address: 0x10_0000, size: 16 << 20 },
      });
      const negotiated = sim.init({ queueSize: 64 });
      expect(negotiated & (1n << 12n)).toBe(1n << 12n);
      const disk = pattern(DISK_SIZE, DISK_SEED);
      const drivers = [0, 1].map((q) => new BlkTestDriver(sim.queue(q), memory, sim.allocator));
      const irqfds = [handle.irqEventFds[1]!, handle.irqEventFds[2]!];
      const reapOn = (q: number, n: number): Completion[] => {
        const done: Completion[] = [];
        while (done.length < n) {
          expect(pollReadable([irqfds[q]!.fd], 5000)[0]).toBe(true);
          irqfds[q]!.read();
          done.push(...drivers[q]!.reap());
        }
        return done;
      };
      for (let round = 0; round < 10; round++) {
        for (let q = 0; q < 2; q++) {
          for (let i = 0; i < 4; i++) {
            const sector = (q * 64 + round * 4 + i) * 8;
            drivers[q]!.submit([{ data: header(0, sector) }, { length: 4096 }, { length: 1 }]);
          }
          drivers[q]!.kick();
        }
        for (let q = 0; q < 2; q++) {
          const done = reapOn(q, 4);
          expect(done).toHaveLength(4);
          for (const c of done) {
            expect(c.status).toBe(0);
            expect(c.len).toBe(4097);
          }
          // The data is this queue's: sectors (q·64 + round·4 + i)·8.
          const starts = done.map((c) =>
            [0, 1, 2, 3]
              .map((i) => (q * 64 + round * 4 + i) * 8 * 512)
              .find((at) => sameBytes(c.data, disk.subarray(at, at + 4096))),
          );
          expect(starts.every((at) => at !== undefined)).toBe(true);
          expect(new Set(starts).size).toBe(4);
        }
      }
      // A request on queue 1 alone raises queue 1's irqfd, not queue 0's.
      drivers[1]!.submit([{ data: header(0, 0) }, { length: 512 }, { length: 1 }]);
      drivers[1]!.kick();
      expect(reapOn(1, 1)).toHaveLength(1);
      expect(pollReadable([irqfds[0]!.fd], 0)[0]).toBe(false);
      const stats = handle.stats();
      expect(stats).toMatchObject({ queues: 2, completed: 81, inFlight: 0, requests: { read: 81 } });
      expect(stats.latency.count).toBe(81);
      sim.reset();
      const exit = await handle.stop();
      expect(exit.error).toBeUndefined();
      region.release();
    },
  );
});

describe("the blk I/O worker with virtio-mmio", () => {
  it("serves the mmio registers over the channel; the line irqfd is raised again on resample while unacknowledged", async () => {
    const region = GuestRegion.allocate(0, 16 << 20);
    const memory = new GuestMemory([region]);
    const channel = DeviceChannel.create();
    const line = EventFd.create({ nonBlocking: true });
    const resample = EventFd.create({ nonBlocking: true });
    const regions: BlkIoeventfdEvent[] = [];
    const handle = startBlkWorker({
      image: { path: freshDisk(), format: "raw" },
      memory: memory.describe(),
      transport: "mmio",
      mmioBase: 0xd000_0000,
      channel: channel.describe(),
      intxFd: line.fd,
      resampleFd: resample.fd,
      hooks: { ioeventfd: (e) => regions.push(e) },
    });
    await handle.ready;
    expect(handle.irqEventFds).toHaveLength(0);
    const transport = new MmioDriverTransport(new ChannelMmioWindow(channel));
    const sim = new VirtioDriverSimulator({ transport, memory, heap: { address: 0x10_0000, size: 8 << 20 } });
    sim.init({ queueSize: 32 });
    transport.notify = () => handle.notifyEventFds[0]!.write(1);
    const q = sim.queue(0);
    const hdr = new Uint8Array(16);
    new DataView(hdr.buffer).setBigUint64(8, 3n, true);
    q.submit({ readable: [hdr], writable: [512, 1] });
    q.kick();
    expect(pollReadable([line.fd], 5000)[0]).toBe(true);
    line.read();
    const [u] = q.pollUsed();
    expect(u?.len).toBe(513);
    expect(
      sameBytes(u!.written.subarray(0, 512), pattern(DISK_SIZE, DISK_SEED).subarray(3 * 512, 4 * 512)),
    ).toBe(true);
    // Not acknowledged yet: KVM's EOI resample asks again, the worker raises the line again.
    resample.write(1);
    expect(pollReadable([line.fd], 5000)[0]).toBe(true);
    line.read();
    expect(sim.takeInterruptStatus() & INTERRUPT_QUEUE).toBe(INTERRUPT_QUEUE);
    resample.write(1);
    expect(pollReadable([line.fd], 300)[0]).toBe(false);
    await new Promise((r) => setTimeout(r, 10));
    expect(regions[0]).toMatchObject({
      action: "register",
      queue: 0,
      region: { address: 0xd000_0050, datamatch: 0 },
    });
    await handle.stop();
    line.close();
    resample.close();
    channel.close();
    region.release();
  });
});

describe("a hostile guest against the blk I/O worker (issue #12)", () => {
  /** A pci blk worker with the driver simulator on this thread (register accesses through the channel). */
  async function pciWorker(hooks: Parameters<typeof startBlkWorker>[0]["hooks"] = {}) {
    const region = GuestRegion.allocate(0, 32 << 20);
    const memory = new GuestMemory([region]);
    const channel = DeviceChannel.create();
    const handle = startBlkWorker({
      image: { path: freshDisk(), format: "raw" },
      memory: memory.describe(),
      transport: "pci",
      channel: channel.describe(),
      hooks,
    });
    const ready = await handle.ready;
    const fn = new ChannelPciFunction(channel);
    const transport = new PciDriverTransport(fn);
    transport.notify = () => handle.notifyEventFds[0]!.write(1); // the ioeventfd a VMM registers
    const sim = new VirtioDriverSimulator({
      transport,
      memory,
      heap: { address: 0x10_0000, size: 24 << 20 },
    });
    sim.init({ queueSize: 64 });
    const driver = new BlkTestDriver(sim.queue(0), memory, sim.allocator);
    /** Blocks this thread (the worker works on) until `n` chains completed. */
    const reapN = (n: number): Completion[] => {
      const out: Completion[] = [];
      const sleep = new Int32Array(new SharedArrayBuffer(4));
      const deadline = Date.now() + 10_000;
      while (out.length < n && Date.now() < deadline) {
        out.push(...driver.reap());
        if (out.length < n) Atomics.wait(sleep, 0, 0, 2);
      }
      return out;
    };
    const close = async () => {
      const exit = await handle.stop();
      channel.close();
      region.release();
      return exit;
    };
    return { memory, channel, handle, ready, fn, transport, sim, driver, reapN, close };
  }

  it("an IN with an empty data descriptor at 2^53 is failed, and the worker (and the VM) go on", async () => {
    const w = await pciWorker();
    let exited = false;
    void w.handle.exited.then(() => {
      exited = true;
    });
    // Before the fix the first of these threw out of the worker's loop: the worker ended.
    for (const address of [2n ** 53n, 2n ** 64n - 1n, 48 << 20])
      w.driver.submit([{ data: header(0, 0) }, { length: 0, address }, { length: 1 }]);
    const good = w.driver.submit([{ data: header(0, 3) }, { length: 512 }, { length: 1 }]);
    w.driver.kick();
    // Completed in any order (the good read may go to the disk's queue and come back later).
    const done = w.reapN(4);
    expect(done.map((c) => (c.head === good ? 513 : c.len)).sort()).toEqual([0, 0, 0, 513]);
    const read = done.find((c) => c.head === good)!;
    expect(read.len).toBe(513);
    expect(sameBytes(read.data, pattern(DISK_SIZE, DISK_SEED).subarray(3 * 512, 4 * 512))).toBe(true);
    expect(w.sim.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
    await new Promise((r) => setTimeout(r, 20));
    expect(exited).toBe(false);
    expect(w.handle.stats().failed).toBe(3);
    expect((await w.close()).error).toBeUndefined();
  });

  it("MSI-X, BAR and decoding toggled thousands of times reach the main thread as a few messages, latest state applied", async () => {
    const routes: BlkMsixEvent[] = [];
    const bars: { index: number; address: number }[] = [];
    const doorbells: BlkIoeventfdEvent[] = [];
    const w = await pciWorker({
      msix: (e) => routes.push(e),
      barMoved: (index, address) => bars.push({ index, address }),
      ioeventfd: (e) => doorbells.push(e),
    });
    const drain = async () => {
      for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 10));
    };
    await drain();
    const m0 = w.handle.routingUpdates;
    const [r0, b0, d0] = [routes.length, bars.length, doorbells.length];
    const msix = w.ready.pci!.layout.msix!;
    const u32 = (v: number) => {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setUint32(0, v, true);
      return b;
    };
    const bar0 = w.transport.barAddresses.get(0)!;
    const command = new Uint8Array(2);
    w.fn.readConfig(4, command);
    // This thread stays busy (no event loop) while the guest toggles: 3 × 2000 register writes.
    for (let i = 0; i < 2000; i++) {
      w.fn.writeBar(msix.bar, msix.tableOffset + 16 + 12, u32(i % 2 === 0 ? 1 : 0)); // mask / unmask vector 1
      w.fn.writeConfig(0x10, u32(i % 2 === 0 ? bar0 + 0x100000 : bar0)); // move BAR 0 and back
      w.fn.writeConfig(4, Uint8Array.of(command[0]! ^ (i % 2 === 0 ? 2 : 0), command[1]!)); // decoding off / on
    }
    await drain();
    // Before: one message per change (thousands queued); now at most one is outstanding.
    expect(w.handle.routingUpdates - m0).toBeLessThanOrEqual(3);
    expect(routes.length - r0).toBeLessThanOrEqual(2);
    expect(bars.length - b0).toBeLessThanOrEqual(2);
    expect(doorbells.length - d0).toBeLessThanOrEqual(4);
    // The latest state: vector 1 routed, BAR 0 where it was, the doorbell registered there.
    const last = routes.filter((r) => r.vector === 1).pop();
    expect(last?.message).not.toBeNull();
    expect(bars.filter((b) => b.index === 0).pop()?.address ?? bar0).toBe(bar0);
    const live = doorbells.filter((d) => d.queue === 0).pop();
    expect(live).toMatchObject({ action: "register", region: { address: bar0 + 0x3000 } });
    // A change that stays is applied: BAR 0 moved, its doorbell re-registered there.
    w.fn.writeConfig(0x10, u32(bar0 + 0x200000));
    await drain();
    expect(bars.pop()).toEqual({ index: 0, address: bar0 + 0x200000 });
    expect(doorbells.slice(-2).map((d) => [d.action, d.region.address])).toEqual([
      ["unregister", bar0 + 0x3000],
      ["register", bar0 + 0x203000],
    ]);
    // And the device still works.
    w.driver.submit([{ data: header(0, 1) }, { length: 512 }, { length: 1 }]);
    w.driver.kick();
    expect(w.reapN(1)[0]?.len).toBe(513);
    await w.close();
  });

  it("an exception inside the worker marks the device DEVICE_NEEDS_RESET, says so on stderr once, and the VM goes on", () => {
    const child = spawnSync(
      process.execPath,
      [new URL("./fixtures/guard-child.mjs", import.meta.url).pathname, freshDisk()],
      { encoding: "utf8", timeout: 30_000 },
    );
    expect(child.status).toBe(0);
    const out = JSON.parse(child.stdout.trim().split("\n").pop() ?? "{}");
    expect(out).toEqual({ answered: 2, brokenAfterFault: true, servedAfterReset: 513 });
    const lines = child.stderr.split("\n").filter((l) => l.includes("DEVICE_NEEDS_RESET"));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/no register space 7/);
  });
});
