import { deflateSync } from "node:zlib";
import {
  DeviceStatus,
  NO_VECTOR,
  PlainGuestMemory,
  Queue,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  VirtioDeviceId,
  VirtioPciTransport,
} from "@tskvm/virtio";
import {
  InterruptRecorder,
  mockSplitQueue,
  PciDriverTransport,
  VirtioDriverSimulator,
  writeDescriptor,
} from "@tskvm/virtio/testing";
import { describe, expect, it } from "vitest";
import { FILL_CHUNK, TokenBucket, VirtioRngDevice } from "../src/index.js";
import { checkChain, type Part, type RigOptions, rngRig, writableRanges } from "./rig.js";

const W = (length: number): Part => ({ length, writable: true });
const R = (length: number): Part => ({ length, writable: false });

/**
 * Submits `chains`, kicks, reaps; checks every completion against the spec:
 * used length = the writable total when the chain has no readable buffer and
 * something to fill, else 0; the filled buffers hold exactly the stream, in
 * order, and the device wrote nothing else (the recorder's ranges).
 */
function roundTrip(rig: ReturnType<typeof rngRig>, chains: Part[][], options: { indirect?: boolean } = {}) {
  const subs = chains.map((c, i) => rig.driver.submit(c, { ...options, seed: i + 1 }));
  rig.driver.q.kick();
  const done = rig.driver.reap();
  expect(done.map((d) => d.sub.head)).toEqual(subs.map((s) => s.head));
  const { start, ranges } = rig.recorder.take();
  let at = start;
  const expectedRanges: { address: number; length: number }[] = [];
  for (const { len, sub } of done) {
    const hasReadable = sub.parts.some((p) => !p.writable);
    const total = sub.parts.filter((p) => p.writable).reduce((n, p) => n + p.length, 0);
    const want = hasReadable ? 0 : total;
    expect(len).toBe(want);
    expect(checkChain(rig.memory, sub, len, at)).toEqual([]);
    if (len > 0) expectedRanges.push(...writableRanges(sub));
    at += len;
    rig.driver.release(sub);
  }
  expect(ranges).toEqual(expectedRanges);
  expect(rig.recorder.errors).toEqual([]);
  return done;
}

describe("VirtioRngDevice", () => {
  it("is an entropy device: id 4, one queue, no config space, ring features only", () => {
    const d = new VirtioRngDevice();
    expect(d.deviceType).toBe(VirtioDeviceId.ENTROPY);
    expect(d.deviceType).toBe(4);
    expect(d.queueMaxSizes).toEqual([256]);
    expect(d.configSize).toBe(0);
    expect(d.features).toBe(VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC);
    expect(new VirtioRngDevice({ eventIdx: false, indirect: false }).features).toBe(0n);
    expect(new VirtioRngDevice({ queueSize: 8 }).queueMaxSizes).toEqual([8]);
    for (const queueSize of [0, 3, 65536, 1.5])
      expect(() => new VirtioRngDevice({ queueSize })).toThrow(RangeError);
    expect(() => new VirtioRngDevice({ maxBytesPerCall: 0 })).toThrow(RangeError);
    expect(() => new VirtioRngDevice({ rateLimit: { bytesPerSecond: 0 } })).toThrow(RangeError);
    expect(() => new VirtioRngDevice({ rateLimit: { bytesPerSecond: Number.NaN } })).toThrow(RangeError);
    expect(() => new VirtioRngDevice({ rateLimit: { bytesPerSecond: 10, burst: 0.5 } })).toThrow(RangeError);
  });

  it("offers VERSION_1 + EVENT_IDX + INDIRECT_DESC over virtio-pci; the PCI function is 0x1044", () => {
    const rig = rngRig();
    expect(rig.negotiated).toBe(VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC);
    const id = new Uint8Array(4);
    rig.pci!.readConfig(0, id);
    expect(new DataView(id.buffer).getUint16(0, true)).toBe(0x1af4);
    expect(new DataView(id.buffer).getUint16(2, true)).toBe(0x1040 + 4);
    expect(rig.device.activated).toBe(true);
  });

  for (const transport of ["pci", "mmio"] as const)
    for (const eventIdx of [true, false])
      for (const indirect of [false, true])
        it(`fills exactly every writable buffer of every chain (${transport}, EVENT_IDX ${eventIdx}, ${indirect ? "indirect" : "direct"})`, () => {
          const rig = rngRig({
            transport,
            features: eventIdx ? VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC : VIRTIO_F_INDIRECT_DESC,
          });
          expect(rig.sim.eventIdx).toBe(eventIdx);
          roundTrip(rig, [[W(64)]], { indirect });
          roundTrip(rig, [[W(1)], [W(16), W(7), W(4096)], [W(3), W(0), W(5)], [W(65536 + 3)]], { indirect });
          // Chains the device must not write: readable buffers (used length 0, nothing written).
          roundTrip(rig, [[R(8)], [R(4), W(32)], [R(0), W(16)], [W(8)]], { indirect });
          // Nothing to fill: one zero-length buffer, several.
          roundTrip(rig, [[W(0)], [W(0), W(0), W(0)], [W(2)]], { indirect });
          // A full ring of small chains in one kick.
          roundTrip(
            rig,
            Array.from({ length: indirect ? 256 : 128 }, (_, i) =>
              indirect ? [W(1 + (i % 37)), W(i % 3)] : [W(1 + (i % 61))],
            ),
            { indirect },
          );
          expect(rig.core.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
          expect(rig.device.stats.failed).toBe(5);
        });

  it("a chain of the queue size's many buffers, each one byte, in an indirect table", () => {
    const rig = rngRig();
    roundTrip(rig, [Array.from({ length: 256 }, () => W(1))], { indirect: true });
    // One more is past the queue size (§2.7.5.3.1): used length 0, nothing written.
    const sub = rig.driver.submit(
      Array.from({ length: 257 }, () => W(1)),
      { indirect: true },
    );
    rig.driver.q.kick();
    expect(rig.driver.reap().map((d) => d.len)).toEqual([0]);
    expect(checkChain(rig.memory, sub, 0, 0)).toEqual([]);
    expect(rig.recorder.take().ranges).toEqual([]);
  });

  it("with the host CSPRNG: bytes that look random, and different every time", () => {
    const rig = rngRig({ realRandom: true });
    const q = rig.sim.queue(0);
    q.submit({ writable: [1 << 16] });
    q.submit({ writable: [32], readable: [new Uint8Array(1)] });
    q.submit({ writable: [1 << 16] });
    q.kick();
    const [a, ro, b] = q.pollUsed();
    expect(a!.len).toBe(65536);
    expect(ro!.len).toBe(0);
    expect(b!.len).toBe(65536);
    expect(Buffer.from(a!.written).equals(Buffer.from(b!.written))).toBe(false);
    for (const u of [a!, b!]) {
      // Random data does not compress; every byte value shows up about 256 times.
      expect(deflateSync(u.written).length).toBeGreaterThan(65536);
      const counts = new Array(256).fill(0);
      for (const x of u.written) counts[x]++;
      expect(Math.min(...counts)).toBeGreaterThan(150);
      expect(Math.max(...counts)).toBeLessThan(380);
    }
  });

  it("fills guest RAM in place, in views of at most 64 KiB, across host windows", () => {
    const regions = [{ address: 0, size: 16 << 20 }];
    const rig = rngRig({ regions });
    roundTrip(rig, [[W(3 * FILL_CHUNK + 5)]]);
    expect(rig.recorder.largest).toBe(FILL_CHUNK);
    // 4 KiB host windows: the views are split at each window, still in place.
    const windowed = new PlainGuestMemory(regions, { windowSize: 0x1000 });
    const views: Uint8Array[] = [];
    const device = new VirtioRngDevice({ fill: (v) => views.push(v) });
    const irq = new InterruptRecorder();
    const pci = new VirtioPciTransport({ device, memory: windowed, msix: irq, intx: irq });
    const sim = new VirtioDriverSimulator({
      transport: new PciDriverTransport(pci),
      memory: windowed,
      heap: { address: 0x10000, size: 0x100000 },
    });
    sim.init();
    sim.queue(0).submit({ writable: [0x3000 + 10] });
    sim.queue(0).kick();
    expect(sim.queue(0).pollUsed()[0]!.len).toBe(0x300a);
    expect(views.length).toBeGreaterThanOrEqual(4);
    expect(views.every((v) => v.length <= 0x1000)).toBe(true);
    expect(views.reduce((n, v) => n + v.length, 0)).toBe(0x300a);
  });

  it("interrupts as the driver asks: NO_INTERRUPT without EVENT_IDX, used_event with it", () => {
    const rig = rngRig({ features: VIRTIO_F_INDIRECT_DESC });
    const q = rig.driver.q;
    const v = q.vector;
    q.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    roundTrip(rig, [[W(8)]]);
    expect(rig.irq.count(v)).toBe(0);
    q.setAvailFlags(0);
    roundTrip(rig, [[W(8)]]);
    expect(rig.irq.count(v)).toBe(1);

    const ev = rngRig();
    const eq = ev.driver.q;
    eq.autoUsedEvent = false;
    eq.setUsedEvent(2); // interrupt when the third used entry goes in
    roundTrip(ev, [[W(1)], [W(1)]]);
    expect(ev.irq.count(eq.vector)).toBe(0);
    roundTrip(ev, [[W(1)]]);
    expect(ev.irq.count(eq.vector)).toBe(1);
    // While it works, the device asks not to be notified; afterwards it asks again (avail_event).
    expect(eq.availEvent()).toBe(3);
  });

  it("reset drops the queue; re-activation serves a new ring; the device works after a driver reset", () => {
    const rig = rngRig();
    roundTrip(rig, [[W(10)]]);
    rig.sim.reset();
    expect(rig.device.activated).toBe(false);
    expect(rig.device.processQueue(0)).toEqual({ completed: 0, failed: 0, bytes: 0, notified: false });
    rig.device.queueNotify(0); // ignored
    rig.reinit(VIRTIO_F_INDIRECT_DESC);
    expect(rig.device.activated).toBe(true);
    roundTrip(rig, [[W(33), W(1)], [R(1)]]);
    rig.reinit();
    roundTrip(rig, [[W(5)]], { indirect: true });
  });

  it("ignores other queue indices and a queue the driver did not enable", () => {
    const rig = rngRig();
    rig.driver.submit([W(4)]);
    expect(rig.device.processQueue(1)).toMatchObject({ completed: 0 });
    expect(rig.device.processQueue(-1)).toMatchObject({ completed: 0 });
    expect(rig.device.processQueue(0)).toMatchObject({ completed: 1, bytes: 4 });
    // No queue enabled at DRIVER_OK: nothing to serve, nothing thrown.
    rig.sim.negotiate();
    rig.sim.driverOk();
    expect(rig.device.activated).toBe(true);
    expect(rig.device.processQueue(0)).toMatchObject({ completed: 0 });
  });

  it("a broken ring marks the device NEEDS_RESET instead of throwing; a driver reset brings it back", () => {
    const rig = rngRig();
    const q = rig.driver.q;
    // A head outside the table.
    q.setAvailSlot(q.availIdx % q.size, 999);
    q.setAvailIdx(q.availIdx + 1);
    expect(() => q.kick()).not.toThrow();
    expect(rig.core.status & DeviceStatus.DEVICE_NEEDS_RESET).toBeTruthy();
    expect(rig.core.brokenReason?.message).toMatch(/head/i);
    const after = rig.device.processQueue(0);
    expect(after).toMatchObject({ completed: 0, bytes: 0 });
    expect(after.retryAfterMs).toBeUndefined();
    rig.reinit();
    roundTrip(rig, [[W(12)]]);
    // avail.idx running away.
    rig.driver.q.setAvailIdx(rig.driver.q.availIdx + 1000);
    rig.driver.q.kick();
    expect(rig.core.status & DeviceStatus.DEVICE_NEEDS_RESET).toBeTruthy();
    rig.reinit();
    roundTrip(rig, [[W(12)]]);
  });

  it("a fill that throws (a device bug) marks the device NEEDS_RESET, not the caller", () => {
    let boom = true;
    const rig = rngRig({
      fill: (v) => {
        if (boom) throw new Error("entropy source failed");
        v.fill(1);
      },
    });
    rig.driver.submit([W(8)]);
    expect(() => rig.driver.q.kick()).not.toThrow();
    expect(rig.core.status & DeviceStatus.DEVICE_NEEDS_RESET).toBeTruthy();
    expect(rig.core.brokenReason?.message).toMatch(/entropy source failed/);
    boom = false;
    rig.reinit();
    rig.driver.submit([W(8)]);
    rig.driver.q.kick();
    expect(rig.driver.reap()[0]!.len).toBe(8);
  });

  it("malformed chains get used length 0 and the device goes on", () => {
    const rig = rngRig();
    const { driver, memory } = rig;
    const heads: number[] = [];
    const bad = (desc: { address: number | bigint; length: number; flags: number; next: number }[]) =>
      heads.push(
        driver.submitRaw(desc.length, (ids) => {
          for (const [i, d] of desc.entries())
            driver.q.writeDescriptor(ids[i]!, { ...d, next: ids[d.next] ?? 0 });
        }).head,
      );
    const WF = VIRTQ_DESC_F_WRITE;
    const NX = VIRTQ_DESC_F_NEXT;
    bad([
      { address: 0x4000, length: 8, flags: WF | NX, next: 1 },
      { address: 0x5000, length: 8, flags: 0, next: 0 },
    ]); // readable after writable
    bad([{ address: 2n ** 53n, length: 0, flags: WF, next: 0 }]);
    bad([{ address: 2n ** 64n - 1n, length: 1, flags: WF, next: 0 }]);
    bad([{ address: (16 << 20) - 4, length: 8, flags: WF, next: 0 }]); // past the end of RAM
    bad([{ address: 0x4000, length: 8, flags: WF | NX, next: 0 }]); // a loop
    bad([{ address: 0x4000, length: 15, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }]);
    bad([
      { address: 0x4000, length: 0xffff_ffff, flags: WF | NX, next: 1 },
      { address: 0x4000, length: 0xffff_ffff, flags: WF, next: 0 },
    ]); // overflow (and out of RAM)
    memory.fill(0x6000, 16, 0xee);
    const good = driver.submit([W(8)]);
    driver.q.kick();
    const done = driver.reap();
    expect(done.map((d) => d.len)).toEqual([0, 0, 0, 0, 0, 0, 0, 8]);
    expect(done.at(-1)!.sub).toBe(good);
    expect(rig.core.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
    expect(memory.read(0x6000, 16).every((b) => b === 0xee)).toBe(true);
  });
});

describe("bounded work per call", () => {
  it("a chain bigger than maxBytesPerCall is finished over several calls (retryAfterMs 0)", () => {
    const rig = rngRig({ maxBytesPerCall: 4096 });
    const sub = rig.driver.submit([W(3000), W(5000), W(100)]);
    const after = rig.driver.submit([W(200)]);
    const r1 = rig.device.processQueue(0);
    expect(r1).toMatchObject({ completed: 0, bytes: 4096, retryAfterMs: 0 });
    expect(rig.device.inProgress).toBe(true);
    expect(rig.driver.reap()).toEqual([]);
    // The rest of the first chain (4004 bytes) and 92 of the second.
    const r2 = rig.device.processQueue(0);
    expect(r2).toMatchObject({ completed: 1, bytes: 4096, retryAfterMs: 0 });
    const r3 = rig.device.processQueue(0);
    expect(r3).toMatchObject({ completed: 1, bytes: 108 });
    expect(r3.retryAfterMs).toBeUndefined();
    const done = rig.driver.reap();
    expect(done.map((d) => [d.sub, d.len])).toEqual([
      [sub, 8100],
      [after, 200],
    ]);
    expect(checkChain(rig.memory, sub, 8100, 0)).toEqual([]);
    expect(checkChain(rig.memory, after, 200, 8100)).toEqual([]);
    expect(rig.recorder.take().ranges).toEqual([...writableRanges(sub), ...writableRanges(after)]);
  });

  it("maxChainsPerCall bounds the chains one call takes", () => {
    const rig = rngRig({ maxChainsPerCall: 3 });
    for (let i = 0; i < 7; i++) rig.driver.submit([i === 1 ? R(1) : W(2)]);
    expect(rig.device.processQueue(0)).toMatchObject({ completed: 2, failed: 1, retryAfterMs: 0 });
    expect(rig.device.processQueue(0)).toMatchObject({ completed: 3, retryAfterMs: 0 });
    const last = rig.device.processQueue(0);
    expect(last).toMatchObject({ completed: 1 });
    expect(last.retryAfterMs).toBeUndefined();
  });

  it("queueNotify hands a backlog to the host (onBacklog), which drives the rest", () => {
    const calls: number[] = [];
    const rig = rngRig({ maxBytesPerCall: 1000, onBacklog: (i, r) => calls.push(i, r.retryAfterMs!) });
    rig.driver.submit([W(2500)]);
    rig.driver.q.kick();
    expect(calls).toEqual([0, 0]);
    while (rig.device.processQueue(0).retryAfterMs !== undefined);
    expect(rig.driver.reap()[0]!.len).toBe(2500);
  });

  it("a 4 GiB chain (256 buffers over the same 16 MiB) is served 1 MiB per call, with no copy", () => {
    let bytes = 0;
    let foreign = 0;
    const regions = [{ address: 0, size: 32 << 20 }];
    let ramBuffer: ArrayBufferLike | undefined;
    const rig = rngRig({
      regions,
      heapSize: 1 << 20,
      fill: (v) => {
        if (v.buffer !== ramBuffer) foreign++;
        bytes += v.length;
      },
    });
    ramBuffer = rig.memory.view(0, 1).buffer;
    const big = 16 << 20;
    const at = 16 << 20;
    const table = rig.sim.allocator.alloc(256 * 16, 16);
    for (let i = 0; i < 256; i++)
      writeDescriptor(rig.memory, table, i, {
        address: at,
        length: i === 255 ? big - 1 : big,
        flags: VIRTQ_DESC_F_WRITE | (i === 255 ? 0 : VIRTQ_DESC_F_NEXT),
        next: i + 1,
      });
    rig.driver.submitRaw(1, ([h]) =>
      rig.driver.q.writeDescriptor(h!, {
        address: table,
        length: 256 * 16,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
      }),
    );
    const heapBefore = process.memoryUsage().arrayBuffers;
    let calls = 0;
    let r = rig.device.processQueue(0);
    calls++;
    expect(r.bytes).toBe(1 << 20);
    expect(r.retryAfterMs).toBe(0);
    while (r.retryAfterMs !== undefined) {
      r = rig.device.processQueue(0);
      calls++;
      expect(r.bytes).toBeLessThanOrEqual(1 << 20);
    }
    expect(calls).toBe(4096);
    expect(bytes).toBe(2 ** 32 - 1);
    expect(foreign).toBe(0);
    expect(process.memoryUsage().arrayBuffers - heapBefore).toBeLessThan(4 << 20);
    const [used] = rig.driver.reap();
    expect(used!.len).toBe(2 ** 32 - 1);
  });

  it("a reset in the middle of a chain drops it; the next driver starts clean", () => {
    const rig = rngRig({ maxBytesPerCall: 100 });
    rig.driver.submit([W(1000)]);
    expect(rig.device.processQueue(0).retryAfterMs).toBe(0);
    rig.reinit();
    expect(rig.device.inProgress).toBe(false);
    expect(rig.recorder.take().ranges.reduce((n, r) => n + r.length, 0)).toBe(100);
    roundTrip(rig, [[W(50)]]);
  });
});

describe("rate limit", () => {
  function limited(bytesPerSecond: number, burst: number, extra: Partial<RigOptions> = {}) {
    let t = 1000;
    const rig = rngRig({ rateLimit: { bytesPerSecond, burst }, now: () => t, ...extra });
    return {
      rig,
      advance(ms: number) {
        t += ms;
      },
    };
  }

  it("serves the burst at once, then bytesPerSecond; says when to come back", () => {
    const { rig, advance } = limited(1000, 100);
    const [a, b, c] = [rig.driver.submit([W(64)]), rig.driver.submit([W(64)]), rig.driver.submit([W(64)])];
    let r = rig.device.processQueue(0);
    // 100 tokens: the first chain and 36 bytes of the second.
    expect(r).toMatchObject({ completed: 1, bytes: 100, retryAfterMs: 28 });
    expect(rig.driver.reap().map((d) => d.sub)).toEqual([a]);
    // Too early: 10 ms bring 10 bytes.
    advance(10);
    r = rig.device.processQueue(0);
    expect(r).toMatchObject({ completed: 0, bytes: 10, retryAfterMs: 18 });
    // A notification while throttled changes nothing.
    rig.driver.q.kick();
    expect(rig.driver.reap()).toEqual([]);
    advance(18);
    r = rig.device.processQueue(0);
    expect(r).toMatchObject({ completed: 1, bytes: 18, retryAfterMs: 64 });
    advance(64);
    r = rig.device.processQueue(0);
    expect(r).toMatchObject({ completed: 1, bytes: 64 });
    expect(r.retryAfterMs).toBeUndefined();
    const done = rig.driver.reap();
    expect(done.map((d) => [d.sub, d.len])).toEqual([
      [b, 64],
      [c, 64],
    ]);
    expect(checkChain(rig.memory, a, 64, 0)).toEqual([]);
    expect(checkChain(rig.memory, b, 64, 64)).toEqual([]);
    expect(checkChain(rig.memory, c, 64, 128)).toEqual([]);
    expect(rig.device.stats.throttled).toBe(4); // the kick while throttled too
  });

  it("tokens accrue up to the burst only; a chain bigger than the burst waits for one burst at a time", () => {
    const { rig, advance } = limited(100, 50);
    rig.driver.submit([W(50)]);
    expect(rig.device.processQueue(0)).toMatchObject({ completed: 1, bytes: 50 });
    advance(60_000); // a minute idle: still 50
    rig.driver.submit([W(120)]);
    expect(rig.device.processQueue(0)).toMatchObject({ bytes: 50, retryAfterMs: 500 });
    advance(500);
    expect(rig.device.processQueue(0)).toMatchObject({ bytes: 50, retryAfterMs: 200 });
    advance(199);
    // 19.9 tokens: 19 bytes now, the last one in 1 to 2 ms (floating point).
    const r = rig.device.processQueue(0);
    expect(r).toMatchObject({ bytes: 19 });
    expect(r.retryAfterMs).toBeGreaterThanOrEqual(1);
    expect(r.retryAfterMs).toBeLessThanOrEqual(2);
    advance(2);
    expect(rig.device.processQueue(0)).toMatchObject({ completed: 1, bytes: 1 });
    expect(rig.driver.reap().map((d) => d.len)).toEqual([50, 120]);
  });

  it("chains that need no bytes are answered even with no tokens", () => {
    const { rig } = limited(10, 1);
    rig.driver.submit([W(1)]);
    rig.driver.submit([R(4)]);
    rig.driver.submit([W(0)]);
    rig.driver.submit([W(5)]);
    const r = rig.device.processQueue(0);
    expect(r).toMatchObject({ completed: 1, failed: 2, bytes: 1, retryAfterMs: 100 });
  });

  it("a reset does not refill the bucket; a clock going backwards adds nothing", () => {
    const { rig, advance } = limited(1000, 10);
    rig.driver.submit([W(10)]);
    expect(rig.device.processQueue(0)).toMatchObject({ bytes: 10 });
    rig.reinit();
    rig.driver.submit([W(10)]);
    expect(rig.device.processQueue(0)).toMatchObject({ bytes: 0, retryAfterMs: 10 });
    advance(-5000);
    expect(rig.device.processQueue(0)).toMatchObject({ bytes: 0, retryAfterMs: 10 });
    advance(5000 + 5);
    // Back where it was + 5 ms: time spent going back is not counted twice.
    expect(rig.device.processQueue(0)).toMatchObject({ bytes: 5 });
  });

  it("a throttled or bounded stop leaves notifications on (no EVENT_IDX: NO_NOTIFY clear)", () => {
    for (const extra of [{ rateLimit: { bytesPerSecond: 10, burst: 4 } }, { maxBytesPerCall: 4 }]) {
      let t = 0;
      const rig = rngRig({ features: VIRTIO_F_INDIRECT_DESC, now: () => t, ...extra });
      rig.driver.submit([W(16)]);
      rig.driver.submit([W(16)]);
      const r = rig.device.processQueue(0);
      expect(r.retryAfterMs).toBeDefined();
      expect(rig.driver.q.usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(0);
      t += 10_000;
      while (rig.device.processQueue(0).retryAfterMs !== undefined) t += 10_000;
      expect(rig.driver.q.usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(0);
      expect(rig.driver.reap().map((d) => d.len)).toEqual([16, 16]);
    }
  });

  it("queueNotify reports a throttled queue through onBacklog", () => {
    const backlog: (number | undefined)[] = [];
    const { rig } = limited(1000, 8, { onBacklog: (_i, r) => backlog.push(r.retryAfterMs) });
    rig.driver.submit([W(16)]);
    rig.driver.q.kick();
    expect(backlog).toEqual([8]);
  });

  it("TokenBucket arithmetic", () => {
    const b = new TokenBucket({ bytesPerSecond: 3 });
    expect(b.burst).toBe(3);
    b.refill(0);
    expect(b.available).toBe(3);
    b.take(3);
    expect(b.available).toBe(0);
    expect(b.waitMs(1)).toBe(334);
    expect(b.waitMs(100)).toBe(1000); // capped at the burst
    b.refill(333);
    expect(b.available).toBe(0);
    b.refill(334);
    expect(b.available).toBe(1);
    b.refill(Number.NaN);
    expect(b.available).toBe(1);
  });
});

describe("the device on its own (no transport)", () => {
  it("works over a Queue given directly in an activation context", () => {
    const memory = new PlainGuestMemory([{ address: 0, size: 1 << 20 }]);
    const { driver, config } = mockSplitQueue(memory, { size: 16, heap: { address: 0x1000, size: 0x80000 } });
    const queue = new Queue(memory, config);
    const signals: number[] = [];
    const resets: Error[] = [];
    const device = new VirtioRngDevice();
    device.activate({
      memory,
      driverFeatures: VIRTIO_F_VERSION_1,
      queues: [{ index: 0, queue, vector: NO_VECTOR }],
      interrupt: { signalQueue: (i) => signals.push(i), signalConfig: () => {} },
      interruptStatus: new Int32Array(new SharedArrayBuffer(4)),
      needsReset: (e) => resets.push(e),
    });
    driver.submit({ writable: [48] });
    device.queueNotify(0);
    const [u] = driver.pollUsed();
    expect(u!.len).toBe(48);
    expect(signals).toEqual([0]);
    expect(resets).toEqual([]);
  });
});
