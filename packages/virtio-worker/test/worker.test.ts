// The runtime with a test device (fixtures/fill-device.mjs) and no KVM: guest
// RAM from GuestRegion.allocate, register accesses over a DeviceChannel, the
// queue notify eventfd written by the driver as KVM would on an ioeventfd.
import { DeviceChannel } from "@tskvm/kvm-core";
import { DeviceStatus } from "@tskvm/virtio";
import type { VirtioDriverSimulator } from "@tskvm/virtio/testing";
import { describe, expect, it } from "vitest";
import { type DeviceWorkerHandle, SharedDeviceWorker, startDeviceWorker } from "../dist/index.js";
import { driveFill, mainThreadDriver, memory, startFill } from "./fill-harness.js";

interface FillData {
  byte: number;
  spinMs?: number;
  throwOnServe?: boolean;
  retryMs?: number;
}
interface FillStats {
  served: number;
  closed: boolean;
}

function start(
  data: FillData,
  channel: DeviceChannel,
  thread?: SharedDeviceWorker,
  loop: { spinUs?: number; pollTimeoutMs?: number } = {},
): DeviceWorkerHandle<{ byte: number }, FillStats> {
  return startFill<FillStats>(data, channel, { ...(thread ? { thread } : {}), ...loop });
}

const drive = driveFill;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Grows the worker's polling window: 18 requests 20 ms apart, each kicked if the device asks.
 * Every gap longer than the window doubles it from 4 µs, so after 13 it covers 20 ms. Returns
 * whether each request needed a kick.
 */
async function growPollWindow(
  q: ReturnType<VirtioDriverSimulator["queue"]>,
  byte: number,
): Promise<boolean[]> {
  const kicks: boolean[] = [];
  for (let i = 0; i < 18; i++) {
    await sleep(20);
    q.submit({ writable: [8] });
    kicks.push(q.kickIfNeeded());
    const used = await q.waitUsed(1, 5000);
    expect(used[0]!.written.every((b) => b === byte)).toBe(true);
  }
  return kicks;
}

/** Posts one chain and waits until the device says DEVICE_NEEDS_RESET (or 5 s). */
async function kickUntilNeedsReset(sim: VirtioDriverSimulator): Promise<void> {
  sim.queue(0).submit({ writable: [16] });
  sim.queue(0).kick();
  const deadline = Date.now() + 5000;
  while ((sim.status & DeviceStatus.DEVICE_NEEDS_RESET) === 0 && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 5));
  expect(sim.status & DeviceStatus.DEVICE_NEEDS_RESET).toBeTruthy();
}

describe("a device in a worker of its own", () => {
  it("serves a driver in another worker while the main thread is blocked in Atomics.wait", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 0x5a }, channel);
    expect((await handle.ready).byte).toBe(0x5a);
    expect(handle.info.pci?.bars[0]?.size).toBeGreaterThan(0);
    const { worker, result } = drive(handle, channel, {
      count: 2000,
      depth: 32,
      length: 512,
      byte: 0x5a,
      heap: 1 << 20,
    });
    // The main thread's event loop does not run from here until the driver is done.
    const waited = Atomics.wait(result, 0, 0, 30_000);
    expect(waited).not.toBe("timed-out");
    expect(Atomics.load(result, 1)).toBe(2000);
    expect(Atomics.load(result, 2)).toBe(0);
    expect(handle.completed).toBe(2000);
    expect(handle.stats().served).toBe(2000);
    const exit = await handle.stop();
    expect(exit.error).toBeUndefined();
    expect(exit.stats).toMatchObject({ served: 2000, closed: true });
    expect(exit.queues[0]?.state).toBeDefined();
    await worker.terminate();
    channel.close();
  });

  it("stop() under load returns promptly: the chains taken are finished, the device closed", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 1, spinMs: 1 }, channel);
    await handle.ready;
    const { worker, result } = drive(handle, channel, {
      count: 100_000,
      depth: 128,
      length: 64,
      byte: 1,
      heap: 8 << 20,
    });
    while (handle.completed < 100) await new Promise((r) => setTimeout(r, 5));
    const t0 = performance.now();
    const exit = await handle.stop();
    const ms = performance.now() - t0;
    expect(ms).toBeLessThan(1000);
    expect(exit.error).toBeUndefined();
    expect(exit.stats?.closed).toBe(true);
    expect(exit.stats?.served).toBe(handle.completed);
    expect(Atomics.load(result, 1)).toBeLessThan(100_000);
    await worker.terminate();
    channel.close();
  });

  it("a device whose serveQueue throws is marked DEVICE_NEEDS_RESET; its worker goes on serving registers", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 2, throwOnServe: true }, channel);
    await handle.ready;
    const sim = mainThreadDriver(handle, channel, 16 << 20);
    await kickUntilNeedsReset(sim);
    // Still answering: a reset and a new init work.
    sim.init({ queueSize: 16 });
    expect(sim.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
    const exit = await handle.stop();
    expect(exit.error).toBeUndefined();
    channel.close();
  });

  it("a queue that asks to be called again after N ms is, from the loop's poll timeout (no timers)", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 3, retryMs: 40 }, channel);
    await handle.ready;
    const q = mainThreadDriver(handle, channel, 18 << 20).queue(0);
    for (let i = 0; i < 4; i++) q.submit({ writable: [8] });
    const t0 = performance.now();
    q.kick();
    const used = await q.waitUsed(4, 5000);
    const ms = performance.now() - t0;
    expect(used.every((u) => u.len === 8 && u.written.every((b) => b === 3))).toBe(true);
    // One chain per call, three waits of 40 ms in between; well under the 500 ms idle timeout each.
    expect(ms).toBeGreaterThanOrEqual(110);
    expect(ms).toBeLessThan(1200);
    await handle.stop();
    channel.close();
  });

  it("adaptive polling: the window grows with requests that keep coming, serves them with notifications off, and closes when they stop", async () => {
    const channel = DeviceChannel.create();
    // A long idle timeout: only a notification or the polling serves a chain within a second.
    const handle = start({ byte: 5 }, channel, undefined, { spinUs: 600_000, pollTimeoutMs: 10_000 });
    await handle.ready;
    const q = mainThreadDriver(handle, channel, 20 << 20).queue(0);
    // The driver is asked to kick until the window covers the gaps, then no longer.
    const kicks = await growPollWindow(q, 5);
    expect(kicks.slice(0, 10).every((k) => k)).toBe(true);
    expect(kicks.slice(-3)).toEqual([false, false, false]);
    // Within the window: notifications are off and the chain is served anyway.
    await sleep(5);
    q.submit({ writable: [8] });
    expect(q.kickIfNeeded()).toBe(false);
    expect((await q.waitUsed(1, 1000))[0]!.written.every((b) => b === 5)).toBe(true);
    // Past the longest window (600 ms): the worker asked for notifications again and sleeps.
    await sleep(700);
    q.submit({ writable: [8] });
    expect(q.kickIfNeeded()).toBe(true);
    expect((await q.waitUsed(1, 1000)).length).toBe(1);
    await handle.stop();
    channel.close();
  });

  it("a driver that breaks its ring while the loop polls it: the device is marked DEVICE_NEEDS_RESET, the worker goes on", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 6 }, channel, undefined, { spinUs: 600_000, pollTimeoutMs: 10_000 });
    await handle.ready;
    const sim = mainThreadDriver(handle, channel, 21 << 20);
    const q = sim.queue(0);
    await growPollWindow(q, 6);
    expect(q.kickIfNeeded()).toBe(false); // silenced: the loop is polling this ring
    // avail.idx far more than the queue size ahead: the device's pendingRequests throws.
    memory.writeU16(q.availRing + 2, 0x8000);
    const deadline = Date.now() + 5000;
    while ((sim.status & DeviceStatus.DEVICE_NEEDS_RESET) === 0 && Date.now() < deadline) await sleep(5);
    expect(sim.status & DeviceStatus.DEVICE_NEEDS_RESET).toBeTruthy();
    // Still serving registers: a reset and a new init work, and the device serves again.
    sim.init({ queueSize: 16 });
    const q2 = sim.queue(0);
    q2.submit({ writable: [8] });
    q2.kick();
    expect((await q2.waitUsed(1, 5000))[0]!.written.every((b) => b === 6)).toBe(true);
    const exit = await handle.stop();
    expect(exit.error).toBeUndefined();
    channel.close();
  });

  it("without polling (spinUs 0) a chain published without a notification waits for one", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 5 }, channel, undefined, { spinUs: 0, pollTimeoutMs: 10_000 });
    await handle.ready;
    const q = mainThreadDriver(handle, channel, 20 << 20).queue(0);
    for (let i = 0; i < 20; i++) {
      q.submit({ writable: [8] });
      expect(q.kickIfNeeded()).toBe(true); // never silenced
      await q.waitUsed(1, 5000);
    }
    q.submit({ writable: [8] }); // no kick
    await expect(q.waitUsed(1, 1000)).rejects.toThrow();
    q.kick();
    expect((await q.waitUsed(1, 5000)).length).toBe(1);
    await handle.stop();
    channel.close();
  });

  it("a module that fails to build the device rejects ready with the error", async () => {
    const handle = startDeviceWorker({
      module: new URL("./fixtures/no-such-module.mjs", import.meta.url),
      data: {},
      memory: memory.describe(),
      transport: "pci",
    });
    await expect(handle.ready).rejects.toThrow(/no-such-module/);
    const exit = await handle.exited;
    expect(exit.error?.message).toMatch(/no-such-module/);
    expect(exit.stats).toBeUndefined();
  });
});

describe("devices on one shared worker", () => {
  it("serves two devices from one thread, each with its own queues, and a third after the thread restarts", async () => {
    const shared = new SharedDeviceWorker({ name: "test-devices" });
    const channels = [DeviceChannel.create(), DeviceChannel.create()];
    const a = start({ byte: 0xa1 }, channels[0]!, shared);
    const b = start({ byte: 0xb2 }, channels[1]!, shared);
    expect(a.worker).toBe(b.worker);
    expect(shared.devices).toBe(2);
    await Promise.all([a.ready, b.ready]);
    const runs = [
      drive(a, channels[0]!, { count: 500, depth: 16, length: 256, byte: 0xa1, heap: 24 << 20 }),
      drive(b, channels[1]!, { count: 500, depth: 16, length: 256, byte: 0xb2, heap: 32 << 20 }),
    ];
    // Both drivers run while this thread is blocked: one device worker serves them both.
    for (const r of runs) expect(Atomics.wait(r.result, 0, 0, 30_000)).not.toBe("timed-out");
    for (const r of runs) {
      expect(Atomics.load(r.result, 1)).toBe(500);
      expect(Atomics.load(r.result, 2)).toBe(0);
    }
    expect([a.completed, b.completed]).toEqual([500, 500]);
    // One stops, the other goes on in the same thread.
    const exitA = await a.stop();
    expect(exitA.stats).toMatchObject({ served: 500, closed: true });
    expect(shared.devices).toBe(1);
    const more = drive(b, channels[1]!, { count: 100, depth: 8, length: 64, byte: 0xb2, heap: 40 << 20 });
    expect(Atomics.wait(more.result, 0, 0, 30_000)).not.toBe("timed-out");
    expect(Atomics.load(more.result, 2)).toBe(0);
    const threadExit = new Promise((r) => b.worker.once("exit", r));
    expect((await b.stop()).stats).toMatchObject({ served: 600, closed: true });
    // The last device gone, the thread ends; a new device starts a new one.
    await threadExit;
    expect(shared.worker).toBeUndefined();
    const c = start({ byte: 0xc3 }, channels[0]!, shared);
    expect(c.worker).not.toBe(b.worker);
    await c.ready;
    await c.stop();
    for (const r of [...runs, more]) await r.worker.terminate();
    for (const ch of channels) ch.close();
  });

  it("a device failing on a shared worker breaks only itself", async () => {
    const shared = new SharedDeviceWorker();
    const channels = [DeviceChannel.create(), DeviceChannel.create()];
    const bad = start({ byte: 1, throwOnServe: true }, channels[0]!, shared);
    const good = start({ byte: 2 }, channels[1]!, shared);
    await Promise.all([bad.ready, good.ready]);
    await kickUntilNeedsReset(mainThreadDriver(bad, channels[0]!, 48 << 20));
    const r = drive(good, channels[1]!, { count: 200, depth: 8, length: 32, byte: 2, heap: 52 << 20 });
    expect(Atomics.wait(r.result, 0, 0, 30_000)).not.toBe("timed-out");
    expect(Atomics.load(r.result, 2)).toBe(0);
    await Promise.all([bad.stop(), good.stop()]);
    await r.worker.terminate();
    for (const ch of channels) ch.close();
  });
});
