// Run-time control of a device worker: rate limits (token buckets over the serve
// budget), pause / resume with requests in flight, thread tuning (ioprio, nice),
// asynchronous stats. The fill test device and real worker threads, no KVM.
import { readFileSync } from "node:fs";
import { getPriority } from "node:os";
import type { Worker } from "node:worker_threads";
import { DeviceChannel, EventFd, getThreadIoPriority } from "@tskvm/kvm-core";
import type { DeviceTuning } from "@tskvm/machine-x86";
import { describe, expect, it } from "vitest";
import {
  DeviceRateLimiter,
  type DeviceWorkerHandle,
  SharedDeviceWorker,
  TokenBucket,
} from "../dist/index.js";
import { driveFill, mainThreadDriver, startFill } from "./fill-harness.js";

interface FillData {
  byte: number;
  completeFd?: number;
}
interface FillStats {
  served: number;
  bytesServed: number;
  inFlight: number;
  closed: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function start(
  data: FillData,
  channel: DeviceChannel,
  more: { tuning?: DeviceTuning; thread?: SharedDeviceWorker } = {},
): DeviceWorkerHandle<{ byte: number }, FillStats> {
  return startFill<FillStats>(data, channel, more);
}

/** The driver worker on heap `heap`; its result words are [done, completed, bad]. */
function drive(
  handle: DeviceWorkerHandle,
  channel: DeviceChannel,
  o: { count: number; depth: number; length: number; byte: number; heap: number },
): { worker: Worker; result: Int32Array; done: () => Promise<void> } {
  const { worker, result } = driveFill(handle, channel, { ...o, timeoutMs: 30_000 });
  const done = async (): Promise<void> => {
    const deadline = Date.now() + 30_000;
    while (Atomics.load(result, 0) === 0 && Date.now() < deadline) await sleep(10);
    expect(Atomics.load(result, 0)).toBe(1);
  };
  return { worker, result, done };
}

/** Requests the device answers per second, over `ms`. */
async function measure(handle: DeviceWorkerHandle, ms: number): Promise<number> {
  const c0 = handle.completed;
  const t0 = performance.now();
  await sleep(ms);
  return ((handle.completed - c0) * 1000) / (performance.now() - t0);
}

describe("token buckets (a fake clock)", () => {
  it("refills continuously up to the burst, and goes into debt for a large request", () => {
    const b = new TokenBucket({ rate: 100, burst: 10 }, 0);
    expect(b.tokens(0)).toBe(10);
    b.take(10);
    expect(b.waitMs(0)).toBe(10); // one token at 100/s
    expect(b.tokens(50)).toBeCloseTo(5);
    expect(b.tokens(10_000)).toBe(10); // never more than the burst
    b.take(25); // larger than the bucket: passes, leaves a debt
    expect(b.tokens(10_000)).toBe(-15);
    expect(b.waitMs(10_000)).toBeCloseTo(160);
  });

  it("without a burst, the bucket holds 100 ms of the rate: a fresh limit passes ~rate over a few seconds, not twice it", () => {
    const b = new TokenBucket({ rate: 500 }, 0);
    expect(b.burst).toBe(50);
    expect(b.tokens(0)).toBe(50);
    // Everything a greedy client can take in 5 s: the full bucket, then the refill.
    let taken = 0;
    for (let t = 0; t <= 5000; t++) {
      const n = Math.floor(b.tokens(t));
      if (n > 0) {
        b.take(n);
        taken += n;
      }
    }
    expect(taken / 5).toBeGreaterThanOrEqual(500);
    expect(taken / 5).toBeLessThanOrEqual(512);
  });

  it("a limiter caps the serve budget by the tokens, charges what was served, and follows changes", () => {
    const l = new DeviceRateLimiter();
    expect(l.limited).toBe(false);
    expect(l.budget(64, 1 << 20, 0)).toEqual({ requests: 64, bytes: 1 << 20 });
    l.set({ iops: { rate: 1000, burst: 8 }, bandwidth: { rate: 4096, burst: 4096 } }, 0);
    expect(l.budget(64, 1 << 20, 0)).toEqual({ requests: 8, bytes: 4096 });
    l.charge(8, 4096);
    expect(l.waitMs(0)).toBeCloseTo(1); // the request bucket is the later one
    expect(l.budget(64, 1 << 20, 0)).toEqual({ requests: 1, bytes: 1 }); // at least one request
    l.set({ iops: null }, 0); // removed; the byte limit stays
    expect(l.waitMs(0)).toBeCloseTo(1000 / 4096);
    l.set({ bandwidth: null }, 0);
    expect(l.limited).toBe(false);
    expect(l.waitMs(0)).toBe(0);
    expect(() => l.set({ iops: { rate: 0 } }, 0)).toThrow(/rate must be a number > 0/);
    expect(() => l.set({ bandwidth: { rate: 1, burst: -1 } }, 0)).toThrow(/burst/);
  });
});

describe("rate limits in the worker", () => {
  it("iops: ~rate a second after the burst, a run-time change within a second, null restores full speed, nothing dropped", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 7 }, channel, { tuning: { iops: { rate: 200, burst: 20 } } });
    await handle.ready;
    const count = 20_000;
    const run = drive(handle, channel, { count, depth: 16, length: 64, byte: 7, heap: 1 << 20 });
    await sleep(300); // past the burst
    const limited = await measure(handle, 1200);
    expect(limited).toBeGreaterThan(180);
    expect(limited).toBeLessThan(220);
    expect(await handle.tune({ iops: { rate: 500, burst: 20 } })).toEqual({ iops: { rate: 500, burst: 20 } });
    await sleep(200);
    const faster = await measure(handle, 1200);
    expect(faster).toBeGreaterThan(450);
    expect(faster).toBeLessThan(550);
    const { thread } = await handle.statsAsync();
    expect(thread.throttledMs).toBeGreaterThan(500);
    expect(thread.tuning).toEqual({ iops: { rate: 500, burst: 20 } });
    expect(await handle.tune({ iops: null })).toEqual({});
    // Unlimited, the rest (~18,000) is served in a few seconds at most.
    await run.done();
    expect(Atomics.load(run.result, 1)).toBe(count);
    expect(Atomics.load(run.result, 2)).toBe(0);
    expect(handle.completed).toBe(count);
    await handle.stop();
    await run.worker.terminate();
    channel.close();
  });

  it("burst: a full bucket lets `burst` requests through at once, then the rate", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 8 }, channel, { tuning: { iops: { rate: 50, burst: 100 } } });
    await handle.ready;
    const t0 = performance.now();
    const run = drive(handle, channel, { count: 150, depth: 50, length: 64, byte: 8, heap: 8 << 20 });
    while (handle.completed < 100 && performance.now() - t0 < 5000) await sleep(5);
    const burstMs = performance.now() - t0;
    await run.done();
    const totalMs = performance.now() - t0;
    expect(burstMs).toBeLessThan(600);
    // The last 50 at 50 a second.
    expect(totalMs - burstMs).toBeGreaterThan(850);
    expect(Atomics.load(run.result, 1)).toBe(150);
    expect(Atomics.load(run.result, 2)).toBe(0);
    await handle.stop();
    await run.worker.terminate();
    channel.close();
  });

  it("bandwidth: ~rate bytes a second; a request larger than the bucket still passes", async () => {
    const channel = DeviceChannel.create();
    // 4 KiB requests at 256 KiB/s: 64 requests a second.
    const handle = start({ byte: 9 }, channel, {
      tuning: { bandwidth: { rate: 256 << 10, burst: 16 << 10 } },
    });
    await handle.ready;
    const run = drive(handle, channel, { count: 100_000, depth: 16, length: 4096, byte: 9, heap: 16 << 20 });
    await sleep(200);
    const c0 = handle.completed;
    const b0 = (await handle.statsAsync()).device.bytesServed;
    const t0 = performance.now();
    await sleep(1500);
    const bytes = (await handle.statsAsync()).device.bytesServed - b0;
    const s = (performance.now() - t0) / 1000;
    expect(bytes / s).toBeGreaterThan(0.9 * (256 << 10));
    expect(bytes / s).toBeLessThan(1.1 * (256 << 10));
    expect(((handle.completed - c0) / s) * 4096).toBeCloseTo(bytes / s, -4);
    await handle.stop();
    await run.worker.terminate();

    // 32 KiB requests through a 16 KiB bucket at 128 KiB/s: each passes, the next waits the debt off.
    const big = start({ byte: 10 }, channel, { tuning: { bandwidth: { rate: 128 << 10, burst: 16 << 10 } } });
    await big.ready;
    const t1 = performance.now();
    const r = drive(big, channel, { count: 5, depth: 1, length: 32 << 10, byte: 10, heap: 24 << 20 });
    await r.done();
    const ms = performance.now() - t1;
    expect(Atomics.load(r.result, 1)).toBe(5);
    expect(Atomics.load(r.result, 2)).toBe(0);
    // 5 × 32 KiB less the 16 KiB saved, at 128 KiB/s: ≥ ~1 s (less the last request's debt).
    expect(ms).toBeGreaterThan(800);
    expect(ms).toBeLessThan(5000);
    await big.stop();
    await r.worker.terminate();
    channel.close();
  });

  it("a stop or a driver reset while throttled: the stop is prompt, the reset device serves again", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 11 }, channel, { tuning: { iops: { rate: 5, burst: 1 } } });
    await handle.ready;
    const sim = mainThreadDriver(handle, channel, 32 << 20);
    const q = sim.queue(0);
    for (let i = 0; i < 4; i++) q.submit({ writable: [8] });
    q.kick();
    await q.waitUsed(1, 5000);
    await sleep(150);
    // The other three wait for tokens (one every 200 ms).
    expect((await handle.statsAsync()).thread.throttledMs).toBeGreaterThan(50);
    // Reset by the driver (status 0) while the queue waits for tokens, then brought up again.
    sim.init({ queueSize: 16 });
    const q2 = sim.queue(0);
    q2.submit({ writable: [8] });
    q2.kick();
    const used = await q2.waitUsed(1, 3000);
    expect(used[0]?.written.every((b) => b === 11)).toBe(true);
    // Throttled again, then stopped: it does not wait for the tokens.
    for (let i = 0; i < 8; i++) q2.submit({ writable: [8] });
    q2.kick();
    await sleep(100);
    const t0 = performance.now();
    const exit = await handle.stop();
    expect(performance.now() - t0).toBeLessThan(500);
    expect(exit.error).toBeUndefined();
    expect(exit.stats?.closed).toBe(true);
    channel.close();
  });

  it("a bad limit is refused with a message; the device goes on as it was", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 12 }, channel, { tuning: { iops: { rate: 1000 } } });
    await handle.ready;
    await expect(handle.tune({ iops: { rate: 0 } })).rejects.toThrow(
      /fill 12: iops: rate must be a number > 0/,
    );
    await expect(handle.tune({ bandwidth: { rate: 1, burst: Number.NaN } })).rejects.toThrow(/burst/);
    expect((await handle.statsAsync()).thread.tuning).toEqual({ iops: { rate: 1000, burst: 100 } });
    const q = mainThreadDriver(handle, channel, 34 << 20).queue(0);
    q.submit({ writable: [8] });
    q.kick();
    await q.waitUsed(1, 3000);
    await handle.stop();
    channel.close();
  });
});

describe("pause and resume", () => {
  it("pause waits for the requests in flight, holds, remembers notifications, and serves them on resume", async () => {
    const channel = DeviceChannel.create();
    const complete = EventFd.create({ nonBlocking: true });
    const handle = start({ byte: 13, completeFd: complete.fd }, channel);
    await handle.ready;
    const q = mainThreadDriver(handle, channel, 36 << 20).queue(0);
    for (let i = 0; i < 4; i++) q.submit({ writable: [16] });
    q.kick();
    while ((await handle.statsAsync()).device.inFlight < 4) await sleep(5);
    let paused = false;
    const pausing = handle.pause().then(() => {
      paused = true;
    });
    await sleep(150);
    expect(paused).toBe(false); // four requests still in flight
    // Notified while pausing: remembered, not taken.
    for (let i = 0; i < 2; i++) q.submit({ writable: [16] });
    q.kick();
    complete.write(1);
    await pausing;
    expect(q.pollUsed()).toHaveLength(4);
    await sleep(200);
    const held = await handle.statsAsync();
    expect(held.thread.held).toBe(true);
    expect(held.device).toMatchObject({ served: 4, inFlight: 0 });
    expect(q.pollUsed()).toHaveLength(0);
    await handle.resume();
    while ((await handle.statsAsync()).device.inFlight < 2) await sleep(5);
    complete.write(1);
    const used = await q.waitUsed(2, 3000);
    expect(used.every((u) => u.written.every((b) => b === 13))).toBe(true);
    expect((await handle.statsAsync()).thread.held).toBe(false);
    await handle.stop();
    // A request after the exit: rejected, not left hanging.
    await expect(handle.pause()).rejects.toThrow(/has exited/);
    complete.close();
    channel.close();
  });

  it("a busy device: nothing is served while held, everything after resume (nothing dropped)", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 14 }, channel);
    await handle.ready;
    const count = 3000;
    const run = drive(handle, channel, { count, depth: 8, length: 64, byte: 14, heap: 40 << 20 });
    while (handle.completed < 100) await sleep(2);
    await handle.pause();
    const c = handle.completed;
    await sleep(300);
    expect(handle.completed).toBe(c);
    expect(c).toBeLessThan(count);
    await handle.resume();
    await run.done();
    expect(Atomics.load(run.result, 1)).toBe(count);
    expect(Atomics.load(run.result, 2)).toBe(0);
    // Held while stopped: the stop still ends it.
    await handle.pause();
    expect((await handle.stop()).stats?.closed).toBe(true);
    await run.worker.terminate();
    channel.close();
  });
});

describe("thread tuning and stats", () => {
  it("ioPriority and nice are applied to the worker's own thread (read back from this thread)", async () => {
    const channel = DeviceChannel.create();
    const handle = start({ byte: 15 }, channel, { tuning: { nice: 3 } });
    await handle.ready;
    const { thread } = await handle.statsAsync();
    expect(thread.tid).toBeGreaterThan(0);
    expect(thread.tid).not.toBe(process.pid);
    // Named after its device ("fill 15" → "fill"), not Node's "node".
    expect(readFileSync(`/proc/self/task/${thread.tid}/comm`, "utf8").trim()).toBe("fill");
    expect(getPriority(thread.tid)).toBe(3);
    expect(getPriority(0)).not.toBe(3);
    expect(await handle.tune({ ioPriority: { class: "be", level: 2 } })).toEqual({
      nice: 3,
      ioPriority: { class: "be", level: 2 },
    });
    expect(getThreadIoPriority(thread.tid)).toEqual({ class: "be", level: 2 });
    await handle.tune({ ioPriority: { class: "idle" }, nice: 10 });
    expect(getThreadIoPriority(thread.tid).class).toBe("idle");
    expect(getPriority(thread.tid)).toBe(10);
    if (process.getuid?.() === 0) {
      await handle.tune({ ioPriority: { class: "rt", level: 0 }, nice: -2 });
      expect(getThreadIoPriority(thread.tid)).toEqual({ class: "rt", level: 0 });
      expect(getPriority(thread.tid)).toBe(-2);
    }
    // Back to the defaults.
    expect(await handle.tune({ ioPriority: null, nice: null })).toEqual({});
    expect(getThreadIoPriority(thread.tid).class).toBe("none");
    expect(getPriority(thread.tid)).toBe(getPriority(0));
    // Refused: a rejected promise with the reason; nothing changed, the worker alive.
    await handle.tune({ nice: 4 });
    await expect(handle.tune({ ioPriority: { class: "be", level: 9 }, nice: 5 })).rejects.toThrow(
      /fill 15: cannot set the I\/O priority be:9 of its thread \d+: .*level 9/,
    );
    await expect(handle.tune({ ioPriority: { class: "be", level: 1 }, nice: 42 })).rejects.toThrow(
      /cannot set the nice value 42/,
    );
    expect(getThreadIoPriority(thread.tid).class).toBe("none"); // the be:1 was taken back
    expect(getPriority(thread.tid)).toBe(4);
    const after = await handle.statsAsync();
    expect(after.thread.tuning).toEqual({ nice: 4 });
    expect(after.thread.wakeups).toBeGreaterThan(0);
    expect(after.thread.cpuMs).toBeGreaterThan(0);
    expect(after.thread.held).toBe(false);
    // The synchronous stats still work.
    expect(handle.stats().served).toBe(0);
    await handle.stop();
    channel.close();
  });

  it("a start tuning the worker cannot apply fails the start with the reason", async () => {
    const handle = start({ byte: 16 }, DeviceChannel.create(), {
      tuning: { ioPriority: { class: "be", level: 8 } },
    });
    await expect(handle.ready).rejects.toThrow(/cannot set the I\/O priority be:8/);
    expect((await handle.exited).error?.message).toMatch(/be:8/);
  });

  it("on a shared worker the thread's tuning is every device's, the limits each device's own", async () => {
    const shared = new SharedDeviceWorker({ name: "tuned-devices" });
    const channels = [DeviceChannel.create(), DeviceChannel.create()];
    const a = start({ byte: 17 }, channels[0]!, { thread: shared });
    const b = start({ byte: 18 }, channels[1]!, { thread: shared });
    await Promise.all([a.ready, b.ready]);
    await a.tune({ ioPriority: { class: "be", level: 6 }, iops: { rate: 10 } });
    const [sa, sb] = await Promise.all([a.statsAsync(), b.statsAsync()]);
    expect(sa.thread.tid).toBe(sb.thread.tid);
    expect(sa.thread.tuning).toEqual({
      ioPriority: { class: "be", level: 6 },
      iops: { rate: 10, burst: 1 },
    });
    expect(sb.thread.tuning).toEqual({ ioPriority: { class: "be", level: 6 } });
    expect(getThreadIoPriority(sb.thread.tid)).toEqual({ class: "be", level: 6 });
    // b is not limited: 200 requests well within a second.
    const r = drive(b, channels[1]!, { count: 200, depth: 16, length: 64, byte: 18, heap: 48 << 20 });
    const t0 = performance.now();
    await r.done();
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(Atomics.load(r.result, 2)).toBe(0);
    await Promise.all([a.stop(), b.stop()]);
    await r.worker.terminate();
    for (const ch of channels) ch.close();
  });
});
